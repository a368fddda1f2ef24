"""Attention-based multiple-instance learning: a slide is a bag of patches x_k, each turned into
an embedding h_k (D,) by the encoder, then pooled by attention (Ilse, Tomczak & Welling 2018).

Every head here is four maps (`MILModel`), so the explain engine treats them all alike:

    z_k = features(h_k)                     (N, D')   the head's own patch features
    s   = scores(z)                         (K, N)    one row of attention scores per branch
    a^b = softmax_k(s^b),   M = a z         (K, D')   pooled features per branch
    logits = classify(M)                    (C,)      the slide logits
    instance logits = classify(z_k) alone   (N, C)    what one patch says on its own

s_k and z_k depend on h_k only. `AttentionMIL` (ours): z = h, one gated branch, a linear
classifier. CLAM and ABMIL heads read from their checkpoints are in `explainers.models.heads`.
"""
from __future__ import annotations

import torch
from torch import nn

from explainers.errors import ModelError


class GatedAttention(nn.Module):
    """s_k = w^T (tanh(V h_k) ⊙ sigmoid(U h_k)), one score per embedding of h (N, D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.V, self.U, self.w = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, 1)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores s (N,); each depends on its own h_k only."""
        return self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scores(h), dim=0)


class MILModel(nn.Module):
    """Base of every model: `encoder` (images -> h) and a head given by `features`, `scores`
    (`branches` rows), `classify` (module docstring). `linear_features`: z = h, so each logit is
    linear in the pooled embedding (what CAM needs)."""

    encoder: nn.Sequential
    branches: int = 1
    linear_features: bool = False

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """(K, N) attention scores of the features z (N, D')."""
        raise NotImplementedError

    def classify(self, m: torch.Tensor) -> torch.Tensor:
        """Logits (..., C) of pooled features (..., K, D')."""
        raise NotImplementedError

    def branch(self, cls: int) -> int:
        """The attention branch that explains class `cls` (0 for single-branch heads)."""
        return 0

    def class_weights(self, cls: int) -> torch.Tensor:
        """w with logit_cls(M) = w · M[branch(cls)] + b, for heads with `linear_features` (CAM)."""
        raise ModelError(f"{type(self).__name__} has no linear class weights on the embedding; use gradcam")

    def pool(self, h: torch.Tensor, cls: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(slide logits (C,), attention (N,) of the branch of `cls`, default the predicted class)."""
        z = self.features(h)
        a = torch.softmax(self.scores(z), dim=1)
        logits = self.classify(a @ z)
        return logits, a[self.branch(int(logits.argmax()) if cls is None else cls)]

    def instance_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N, C): each patch's logits as a bag of its own (all attention on it)."""
        z = self.features(h)
        return self.classify(z[:, None, :].expand(-1, self.branches, -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slide logits (C,), attention (N,)) of one bag of images x (N, 3, P, P)."""
        return self.pool(self.encoder(x))

    @torch.no_grad()
    def pool_replacing(self, h: torch.Tensor, idx: torch.Tensor, h_new: torch.Tensor) -> torch.Tensor:
        """Slide logits (B, C) when h[idx[b]] is replaced by h_new[b], each b on its own.

        Only s_k and z_k change, so per branch with e_j = exp(s_j - m): Z' = Z - e_k + e'_k and
        M' = (Σ_j e_j z_j - e_k z_k + e'_k z'_k) / Z'; O(B·K·D') after one O(N·K·D') pass, in float64.
        """
        z, z_new = self.features(h).double(), self.features(h_new).double()
        s, s_new = self.scores(z.to(h.dtype)).double(), self.scores(z_new.to(h.dtype)).double()
        m = torch.maximum(s.amax(1), s_new.amax(1))[:, None]
        e, e_new = torch.exp(s - m), torch.exp(s_new - m)                       # (K, N), (K, B)
        total = e @ z                                                             # (K, D')
        num = total[None] - (e[:, idx].T)[..., None] * z[idx][:, None] + (e_new.T)[..., None] * z_new[:, None]
        pooled = num / (e.sum(1)[None] - e[:, idx].T + e_new.T)[..., None]      # (B, K, D')
        return self.classify(pooled.to(h.dtype))


class AttentionMIL(MILModel):
    """Ours: encoder + one gated-attention branch on h + a linear classifier W z + b."""

    linear_features = True

    def __init__(self, encoder: nn.Sequential, dim: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.attention = GatedAttention(dim, hidden)
        self.classifier = nn.Linear(dim, n_classes)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        return self.attention.scores(z)[None]

    def classify(self, m: torch.Tensor) -> torch.Tensor:
        return self.classifier(m[..., 0, :])

    def class_weights(self, cls: int) -> torch.Tensor:
        return self.classifier.weight[cls]


def split_encoder(model: MILModel, target_layer: str) -> tuple[nn.Sequential, nn.Sequential]:
    """(head, tail) of the encoder cut after `target_layer` (e.g. "encoder.block4"), so that
    head(x) is the target layer's output and tail(head(x)) == encoder(x). Both share the
    model's modules; the model itself is not changed."""
    prefix, _, path = target_layer.partition(".")
    if prefix != "encoder" or not path:
        raise ModelError(f"target layer {target_layer!r} must lie inside the encoder (\"encoder.<stage>...\")")
    head, tail = _split(model.encoder, path.split("."), target_layer)
    return nn.Sequential(*head), nn.Sequential(*tail)


def _split(seq: nn.Sequential, parts: list[str], full: str) -> tuple[list[nn.Module], list[nn.Module]]:
    names = [name for name, _ in seq.named_children()]
    if parts[0] not in names:
        raise ModelError(f"unknown target layer {full!r}: no stage {parts[0]!r} among {names}")
    i = names.index(parts[0])
    before, child, after = list(seq)[:i], seq[i], list(seq)[i + 1:]
    if len(parts) == 1:
        return [*before, child], after
    if not isinstance(child, nn.Sequential):
        raise ModelError(f"target layer {full!r}: {parts[0]!r} is a {type(child).__name__}, not an "
                         "nn.Sequential, so the encoder cannot be split inside it; pick one of its "
                         f"siblings {names}")
    head, tail = _split(child, parts[1:], full)
    return before + head, tail + after

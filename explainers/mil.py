"""Attention-based multiple-instance learning with gated attention (Ilse, Tomczak & Welling 2018).

A slide is a bag of patches x_k. The encoder gives embeddings h_k (D,); gated attention scores

    s_k = w^T (tanh(V h_k) ⊙ sigmoid(U h_k)),    a_k = softmax_k(s_k),

pool them into z = Σ_k a_k h_k, and a linear classifier gives the slide logits W z + b (C,).
Applied to one h_k, the same classifier gives the patch's instance logits.
"""
from __future__ import annotations

import torch
from torch import nn

from explainers.errors import ModelError


class GatedAttention(nn.Module):
    """a = softmax_k(w^T (tanh(V h_k) ⊙ sigmoid(U h_k))) over the N embeddings h (N, D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.V, self.U, self.w = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, 1)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores s (N,); each depends on its own h_k only."""
        return self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scores(h), dim=0)


class AttentionMIL(nn.Module):
    """encoder (images -> h) + gated attention pooling + linear classifier."""

    def __init__(self, encoder: nn.Sequential, dim: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.attention = GatedAttention(dim, hidden)
        self.classifier = nn.Linear(dim, n_classes)

    def pool(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slide logits (C,), attention (N,)) of a bag of embeddings h (N, D)."""
        a = self.attention(h)
        return self.classifier(a @ h), a

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slide logits (C,), attention (N,)) of one bag of images x (N, 3, P, P)."""
        return self.pool(self.encoder(x))

    @torch.no_grad()
    def pool_replacing(self, h: torch.Tensor, idx: torch.Tensor, h_new: torch.Tensor) -> torch.Tensor:
        """Slide logits (B, C) when h[idx[b]] is replaced by h_new[b], each b on its own.

        Only s_k changes, so with e_j = exp(s_j - m): Z' = Z - e_k + e'_k and
        z' = (Σ_j e_j h_j - e_k h_k + e'_k h'_k) / Z'; O(B·D) after one O(N·D) pass, in float64.
        """
        s = self.attention.scores(h).double()
        s_new = self.attention.scores(h_new).double()
        m = torch.maximum(s.max(), s_new.max())
        e, e_new = torch.exp(s - m), torch.exp(s_new - m)
        h64, h_new64 = h.double(), h_new.double()
        total = e @ h64
        num = total - e[idx, None] * h64[idx] + e_new[:, None] * h_new64
        z = num / (e.sum() - e[idx] + e_new)[:, None]
        return self.classifier(z.to(h.dtype))


def split_encoder(model: AttentionMIL, target_layer: str) -> tuple[nn.Sequential, nn.Sequential]:
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
        return before + [child], after
    if not isinstance(child, nn.Sequential):
        raise ModelError(f"target layer {full!r}: {parts[0]!r} is a {type(child).__name__}, not an "
                         "nn.Sequential, so the encoder cannot be split inside it; pick one of its "
                         f"siblings {names}")
    head, tail = _split(child, parts[1:], full)
    return before + head, tail + after

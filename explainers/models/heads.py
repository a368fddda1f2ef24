"""MIL heads as their authors' training code builds and saves them, read from their checkpoints.

Module names equal the checkpoints' keys, so a state dict loads one to one (under `encoder.` for
the encoder). Each head is the four maps of `explainers.models.mil.MILModel`:

CLAM (Lu et al. 2021), sizes small [D, 512, 256] and big [D, 512, 384]:
    z = ReLU(W_fc h + b)                                 attention_net.0 (+ ReLU, Dropout)
    gated scores s = W_c (tanh(W_a z) ⊙ sigmoid(W_b z))  attention_net.{2|3}.attention_{a,b,c}
    plain scores s = W_2 tanh(W_1 z)                     attention_net.{2|3}.module.{0, 2|3}
    CLAM_SB: one branch, logits = W M + b                classifiers
    CLAM_MB: one branch per class, logit_c = w_c·M_c + b_c   classifiers.{c}
    instance_classifiers.{c} are kept (CLAM's clustering loss), they do not change the logits.
ABMIL (Ilse et al. 2018) on embeddings:
    z = ReLU(W h + b) when the checkpoint has feature_extractor_part2.0, else z = h
    gated: s = w (tanh(V z) ⊙ sigmoid(U z))             attention_V.0, attention_U.0, attention_w
    plain: s = W_2 tanh(W_1 z)                           attention.0, attention.2
    logits = W M + b                                     classifier.0
    A single output z is a sigmoid's logit: it is stored as the two-class logits (-z/2, z/2),
    whose softmax is (1 - σ(z), σ(z)), so class 1's probability and explanations are the model's.
"""
from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from explainers.errors import ModelError
from explainers.models.mil import MILModel

CLAM_SIZES = {"small": (512, 256), "big": (512, 384)}


def _linear(state: dict[str, torch.Tensor], key: str) -> tuple[int, int]:
    """(out, in) of the linear layer `key` in a state dict."""
    if f"{key}.weight" not in state:
        raise ModelError(f"no weight {key}.weight in the checkpoint")
    out, inp = state[f"{key}.weight"].shape
    return int(out), int(inp)


class GatedBranches(nn.Module):
    """CLAM's Attn_Net_Gated: s = W_c (tanh(W_a z) ⊙ sigmoid(W_b z)), (N, K)."""

    def __init__(self, dim: int, hidden: int, branches: int) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh())
        self.attention_b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid())
        self.attention_c = nn.Linear(hidden, branches)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(z) * self.attention_b(z))


class PlainBranches(nn.Module):
    """CLAM's Attn_Net: s = W_2 tanh(W_1 z), (N, K); `last` is the index of W_2 (2, or 3 after dropout)."""

    def __init__(self, dim: int, hidden: int, branches: int, last: int = 2) -> None:
        super().__init__()
        layers = [nn.Linear(dim, hidden), nn.Tanh()] + [nn.Dropout(0.0)] * (last - 2) + [nn.Linear(hidden, branches)]
        self.module = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.module(z)


class CLAM(MILModel):
    """CLAM_SB (`multi_branch` False) or CLAM_MB on `encoder` embeddings of size `dim`.
    attention_index: 3 when the fc block has a Dropout (current CLAM), 2 without (early versions)."""

    def __init__(self, encoder: nn.Sequential, dim: int, n_classes: int, size: str = "small", gated: bool = True,
                 multi_branch: bool = False, attention_index: int = 3, plain_last: int = 2) -> None:
        super().__init__()
        width, hidden = CLAM_SIZES[size]
        self.encoder, self.multi_branch = encoder, multi_branch
        self.branches = n_classes if multi_branch else 1
        branch = (GatedBranches(width, hidden, self.branches) if gated
                  else PlainBranches(width, hidden, self.branches, plain_last))
        fc = [nn.Linear(dim, width), nn.ReLU()] + [nn.Dropout(0.0)] * (attention_index - 2)
        self.attention_net = nn.Sequential(*fc, branch)
        self.classifiers: nn.Module = (nn.ModuleList([nn.Linear(width, 1) for _ in range(n_classes)])
                                       if multi_branch else nn.Linear(width, n_classes))
        self.instance_classifiers = nn.ModuleList([nn.Linear(width, 2) for _ in range(n_classes)])

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_net[:-1](h)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        return self.attention_net[-1](z).T

    def classify(self, m: torch.Tensor) -> torch.Tensor:
        if not self.multi_branch:
            return self.classifiers(m[..., 0, :])
        return torch.cat([c(m[..., i, :]) for i, c in enumerate(cast(nn.ModuleList, self.classifiers))], dim=-1)

    def branch(self, cls: int) -> int:
        return cls if self.multi_branch else 0


class ABMIL(MILModel):
    """ABMIL (Ilse et al. 2018) on embeddings; `width` > 0 adds feature_extractor_part2
    (z = ReLU(W h + b)); `binary_logit`: one output, stored as two-class logits (module docstring)."""

    def __init__(self, encoder: nn.Sequential, dim: int, n_classes: int, hidden: int = 128, width: int = 0,
                 gated: bool = True, weights_name: str = "attention_w", binary_logit: bool = False) -> None:
        super().__init__()
        self.encoder, self.gated, self.weights_name, self.binary_logit = encoder, gated, weights_name, binary_logit
        self.linear_features = width == 0
        z_dim = width or dim
        if width:
            self.feature_extractor_part2 = nn.Sequential(nn.Linear(dim, width), nn.ReLU())
        if gated:
            self.attention_V = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh())
            self.attention_U = nn.Sequential(nn.Linear(z_dim, hidden), nn.Sigmoid())
            self.add_module(weights_name, nn.Linear(hidden, 1))
        else:
            self.attention = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.classifier = nn.Sequential(nn.Linear(z_dim, 1 if binary_logit else n_classes))

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor_part2(h) if hasattr(self, "feature_extractor_part2") else h

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.get_submodule(self.weights_name)(self.attention_V(z) * self.attention_U(z)).T
        return self.attention(z).T

    def classify(self, m: torch.Tensor) -> torch.Tensor:
        out = self.classifier(m[..., 0, :])
        return torch.cat([-out / 2, out / 2], dim=-1) if self.binary_logit else out

    def class_weights(self, cls: int) -> torch.Tensor:
        if not self.linear_features:
            return super().class_weights(cls)
        w = cast(nn.Linear, self.classifier[0]).weight
        return (w[0] if cls else -w[0]) / 2 if self.binary_logit else w[cls]


def clam_kwargs(state: dict[str, torch.Tensor], multi_branch: bool) -> dict[str, Any]:
    """CLAM's constructor settings read off its checkpoint's keys and shapes."""
    width, dim = _linear(state, "attention_net.0")
    index = 3 if any(k.startswith("attention_net.3.") for k in state) else 2
    gated = f"attention_net.{index}.attention_a.0.weight" in state
    hidden = _linear(state, f"attention_net.{index}.attention_a.0" if gated else f"attention_net.{index}.module.0")[0]
    size = next((name for name, dims in CLAM_SIZES.items() if dims == (width, hidden)), None)
    if size is None:
        raise ModelError(f"CLAM layers {dim} -> {width} -> {hidden} are neither size small {CLAM_SIZES['small']} "
                         f"nor big {CLAM_SIZES['big']}")
    kwargs: dict[str, Any] = {"size": size, "gated": gated, "multi_branch": multi_branch, "attention_index": index}
    if not gated:
        kwargs["plain_last"] = 3 if f"attention_net.{index}.module.3.weight" in state else 2
    return kwargs


def abmil_kwargs(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """ABMIL's constructor settings read off its checkpoint's keys and shapes."""
    gated = "attention_V.0.weight" in state
    hidden = _linear(state, "attention_V.0" if gated else "attention.0")[0]
    width = _linear(state, "feature_extractor_part2.0")[0] if "feature_extractor_part2.0.weight" in state else 0
    kwargs: dict[str, Any] = {"hidden": hidden, "width": width, "gated": gated,
                              "binary_logit": _linear(state, "classifier.0")[0] == 1}
    if gated:
        kwargs["weights_name"] = "attention_weights" if "attention_weights.weight" in state else "attention_w"
    return kwargs


def n_classes_of(state: dict[str, torch.Tensor], mil: str) -> int:
    """The number of classes a head checkpoint predicts (2 for a single-logit ABMIL)."""
    if mil == "clam_mb":
        return len({k.split(".")[1] for k in state if k.startswith("classifiers.")})
    if mil == "clam_sb":
        return _linear(state, "classifiers")[0]
    return max(2, _linear(state, "classifier.0")[0])


HEADS: dict[str, Any] = {
    "clam_sb": (CLAM, lambda state: clam_kwargs(state, multi_branch=False)),
    "clam_mb": (CLAM, lambda state: clam_kwargs(state, multi_branch=True)),
    "abmil": (ABMIL, abmil_kwargs),
}

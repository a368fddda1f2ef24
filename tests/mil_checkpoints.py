"""Random MIL head checkpoints in their training code's key layout, and reference forwards
written from the published architectures (float64): CLAM (Lu et al. 2021), ABMIL (Ilse et al. 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

D = 24  # embedding size of the small test checkpoints


def linear(state: dict, key: str, out: int, inp: int, gen: torch.Generator) -> None:
    state[f"{key}.weight"] = torch.randn(out, inp, generator=gen, dtype=torch.float64) / inp ** 0.5
    state[f"{key}.bias"] = torch.randn(out, generator=gen, dtype=torch.float64) * 0.1


def clam_checkpoint(multi: bool, size: str, gated: bool, classes: int = 3, seed: int = 0, dim: int = D) -> dict:
    """A CLAM state dict as CLAM's code saves it (fc with dropout: the attention net is index 3)."""
    gen = torch.Generator().manual_seed(seed)
    width, hidden = {"small": (512, 256), "big": (512, 384)}[size]
    branches = classes if multi else 1
    state: dict = {}
    linear(state, "attention_net.0", width, dim, gen)
    if gated:
        linear(state, "attention_net.3.attention_a.0", hidden, width, gen)
        linear(state, "attention_net.3.attention_b.0", hidden, width, gen)
        linear(state, "attention_net.3.attention_c", branches, hidden, gen)
    else:
        linear(state, "attention_net.3.module.0", hidden, width, gen)
        linear(state, "attention_net.3.module.2", branches, hidden, gen)
    if multi:
        for c in range(classes):
            linear(state, f"classifiers.{c}", 1, width, gen)
    else:
        linear(state, "classifiers", classes, width, gen)
    for c in range(classes):
        linear(state, f"instance_classifiers.{c}", 2, width, gen)
    return state


def clam_reference(state: dict, h: torch.Tensor, multi: bool, gated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CLAM_SB / CLAM_MB forward (Lu et al. 2021): (logits (C,), attention (K, N))."""
    def lin(x, key):
        return x @ state[f"{key}.weight"].T + state[f"{key}.bias"]
    z = torch.relu(lin(h, "attention_net.0"))
    if gated:
        a = torch.tanh(lin(z, "attention_net.3.attention_a.0"))
        b = torch.sigmoid(lin(z, "attention_net.3.attention_b.0"))
        scores = lin(a * b, "attention_net.3.attention_c")
    else:
        scores = lin(torch.tanh(lin(z, "attention_net.3.module.0")), "attention_net.3.module.2")
    attention = F.softmax(scores.T, dim=1)
    pooled = attention @ z
    if not multi:
        return lin(pooled, "classifiers")[0], attention
    logits = torch.stack([lin(pooled[c], f"classifiers.{c}")[0] for c in range(pooled.shape[0])])
    return logits, attention


def abmil_checkpoint(gated: bool, part2: bool, outputs: int, seed: int = 1) -> dict:
    """An ABMIL state dict in AttentionDeepMIL's layout (M = 32, L = 16) on D-dim embeddings."""
    gen = torch.Generator().manual_seed(seed)
    state: dict = {}
    width = 32 if part2 else D
    if part2:
        linear(state, "feature_extractor_part2.0", width, D, gen)
    if gated:
        linear(state, "attention_V.0", 16, width, gen)
        linear(state, "attention_U.0", 16, width, gen)
        linear(state, "attention_w", 1, 16, gen)
    else:
        linear(state, "attention.0", 16, width, gen)
        linear(state, "attention.2", 1, 16, gen)
    linear(state, "classifier.0", outputs, width, gen)
    return state


def abmil_reference(state: dict, h: torch.Tensor, gated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """ABMIL forward (Ilse et al. 2018): (classifier output Y (outputs,), attention (N,))."""
    def lin(x, key):
        return x @ state[f"{key}.weight"].T + state[f"{key}.bias"]
    z = torch.relu(lin(h, "feature_extractor_part2.0")) if "feature_extractor_part2.0.weight" in state else h
    if gated:
        scores = lin(torch.tanh(lin(z, "attention_V.0")) * torch.sigmoid(lin(z, "attention_U.0")), "attention_w")
    else:
        scores = lin(torch.tanh(lin(z, "attention.0")), "attention.2")
    attention = F.softmax(scores.T, dim=1)
    return lin(attention @ z, "classifier.0")[0], attention[0]

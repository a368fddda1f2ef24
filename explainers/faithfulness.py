"""Deletion faithfulness of a ranking of patches, from the kept embeddings (no encoder run).

Delete the top-k fraction of patches by a method's ranking, pool the kept embeddings with the
MIL head alone (`MILModel.pool`) and read p_k, the probability of the explained class c:
softmax_c(z) for a softmax head, 1 / (1 + e^-z_c) for a sigmoid one. n_k = min(floor(k·N), N - 1)
patches are deleted (one is always kept). The curve starts at k = 0 (nothing deleted); its area is

    area = Σ_i (k_{i+1} - k_i) (p_{k_i} + p_{k_{i+1}}) / 2  /  (k_max · p_0)

the trapezoid area under p_k / p_0 over [0, k_max], in [0, ~1] when p falls: 1 = deleting the
top patches never lowers p; lower = the ranking finds what the prediction rests on. The same is
computed for `n_random` seeded random rankings; a method whose area is not below the random
mean by `margin` is no better than chance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from explainers.config import FaithfulnessConfig
from explainers.models.mil import MILModel


def patch_scores(maps: np.ndarray) -> np.ndarray:
    """(N,) per-patch score of a method's (N, h, w) maps: the mean of each map (NaN ignored)."""
    values = np.asarray(maps, np.float64)
    return np.nanmean(values.reshape(len(values), int(np.prod(values.shape[1:]))), axis=1)


def _probability(logits: torch.Tensor, cls: int, head: str) -> float:
    z = logits.double()
    if head == "softmax":
        return float(torch.softmax(z, -1)[cls])
    return float(torch.sigmoid(z[cls if z.numel() > 1 else 0]))


@torch.no_grad()
def deletion_curve(model: MILModel, h: torch.Tensor, cls: int, head: str, order: np.ndarray,
                   fractions: tuple[float, ...]) -> list[float]:
    """p_k for k = 0 and each of `fractions`, deleting patches in `order` (most relevant first)."""
    n = h.shape[0]
    curve = []
    for k in (0.0, *fractions):
        kept = np.sort(order[min(int(np.floor(k * n)), n - 1):])
        curve.append(_probability(model.pool(h[torch.from_numpy(kept).to(h.device)], cls)[0], cls, head))
    return curve


def area(curve: list[float], fractions: tuple[float, ...]) -> float | None:
    """The module docstring's normalised area; None when p_0 is 0."""
    if curve[0] <= 0:
        return None
    k = np.array((0.0, *fractions))
    return float(np.trapezoid(np.asarray(curve) / curve[0], k) / k[-1])


@dataclass
class Faithfulness:
    """Per method: curve and area; random: the mean random curve and its area."""

    fractions: tuple[float, ...]
    curves: dict[str, list[float]] = field(default_factory=dict)
    areas: dict[str, float | None] = field(default_factory=dict)
    random_curve: list[float] = field(default_factory=list)
    random_area: float | None = None

    def unfaithful(self, margin: float) -> list[str]:
        """Methods whose area is not below the random area by `margin` (module docstring). None
        when no deletion, ranked or random, lowers p by `margin` (every area >= 1 - margin): the
        prediction then rests on the bag as a whole (e.g. "normal" on a slide without lesion),
        and there is nothing for a ranking to find."""
        areas = [a for a in self.areas.values() if a is not None]
        if self.random_area is None or min([self.random_area, *areas]) >= 1 - margin:
            return []
        return [m for m, a in self.areas.items() if a is not None and a >= self.random_area - margin]


def faithfulness(model: MILModel, h: torch.Tensor, cls: int, head: str, scores: dict[str, np.ndarray],
                 config: FaithfulnessConfig) -> Faithfulness:
    """Deletion curves of each method's per-patch `scores` (N,) and of seeded random rankings."""
    result = Faithfulness(config.fractions)
    for name, s in scores.items():
        order = np.argsort(-np.nan_to_num(np.asarray(s, np.float64), nan=-np.inf), kind="stable")
        result.curves[name] = deletion_curve(model, h, cls, head, order, config.fractions)
        result.areas[name] = area(result.curves[name], config.fractions)
    rng = np.random.default_rng(config.seed)
    randoms = [deletion_curve(model, h, cls, head, rng.permutation(h.shape[0]), config.fractions)
               for _ in range(config.n_random)]
    result.random_curve = np.mean(randoms, axis=0).tolist()
    result.random_area = area(result.random_curve, config.fractions)
    return result

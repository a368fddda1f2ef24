"""Agreement between explanation methods over the same tissue pixels."""
from __future__ import annotations

import itertools

import numpy as np
from scipy.stats import rankdata

from reports.audit.metrics import iou, top_k_mask


def rank_correlations(maps: dict[str, np.ndarray], valid: np.ndarray) -> np.ndarray:
    """(k, k) Spearman's ρ between every pair of maps over the valid pixels.

    ρ = Pearson correlation of the pixel ranks (ties averaged) = 1 - 6 Σd² / (n(n²-1)) without
    ties. NaN where a map is constant over the valid pixels.
    """
    columns = np.stack([np.asarray(m, np.float64)[valid] for m in maps.values()], axis=1)
    k = columns.shape[1]
    rho = np.full((k, k), np.nan)
    low, high = columns.min(axis=0, initial=np.inf), columns.max(axis=0, initial=-np.inf)
    varying = np.flatnonzero(low < high)
    if columns.shape[0] >= 2 and varying.size:
        ranks = rankdata(columns[:, varying], axis=0)
        rho[np.ix_(varying, varying)] = np.atleast_2d(np.corrcoef(ranks, rowvar=False))
    return rho


def sample_mask(valid: np.ndarray, max_pixels: int, seed: int) -> np.ndarray:
    """`valid` itself if it has at most `max_pixels` pixels, else a seeded uniform random
    subset of that many of them."""
    pixels = np.flatnonzero(valid)
    if pixels.size <= max_pixels:
        return valid
    mask = np.zeros(valid.shape, bool)
    mask.flat[np.random.default_rng(seed).choice(pixels, max_pixels, replace=False)] = True
    return mask


def agreement(maps: dict[str, np.ndarray], valid: np.ndarray, fraction: float,
              max_pixels: int = 1_000_000, seed: int = 0) -> list[dict]:
    """One record per pair of maps: Spearman's ρ and the IoU of their top-`fraction` regions
    (strict `top_k_mask`) over the valid pixels; None where undefined (no top region). ρ uses a seeded random sample
    of at most `max_pixels` valid pixels (standard error ~ 1/√max_pixels), the IoU all."""
    names = list(maps)
    if len(names) < 2:
        return []
    rho = rank_correlations(maps, sample_mask(valid, max_pixels, seed))
    tops = {name: top_k_mask(maps[name], valid, fraction) for name in names}
    records = []
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        r, top_a, top_b = rho[i, j], tops[a], tops[b]
        records.append({"a": a, "b": b, "spearman": None if np.isnan(r) else float(r),
                        "top_iou": None if top_a is None or top_b is None else iou(top_a, top_b)})
    return records

"""How well a map points at the annotated lesions: pure functions on numpy arrays.

Every function takes a float map `m` (H, W), a lesion mask or label image and `valid`, the bool
mask of the pixels that count (tissue where the map is finite). Pixels outside `valid` are
ignored; a NaN or ±Inf inside `valid` is a MetricError (the caller leaves such pixels out of
`valid` and counts them), never a silently wrong number. A metric that is undefined on its input
(no lesion or no background pixel, no positive mass, no strict top region) returns None, "n/a".
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import local_maxima

from reports.errors import MetricError


def valid_values(m: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The map's values (float64) on the valid pixels; MetricError when one of them is not finite."""
    values = np.asarray(m)[valid].astype(np.float64, copy=False)  # indexing copied it already
    finite = np.isfinite(values)
    if not finite.all():
        bad = values.size - int(np.count_nonzero(finite))
        raise MetricError(f"{bad} of {values.size} valid map pixels are NaN or infinite; leave them out of "
                          "the valid mask (and count them) before scoring the map")
    return values


def pixel_auroc(m: np.ndarray, lesion: np.ndarray, valid: np.ndarray) -> float | None:
    """Area under the ROC curve of `m` as a pixel-wise lesion detector (Mann-Whitney U).

    AUROC = U / (P·N), U = Σ_{lesion pixels i} (#{j: n_j < p_i} + ½·#{j: n_j = p_i}) over the P
    lesion values p_i and the N other valid values n_j: the chance that a random lesion pixel
    outscores a random other pixel, ties counting one half (= the rank-sum formula with average
    ranks). Computed with one sort of each group and binary searches.
    """
    positive = np.asarray(lesion, bool)[valid]
    values = valid_values(m, valid)
    pos, neg = np.sort(values[positive]), np.sort(values[~positive])
    if pos.size == 0 or neg.size == 0:
        return None
    below = np.searchsorted(neg, pos, side="left").sum()
    at_or_below = np.searchsorted(neg, pos, side="right").sum()
    return float((below + at_or_below) / 2 / (pos.size * neg.size))


def pointing_game(m: np.ndarray, lesion: np.ndarray, valid: np.ndarray,
                  tolerance_px: float = 0.0, off_limits: np.ndarray | None = None) -> float | None:
    """1.0 if the map's maximum falls on a lesion, else 0.0 (Zhang et al. 2018).

    Hit when some valid pixel with m = max(m[valid]) lies within `tolerance_px` (Euclidean,
    map pixels; the caller converts its tolerance in µm) of a lesion pixel on the valid pixels
    (tissue): lesion annotated off the tissue never counts. Every pixel tied at the maximum is tried,
    except those `off_limits` (e.g. artefacts: a maximum on pen ink is no hit, however near a lesion).
    """
    lesion = np.asarray(lesion, bool) & valid
    if not lesion.any():
        return None
    m = np.asarray(m)
    top = valid & (m == np.asarray(valid_values(m, valid).max(), m.dtype))  # the maximum, exact in m's dtype
    if off_limits is not None:
        top &= ~np.asarray(off_limits, bool)
    on_rows = np.flatnonzero(top.any(axis=1))
    if on_rows.size == 0:
        return 0.0
    rows, cols = np.nonzero(top[on_rows[0]:on_rows[-1] + 1])
    rows += on_rows[0]
    pad = math.ceil(tolerance_px) + 1
    r0, c0 = max(rows.min() - pad, 0), max(cols.min() - pad, 0)
    window = np.s_[r0:rows.max() + pad + 1, c0:cols.max() + pad + 1]
    if not lesion[window].any():  # lesions beyond the window are farther than the tolerance
        return 0.0
    distance = ndimage.distance_transform_edt(~lesion[window])
    return float(bool((distance[top[window]] <= tolerance_px).any()))


def relevance_mass(m: np.ndarray, lesion: np.ndarray, valid: np.ndarray) -> float | None:
    """Share of the map's positive mass inside lesions (energy-based pointing game).

    mass = Σ_{lesion ∩ valid} max(m, 0) / Σ_{valid} max(m, 0); negative values are clipped
    to 0 first. None when the map has no positive mass or there is no lesion.
    """
    positive = np.clip(valid_values(m, valid), 0, None)
    inside = np.asarray(lesion, bool)[valid]
    total = positive.sum()
    if not inside.any() or total <= 0:
        return None
    return float(positive[inside].sum() / total)


def relevance_rank_accuracy(m: np.ndarray, lesion: np.ndarray, valid: np.ndarray) -> float | None:
    """Share of the K highest-valued pixels that lie in a lesion, K = |lesion ∩ valid|.

    accuracy = |top-K ∩ lesion| / K (Arras et al. 2022). Pixels tied at the K-th value fill the
    remaining places in proportion (the expected value under random tie-breaking), so the result
    never depends on pixel order: a constant map scores K / |valid|.
    """
    values = valid_values(m, valid)
    inside = np.asarray(lesion, bool)[valid]
    k = int(inside.sum())
    if k == 0:
        return None
    kth = np.partition(values, values.size - k)[values.size - k]
    above, tied = values > kth, values == kth
    hits = inside[above].sum() + (k - above.sum()) * inside[tied].mean()
    return float(hits / k)


def top_k_mask(m: np.ndarray, valid: np.ndarray, fraction: float) -> np.ndarray | None:
    """The strict top-k region: at most k = ceil(fraction·|valid|) valid pixels, None when empty.

    The pixels above the k-th highest value, plus those tied with it when all of them fit in k;
    when they do not (ties at the cut, e.g. a sparse map zero on most tissue), the tied pixels are
    all left out, so the region never swells past k nor depends on pixel order. None when nothing
    is left (a constant map, or more than k pixels tied at the maximum): the map has no top region.
    """
    values = valid_values(m, valid)
    k = min(values.size, math.ceil(fraction * values.size))
    if k == 0:
        return None
    threshold = np.partition(values, values.size - k)[values.size - k]
    selected = values >= threshold
    if np.count_nonzero(selected) > k:
        selected = values > threshold
    if not selected.any():
        return None
    mask = np.zeros(np.shape(valid), bool)
    mask[valid] = selected
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float | None:
    """Intersection over union |a ∩ b| / |a ∪ b| of two bool masks; None when both are empty."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else None


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice coefficient 2|a ∩ b| / (|a| + |b|) of two bool masks; None when both are empty."""
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return float(2 * np.count_nonzero(a & b) / total) if total else None


def _snap(rows: np.ndarray, cols: np.ndarray) -> tuple[int, int]:
    """The pixel of a component (its pixels' rows and cols, row-major) nearest its centroid."""
    r0, c0 = rows.min(), cols.min()
    rr, cc = rows - r0, cols - c0
    k = int(np.argmin((rr - rr.mean()) ** 2 + (cc - cc.mean()) ** 2))
    return int(rr[k] + r0), int(cc[k] + c0)


def peaks(m: np.ndarray, valid: np.ndarray, n_peaks: int, min_distance_px: int) -> np.ndarray:
    """(≤ n_peaks, 2) row, col of the map's highest regional maxima over the valid pixels,
    highest first, each at least `min_distance_px` (Chebyshev) from every higher one.

    A regional maximum is a connected plateau whose neighbours are all lower (e.g. one patch's
    attention); its peak is the plateau pixel nearest the plateau's centroid. A map constant
    over the valid pixels has none.
    """
    values = valid_values(m, valid)
    if values.size == 0 or values.min() == values.max():
        return np.zeros((0, 2), np.int64)
    m = np.asarray(m)
    image = np.where(valid, m, -np.inf) if np.issubdtype(m.dtype, np.floating) else \
        np.where(valid, m.astype(np.float64), -np.inf)
    maxima = local_maxima(image, allow_borders=True) & valid
    labels, count = ndimage.label(maxima, structure=np.ones((3, 3)))
    pixels = np.flatnonzero(labels)
    owner = labels.ravel()[pixels]
    order = np.argsort(owner, kind="stable")  # pixels by plateau, row-major within each
    pixels, owner = pixels[order], owner[order]
    starts = np.searchsorted(owner, np.arange(1, count + 1))
    ends = np.append(starts[1:], pixels.size)
    heights = image.ravel()[pixels[starts]]  # a plateau has one value: read any of its pixels
    chosen: list[tuple[int, int]] = []
    for k in np.argsort(-heights, kind="stable"):
        r, c = _snap(*np.divmod(pixels[starts[k]:ends[k]], image.shape[1]))
        if all(max(abs(r - r2), abs(c - c2)) >= min_distance_px for r2, c2 in chosen):
            chosen.append((r, c))
        if len(chosen) == n_peaks:
            break
    return np.array(chosen, np.int64).reshape(-1, 2)


def lesion_hit_rate(found: np.ndarray, lesion_labels: np.ndarray,
                    valid: np.ndarray) -> float | None:
    """Share of annotated lesions holding at least one of the peaks `found` ((K, 2) row, col,
    e.g. a map's top-N `peaks`).

    hit rate = |{k : some peak p has labels[p] = k}| / |{k > 0 in labels ∩ valid}|; lesions
    that lie wholly off the valid pixels are not counted.
    """
    present = np.unique(lesion_labels[valid & (lesion_labels > 0)])
    if present.size == 0:
        return None
    found = np.asarray(found, np.int64).reshape(-1, 2)
    hit = np.intersect1d(lesion_labels[found[:, 0], found[:, 1]], present)
    return float(hit.size / present.size)

"""The patch grid: level-0 top-left corners of patches and each patch's tissue fraction."""
from __future__ import annotations

import math

import cv2
import numpy as np


def footprint(patch: int, mpp: float, slide_mpp: float) -> float:
    """Level-0 pixels spanned by `patch` pixels at `mpp` µm/px: patch * mpp / slide_mpp."""
    return patch * mpp / slide_mpp


def grid_starts(length: int, size: float, step: float) -> np.ndarray:
    """Start offsets round(i * step) covering [0, length): the last patch may overhang the edge."""
    count = max(0, math.ceil((length - size) / step)) + 1 if length > 0 else 0
    starts = np.round(np.arange(count) * step).astype(np.int64)
    return starts[starts < length]


def grid_coords(dimensions: tuple[int, int], size: float, step: float) -> np.ndarray:
    """(N, 2) int64 level-0 (x, y) of every patch of `size` level-0 px every `step` level-0 px
    on a slide of level-0 `dimensions` (W, H) (`grid_starts` on each axis), row-major."""
    xs, ys = np.meshgrid(grid_starts(dimensions[0], size, step), grid_starts(dimensions[1], size, step))
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)


def footprint_fraction(mask: np.ndarray, dimensions: tuple[int, int], coords: np.ndarray,
                       size: float) -> np.ndarray:
    """(N,) float32 in [0, 1]: the mean of a boolean `mask` of the whole slide (level-0
    `dimensions` (W, H) scaled down) over each patch's footprint, `size` level-0 px from its
    level-0 (x, y) in `coords` (N, 2). One summed-area table serves every patch; mask pixels
    beyond the slide count as False."""
    width, height = dimensions
    mask_h, mask_w = mask.shape
    table = cv2.integral(np.ascontiguousarray(mask, np.uint8))  # (h + 1, w + 1) int32, 0 on row and column 0

    def cells(starts: np.ndarray, scale: float, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo = np.round(starts * scale).astype(np.int64)
        hi = np.maximum(np.round((starts + size) * scale).astype(np.int64), lo + 1)
        return np.clip(lo, 0, limit), np.clip(hi, 0, limit), hi - lo

    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    x0, x1, nx = cells(coords[:, 0], mask_w / width, mask_w)
    y0, y1, ny = cells(coords[:, 1], mask_h / height, mask_h)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return (inside / (ny * nx)).astype(np.float32)

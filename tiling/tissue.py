"""Tissue detection on a low-resolution thumbnail: Otsu on saturation clipped at
SATURATION_CLIP, then morphology.

Binary morphology runs through OpenCV (`cv2.morphologyEx`: 50-100x scikit-image's on a 40x
slide's 1.5 MP thumbnail), with scikit-image's disk as the structuring element."""
from __future__ import annotations

import cv2
import numpy as np
from skimage import filters, morphology

SATURATION_CLIP = 0.2  # H&E tissue is above, glass far below; pen ink reaches 0.5-1


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1]: (max - min) / max over R, G, B (0 where max is 0), float32."""
    r, g, b = np.moveaxis(np.asarray(rgb), -1, 0)
    top = np.maximum(np.maximum(r, g), b).astype(np.float32)  # pairwise: a reduction over 3 is slow
    bottom = np.minimum(np.minimum(r, g), b).astype(np.float32)
    return np.divide(top - bottom, top, out=np.zeros_like(top), where=top > 0)


def tissue_mask(thumbnail: np.ndarray, min_saturation: float = 0.07,
                radius: int | None = None, min_fraction: float = 2e-4) -> np.ndarray:
    """Boolean (h, w) tissue mask of an (h, w, 3) uint8 RGB thumbnail.

    Tissue = saturation > max(Otsu threshold of min(saturation, SATURATION_CLIP), `min_saturation`).
    The clip makes pen ink (saturation 0.5-1) count as saturated tissue instead of a class of its
    own: unclipped, Otsu splits ink from everything else and a slide with a pen mark loses most
    of its tissue (on the real TCGA crops and thumbnails, 24-83 % of it found, against 92-100 %
    clipped). The floor keeps glass-only slides (whose saturation is noise) empty. Then a
    closing and an opening with a disk of `radius` px (default: longer side / 512, at least 1)
    smooth the outline, and objects and holes smaller than `min_fraction` of the thumbnail's
    area are removed / filled.
    """
    sat = saturation(thumbnail)
    if sat.max() <= min_saturation:
        return np.zeros(sat.shape, dtype=bool)
    mask = sat > max(float(filters.threshold_otsu(np.minimum(sat, SATURATION_CLIP))), min_saturation)
    radius = radius if radius is not None else max(1, max(sat.shape) // 512)
    mask = binary_morphology(binary_morphology(mask, cv2.MORPH_CLOSE, radius), cv2.MORPH_OPEN, radius)
    area = max(1, round(min_fraction * sat.size))
    return morphology.remove_small_holes(without_small_objects(mask, area), max_size=area)


def tissue_box(tissue: np.ndarray, margin: int) -> tuple[slice, slice]:
    """(rows, cols) slices of the bounding box of a non-empty boolean `tissue` mask, grown by
    `margin` px on each side and cut at the image's edges."""
    rows, cols = np.flatnonzero(tissue.any(axis=1)), np.flatnonzero(tissue.any(axis=0))
    return (slice(max(int(rows[0]) - margin, 0), int(rows[-1]) + margin + 1),
            slice(max(int(cols[0]) - margin, 0), int(cols[-1]) + margin + 1))


def binary_morphology(mask: np.ndarray, operation: int, radius: int) -> np.ndarray:
    """A boolean `mask` dilated, eroded, opened or closed (`operation`: cv2.MORPH_DILATE, _ERODE,
    _OPEN, _CLOSE) by `skimage.morphology.disk(radius)`; pixels beyond the edges never count."""
    disk = morphology.disk(radius).astype(np.uint8)
    return cv2.morphologyEx(np.ascontiguousarray(mask, np.uint8), operation, disk).astype(bool)


def without_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """A boolean `mask` without its 4-connected objects of `max_size` px or fewer
    (`skimage.morphology.remove_small_objects`), computed on the box around its pixels
    (`cv2.boundingRect`): the same result, 10x faster on a thumbnail's sparse artefact masks."""
    left, top, width, height = cv2.boundingRect(np.ascontiguousarray(mask, np.uint8))
    kept = np.zeros(mask.shape, bool)
    box = (slice(top, top + height), slice(left, left + width))
    kept[box] = morphology.remove_small_objects(np.asarray(mask[box], bool), max_size=max_size)
    return kept

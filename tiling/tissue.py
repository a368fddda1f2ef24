"""Tissue detection on a low-resolution thumbnail: Otsu on saturation, then morphology."""
from __future__ import annotations

import numpy as np
from skimage import filters, morphology


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1]: (max - min) / max over R, G, B (0 where max is 0)."""
    rgb = rgb.astype(np.float32)
    top, bottom = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.divide(top - bottom, top, out=np.zeros_like(top), where=top > 0)


def tissue_mask(thumbnail: np.ndarray, min_saturation: float = 0.07,
                radius: int | None = None, min_fraction: float = 2e-4) -> np.ndarray:
    """Boolean (h, w) tissue mask of an (h, w, 3) uint8 RGB thumbnail.

    Tissue = saturation > max(Otsu threshold, `min_saturation`): the floor keeps glass-only
    slides (whose saturation is noise) empty. Then a closing and an opening with a disk of
    `radius` px (default: longer side / 512, at least 1) smooth the outline, and objects and
    holes smaller than `min_fraction` of the thumbnail's area are removed / filled.
    """
    sat = saturation(thumbnail)
    if sat.max() <= min_saturation:
        return np.zeros(sat.shape, dtype=bool)
    mask = sat > max(float(filters.threshold_otsu(sat)), min_saturation)
    radius = radius if radius is not None else max(1, max(sat.shape) // 512)
    disk = morphology.disk(radius, decomposition="sequence")
    mask = morphology.opening(morphology.closing(mask, disk), disk)
    area = max(1, round(min_fraction * sat.size))
    mask = morphology.remove_small_objects(mask, max_size=area)
    return morphology.remove_small_holes(mask, max_size=area)

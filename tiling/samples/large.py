"""Writing 40x-size sample slides (e.g. 80,000 x 60,000 px at 0.25 µm/px) in seconds, tile by tile.

A slide is drawn once at low power (`draw_slide`, DRAWING px of level 0 per drawing px), which
fixes where glass, stroma and lesions lie. Each TILE-px tile of each pyramid level is then a
mosaic of three textured squares (`swatches`, drawn at that level's µm/px), chosen per pixel
by the class of the drawing pixel under it. A tile lying wholly on one class repeats that
class's square, JPEG-encoded once per level, so only tiles on a class boundary are composed and
encoded: the cost grows with the tissue outline, not the slide's area, and no level is ever
held in memory whole.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tiling.annotations import Lesion, rasterize_lesions
from tiling.samples.draw import GLASS, LESION, STROMA, draw_slide, swatches
from tiling.samples.tiff import TILE, encode_tile, pyramid_shapes, write_levels
from tiling.tissue import tissue_mask

DRAWING = 64  # level-0 px per drawing px (16 µm at 0.25 µm/px)
COVER = 0.3  # fraction of the slide covered by tissue


def ground_classes(rng: np.random.Generator, shape_hw: tuple[int, int], mpp: float,
                   positive: bool) -> tuple[np.ndarray, list[Lesion]]:
    """The drawing's (ceil(H / DRAWING), ceil(W / DRAWING)) uint8 map of GLASS / STROMA / LESION
    for a level-0 slide of `shape_hw` px at `mpp` µm/px (tissue: `tissue_mask` of the drawing,
    about COVER of the area), and its lesions (if `positive`) in level-0 px."""
    shape = (math.ceil(shape_hw[0] / DRAWING), math.ceil(shape_hw[1] / DRAWING))
    drawing = draw_slide(rng, shape, mpp * DRAWING, DRAWING, positive, ink=False, cover=COVER)
    classes = np.where(tissue_mask(drawing.image), STROMA, GLASS).astype(np.uint8)
    classes[rasterize_lesions(drawing.lesions, shape, DRAWING)] = LESION
    return classes, drawing.lesions


def _cells(start: int, scale: float, limit: int) -> np.ndarray:
    """Drawing-pixel index under each of the TILE level pixels from `start` (scale: drawing px
    per level px), clipped to the drawing (tiles overhanging the level's edge)."""
    return np.minimum(((start + np.arange(TILE) + 0.5) * scale).astype(np.int64), limit - 1)


def level_tiles(classes: np.ndarray, squares: np.ndarray, shape_hw: tuple[int, int],
                downsample: int) -> Iterator[bytes]:
    """JPEG bytes of the row-major tiles of a level of `shape_hw` px, `downsample` level-0 px per
    px: pixel (y, x) shows squares[c][y mod TILE, x mod TILE], c the class under it."""
    scale = downsample / DRAWING
    uniform = [encode_tile(square) for square in squares]
    rows, cols = np.indices((TILE, TILE))
    for y in range(0, shape_hw[0], TILE):
        iy = _cells(y, scale, classes.shape[0])
        for x in range(0, shape_hw[1], TILE):
            ix = _cells(x, scale, classes.shape[1])
            under = classes[iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1]
            first = int(under.flat[0])
            if (under == first).all():
                yield uniform[first]
            else:
                yield encode_tile(squares[classes[np.ix_(iy, ix)], rows, cols])


def write_large_slide(path: Path, rng: np.random.Generator, shape_hw: tuple[int, int], mpp: float,
                      positive: bool, description: str = "") -> list[Lesion]:
    """Write a pyramidal BigTIFF of `shape_hw` level-0 px at `mpp` µm/px (module docstring) and
    return its lesions in level-0 px (none unless `positive`)."""
    classes, lesions = ground_classes(rng, shape_hw, mpp, positive)
    levels = []
    for k, shape in enumerate(pyramid_shapes(*shape_hw)):
        squares = swatches(rng, TILE, mpp * 2 ** k)
        levels.append((level_tiles(classes, squares, shape, 2 ** k), (*shape, 3)))
    write_levels(path, levels, mpp, description, bigtiff=True)
    return lesions

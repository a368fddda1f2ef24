"""Deep-zoom tiles of a slide and of its maps on one grid, for the `serve --reports` viewer.

The grid is OpenSlide's (`openslide.deepzoom.DeepZoomGenerator` with limit_bounds off): level k
of K = ceil(log2(max(W, H))) + 1 levels is the level-0 image (W x H px) scaled by
s_k = 2^-(K-1-k), so it is ceil(W·s_k) x ceil(H·s_k) px; tile (col, row) of level k covers
[col·T - o, (col+1)·T + o) on each axis (o = overlap, only where a neighbour exists), clipped to
the level. One deep-zoom px of level k covers 1/s_k level-0 px. Map tiles sample the map level
whose pixel is nearest to that size: nearest neighbour (patch blocks and labels stay crisp) or,
for the smooth display, bilinear from a level as coarse as the map's cells (`map_tile`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from tiling.errors import SlideError
from tiling.store.ome import Level

TILE_SIZE, OVERLAP = 254, 1


@dataclass(frozen=True)
class DeepZoomGrid:
    """The deep-zoom pyramid of a level-0 image of `width` x `height` px (module docstring)."""

    width: int
    height: int
    tile_size: int = TILE_SIZE
    overlap: int = OVERLAP

    @property
    def level_count(self) -> int:
        return math.ceil(math.log2(max(self.width, self.height, 1))) + 1

    def downsample(self, level: int) -> float:
        """Level-0 px per deep-zoom px of `level`: 2^(K-1-level)."""
        return float(2 ** (self.level_count - 1 - level))

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of `level` in its own px."""
        d = self.downsample(level)
        return math.ceil(self.width / d), math.ceil(self.height / d)

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of tile (col, row) in `level` px, or None when there is no such tile."""
        if not 0 <= level < self.level_count:
            return None
        width, height = self.level_size(level)
        t, o = self.tile_size, self.overlap
        if not (0 <= col < math.ceil(width / t) and 0 <= row < math.ceil(height / t)):
            return None
        return (max(col * t - o, 0), max(row * t - o, 0),
                min((col + 1) * t + o, width), min((row + 1) * t + o, height))


class SlideTiles:
    """JPEG-ready RGB tiles of a slide file through OpenSlide's DeepZoomGenerator (read-only)."""

    def __init__(self, path: Path) -> None:
        try:
            self._slide = openslide.OpenSlide(Path(path))
        except (openslide.OpenSlideError, FileNotFoundError) as exc:
            raise SlideError(f"{path}: the slide cannot be opened for the viewer ({exc}); "
                             "put the slide file back where it was tiled from") from exc
        self._dz = DeepZoomGenerator(self._slide, TILE_SIZE, OVERLAP, limit_bounds=False)
        width, height = self._slide.dimensions
        self.grid = DeepZoomGrid(width, height)

    def tile(self, level: int, col: int, row: int) -> Image.Image | None:
        """The RGB tile, or None when the grid has no such tile."""
        if self.grid.tile_box(level, col, row) is None:
            return None
        return self._dz.get_tile(level, (col, row)).convert("RGB")

    def close(self) -> None:
        self._slide.close()


def nearest_level(levels: list[Level], downsample: float) -> Level:
    """The level whose pixel (in level-0 px) is nearest `downsample` on a log scale."""
    return min(levels, key=lambda lv: abs(math.log(lv.downsample / downsample)))


def _samples(start: int, stop: int, scale: float, downsample: float, size: int,
             smooth: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For tile px start..stop-1 on one axis: the map px below and above each (clipped to
    0..size-1) and the weight w of the upper one. A tile px centre lies at level-0 u = (i + 0.5)·s,
    i.e. at map coordinate f = u / D; nearest: both px floor(f), w = 0; smooth: px floor(f - 0.5)
    and the next, w = frac(f - 0.5) (map px centres at j + 0.5)."""
    f = (np.arange(start, stop) + 0.5) * scale / downsample
    if not smooth:
        low = np.clip(f.astype(np.int64), 0, size - 1)
        return low, low, np.zeros(f.shape)
    low = np.floor(f - 0.5)
    weight = f - 0.5 - low
    return (np.clip(low, 0, size - 1).astype(np.int64), np.clip(low + 1, 0, size - 1).astype(np.int64), weight)


def _sample(chosen: Level, box: tuple[int, int, int, int], scale: float, smooth: bool) -> np.ndarray:
    """`chosen`'s values at the centres of the tile px in `box` (`_samples`): nearest, or bilinear
    over the four nearest map px centres' finite values only (v = Σ w·m / Σ w over finite m; NaN
    where none is finite). Only the sampled map px are read."""
    x0, y0, x1, y1 = box
    height, width = chosen.array.shape[-2:]
    top, bottom, wy = _samples(y0, y1, scale, chosen.downsample, height, smooth)
    left, right, wx = _samples(x0, x1, scale, chosen.downsample, width, smooth)
    row_ids, row_at = np.unique(np.concatenate([top, bottom]), return_inverse=True)
    col_ids, col_at = np.unique(np.concatenate([left, right]), return_inverse=True)
    block = np.asarray(chosen.array.oindex[row_ids, col_ids])
    (t, b), (lf, r) = np.split(row_at, 2), np.split(col_at, 2)
    if not smooth:
        return block[t[:, None], lf[None, :]]
    values = [block[ys[:, None], xs[None, :]] for ys in (t, b) for xs in (lf, r)]
    weights = [a[:, None] * c[None, :] for a in (1 - wy, wy) for c in (1 - wx, wx)]
    total = sum(np.where(np.isfinite(v), w, 0.0) for v, w in zip(values, weights, strict=True))
    mass = sum(np.where(np.isfinite(v), w * np.nan_to_num(v), 0.0) for v, w in zip(values, weights, strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, mass / total, np.nan).astype(np.float32)


def map_tile(levels: list[Level], grid: DeepZoomGrid, level: int, col: int, row: int,
             smooth_px: float = 0.0) -> np.ndarray | None:
    """The map values under tile (col, row) of `level`, one per tile px, or None when the grid has
    no such tile. `levels`: the map's resolution levels, D level-0 px per map px. Nearest
    neighbour from the level nearest the tile's scale (map px = floor((i + 0.5)·s / D): patch
    blocks and labels stay crisp). With `smooth_px` > 0 (level-0 px, e.g. a CAM cell's side) the
    values are bilinear from the level nearest max(s, smooth_px), so the lattice of cells that
    size is interpolated; NaN stays where the nearest-neighbour tile is NaN (the tissue edge does
    not move)."""
    box = grid.tile_box(level, col, row)
    if box is None:
        return None
    scale = grid.downsample(level)
    crisp = _sample(nearest_level(levels, scale), box, scale, smooth=False)
    if smooth_px <= 0:
        return crisp
    blended = _sample(nearest_level(levels, max(scale, smooth_px)), box, scale, smooth=True)
    return np.where(np.isnan(crisp) | np.isnan(blended), crisp, blended)

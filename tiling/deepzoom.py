"""Deep-zoom tiles of a slide and of its maps on one grid, for the `serve --reports` viewer.

The grid is OpenSlide's (`openslide.deepzoom.DeepZoomGenerator` with limit_bounds off): level k
of K = ceil(log2(max(W, H))) + 1 levels is the level-0 image (W x H px) scaled by
s_k = 2^-(K-1-k), so it is ceil(W·s_k) x ceil(H·s_k) px; tile (col, row) of level k covers
[col·T - o, (col+1)·T + o) on each axis (o = overlap, only where a neighbour exists), clipped to
the level. One deep-zoom px of level k covers 1/s_k level-0 px. Map tiles sample the map level
whose pixel is nearest to that size (nearest neighbour, so patch blocks and labels stay crisp).
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


def map_tile(levels: list[Level], grid: DeepZoomGrid, level: int, col: int, row: int) -> np.ndarray | None:
    """The map values under tile (col, row) of `level`, one per tile px (nearest neighbour from
    the map level nearest the tile's scale: map px = floor((i + 0.5)·s / D)), or None when the
    grid has no such tile. `levels`: the map's resolution levels, D level-0 px per map px."""
    box = grid.tile_box(level, col, row)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    scale = grid.downsample(level)
    chosen = nearest_level(levels, scale)
    shape = chosen.array.shape[-2:]
    cols = np.clip(((np.arange(x0, x1) + 0.5) * scale / chosen.downsample).astype(np.int64), 0, shape[1] - 1)
    rows = np.clip(((np.arange(y0, y1) + 0.5) * scale / chosen.downsample).astype(np.int64), 0, shape[0] - 1)
    (row_ids, row_at), (col_ids, col_at) = (np.unique(rows, return_inverse=True), np.unique(cols, return_inverse=True))
    block = np.asarray(chosen.array.oindex[row_ids, col_ids])     # only the sampled map px are read
    return block[row_at[:, None], col_at[None, :]]

"""OpenSlide's pixels of whole-pixel level reads, copied from the slide's decoded TIFF tiles.

OpenSlide composites every pixel of a `read_region` onto its output (20-35 ns/px here, even
from its tile cache: 4-7x a JPEG tile's decode), so tiling at its speed is bound by that, not
by decoding. A tiled, JPEG-compressed, 8-bit RGB TIFF level that OpenSlide shows as one of its
levels (same width and height: generic tiled TIFF, Aperio SVS) can instead be decoded by
tifffile + imagecodecs (the same libjpeg-turbo decode) and copied. `TiffTiles.read` does that
for regions starting on whole level pixels; the caller compares the top-left CHECK_SIDE px of
its first read of each level with OpenSlide's and keeps reading through OpenSlide where they
differ (`Slide.read_region`).
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import tifffile

CHECK_SIDE = 256  # px: the top-left corner of a level's first read that is compared with OpenSlide
CACHE_TILES = 256  # decoded tiles kept (256-px RGB: 48 MiB); a row of patches reuses the last row's


def _usable(page: tifffile.TiffPage) -> bool:
    """Tiled, JPEG, 8-bit RGB (or YCbCr-coded) pixels interleaved, every tile present."""
    return (page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG and page.samplesperpixel == 3
            and page.bitspersample == 8 and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
            and page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
            and all(page.databytecounts))


class TiffTiles:
    """The usable TIFF pages (`_usable`) of a slide file by OpenSlide level (matched by size);
    none when tifffile cannot read the file. `agrees`: level -> whether its first read equalled
    OpenSlide's (set by the caller; unset = not compared yet)."""

    def __init__(self, path: Path, level_dimensions: tuple[tuple[int, int], ...],
                 level_downsamples: tuple[float, ...]) -> None:
        self.downsamples = level_downsamples
        self.agrees: dict[int, bool] = {}
        self.pages: dict[int, tifffile.TiffPage] = {}
        self._fd = -1
        self._tif: tifffile.TiffFile | None = None
        self._tile = lru_cache(CACHE_TILES)(self._decode)
        try:
            self._tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, OSError, ValueError):
            return
        by_size = {(p.imagewidth, p.imagelength): p for p in self._tif.pages
                   if isinstance(p, tifffile.TiffPage) and _usable(p)}
        self.pages = {level: by_size[dims] for level, dims in enumerate(level_dimensions) if dims in by_size}
        if self.pages:
            self._fd = os.open(path, os.O_RDONLY)

    def _decode(self, level: int, index: int) -> np.ndarray:
        """Tile `index` (row-major) of `level`'s page: (tile h, tile w, 3) uint8. Raises
        ValueError for a file cut short, RuntimeError (imagecodecs) for data it cannot decode."""
        page = self.pages[level]
        data = os.pread(self._fd, page.databytecounts[index], page.dataoffsets[index])
        if len(data) != page.databytecounts[index]:
            raise ValueError(f"tile {index} of level {level} lies past the end of the file")
        segment, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        return np.asarray(segment).reshape(shape[-3:])

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray | None:
        """(h, w, 3) uint8 of `size` (w, h) px of `level` from level-0 `location`, white outside
        the level; None unless the level has a usable page and `location` is on whole level
        pixels (a multiple of its downsample: OpenSlide paints others with sub-pixel offsets),
        and None where a tile cannot be read (OpenSlide then says what is wrong)."""
        page, downsample = self.pages.get(level), self.downsamples[level]
        if page is None or location[0] % downsample or location[1] % downsample:
            return None
        x0, y0 = round(location[0] / downsample), round(location[1] / downsample)
        (w, h), (tw, th) = size, (page.tilewidth, page.tilelength)
        out = np.full((h, w, 3), 255, np.uint8)
        x1, y1 = min(x0 + w, page.imagewidth), min(y0 + h, page.imagelength)
        columns = math.ceil(page.imagewidth / tw)
        for ty in range(max(y0, 0) // th, math.ceil(y1 / th)):
            for tx in range(max(x0, 0) // tw, math.ceil(x1 / tw)):
                left, top = max(x0, tx * tw), max(y0, ty * th)
                right, bottom = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
                try:
                    tile = self._tile(level, ty * columns + tx)
                except (RuntimeError, ValueError):
                    return None
                out[top - y0:bottom - y0, left - x0:right - x0] = \
                    tile[top - ty * th:bottom - ty * th, left - tx * tw:right - tx * tw]
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tif is not None:
            self._tif.close()

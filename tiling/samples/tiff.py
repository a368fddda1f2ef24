"""Writing pyramidal tiled JPEG TIFFs that OpenSlide reads as "generic tiled TIFF".

Each pyramid level is its own top-level IFD (level 0 first, then halvings, marked as reduced
images), 256 x 256 JPEG tiles (RGB in, stored by tifffile as YCbCr 4:2:0), and the resolution
tags in pixels per centimetre (10^4 / mpp), from which OpenSlide reports openslide.mpp-x/-y.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

TILE = 256
JPEG_QUALITY = 85
MIN_LEVELS = 3
SMALLEST_SIDE = 1024  # keep halving while the longer side exceeds this


def upsampled_tiles(image: np.ndarray, tile: int = TILE) -> Iterator[np.ndarray]:
    """Row-major `tile`-px tiles of `image` upsampled 2x (bilinear), without the whole upsample
    in memory: each tile is resized from its source block plus a 1 px margin, so tiles join
    without seams; tiles at the right and bottom edges are cropped to the image."""
    height, width = image.shape[:2]
    half = tile // 2
    for sy in range(0, height, half):
        for sx in range(0, width, half):
            y0, x0 = max(sy - 1, 0), max(sx - 1, 0)
            y1, x1 = min(sy + half + 1, height), min(sx + half + 1, width)
            block = Image.fromarray(image[y0:y1, x0:x1]).resize((2 * (x1 - x0), 2 * (y1 - y0)),
                                                                  Image.Resampling.BILINEAR)
            top, left = 2 * (sy - y0), 2 * (sx - x0)
            yield np.asarray(block)[top:top + tile, left:left + tile]


def _levels(image: np.ndarray, upsample_first: bool) -> Iterator[tuple[Any, tuple[int, int, int]]]:
    """(data, shape) of each level: optionally the 2x upsample of `image` as tiles, then `image`,
    then 2x box-filtered halvings while the longer side exceeds SMALLEST_SIDE px, and at least
    MIN_LEVELS levels in all."""
    height, width = image.shape[:2]
    count = 0
    if upsample_first:
        yield upsampled_tiles(image), (2 * height, 2 * width, 3)
        count += 1
    picture = Image.fromarray(image)
    while True:
        yield (level := np.asarray(picture)), level.shape
        count += 1
        if (count >= MIN_LEVELS and max(picture.size) <= SMALLEST_SIDE) or min(picture.size) < 2:
            return
        picture = picture.reduce(2)


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(height, width) of each level of a pyramid whose level 0 is `height` x `width`: halvings
    (rounded up) while the longer side exceeds SMALLEST_SIDE px, and at least MIN_LEVELS levels."""
    shapes = [(height, width)]
    while (len(shapes) < MIN_LEVELS or max(shapes[-1]) > SMALLEST_SIDE) and min(shapes[-1]) >= 2:
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    return shapes


def encode_tile(tile: np.ndarray) -> bytes:
    """One TILE x TILE RGB uint8 tile as the JPEG bytes `write_levels` stores for it (YCbCr 4:2:0,
    quality JPEG_QUALITY), so a generator may hand over tiles it encoded once and repeats."""
    return bytes(imagecodecs.jpeg8_encode(tile, level=JPEG_QUALITY, colorspace="RGB",
                                          outcolorspace="YCBCR", subsampling=(2, 2)))


def write_levels(path: Path, levels: Iterable[tuple[Any, tuple[int, int, int]]], mpp: float | None,
                 description: str = "", bigtiff: bool = False) -> None:
    """Write pyramid levels given as (data, (h, w, 3)), level 0 first, one IFD each, as TILE-px
    JPEG tiles. data: an (h, w, 3) uint8 array, or an iterator of row-major tiles (arrays, or
    `encode_tile` bytes). mpp: level-0 µm/px, written as XResolution = YResolution =
    10^4 / (mpp * 2^level) px/cm; None writes no resolution (a slide that needs --slide-mpp);
    bigtiff: 64-bit offsets, for files that may pass 4 GiB."""
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for k, (data, shape) in enumerate(levels):
            resolution: dict[str, Any] = {} if mpp is None else {
                "resolution": (1e4 / (mpp * 2 ** k),) * 2, "resolutionunit": "CENTIMETER"}
            tif.write(data, shape=shape, dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                      compression="jpeg", compressionargs={"level": JPEG_QUALITY},
                      subfiletype=0 if k == 0 else 1, description=description if k == 0 else None,
                      metadata=None, software=False, **resolution)


def write_pyramid_tiff(path: Path, image: np.ndarray, mpp: float | None, upsample_first: bool = False,
                       description: str = "") -> None:
    """Write an RGB uint8 `image` as a pyramid (`_levels`) with `write_levels`.

    upsample_first: level 0 is `image` upsampled 2x and `image` is level 1.
    """
    write_levels(path, _levels(image, upsample_first), mpp, description)

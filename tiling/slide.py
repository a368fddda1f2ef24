"""Whole-slide images behind one interface, addressed in level-0 pixels and microns per pixel.

`Slide` reads a file with OpenSlide (openslide-python + the openslide-bin wheel); `ArraySlide`
lets an RGB array pose as a one-level slide. Both return RGB uint8 arrays, transparent pixels
composited on white.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
from PIL import Image

from tiling.errors import SlideError
from tiling.resolution import resolve_mpp
from tiling.tiff_tiles import CHECK_SIDE, TiffTiles

log = logging.getLogger(__name__)

# a level counts as "at or finer than" a target mpp within this relative tolerance
MPP_RTOL = 1e-3


def resize_rgb(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize an (h, w, 3) uint8 image to `size_wh` with antialiased bilinear interpolation."""
    w, h = size_wh
    if image.shape[1] == w and image.shape[0] == h:
        return image
    # packed through bytes both ways: half the cost of fromarray / np.array, the tile stage's per-patch cost
    source = Image.frombuffer("RGB", (image.shape[1], image.shape[0]), np.ascontiguousarray(image), "raw", "RGB", 0, 1)
    resized = source.resize((w, h), Image.Resampling.BILINEAR)
    return np.frombuffer(bytearray(resized.tobytes()), np.uint8).reshape(h, w, 3)


def shrink_rgb(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Shrink an (h, w, 3) uint8 image to `size_wh` by area averaging (cv2.INTER_AREA: each output
    pixel the mean of the input pixels it covers)."""
    if image.shape[1] == size_wh[0] and image.shape[0] == size_wh[1]:
        return image
    return cv2.resize(image, size_wh, interpolation=cv2.INTER_AREA)


def _band_bytes(image: Image.Image, rawmode: str) -> np.ndarray:
    """The pixels of `image` packed as `rawmode` ("RGB", "A"): (h, w, len(rawmode)) uint8, writable."""
    data = bytearray(image.tobytes("raw", rawmode))
    return np.frombuffer(data, np.uint8).reshape(image.height, image.width, len(rawmode))


def on_white(image: Image.Image) -> np.ndarray:
    """(h, w, 3) uint8 RGB of a PIL image, transparent pixels composited on white. RGBA is packed
    straight to RGB bytes (no intermediate image: the tile stage's per-patch cost)."""
    if image.mode != "RGBA":
        return np.array(image.convert("RGB"))
    if _band_bytes(image, "A").min(initial=255) < 255:
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    return _band_bytes(image, "RGB")


def rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB of an (h, w, 4) uint8 straight-alpha RGBA array composited on white."""
    return on_white(Image.fromarray(np.ascontiguousarray(rgba)))


def read_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """`size` (w, h) times `scale`, rounded, at least 1 px each."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


class BaseSlide:
    """What every slide offers; subclasses provide `read_region` and the level geometry."""

    path: Path | None
    mpp: float
    mpp_source: str  # where `mpp` came from: "file", "manifest", "flag" (or "given" for arrays)
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB of `size` (w, h) level pixels whose top-left is level-0 `location`."""
        raise NotImplementedError

    def best_level(self, mpp: float) -> int:
        """The coarsest level whose mpp (= slide mpp * downsample) is at or finer than `mpp`; 0 if none."""
        fine = [i for i, d in enumerate(self.level_downsamples) if self.mpp * d <= mpp * (1 + MPP_RTOL)]
        return max(fine, key=lambda i: self.level_downsamples[i]) if fine else 0

    def read_at_mpp(self, location: tuple[int, int], size: tuple[int, int], mpp: float,
                    resize: Callable[[np.ndarray, tuple[int, int]], np.ndarray] = resize_rgb) -> np.ndarray:
        """(h, w, 3) uint8 of `size` (w, h) pixels at `mpp` µm/px, top-left at level-0 `location`.

        Reads the best level (`best_level`) then resizes with `resize`: the level region is size *
        mpp / (slide mpp * downsample) pixels, rounded.
        """
        level = self.best_level(mpp)
        w, h = read_size(size, mpp / (self.mpp * self.level_downsamples[level]))
        return resize(self.read_region(location, level, (w, h)), size)

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole slide as (h, w, 3) uint8, its longer side `max_side` pixels (never upscaled),
        area-averaged from the best level (`shrink_rgb`)."""
        width, height = self.dimensions
        scale = min(1.0, max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return self.read_at_mpp((0, 0), size, self.mpp * width / size[0], shrink_rgb)

    def close(self) -> None:
        """Release the file; the slide cannot be read afterwards."""

    def __enter__(self) -> BaseSlide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_readable(path: Path) -> None:
    """SlideError naming `path` unless it is a file this process may read."""
    if path.is_dir():
        raise SlideError(f"{path}: is a folder, not a slide file; give the slide file itself "
                         "(for MIRAX, the .mrxs file beside its folder)")
    if not path.exists():
        raise SlideError(f"{path}: no such slide file; check the path")
    if not os.access(path, os.R_OK):
        raise SlideError(f"{path}: permission denied; give this user read access to the file")


def _read_error(path: Path | None, doing: str, exc: Exception) -> SlideError:
    """The SlideError for an OpenSlideError while `doing`: an unsupported codec or damaged data."""
    if "unsupported" in str(exc).lower():
        return SlideError(f"{path}: {doing} failed: OpenSlide does not support its image compression "
                          f"({exc}); convert the slide to a pyramidal tiled JPEG TIFF (e.g. `vips "
                          "tiffsave SLIDE out.tiff --tile --pyramid --compression jpeg`)")
    return SlideError(f"{path}: {doing} failed ({exc}); the file may be truncated or corrupt: "
                      "copy it again")


class Slide(BaseSlide):
    """A slide file opened read-only with OpenSlide. Pickles by path (reopened where unpickled).

    mpp: level-0 µm/px, `mpp` when given (declared by `mpp_source`: "manifest" or "flag"), else
    the file's plausible recorded value (`tiling.resolution.resolve_mpp`); mpp_source: where the
    value in use came from ("file", "manifest" or "flag").
    """

    def __init__(self, path: Path, mpp: float | None = None, mpp_source: str = "flag") -> None:
        self.path = Path(path)
        self._given = (mpp, mpp_source)
        check_readable(self.path)
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(f"{self.path}: OpenSlide cannot read it ({exc}); check that it is a "
                             "whole-slide image in a format OpenSlide supports and that it is complete "
                             "(copy a truncated file again; convert other images to a pyramidal tiled "
                             "TIFF)") from exc
        except openslide.OpenSlideError as exc:
            raise _read_error(self.path, "opening it", exc) from exc
        self.level_dimensions = tuple(self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        try:
            resolution = resolve_mpp(str(self.path), self._osr.properties, mpp, mpp_source)
        except SlideError:
            self._osr.close()
            raise
        self.mpp, self.mpp_source = resolution.mpp, resolution.source
        self._tiles = TiffTiles(self.path, self.level_dimensions, self.level_downsamples)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """OpenSlide's pixels; copied from the decoded TIFF tiles (`tiling.tiff_tiles`) where they
        can be, once the top-left CHECK_SIDE px of the level's first such read equalled OpenSlide's."""
        agrees = self._tiles.agrees.get(level)
        tiles = self._tiles.read(location, level, size) if agrees is not False else None
        if tiles is not None and agrees is None:
            corner = (min(size[0], CHECK_SIDE), min(size[1], CHECK_SIDE))
            agrees = np.array_equal(tiles[:corner[1], :corner[0]], self._openslide_read(location, level, corner))
            self._tiles.agrees[level] = agrees
            if not agrees:
                log.info("%s: level %d decoded from the TIFF differs from OpenSlide's; reading it through "
                         "OpenSlide", self.path, level)
        return tiles if tiles is not None and agrees is not False else self._openslide_read(location, level, size)

    def _openslide_read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            region = self._osr.read_region((int(location[0]), int(location[1])), level,
                                           (int(size[0]), int(size[1])))
        except openslide.OpenSlideError as exc:
            raise _read_error(self.path, f"reading level {level} at {tuple(location)}", exc) from exc
        return on_white(region)

    def close(self) -> None:
        self._tiles.close()
        self._osr.close()

    def __reduce__(self) -> tuple[type, tuple[Path | None, float | None, str]]:
        return (Slide, (self.path, *self._given))


class ArraySlide(BaseSlide):
    """An (H, W, 3) uint8 RGB array posing as a one-level slide of `mpp` µm/px."""

    def __init__(self, array: np.ndarray, mpp: float) -> None:
        array = np.asarray(array)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise SlideError(f"<array>: expected an (H, W, 3) uint8 RGB image, got {array.shape} "
                             f"{array.dtype}; convert it first")
        if not (math.isfinite(mpp) and mpp > 0):
            raise SlideError(f"<array>: resolution {mpp} µm/px is not a positive number; pass the image's mpp")
        self.path = None
        self.array = array
        self.mpp = float(mpp)
        self.mpp_source = "given"
        self.level_dimensions = ((array.shape[1], array.shape[0]),)
        self.level_downsamples = (1.0,)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if level != 0:
            raise SlideError(f"<array>: has one level, asked for level {level}")
        (x, y), (w, h) = location, size
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        height, width = self.array.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self.array[y0:y1, x0:x1]
        return out


def open_slide(path: Path, mpp: float | None = None, mpp_source: str = "flag") -> Slide:
    """Open a slide file read-only; `mpp` (level-0 µm/px, declared by `mpp_source`: "manifest" or
    "flag") overrides the file's resolution (`tiling.resolution`).

    Raises SlideError naming the file when OpenSlide cannot read it or no plausible resolution is
    known.
    """
    return Slide(path, mpp, mpp_source)

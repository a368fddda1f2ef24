"""Rebuild the reference masks of the real images (README.md here): uint8 PNG labels 0 glass,
1 tissue, 2 pen ink (on tissue or glass), 3 tissue fold, one per image at its own size.

Each mask comes from colour rules in RGB / HSV, none of them the detectors' (tiling/artefacts.py
reads Lab and stains), with per-image settings and hand-drawn polygons (x, y in image px) in
SPECS, and was checked on overlays. From the project root:

    .venv/bin/python tests/reference_masks/make_masks.py [OVERLAY_DIR]

writes the masks beside this file and, with OVERLAY_DIR, an overlay per image (outlines: tissue
blue, ink yellow, fold magenta; beside them the labels filled).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

HERE = Path(__file__).parent
DATA = HERE.parents[2] / "shared" / "data"
GLASS, TISSUE, INK, FOLD = 0, 1, 2, 3
Points = list[tuple[int, int]]


def rgb_of(path: Path) -> np.ndarray:
    """An image as (h, w, 3) uint8 RGB, transparent pixels on white."""
    image = np.asarray(Image.open(path).convert("RGBA")).astype(np.float32)
    alpha = image[..., 3:] / 255
    return np.round(image[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)


def cmu1_thumbnail(path: Path, side: int = 512) -> np.ndarray:
    """CMU-1's level 0 area-averaged to `side` px on its longer side: the tile stage's thumbnail
    of it at its default settings (16 px per patch side, at least 512 px)."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        width, height = slide.dimensions
        rgba = np.asarray(slide.read_region((0, 0), 0, (width, height))).astype(np.float32)
    rgb = rgba[..., :3] * rgba[..., 3:] / 255 + 255 * (1 - rgba[..., 3:] / 255)
    size = (round(width * side / max(width, height)), round(height * side / max(width, height)))
    return cv2.resize(np.round(rgb).astype(np.uint8), size, interpolation=cv2.INTER_AREA)


def hsv_of(rgb: np.ndarray, sigma: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV hue in degrees (0-360), saturation and value in 0-1, of `rgb` smoothed over `sigma` px."""
    rgb = cv2.GaussianBlur(rgb, (0, 0), sigma) if sigma else rgb
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    return hsv[..., 0] * 360 / 256, hsv[..., 1] / 255, hsv[..., 2] / 255


def polygons(shape: tuple[int, ...], each: list[Points]) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.array(points, np.int32) for points in each], 1)
    return mask.astype(bool)


def disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def solid(mask: np.ndarray, close: int, least: int, holes: int | None) -> np.ndarray:
    """A rule's pixels closed by `close` px and opened by 1 px, holes up to `holes` px filled
    (None: all, 0: none), objects under `least` px dropped."""
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk(close)) if close else mask.astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, disk(1)).astype(bool)
    if holes is None:
        mask = ndimage.binary_fill_holes(mask)
    elif holes:
        _, hole, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
        mask |= np.isin(hole, np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= holes)) & ~mask
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= least)
    return np.isin(labels, keep[keep > 0])


def stained(rgb: np.ndarray) -> np.ndarray:
    """Tissue: HSV saturation above 0.1, or min(R, G, B) 40 below the glass (the 99th percentile
    of the brightest channel), smoothed by 1 px."""
    _, sat, _ = hsv_of(rgb)
    found = (sat > 0.1) | (rgb.min(axis=2) < np.percentile(rgb.max(axis=2), 99) - 40)
    return cv2.GaussianBlur(found.astype(np.float32), (0, 0), 1.0) > 0.5


def green_or_blue(margin: float) -> Callable[[np.ndarray], np.ndarray]:
    """G above R by `margin` (smoothed over 2 px): H&E keeps R above G, pink and purple alike;
    green and blue marker do not."""
    def rule(rgb: np.ndarray) -> np.ndarray:
        r, g = (cv2.GaussianBlur(rgb[..., i].astype(np.float32), (0, 0), 2.0) for i in range(2))
        return g - r > margin
    return rule


def grey(saturation: float, value: float) -> Callable[[np.ndarray], np.ndarray]:
    """Dulled and darkened (smoothed over 2 px): dense ink over tissue loses the stain's hue."""
    def rule(rgb: np.ndarray) -> np.ndarray:
        _, sat, val = hsv_of(rgb, 2.0)
        return (sat < saturation) & (val < value)
    return rule


def red(least: float, start: float = 340) -> Callable[[np.ndarray], np.ndarray]:
    """HSV hue from `start` through red to 20° (eosin: 300..335°), saturation above `least`."""
    def rule(rgb: np.ndarray) -> np.ndarray:
        hue, sat, _ = hsv_of(rgb, 1.0)
        return ((hue >= start) | (hue <= 20)) & (sat > least)
    return rule


def dark(below: float) -> Callable[[np.ndarray], np.ndarray]:
    """HSV value below `below` (smoothed over 1 px)."""
    return lambda rgb: hsv_of(rgb, 1.0)[2] < below


def anyof(*rules: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rgb: np.any([rule(rgb) for rule in rules], axis=0)


@dataclass
class Spec:
    """How one image's mask is made: its ink rule, cut to `ink_within` polygons (if any), closed
    by `ink_close` px and holes filled (unless not `ink_fill`: rings stay rings); `ink_also`
    polygons of tissue added to the ink by hand; folds: `fold` polygons cut to HSV value below
    `fold_below`; `glass` polygons forced to glass."""

    ink: Callable[[np.ndarray], np.ndarray] | None = None
    ink_within: list[Points] = field(default_factory=list)
    ink_close: int = 3
    ink_fill: bool = True
    ink_also: list[Points] = field(default_factory=list)
    fold: list[Points] = field(default_factory=list)
    fold_below: float = 0.45
    glass: list[Points] = field(default_factory=list)
    read: Callable[[Path], np.ndarray] = rgb_of
    file: str = ""


SPECS = {
    "tcga-green-pen.png": Spec(
        ink=anyof(green_or_blue(3), grey(0.3, 0.55)), ink_close=6,
        ink_within=[[(300, 0), (500, 0), (420, 250), (360, 400), (350, 631), (140, 631), (140, 380), (230, 250)]],
        fold=[[(114, 452), (132, 452), (124, 540), (117, 592), (102, 592), (108, 540)]]),  # the knife streak
    "medium-nuclei-score-green-pen-level1.png": Spec(
        ink=green_or_blue(3), ink_close=6, ink_also=[[(170, 0), (250, 0), (250, 40), (170, 40)]]),
    "tcga-red-pen.png": Spec(ink=red(0.2), fold=[[(392, 28), (471, 24), (471, 42), (430, 53), (392, 53)]]),
    "high-nuclei-score-red-pen-level1.png": Spec(
        ink=red(0.3), fold=[[(0, 225), (150, 250), (300, 285), (420, 320), (512, 345), (512, 400), (420, 370),
                             (300, 330), (150, 290), (0, 275)]]),
    "very-low-nuclei-score-red-pen-level1.png": Spec(ink=red(0.2)),
    "no-tissue-green-pen.png": Spec(ink=green_or_blue(10)),
    "no-tissue-red-pen.png": Spec(ink=stained),
    "wsi-blue-pen.png": Spec(ink=green_or_blue(8), ink_close=1),
    "tcga-lung-rgb.png": Spec(),
    "diagnostic-slide-thumb-rgb.png": Spec(
        ink=anyof(green_or_blue(3), red(0.35, 335), dark(0.55)), ink_close=1, ink_fill=False,
        glass=[[(0, 508), (468, 508), (468, 525), (0, 525)]]),  # the scanner's shadow along the bottom
    "CMU-1-Small-Region.png": Spec(read=cmu1_thumbnail, file="CMU-1-Small-Region.svs"),
}


def build(rgb: np.ndarray, spec: Spec) -> np.ndarray:
    """The labels of one image."""
    area = rgb.shape[0] * rgb.shape[1]
    tissue = solid(stained(rgb), 2, max(16, area // 5000), area // 1000) & ~polygons(rgb.shape, spec.glass)
    labels = np.where(tissue, TISSUE, GLASS).astype(np.uint8)
    if spec.fold:
        labels[solid(polygons(rgb.shape, spec.fold) & dark(spec.fold_below)(rgb), 4, 30, None)] = FOLD
    if spec.ink is not None:
        ink = spec.ink(rgb) & (polygons(rgb.shape, spec.ink_within) if spec.ink_within else True)
        labels[solid(ink, spec.ink_close, 30, None if spec.ink_fill else 0)] = INK
        labels[polygons(rgb.shape, spec.ink_also) & (labels == TISSUE)] = INK
    return labels


def overlay(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Outlines of each label on the image, beside the labels filled."""
    out = rgb.astype(np.float32)
    for kind, colour in ((GLASS, (0, 0, 0)), (TISSUE, (0, 160, 255)), (INK, (255, 255, 0)), (FOLD, (255, 0, 255))):
        region = (labels == kind).astype(np.uint8)
        out[(region > cv2.erode(region, np.ones((3, 3), np.uint8)))] = colour
    filled = out.copy()
    for kind, colour in ((INK, (255, 255, 0)), (FOLD, (255, 0, 255)), (GLASS, (0, 0, 0))):
        filled[labels == kind] = 0.4 * filled[labels == kind] + 0.6 * np.float32(colour)
    return np.concatenate([out, filled], axis=1).astype(np.uint8)


def main(overlays: Path | None) -> None:
    for name, spec in SPECS.items():
        rgb = spec.read(DATA / (spec.file or f"real-artefacts/{name}"))
        labels = build(rgb, spec)
        Image.fromarray(labels).save(HERE / f"{Path(name).stem}.png")
        print(name, {kind: round(float((labels == kind).mean()), 4) for kind in (GLASS, TISSUE, INK, FOLD)})
        if overlays is not None:
            Image.fromarray(overlay(rgb, labels)).save(overlays / f"ref-{Path(name).stem}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)

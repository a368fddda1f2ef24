"""Drawing one synthetic H&E slide at low power with a Beer-Lambert stain model.

Each pixel's optical density is OD = glass + h * HEMATOXYLIN + e * EOSIN + ink * INK and its
colour 255 * exp(-OD) per channel (hematoxylin vector: Ruifrok & Johnston 2001; eosin made
pinker than theirs). Tissue is pink stroma (eosin with fibre texture, sparse nuclei); lesions
are dense dark-purple nuclei; a tissue fold doubles the stain (two layers); pen ink adds its
own density. Lengths are in µm unless named px.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from tiling.annotations import Lesion, rasterize_lesions

HEMATOXYLIN = (0.650, 0.704, 0.286)
EOSIN = (0.15, 0.84, 0.50)
INKS = ((0.95, 0.50, 0.08), (0.85, 0.12, 0.70), (0.90, 0.85, 0.80))  # blue, green, black
GLASS_OD = 0.03
TISSUE_COVER = 0.55  # fraction of the slide covered by tissue
INK_WIDTH_UM = (25.0, 45.0)  # a pen stroke's width, µm: a marker line
LESION_RADIUS_UM = (200.0, 330.0)
NUCLEUS_SIGMA_UM = 1.5
FILTER_TRUNCATE = 2.5
BAND = 128  # rows composed at a time, so temporaries stay in cache
GLASS, STROMA, LESION = 0, 1, 2  # the ground classes of `swatches`


@dataclass
class Drawing:
    """A drawn slide: image (H, W, 3) uint8 RGB, its lesions in level-0 px, and the truth
    masks (H, W) bool of its pen ink and its tissue fold (where the fold lies on tissue)."""

    image: np.ndarray
    lesions: list[Lesion]
    ink: np.ndarray
    fold: np.ndarray


def _upsample(field: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float32 field to `shape_hw`."""
    image = Image.fromarray(field.astype(np.float32))
    return np.asarray(image.resize((shape_hw[1], shape_hw[0]), Image.Resampling.BICUBIC))


def _smooth_noise(rng: np.random.Generator, shape_hw: tuple[int, int], cell: float) -> np.ndarray:
    """Unit-variance-ish noise that varies over `cell` px: white noise on a coarse grid, upsampled."""
    coarse = rng.standard_normal((math.ceil(shape_hw[0] / cell) + 1, math.ceil(shape_hw[1] / cell) + 1))
    return _upsample(coarse, shape_hw)


def _filtered_noise(rng: np.random.Generator, shape_hw: tuple[int, int],
                    sigma: tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered uniform noise rescaled to unit variance (a filter of std (sy, sx) scales
    the variance of white noise by 1 / (4 pi sy sx); uniform noise on [-0.5, 0.5) has variance 1/12)."""
    noise = rng.random(shape_hw, dtype=np.float32)
    noise -= 0.5
    gaussian_filter(noise, sigma, output=noise, truncate=FILTER_TRUNCATE)
    noise *= math.sqrt(12 * 4 * math.pi * sigma[0] * sigma[1])
    return noise


def _tissue_field(rng: np.random.Generator, shape_hw: tuple[int, int]) -> np.ndarray:
    """A coarse field (one cell per 16 px) whose top TISSUE_COVER quantile is tissue: blobs plus
    noise at two scales (the finer one makes ragged edges), tapered to zero near the slide's edges."""
    h, w = (max(8, math.ceil(s / 16)) for s in shape_hw)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros((h, w), dtype=np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        sy, sx = rng.uniform(0.12, 0.22) * h, rng.uniform(0.12, 0.22) * w
        field += np.exp(-((y - cy) ** 2 / (2 * sy ** 2) + (x - cx) ** 2 / (2 * sx ** 2)))
    field += 0.25 * _smooth_noise(rng, (h, w), 6) + 0.03 * _smooth_noise(rng, (h, w), 1.5)
    edge = np.minimum(np.minimum(y, h - 1 - y) / h, np.minimum(x, w - 1 - x) / w)
    return field * np.clip(edge / 0.08, 0, 1)


def _interior_point(rng: np.random.Generator, field: np.ndarray, scale: float) -> np.ndarray:
    """A random point (x, y) in full-resolution px where the coarse `field` is in its top 15%."""
    rows, cols = np.nonzero(field > np.quantile(field, 0.85))
    i = rng.integers(len(rows))
    return (np.array([cols[i], rows[i]]) + rng.uniform(0, 1, 2)) * scale


def _star(rng: np.random.Generator, centre: np.ndarray, radius: float, vertices: int) -> np.ndarray:
    """A smooth star-shaped ring: r(t) = radius * (1 + sum_k a_k cos(k t + phi_k)), k = 2..4."""
    t = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    r = radius * (1 + sum(rng.uniform(0, 0.12) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
                          for k in range(2, 5)))
    return centre + np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _lesions(rng: np.random.Generator, field: np.ndarray, px_um: float, downsample: float,
             shape_hw: tuple[int, int], scale: float = 1.0) -> list[Lesion]:
    """1-3 lesions inside tissue, radius LESION_RADIUS_UM x `scale`, level-0 vertices rounded to
    0.01 px; the first has a hole."""
    lesions = []
    for k in range(int(rng.integers(1, 4))):
        radius = min(rng.uniform(*LESION_RADIUS_UM) * scale / px_um, 0.15 * min(shape_hw))
        centre = _interior_point(rng, field, 16.0)
        holes = []
        if k == 0:
            offset = 0.3 * radius * np.array([math.cos(a := rng.uniform(0, 2 * np.pi)), math.sin(a)])
            holes = [np.round(_star(rng, centre + offset, 0.25 * radius, 16) * downsample, 2)]
        lesions.append(Lesion(np.round(_star(rng, centre, radius, 40) * downsample, 2), holes,
                              f"lesion {k + 1}", "Tumor"))
    return lesions


def _stroke(rng: np.random.Generator, field: np.ndarray, shape_hw: tuple[int, int], width: float) -> np.ndarray:
    """Mask of a curved band `width` px wide between two tissue points, drawn as one quad per segment."""
    a, b = _interior_point(rng, field, 16.0), _interior_point(rng, field, 16.0)
    t = np.linspace(0, 1, 16)[:, None]
    normal = np.array([a[1] - b[1], b[0] - a[0]])
    line = a + (b - a) * t + rng.uniform(-0.3, 0.3) * normal * np.sin(np.pi * t)
    tangent = np.gradient(line, axis=0)
    side = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    side *= width / 2 / np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-9)
    quads = [Lesion(np.array([line[i] + side[i], line[i + 1] + side[i + 1],
                              line[i + 1] - side[i + 1], line[i] - side[i]]))
             for i in range(len(line) - 1)]
    return rasterize_lesions(quads, shape_hw, 1.0)


def draw_slide(rng: np.random.Generator, shape_hw: tuple[int, int], px_um: float,
               downsample: float, positive: bool, ink: bool, cover: float = TISSUE_COVER,
               lesion_contrast: float = 1.0, ink_width_um: tuple[float, float] = INK_WIDTH_UM) -> Drawing:
    """Draw a slide of `shape_hw` px at `px_um` µm/px, with lesions if `positive` (returned in
    level-0 px = drawing px * `downsample`), a pen stroke if `ink` (its width drawn from
    `ink_width_um`, µm: a marker line by default, a filled band when wide) and about `cover` of its
    area tissue. The ink is drawn last, so the same `rng` state gives the same slide with or without it.
    `lesion_contrast` in (0, 1] scales how far a lesion's stain departs from the stroma's (1: dense
    dark nuclei; near 0: hardly told apart) and its radius by (1 + contrast) / 2: subtle lesions are
    also smaller."""
    coarse = _tissue_field(rng, shape_hw)
    tissue = _upsample(coarse, shape_hw) > np.quantile(coarse, 1 - cover)
    scale = (1 + lesion_contrast) / 2
    lesions = _lesions(rng, coarse, px_um, downsample, shape_hw, scale) if positive else []
    lesion = rasterize_lesions(lesions, shape_hw, downsample)
    tissue |= lesion
    lesion = lesion.astype(np.float32) * np.float32(lesion_contrast)

    sigma = NUCLEUS_SIGMA_UM / px_um
    grain = _filtered_noise(rng, shape_hw, (sigma, sigma))
    fibre_sigma = (sigma, 4 * sigma) if rng.uniform() < 0.5 else (4 * sigma, sigma)
    fibres = _filtered_noise(rng, shape_hw, fibre_sigma)
    stain = tissue * (1 + 0.12 * _smooth_noise(rng, shape_hw, 256 / px_um))
    fold = _stroke(rng, coarse, shape_hw, rng.uniform(80, 150) / px_um)
    stain[fold] *= 1.9
    pen = np.zeros(shape_hw, dtype=np.float32)
    pen_od = np.zeros(3, dtype=np.float32)
    if ink:
        pen_od = np.float32(1.3) * np.array(INKS[int(rng.integers(len(INKS)))], dtype=np.float32)
        pen[_stroke(rng, coarse, shape_hw, rng.uniform(*ink_width_um) / px_um)] = 1
    image = np.empty((*shape_hw, 3), dtype=np.uint8)
    for rows in (slice(r, r + BAND) for r in range(0, shape_hw[0], BAND)):
        image[rows] = _colour(lesion[rows], grain[rows], fibres[rows], stain[rows], pen[rows], pen_od)
    return Drawing(image, lesions, pen > 0, fold & tissue)


def swatches(rng: np.random.Generator, side: int, px_um: float) -> np.ndarray:
    """(3, side, side, 3) uint8 RGB squares at `px_um` µm/px of glass, stroma and lesion (in that
    order, indexed by GLASS, STROMA, LESION): the stain model of `draw_slide` on uniform ground."""
    shape = (side, side)
    sigma = NUCLEUS_SIGMA_UM / px_um
    grain = _filtered_noise(rng, shape, (sigma, sigma))
    fibres = _filtered_noise(rng, shape, (sigma, 4 * sigma))
    ones, zeros = np.ones(shape, np.float32), np.zeros(shape, np.float32)
    return np.stack([_colour(lesion, grain, fibres, stain, zeros, np.zeros(3, np.float32))
                     for lesion, stain in ((zeros, zeros), (zeros, ones), (ones, ones))])


def _colour(lesion: np.ndarray, grain: np.ndarray, fibres: np.ndarray, stain: np.ndarray,
            pen: np.ndarray, pen_od: np.ndarray) -> np.ndarray:
    """RGB of a band from its fields: stain amounts h (nuclei where the grain exceeds a threshold,
    2.2 in stroma and 0 in lesions) and e (fibre-textured), then 255 exp(-OD) plus grain."""
    nuclei = np.clip((grain - 2.2 * (1 - lesion)) * 1.5, 0, 1)
    hema = stain * (0.10 + 0.40 * lesion + 1.1 * nuclei)
    eosin = stain * np.clip(0.45 + 0.12 * fibres - 0.20 * lesion, 0.05, None)
    od = (GLASS_OD + hema[..., None] * np.array(HEMATOXYLIN, np.float32)
          + eosin[..., None] * np.array(EOSIN, np.float32) + pen[..., None] * pen_od)
    return np.clip(255 * np.exp(-od) + 2 * grain[..., None], 0, 255).astype(np.uint8)

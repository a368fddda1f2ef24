"""Artefact mask on the tissue mask's low-resolution thumbnail: pen ink, tissue folds, blank or
blurred regions, one uint8 label per kind (ARTEFACT_KINDS; 0 = none).

Colours are read in CIE Lab (L* lightness 0-100, chroma C* = hypot(a*, b*), hue angle
h = atan2(b*, a*) in degrees; OpenCV's sRGB -> Lab, D65, within 0.25 of scikit-image's) and
stains by colour deconvolution (Ruifrok & Johnston 2001, scikit-image's `color.hed_from_rgb`).
Image filters and morphology run through OpenCV (10-50x scipy's and scikit-image's on a 40x
slide's thumbnail). Thresholds and why:

- pen ink (1): H&E colours lie in a narrow hue band, pink eosin at h ~ 0..40° and purple
  hematoxylin at h ~ -60..0° (measured: the real Aperio CMU-1 H&E and the sample slides keep 98 %
  of their tissue in -45..-5°). Marker ink is blue (h < -75°), green (h ~ 140°) or another hue
  outside HE_HUES with chroma above INK_CHROMA (CMU-1: 0.01 % of its tissue is that colourful off
  the band); red marker shares eosin's hue but is far more saturated (C* > RED_CHROMA; eosin stays
  below ~55); black marker is both dark (L* < BLACK_L) and grey (C* < BLACK_CHROMA), while the
  darkest H&E (dense nuclei, epidermis) keeps C* > 18 (CMU-1's 1st percentile).
- tissue fold (2): a fold is two layers of tissue, so both its eosin and its total optical
  density are about twice the slide's own; both, smoothed over FOLD_SIGMA px, above FOLD_RATIO x
  the tissue median. Eosin is required because dense nuclei (lesions, epidermis) are dark with
  hematoxylin, not eosin (sample folds: recall ~0.85 at < 0.1 % false tissue; CMU-1's dark
  epidermis: ~3 % of its tissue).
- blank or blurred (3): tissue without texture: the local standard deviation of L* over a
  BLUR_WINDOW px window below BLUR_RATIO x its tissue median (out-of-focus or washed-out tissue
  is smooth at any scale the thumbnail still resolves; a sample slide's region blurred by a
  Gaussian of 4 thumbnail px is found at ~80 %, no unblurred sample or CMU-1 tissue is).

Only tissue is labelled, ink also on glass next to it (a stroke's ends); a kind found earlier
in the list above wins where two overlap. Ink is opened by a disk of 1 px (strokes, not stray
nuclei: CMU-1 at 1.4 µm/px keeps < 0.01 % false ink), and specks under MIN_PIXELS are dropped.
"""
from __future__ import annotations

import cv2
import numpy as np
from skimage import color

from tiling.grid import footprint_fraction
from tiling.tissue import binary_morphology, tissue_box, without_small_objects

ARTEFACT_KINDS: dict[int, str] = {1: "pen ink", 2: "tissue fold", 3: "blank or blurred"}
PEN_INK, TISSUE_FOLD, BLANK_OR_BLURRED = 1, 2, 3
HE_HUES = (-60.0, 50.0)  # degrees of Lab hue that H&E takes
INK_CHROMA, RED_CHROMA = 25.0, 65.0
BLACK_L, BLACK_CHROMA = 35.0, 17.0
FOLD_RATIO, FOLD_SIGMA = 1.5, 2.0
BLUR_RATIO, BLUR_WINDOW = 0.2, 9
MIN_PIXELS = 16
PATCH_SHARE = 0.05  # a patch lies on an artefact when one kind covers at least this share of it
MARGIN = 16  # px around tissue the detectors see: more than any reaches (Gaussian 4 σ = 8, ink 4)
OPTICAL_DENSITY = -np.log(np.maximum(np.arange(256, dtype=np.float32), 1) / 255)  # of each uint8 value
# optical density (R, G, B) -> (eosin as rgb2hed scales it, mean density, 0): square, since
# cv2.transform's 3 x 3 path is 9x its 2 x 3 one
EOSIN_AND_DENSITY = np.stack([color.hed_from_rgb[:, 1] / -np.log(1e-6), np.full(3, 1 / 3),
                              np.zeros(3)]).astype(np.float32)


def artefact_name(kind: int) -> str:
    """The name of a label value ("none" for 0)."""
    return ARTEFACT_KINDS.get(int(kind), "none")


def _pen_ink(lightness: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Chroma and hue from `cv2.cartToPolar` (within 0.01° of atan2; hue in 0..360°, so HE_HUES'
    negative end is taken + 360)."""
    chroma, hue = cv2.cartToPolar(a, b, angleInDegrees=True)
    off_band = (hue > HE_HUES[1]) & (hue < HE_HUES[0] + 360)
    return ((off_band & (chroma > INK_CHROMA)) | (chroma > RED_CHROMA)
            | ((lightness < BLACK_L) & (chroma < BLACK_CHROMA)))


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian of `sigma` px, 4 sigma wide, edges mirrored (scipy.ndimage.gaussian_filter's)."""
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _fold(thumbnail: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Per channel optical density OD = -log(max(rgb, 1) / 255); eosin = max(0, OD . hed_from_rgb[:, E]
    / -log(1e-6)) (scikit-image's rgb2hed, one stain) and density = mean OD, both smoothed."""
    eosin, density, _ = cv2.split(cv2.transform(cv2.LUT(thumbnail, OPTICAL_DENSITY), EOSIN_AND_DENSITY))
    eosin, density = np.maximum(_smooth(eosin, FOLD_SIGMA), 0), _smooth(density, FOLD_SIGMA)
    return ((eosin > FOLD_RATIO * np.median(eosin[tissue]))
            & (density > FOLD_RATIO * np.median(density[tissue])))


def _blank_or_blurred(lightness: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Standard deviation of L* over BLUR_WINDOW px (edges mirrored) against its tissue median."""
    mean = cv2.boxFilter(lightness, -1, (BLUR_WINDOW, BLUR_WINDOW), borderType=cv2.BORDER_REFLECT)
    square = cv2.sqrBoxFilter(lightness, -1, (BLUR_WINDOW, BLUR_WINDOW), borderType=cv2.BORDER_REFLECT)
    spread = np.sqrt(np.maximum(square - mean ** 2, 0))
    return spread < BLUR_RATIO * np.median(spread[tissue])


def artefact_mask(thumbnail: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """(h, w) uint8 labels (ARTEFACT_KINDS, 0 = none) of an (h, w, 3) uint8 RGB thumbnail and
    its boolean tissue mask (`tiling.tissue.tissue_mask`); the module docstring says how.

    Labels lie on or next to tissue and no detector looks further than MARGIN px, so they are
    computed on `tissue_box` only: the same labels at a fraction of the cost on sparse slides."""
    labels = np.zeros(tissue.shape, np.uint8)
    if tissue.any():
        box = tissue_box(tissue, MARGIN)
        labels[box] = whole_image_labels(thumbnail[box], tissue[box])
    return labels


def whole_image_labels(thumbnail: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """`artefact_mask` computed on the whole thumbnail (which holds some tissue)."""
    labels = np.zeros(tissue.shape, np.uint8)
    thumbnail = np.ascontiguousarray(thumbnail, np.uint8)
    rgb = thumbnail.astype(np.float32)
    rgb /= 255
    lightness, a, b = cv2.split(cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab))
    near_tissue = binary_morphology(tissue, cv2.MORPH_DILATE, 2)
    ink = binary_morphology(_pen_ink(lightness, a, b), cv2.MORPH_OPEN, 1)  # strokes, not stray pixels
    found = [(PEN_INK, ink & near_tissue), (TISSUE_FOLD, _fold(thumbnail, tissue) & tissue),
             (BLANK_OR_BLURRED, _blank_or_blurred(lightness, tissue) & tissue)]
    for kind, mask in reversed(found):  # the first kind is written last: it wins overlaps
        labels[without_small_objects(mask, MIN_PIXELS)] = kind
    return labels


def artefact_shares(labels: np.ndarray, dimensions: tuple[int, int], coords: np.ndarray,
                    size: float) -> np.ndarray:
    """(N, K) float32: the share of each patch's footprint (`size` level-0 px from its level-0
    (x, y) in `coords`) under each kind of ARTEFACT_KINDS, from the slide's (h, w) `labels`."""
    return np.stack([footprint_fraction(labels == kind, dimensions, coords, size)
                     for kind in ARTEFACT_KINDS], axis=1).reshape(-1, len(ARTEFACT_KINDS))


def dominant_kind(shares: np.ndarray, least: float = PATCH_SHARE) -> np.ndarray:
    """(N,) uint8: per patch the kind with the largest share in `shares` (N, K) when that share
    is at least `least`, else 0 (the patch lies on no artefact)."""
    kinds = np.array(list(ARTEFACT_KINDS), np.uint8)
    if shares.shape[0] == 0:
        return np.zeros(0, np.uint8)
    return np.where(shares.max(axis=1) >= least, kinds[shares.argmax(axis=1)], 0).astype(np.uint8)

"""Artefact mask on the tissue mask's low-resolution thumbnail: pen ink, tissue folds, blank or
blurred regions, one uint8 label per kind (ARTEFACT_KINDS; 0 = none).

Colours are read in CIE Lab (L* lightness 0-100, chroma C* = hypot(a*, b*), hue angle
h = atan2(b*, a*) in degrees; OpenCV's sRGB -> Lab, D65, within 0.25 of scikit-image's) and
stains by colour deconvolution (Ruifrok & Johnston 2001, scikit-image's `color.hed_from_rgb`).
Image filters and morphology run through OpenCV. A false artefact is a false verdict, so each
detector asks for evidence beyond colour or darkness and leaves a region out when unsure.
Figures (before -> now): the real images of ../shared/data/real-artefacts and CMU-1 (skin; the
tile stage's 512 px thumbnail, 2.9 µm/px) against reference masks made by other colour rules and
by hand (tests/reference_masks, tests/test_real_artefacts.py), and the sample generator's exact
masks (tests/test_artefacts.py: 8 µm/px; its archives' thumbnails: 3 µm/px).

- pen ink (1): H&E keeps to a narrow hue band: the real tissue with C* > 25 lies at h -52..8°
  (purple hematoxylin to pink eosin) and below C* 50 (0.5th-99.5th percentiles, per image,
  smoothed over INK_SIGMA px); at the band's violet end (h -75..-45°) below C* 41. Marker ink
  lies outside it (INK): green or blue at h < -75° or > 100° with C* > 12, violet-blue at
  h -75..-45° with C* > 44 (smoothed only: a nucleus reaches C* 50 as is), red at h 10..60° with
  C* > 40 (the crops' red marker: h 10..38°, C* 44..83), any hue above C* SATURATED, black dark
  and grey (L* < 35, C* < 20). Ink over dense tissue is darker and duller than on glass (green
  over nuclei: C* 12..17), and so is the teal margin dye on CMU-1's edge (C* ~ 13): colour alone
  cannot tell a stroke from specks. A stroke is long and solid: it needs a core of INK colour
  (read as is, or smoothed over INK_SIGMA px where nuclei speckle the ink; opened by 1 px)
  spanning INK_SPAN px or more (CMU-1's dye clusters span less at 1.45 µm/px and coarser), and it
  grows from the core through the connected pixels of WEAK_INK colour (a stroke's fading edge,
  ink over nuclei; as is and closed by INK_CLOSE px, or smoothed and eroded by 1 px so a thin
  stroke's edge stays put), kept only where INK_SOLID of it is core (CMU-1's dye on debris at
  1.45 µm/px: 0.15-0.16; the images' strokes: 0.26-0.98). Ink IoU on the five tissue crops with
  pen 0.44, 0.50, 0.00, 0.37, 0.23 -> 0.95, 0.93, 0.85, 0.95, 0.85 (red marker below C* 65 and
  green over nuclei were missed); on the pen-marked diagnostic thumbnail 0.17 -> 0.73 (the grey
  halo of its black rings is left out); false ink (> 2 px from the reference's) <= 0.11 % of
  tissue on it, 0 on CMU-1 and tcga-lung, 0.6-1.7 % on two crops where a stroke grows into the
  dense nuclei at its edge. Sample archives: ink IoU 0.75 -> 0.95 (12 slides,
  3 µm/px), 0.78 -> 0.90 (8 slides, 8 µm/px). Known limits: thumbnails finer than ~1 µm/px
  (patches under 16 µm: never the tile stage's for CMU-1) find its margin dye (0.13 % of tissue at
  0.96 µm/px, 1.5 % at 0.72); red-orange haemorrhage could pass for red marker (none here).
- tissue fold (2): a fold is two layers of the same tissue: about twice the stain of the tissue
  beside it, with tissue on both sides. Candidates are pixels FOLD_RING[1] px or more off the
  ink (a black stroke's grey halo is dark too) whose eosin and total
  optical density, smoothed over FOLD_SIGMA px, exceed FOLD_RATIO x the tissue median (eosin,
  because dense nuclei are dark with hematoxylin); a candidate region is kept only when its ring
  FOLD_RING px outside (off the ink) is mostly tissue (>= FOLD_ENCLOSED[0] of it denser than
  STAINED x the tissue median: a dark band along a section's edge has glass along a side) and the
  region's median density is FOLD_STEP x the ring's: x its median where the ring is all tissue
  (>= FOLD_ENCLOSED[1]), else x its denser part (FOLD_SIDE percentile), for glass or loose
  flakes on one side leave a dark layer along a cleft or an edge darker than its ring's median
  but not than the tissue it lies on. False fold (> 2 px from the reference's) on CMU-1 (its dark
  epidermis and keratin along a cleft) 2.75 -> 0.10 % of tissue, tcga-lung (dense nuclei)
  0.45 -> 0.16 %, the diagnostic thumbnail 0.45 -> 0.06 %; sample folds' recall 0.77-0.93 at
  < 0.02 % false (archives: 0.71 -> 0.68 at 3 µm/px, 0.68 -> 0.62 at 8 µm/px: folds over a lesion
  or an ink stroke are left out); the crops' real folds: 0.51 -> 0.93 of high-nuclei's, 0.49 ->
  0.43 of tcga-green's knife streak, none of tcga-red's short streak (before neither).
- blank or blurred (3): tissue without texture: the local standard deviation of L* over a
  BLUR_WINDOW px window below BLUR_RATIO x its tissue median (out-of-focus or washed-out tissue
  is smooth at any scale the thumbnail still resolves; a sample slide's region blurred by a
  Gaussian of 4 thumbnail px is found at ~80 %, no unblurred sample tissue is, 0-0.1 % of
  CMU-1's).

Ink is labelled on tissue and on glass within INK_REACH px of it (a stroke's ends), folds and
blank regions on tissue only; a kind found earlier in the list above wins where two overlap, and
specks under MIN_PIXELS are dropped. Cost: about 2x the detectors' before (0.5 s for a 3 MP
thumbnail, 3 s for the largest, 4096 x 3072).
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
from skimage import color

from tiling.grid import footprint_fraction
from tiling.tissue import binary_morphology, tissue_box, without_small_objects

ARTEFACT_KINDS: dict[int, str] = {1: "pen ink", 2: "tissue fold", 3: "blank or blurred"}
PEN_INK, TISSUE_FOLD, BLANK_OR_BLURRED = 1, 2, 3


class InkRule(NamedTuple):
    """Marker colours in Lab: green or blue outside the hue band `hues` (degrees) above `chroma`,
    and at its violet end (hues[0]..VIOLET_HUE) above `violet_chroma`; red at hue red_hue..60°
    above `red_chroma`; black below `black_l` and `black_chroma`."""

    hues: tuple[float, float]
    chroma: float
    violet_chroma: float
    red_hue: float
    red_chroma: float
    black_l: float
    black_chroma: float


INK = InkRule(hues=(-75.0, 100.0), chroma=12.0, violet_chroma=44.0, red_hue=10.0, red_chroma=40.0, black_l=35.0,
              black_chroma=20.0)
WEAK_INK = InkRule(hues=(-65.0, 90.0), chroma=6.0, violet_chroma=42.0, red_hue=0.0, red_chroma=25.0, black_l=45.0,
                   black_chroma=22.0)
VIOLET_HUE = -45.0  # from here to hues[0]: hematoxylin's bluest hues, C* <= 41 smoothed
SATURATED = 65.0  # chroma no H&E reaches (eosin <= ~50): ink at any hue
INK_SIGMA, INK_SPAN, INK_SOLID, INK_REACH, INK_CLOSE = 1.5, 18, 0.2, 16, 2
FOLD_RATIO, FOLD_SIGMA = 1.5, 2.0
FOLD_RING, FOLD_ENCLOSED, FOLD_STEP, FOLD_SIDE, STAINED = (2, 8), (0.85, 0.97), 1.5, 75, 0.3
BLUR_RATIO, BLUR_WINDOW = 0.2, 9
MIN_PIXELS = 16
PATCH_SHARE = 0.05  # a patch lies on an artefact when one kind covers at least this share of it
# px around tissue the detectors see: more than any reaches (ink: INK_REACH + 4 INK_SIGMA + 1 = 23;
# folds: on tissue, with their ring FOLD_RING[1] and smoothing 4 FOLD_SIGMA = 8 px out)
MARGIN = 24
OPTICAL_DENSITY = -np.log(np.maximum(np.arange(256, dtype=np.float32), 1) / 255)  # of each uint8 value
# optical density (R, G, B) -> (eosin as rgb2hed scales it, mean density, 0): square, since
# cv2.transform's 3 x 3 path is 9x its 2 x 3 one
EOSIN_AND_DENSITY = np.stack([color.hed_from_rgb[:, 1] / -np.log(1e-6), np.full(3, 1 / 3),
                              np.zeros(3)]).astype(np.float32)


def artefact_name(kind: int) -> str:
    """The name of a label value ("none" for 0)."""
    return ARTEFACT_KINDS.get(int(kind), "none")


def _polar(lightness: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L*, C*, h) from Lab; chroma and hue by `cv2.cartToPolar` (hue in 0..360°: negative angles
    are taken + 360)."""
    chroma, hue = cv2.cartToPolar(a, b, angleInDegrees=True)
    return lightness, chroma, hue


def _ink_colour(lch: tuple[np.ndarray, np.ndarray, np.ndarray], rule: InkRule) -> np.ndarray:
    """Pixels of marker colour by `rule`, or of chroma above SATURATED."""
    lightness, chroma, hue = lch
    off_band = (hue > rule.hues[1]) & (hue < rule.hues[0] + 360)
    violet = (hue >= rule.hues[0] + 360) & (hue < VIOLET_HUE + 360)
    red = (hue > rule.red_hue) & (hue < 60)
    return ((off_band & (chroma > rule.chroma)) | (violet & (chroma > rule.violet_chroma))
            | (red & (chroma > rule.red_chroma)) | (chroma > SATURATED)
            | ((lightness < rule.black_l) & (chroma < rule.black_chroma)))


def _components_touching(mask: np.ndarray, seeds: np.ndarray, share: float = 0.0) -> np.ndarray:
    """The 8-connected components of `mask` holding a pixel of `seeds`, and more than `share` of
    their pixels in `seeds`."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    seeded = np.bincount(labels[seeds & mask], minlength=count)
    keep = (seeded > 0) & (seeded > share * np.bincount(labels.ravel(), minlength=count))
    keep[0] = False
    return keep[labels]


def _long_objects(mask: np.ndarray, span: int) -> np.ndarray:
    """The 8-connected objects of `mask` whose bounding box is `span` px long or more."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) >= span
    keep[0] = False
    return keep[labels]


def _pen_ink(lab: tuple[np.ndarray, np.ndarray, np.ndarray], tissue: np.ndarray) -> np.ndarray:
    """Strokes: cores of INK colour (smoothed over INK_SIGMA px or not) spanning INK_SPAN px or more,
    grown through the connected pixels of WEAK_INK colour (unsmoothed, closed by INK_CLOSE px; or
    smoothed, eroded by 1 px so a thin stroke's edge stays where it is) when INK_SOLID of a grown
    stroke is core; within INK_REACH px of tissue and touching it."""
    raw, smooth = _polar(*lab), _polar(*(_smooth(channel, INK_SIGMA) for channel in lab))
    reach = binary_morphology(tissue, cv2.MORPH_DILATE, INK_REACH)
    # violet ink is told from nuclei only smoothed
    core = (_ink_colour(smooth, INK) | _ink_colour(raw, INK._replace(violet_chroma=SATURATED))) & reach
    core = _long_objects(binary_morphology(core, cv2.MORPH_OPEN, 1), INK_SPAN)
    loose = (binary_morphology(_ink_colour(raw, WEAK_INK._replace(violet_chroma=SATURATED)), cv2.MORPH_CLOSE,
                               INK_CLOSE)
             | binary_morphology(_ink_colour(smooth, WEAK_INK), cv2.MORPH_ERODE, 1))
    ink = _components_touching(loose & reach, core, INK_SOLID)
    ink = binary_morphology(ink, cv2.MORPH_OPEN, 1)  # strokes, not stray pixels
    return _components_touching(ink, binary_morphology(tissue, cv2.MORPH_DILATE, 2))


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian of `sigma` px, 4 sigma wide, edges mirrored (scipy.ndimage.gaussian_filter's)."""
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _fold(thumbnail: np.ndarray, tissue: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """Per channel optical density OD = -log(max(rgb, 1) / 255); eosin = max(0, OD . hed_from_rgb[:, E]
    / -log(1e-6)) (scikit-image's rgb2hed, one stain) and density = mean OD, both smoothed, give
    the candidates off `ink`; each candidate region is then judged by its ring (`_is_fold`)."""
    eosin, raw_density, _ = cv2.split(cv2.transform(cv2.LUT(thumbnail, OPTICAL_DENSITY), EOSIN_AND_DENSITY))
    eosin, density = np.maximum(_smooth(eosin, FOLD_SIGMA), 0), _smooth(raw_density, FOLD_SIGMA)
    near_ink = binary_morphology(ink, cv2.MORPH_DILATE, FOLD_RING[1])
    candidates = ((eosin > FOLD_RATIO * np.median(eosin[tissue]))
                  & (density > FOLD_RATIO * np.median(density[tissue])) & tissue & ~near_ink)
    stained = raw_density > STAINED * np.median(raw_density[tissue])
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidates.astype(np.uint8), connectivity=8)
    folds = np.zeros(tissue.shape, bool)
    outer = FOLD_RING[1]
    for index in range(1, count):
        left, top, width, height, area = stats[index]
        if area <= MIN_PIXELS:
            continue
        box = (slice(max(top - outer, 0), top + height + outer), slice(max(left - outer, 0), left + width + outer))
        region = labels[box] == index
        if _is_fold(region, raw_density[box], stained[box], ink[box]):
            folds[box] |= region
    return folds


def _is_fold(region: np.ndarray, density: np.ndarray, stained: np.ndarray, ink: np.ndarray) -> bool:
    """A candidate region (boolean, in a box reaching FOLD_RING[1] px beyond it) is a fold when
    its ring (off `ink`) is mostly stained and the region's median density is FOLD_STEP x the
    ring's: its median where the ring is all tissue, else its denser part (FOLD_SIDE percentile)."""
    ring = (binary_morphology(region, cv2.MORPH_DILATE, FOLD_RING[1])
            & ~binary_morphology(region, cv2.MORPH_DILATE, FOLD_RING[0]) & ~ink)
    enclosed = stained[ring].mean() if ring.any() else 0.0
    if enclosed < FOLD_ENCLOSED[0]:
        return False
    beside = np.percentile(density[ring], 50 if enclosed >= FOLD_ENCLOSED[1] else FOLD_SIDE)
    return bool(np.median(density[region]) >= FOLD_STEP * beside)


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
    ink = _pen_ink((lightness, a, b), tissue)
    found = [(PEN_INK, ink), (TISSUE_FOLD, _fold(thumbnail, tissue, ink)),
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

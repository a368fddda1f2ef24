"""The artefact detectors on real images against hand-checked reference masks: TCGA crops and
thumbnails with green, red and black pen (../shared/data/real-artefacts) and the real Aperio
CMU-1 slide, each read as the tile stage reads it (`plan_patches`: its thumbnail and labels).

The reference masks (tests/reference_masks/, README.md there) label glass 0, tissue 1, pen ink 2
and tissue fold 3 by colour rules of their own (RGB / HSV, not the detectors' Lab and stain
rules), cut to hand-drawn polygons and checked on overlays. The PNGs record no resolution, so
each is read as an ArraySlide at the µm/px its content shows (IMAGES).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import shared_file
from tiling.artefacts import PEN_INK, TISSUE_FOLD
from tiling.config import TileConfig
from tiling.slide import ArraySlide, BaseSlide, open_slide
from tiling.tile import plan_patches
from tiling.tissue import tissue_mask

REFERENCE = Path(__file__).parent / "reference_masks"
GLASS, TISSUE, INK, FOLD = 0, 1, 2, 3
# µm/px assumed for each PNG, from what it shows
IMAGES = {
    "tcga-green-pen.png": 2.0,          # a crop: adipocytes 30-50 px (60-100 µm), ducts, nuclei 3-4 px
    "tcga-red-pen.png": 2.0,            # a crop of fat and tumour at the same scale
    "high-nuclei-score-red-pen-level1.png": 1.0,     # 512-px level-1 tiles of 40x (0.25 µm/px) slides:
    "medium-nuclei-score-green-pen-level1.png": 1.0,  # downsample 4, nuclei 6-10 px
    "very-low-nuclei-score-red-pen-level1.png": 1.0,  # adipocytes ~100 px
    "tcga-lung-rgb.png": 0.5,           # a 20x tile: nuclei ~20 px, red cells ~15 px (7.5 µm)
    "diagnostic-slide-thumb-rgb.png": 32.0,  # a whole-slide thumbnail: a ~1.5 cm section over ~450 px
}
PEN_CROPS = ["tcga-green-pen.png", "tcga-red-pen.png", "high-nuclei-score-red-pen-level1.png",
             "medium-nuclei-score-green-pen-level1.png", "very-low-nuclei-score-red-pen-level1.png"]
CMU1 = "CMU-1-Small-Region.svs"
LEAST_INK_IOU, MOST_FALSE = 0.8, 0.005
EDGE_PX = 2  # ink or fold within this many px of the reference's is not false: where a blurred
# stroke or fold ends is a judgement within a pixel or two


def rgb_of(path: Path) -> np.ndarray:
    """A PNG as (h, w, 3) uint8 RGB, transparent pixels on white (as the reference masks read it)."""
    image = np.asarray(Image.open(path).convert("RGBA")).astype(np.float32)
    alpha = image[..., 3:] / 255
    return np.round(image[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)


def planned(slide: BaseSlide) -> tuple[np.ndarray, np.ndarray]:
    """The tile stage's thumbnail of `slide` and its artefact labels, at the default settings."""
    _, _, _, thumbnail, artefacts = plan_patches(slide, TileConfig().resolved())
    return thumbnail, artefacts.labels


def reference(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The reference labels of image `name`, resampled (nearest) to a thumbnail of `shape`."""
    path = REFERENCE / f"{Path(name).stem}.png"
    if not path.is_file():
        pytest.fail(f"{path} is missing: rebuild it with tests/reference_masks/make_masks.py")
    labels = np.asarray(Image.open(path))
    return cv2.resize(labels, shape[1::-1], interpolation=cv2.INTER_NEAREST) if labels.shape != shape[:2] else labels


def thumbnail_of(name: str) -> np.ndarray:
    """The tile stage's thumbnail of a real image."""
    if name == CMU1:
        with open_slide(shared_file(name)) as slide:
            return planned(slide)[0]
    return planned(ArraySlide(rgb_of(shared_file(f"real-artefacts/{name}")), IMAGES[name]))[0]


def detected(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, reference) of a real image on the tile stage's thumbnail."""
    if name == CMU1:
        with open_slide(shared_file(name)) as slide:
            thumbnail, labels = planned(slide)
    else:
        thumbnail, labels = planned(ArraySlide(rgb_of(shared_file(f"real-artefacts/{name}")), IMAGES[name]))
    return labels, reference(name, thumbnail.shape)


def near(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by EDGE_PX."""
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * EDGE_PX + 1, 2 * EDGE_PX + 1))
    return cv2.dilate(mask.astype(np.uint8), disk).astype(bool)


def figures(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """ink IoU; false ink and false fold (found more than EDGE_PX from the reference's ink / folds),
    each as a share of the reference's tissue (ink and folds included)."""
    ink, fold, true_ink = labels == PEN_INK, labels == TISSUE_FOLD, truth == INK
    tissue = max(int((truth != GLASS).sum()), 1)
    return {"ink IoU": float((ink & true_ink).sum() / max((ink | true_ink).sum(), 1)),
            "false ink": float((ink & ~near(true_ink)).sum() / tissue),
            "false fold": float((fold & ~near(truth == FOLD)).sum() / tissue)}


def test_the_reference_masks_fit_their_images() -> None:
    for name in IMAGES:
        image = Image.open(shared_file(f"real-artefacts/{name}"))
        truth = reference(name, (image.height, image.width))
        assert set(np.unique(truth)) <= {GLASS, TISSUE, INK, FOLD}
        assert (truth == INK).any() == (name in PEN_CROPS or name.startswith("diagnostic"))


@pytest.mark.parametrize("name", [*IMAGES, CMU1])
def test_tissue_is_found_whatever_the_ink(name: str) -> None:
    """Saturated pen ink does not pull the tissue threshold up: >= 95 % of the reference's tissue
    (ink and folds included) is found, and >= 99 % of what is found is tissue."""
    thumbnail = thumbnail_of(name)
    truth, found = reference(name, thumbnail.shape) != GLASS, tissue_mask(thumbnail)
    both = int((truth & found).sum())
    assert both / truth.sum() >= 0.95 and both / found.sum() >= 0.99, (both / truth.sum(), both / found.sum())


@pytest.mark.parametrize("name", PEN_CROPS)
def test_pen_over_tissue_is_found(name: str) -> None:
    found = figures(*detected(name))
    assert found["ink IoU"] >= LEAST_INK_IOU, found
    assert found["false fold"] <= MOST_FALSE, found


@pytest.mark.parametrize("name", ["tcga-lung-rgb.png", "diagnostic-slide-thumb-rgb.png", CMU1])
def test_dense_tissue_epidermis_and_edges_are_no_ink_or_fold(name: str) -> None:
    """Dense nuclei (lung), CMU-1's dark epidermis and keratin, a thumbnail's section edges and its
    pen circles (diagnostic: its ink is the reference's, so only ink off it is false)."""
    found = figures(*detected(name))
    assert found["false ink"] <= MOST_FALSE, found
    assert found["false fold"] <= MOST_FALSE, found

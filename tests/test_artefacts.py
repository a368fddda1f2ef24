"""The artefact mask at tile time: pen ink, folds, blank or blurred regions, against the sample
generator's exact truth and on the real Aperio H&E slide."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage
from skimage import morphology

from conftest import shared_file
from pipeline.cli import main
from tiling.annotations import rasterize_lesions
from tiling.artefacts import (
    ARTEFACT_KINDS,
    BLANK_OR_BLURRED,
    PATCH_SHARE,
    PEN_INK,
    TISSUE_FOLD,
    artefact_mask,
    dominant_kind,
    whole_image_labels,
)
from tiling.config import TileConfig
from tiling.samples.draw import draw_slide
from tiling.samples.tiff import write_pyramid_tiff
from tiling.slide import open_slide
from tiling.store import open_patch_store
from tiling.tile import plan_patches, tile_slide
from tiling.tissue import tissue_mask, without_small_objects

SHAPE, PX_UM = (768, 1024), 8.0  # a thumbnail's scale: 8 µm/px, 16 px per 224 µm patch


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("index", range(4))
def test_ink_and_folds_of_the_sample_generator_are_found(index: int) -> None:
    drawing = draw_slide(np.random.default_rng([0, index]), SHAPE, PX_UM, 16.0, positive=index % 2 == 0, ink=True)
    labels = artefact_mask(drawing.image, tissue_mask(drawing.image))
    fold = drawing.fold & ~drawing.ink
    assert iou(labels == PEN_INK, drawing.ink) > 0.9
    assert (labels[fold] == TISSUE_FOLD).mean() > 0.7          # recall
    assert (labels == TISSUE_FOLD)[~fold & ~drawing.ink].mean() < 0.002
    lesion = rasterize_lesions(drawing.lesions, SHAPE, 16.0) & ~drawing.ink
    assert (labels[lesion] > 0).sum() <= 0.01 * lesion.sum()   # dark lesions are no fold or ink
    assert (labels == BLANK_OR_BLURRED).sum() == 0


def test_a_blurred_region_is_found() -> None:
    drawing = draw_slide(np.random.default_rng([0, 1]), SHAPE, PX_UM, 16.0, positive=False, ink=False)
    rows, cols = np.nonzero(tissue_mask(drawing.image))
    box = np.s_[int(rows.mean()) - 60:int(rows.mean()) + 60, int(cols.mean()) - 60:int(cols.mean()) + 60]
    image = drawing.image.copy()
    image[box] = ndimage.gaussian_filter(image[box].astype(np.float32), (4, 4, 0)).astype(np.uint8)
    labels = artefact_mask(image, tissue_mask(image))
    assert (labels[box] == BLANK_OR_BLURRED).mean() > 0.6
    outside = np.ones(labels.shape, bool)
    outside[box] = False
    assert (labels[outside] == BLANK_OR_BLURRED).mean() < 0.005


def test_no_pen_ink_on_the_real_h_and_e_slide(tmp_path: Path) -> None:
    slide_path = shared_file("CMU-1-Small-Region.svs")
    with open_slide(slide_path) as slide:
        thumbnail = slide.thumbnail(1024)
    tissue = tissue_mask(thumbnail)
    labels = artefact_mask(thumbnail, tissue)
    assert (labels[tissue] == PEN_INK).mean() < 0.001
    assert (labels[tissue] > 0).mean() < 0.1                  # the dark epidermis is mostly no fold
    store = open_patch_store(tile_slide(slide_path, tmp_path, TileConfig(mpp=4.0, patch=32)))
    assert len(store) > 20 and not (store.artefacts.kind == PEN_INK).any()
    assert store.attrs["drop_artefacts"] == [] and store.attrs["artefacts_dropped"] == {}


def test_dominant_kind_needs_the_stated_share() -> None:
    shares = np.array([[0.0, 0.0, 0.0], [0.04, 0.0, 0.0], [0.05, 0.2, 0.0], [0.3, 0.0, 0.1]], np.float32)
    np.testing.assert_array_equal(dominant_kind(shares), [0, 0, TISSUE_FOLD, PEN_INK])
    assert list(ARTEFACT_KINDS) == [PEN_INK, TISSUE_FOLD, BLANK_OR_BLURRED]


def inked_slide(tmp_path: Path) -> Path:
    """A 1024 x 768 px slide at 2 µm/px of sample tissue with a wide band of blue marker across it
    (x 400..560 px)."""
    image = draw_slide(np.random.default_rng(5), SHAPE, px_um=2.0, downsample=2.0, positive=False, ink=False).image
    image[:, 400:560] = (40, 60, 170)
    path = tmp_path / "inked.tiff"
    write_pyramid_tiff(path, image, 2.0)
    return path


def test_artefact_patches_stay_by_default_and_are_dropped_on_request(tmp_path: Path) -> None:
    path = inked_slide(tmp_path)
    config = TileConfig(mpp=2.0, patch=64, drop_artefacts=("ink",))
    with open_slide(path) as slide:
        coords, tissue, attrs, _, default = plan_patches(slide, config)
        every, _, kept_attrs, _, kept = plan_patches(slide, replace(config, drop_artefacts=()))
    dropped = attrs["artefacts_dropped"]
    assert dropped == {"pen ink": dropped["pen ink"]} and dropped["pen ink"] >= 10
    assert attrs["drop_artefacts"] == ["pen ink"] and kept_attrs["artefacts_dropped"] == {}
    assert {tuple(c) for c in coords.tolist()} < {tuple(c) for c in every.tolist()}
    assert len(every) - len(coords) >= sum(dropped.values())
    centre_x = coords[:, 0] + 32
    assert not ((centre_x >= 400 + 32) & (centre_x < 560 - 32)).any()   # no patch inside the band
    assert (tissue >= config.min_tissue).all()                          # artefact-free tissue
    assert (kept.kind == PEN_INK).sum() >= 10 + (default.kind == PEN_INK).sum()
    assert (kept.fraction[kept.kind > 0] >= PATCH_SHARE).all()
    assert default.labels.shape == kept.labels.shape


def test_the_store_gives_each_patch_the_artefacts_planned(tmp_path: Path) -> None:
    path = inked_slide(tmp_path)
    config = TileConfig(mpp=2.0, patch=64)
    with open_slide(path) as slide:
        coords, _, _, _, planned = plan_patches(slide, config)
    store = open_patch_store(tile_slide(path, tmp_path / "out", config))   # kinds and shares derived again
    assert (planned.kind == PEN_INK).sum() >= 10 and planned.shares.shape == (len(coords), len(ARTEFACT_KINDS))
    np.testing.assert_array_equal(store.coords, coords)
    for name in ("labels", "shares", "kind", "fraction"):
        np.testing.assert_array_equal(getattr(store.artefacts, name), getattr(planned, name))


@pytest.mark.parametrize("seed", range(3))
def test_small_objects_go_as_scikit_image_removes_them(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = np.zeros((120, 160), bool)
    mask[20:100, 30:140] = rng.random((80, 110)) < 0.55                  # objects of every size, off the edges
    for max_size in (0, 3, 16):
        np.testing.assert_array_equal(without_small_objects(mask, max_size),
                                      morphology.remove_small_objects(mask, max_size=max_size))
    assert not without_small_objects(np.zeros((5, 5), bool), 3).any()


def test_cli_tile_keeps_artefact_patches_and_drops_them_on_request(tmp_path: Path) -> None:
    slide = str(inked_slide(tmp_path))
    result = CliRunner().invoke(main, ["tile", slide, "--out", str(tmp_path / "kept"), "--mpp", "2", "--patch", "64"])
    assert result.exit_code == 0 and "left out" not in result.output, result.output
    kept = open_patch_store(tmp_path / "kept" / "slides" / "inked")
    result = CliRunner().invoke(main, ["tile", slide, "--out", str(tmp_path / "out"), "--mpp", "2", "--patch", "64",
                                       "--drop-artefacts", "ink,blank"])
    assert result.exit_code == 0, result.output
    dropped = open_patch_store(tmp_path / "out" / "slides" / "inked").attrs
    assert dropped["drop_artefacts"] == ["pen ink", "blank or blurred"]
    assert f"left out as artefacts: {dropped['artefacts_dropped']['pen ink']} patch(es) on pen ink" in result.output
    assert (kept.artefacts.kind == PEN_INK).sum() >= dropped["artefacts_dropped"]["pen ink"] >= 10
    result = CliRunner().invoke(main, ["tile", slide, "--out", str(tmp_path / "odd"), "--drop-artefacts", "smudge"])
    assert result.exit_code == 2 and "drop_artefacts = 'smudge': must be artefact kinds among ink, fold, blank" \
        in result.output


@pytest.mark.parametrize("seed", range(3))
def test_artefacts_found_on_the_tissue_box_equal_those_of_the_whole_thumbnail(seed: int) -> None:
    image = draw_slide(np.random.default_rng([1, seed]), (384, 512), 8.0, 16.0, positive=True, ink=True).image
    with open_slide(shared_file("CMU-1-Small-Region.svs")) as slide:
        real = slide.thumbnail(512)
    for thumbnail in (image, real, np.pad(image, ((100, 60), (40, 120), (0, 0)), constant_values=235)):
        tissue = tissue_mask(thumbnail)
        labels = artefact_mask(thumbnail, tissue)
        np.testing.assert_array_equal(labels, whole_image_labels(thumbnail, tissue))
        # the samples hold ink and folds; CMU-1 next to none: its dark epidermis is no fold (test_real_artefacts)
        found = (labels > 0).sum() / tissue.sum()
        assert found <= 0.005 if thumbnail is real else found > 0, found


def test_ink_just_outside_the_tissue_box_is_labelled_as_on_the_whole_thumbnail() -> None:
    image = np.full((200, 300, 3), 235, np.uint8)
    image[50:150, 100:200] = np.random.default_rng(0).normal((200, 120, 170), 12, (100, 100, 3)).clip(0, 255)
    image[40:160, 95:100] = (30, 60, 200)                           # a blue pen stroke on the glass beside it
    tissue = np.zeros(image.shape[:2], bool)
    tissue[50:150, 100:200] = True
    labels = artefact_mask(image, tissue)
    assert (labels[:, 95:100] == PEN_INK).sum() > 50
    np.testing.assert_array_equal(labels, whole_image_labels(image, tissue))

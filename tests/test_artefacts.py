"""The artefact mask at tile time: pen ink, folds, blank or blurred regions, against the sample
generator's exact truth and on the real Aperio H&E slide."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from conftest import manifest_rows, shared_file
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
)
from tiling.sample_draw import draw_slide
from tiling.slide import open_slide
from tiling.store import open_patch_store
from tiling.tile import TileConfig, tile_slide
from tiling.tissue import tissue_mask

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
    assert store.attrs["artefacts_dropped"]["pen ink"] == 0


def test_dominant_kind_needs_the_stated_share() -> None:
    shares = np.array([[0.0, 0.0, 0.0], [0.04, 0.0, 0.0], [0.05, 0.2, 0.0], [0.3, 0.0, 0.1]], np.float32)
    np.testing.assert_array_equal(dominant_kind(shares), [0, 0, TISSUE_FOLD, PEN_INK])
    assert list(ARTEFACT_KINDS) == [PEN_INK, TISSUE_FOLD, BLANK_OR_BLURRED]


def test_artefacts_are_left_out_by_default_and_kept_on_request(tile_sample: Callable[..., Path]) -> None:
    default = open_patch_store(tile_sample(1))               # sample_001 carries ink and a fold
    kept = open_patch_store(tile_sample(1, TileConfig(keep_artefacts=True)))
    dropped = default.attrs["artefacts_dropped"]
    assert dropped["pen ink"] > 0 and default.attrs["keep_artefacts"] is False
    assert len(kept) == len(default) + sum(dropped.values())
    assert kept.attrs["artefacts_dropped"] == dict.fromkeys(ARTEFACT_KINDS.values(), 0)
    assert [int((kept.artefacts.kind == k).sum()) for k in ARTEFACT_KINDS] == list(dropped.values())
    assert not default.artefacts.kind.any() and (default.artefacts.fraction < 3 * PATCH_SHARE).all()
    assert default.artefacts.labels.shape == default.thumbnail.shape[:2]
    assert (kept.artefacts.fraction[kept.artefacts.kind > 0] >= PATCH_SHARE).all()


def test_cli_tile_counts_what_it_leaves_out_and_keeps_it_on_request(sample_archive: Path, tmp_path: Path) -> None:
    slide = manifest_rows(sample_archive)[1]["path"]                   # sample_001: ink and a fold
    result = CliRunner().invoke(main, ["tile", slide, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    dropped = open_patch_store(tmp_path / "out" / "slides" / "sample_001").attrs["artefacts_dropped"]
    assert f"left out as artefacts: {dropped['pen ink']} patch(es) on pen ink" in result.output
    result = CliRunner().invoke(main, ["tile", slide, "--out", str(tmp_path / "kept"), "--keep-artefacts"])
    assert result.exit_code == 0 and "left out" not in result.output
    kept = open_patch_store(tmp_path / "kept" / "slides" / "sample_001")
    assert kept.attrs["keep_artefacts"] is True and (kept.artefacts.kind == PEN_INK).sum() == dropped["pen ink"]

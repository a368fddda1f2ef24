"""A slide's resolution: plausible recorded values only, declared values by precedence
(manifest column `mpp` > --slide-mpp > file tags), and where the value came from."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from conftest import shared_file
from pipeline.config import PipelineConfig
from pipeline.stages import Context, SlideState, run_stage
from tiling.archive import SlideRecord, read_archive
from tiling.config import TileConfig
from tiling.errors import ArchiveError, SlideError
from tiling.samples.tiff import write_pyramid_tiff
from tiling.slide import open_slide
from tiling.store import PATCHES
from tiling.tile import tile_slide

IMAGE = np.full((512, 512, 3), 200, np.uint8)


def _dpi_tiff(path: Path, dpi: float, unit: str) -> Path:
    """A one-level tiled TIFF with `dpi` px per `unit` resolution tags (as image editors write)."""
    with tifffile.TiffWriter(path) as tif:
        tif.write(IMAGE, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None,
                  software=False, resolution=(dpi, dpi), resolutionunit=unit)
    return path


@pytest.mark.parametrize("mpp", [0.25, 0.5, 2.0, 16.0])
def test_generated_slides_keep_their_recorded_resolution(tmp_path: Path, mpp: float) -> None:
    path = tmp_path / f"at-{mpp}.tiff"
    write_pyramid_tiff(path, IMAGE, mpp)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(mpp) and slide.mpp_source == "file"


@pytest.mark.parametrize(("dpi", "unit"), [(72, "INCH"), (96, "INCH"), (300, "NONE")])
def test_default_dpi_is_treated_as_missing(tmp_path: Path, dpi: float, unit: str) -> None:
    path = _dpi_tiff(tmp_path / f"dpi{dpi}.tiff", dpi, unit)
    with pytest.raises(SlideError, match=rf"dpi{dpi}\.tiff: .*TIFF default \({dpi} px per {unit.lower()}\)"
                       r".*manifest column `mpp` or --slide-mpp"):
        open_slide(path)
    with open_slide(path, 0.5, "flag") as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "flag"


def test_implausible_or_missing_resolution_fails_saying_what_was_found(tmp_path: Path) -> None:
    coarse = tmp_path / "coarse.tiff"
    write_pyramid_tiff(coarse, IMAGE, 1000.0)
    with pytest.raises(SlideError, match=r"coarse\.tiff: the file records 1000 µm/px, outside the "
                       r"plausible 0\.05-20 µm/px; declare .*`mpp`.*--slide-mpp"):
        open_slide(coarse)
    bare = tmp_path / "bare.tiff"
    write_pyramid_tiff(bare, IMAGE, None)
    with pytest.raises(SlideError, match=r"bare\.tiff: the file records no resolution"):
        open_slide(bare)
    with pytest.raises(SlideError, match=r"bare\.tiff: the manifest declares 500 µm/px, outside"):
        open_slide(bare, 500.0, "manifest")


def test_declared_resolution_wins_and_a_difference_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    path = shared_file("CMU-1-Small-Region.svs")
    with caplog.at_level(logging.WARNING, logger="tiling.resolution"):
        with open_slide(path, 0.5, "manifest") as slide:    # 0.2 % from the file's 0.499: quiet
            assert slide.mpp == 0.5 and slide.mpp_source == "manifest"
        assert not caplog.records
        with open_slide(path, 0.25, "flag") as slide:
            assert slide.mpp == 0.25 and slide.mpp_source == "flag"
    assert "records 0.499 µm/px; using 0.25 µm/px from the flag" in caplog.text
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "file"


def test_tile_records_where_the_resolution_came_from(tmp_path: Path) -> None:
    path = tmp_path / "bare.tiff"
    write_pyramid_tiff(path, IMAGE, None)
    config = TileConfig(mpp=2.0, patch=64, slide_mpp=0.5)
    store = tile_slide(path, tmp_path / "out", config, slide_id="flagged")
    attrs = dict(zarr.open_group(store, mode="r").attrs)
    assert attrs["slide_mpp"] == 0.5 and attrs["mpp_source"] == "flag"
    store = tile_slide(path, tmp_path / "out", config, slide_id="declared", slide_mpp=1.0)
    attrs = dict(zarr.open_group(store, mode="r").attrs)
    assert attrs["slide_mpp"] == 1.0 and attrs["mpp_source"] == "manifest" and attrs["footprint"] == 128


def test_manifest_declares_resolution_and_annotation_scale(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,annotation,annotation_xml,mpp,annotation_downsample,annotation_mpp\n"
                        "a.svs,a.geojson,a.xml,0.25,32,\n"
                        "b.svs,,,,,0.5\n")
    a, b = read_archive(manifest)
    assert (a.mpp, a.annotation_downsample, a.annotation_mpp) == (0.25, 32.0, None)
    assert a.annotations == (tmp_path / "a.geojson", tmp_path / "a.xml")
    assert (b.mpp, b.annotation_downsample, b.annotation_mpp, b.annotations) == (None, None, 0.5, ())
    for row, problem in (("a.svs,-1,,", r"`mpp` '-1' is not a positive number"),
                         ("a.svs,,x,", r"`annotation_downsample` 'x' is not a positive number"),
                         ("a.svs,,2,0.5", r"both `annotation_downsample` and `annotation_mpp`")):
        manifest.write_text(f"path,mpp,annotation_downsample,annotation_mpp\n{row}\n")
        with pytest.raises(ArchiveError, match=rf"manifest\.csv line 2: {problem}"):
            read_archive(manifest)


def test_the_tile_stage_takes_the_manifest_mpp_over_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "bare.tiff"
    write_pyramid_tiff(path, IMAGE, None)
    config = PipelineConfig(tile=TileConfig(mpp=2.0, patch=64, slide_mpp=0.25))
    record = SlideRecord("bare", path, mpp=0.5)
    state = run_stage("tile", SlideState(record), Context(tmp_path / "out", tmp_path, config))
    assert state.failure is None
    attrs = dict(zarr.open_group(tmp_path / "out" / "slides" / "bare" / PATCHES, mode="r").attrs)
    assert (attrs["slide_mpp"], attrs["mpp_source"]) == (0.5, "manifest")

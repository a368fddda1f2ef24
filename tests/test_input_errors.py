"""Bad inputs end in one clear error naming the file: an unbounded tiling plan, a slide smaller
than a patch, a folder, an unreadable file, an unsupported codec, a missing annotation file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.config import PipelineConfig
from pipeline.stages import Context, SlideState, run_stage
from tiling.archive import SlideRecord
from tiling.config import TileConfig
from tiling.errors import SlideError
from tiling.samples.tiff import write_pyramid_tiff
from tiling.slide import open_slide
from tiling.store import PATCHES
from tiling.tile import tile_slide

IMAGE = np.full((512, 512, 3), 200, np.uint8)


@pytest.fixture
def small_slide(tmp_path: Path) -> Path:
    path = tmp_path / "small.tiff"
    write_pyramid_tiff(path, IMAGE, 0.5)
    return path


def test_a_plan_over_max_patches_fails_before_any_read(small_slide: Path, tmp_path: Path) -> None:
    config = TileConfig(mpp=1.0, patch=2, max_patches=1000)   # footprint 4 level-0 px: 128 x 128
    with pytest.raises(SlideError, match=r"small\.tiff: the slide is 512 x 512 px at 0\.5 µm/px \(from "
                       r"the file\): tiling it at 1 µm/px plans 16,384 patches .*tile\.max_patches = 1,000"):
        tile_slide(small_slide, tmp_path / "out", config)
    assert not (tmp_path / "out" / "slides" / "small" / PATCHES).exists()


def test_a_slide_smaller_than_one_patch_says_so(small_slide: Path, tmp_path: Path) -> None:
    with pytest.raises(SlideError, match=r"small\.tiff: .*smaller than one patch \(224 px at 4 µm/px "
                       r"= 1,792 level-0 px\)"):
        tile_slide(small_slide, tmp_path / "out", TileConfig(mpp=4.0, patch=224))


def test_a_folder_or_an_unreadable_file_is_not_called_missing_or_corrupt(
        small_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SlideError, match=rf"{tmp_path.name}: is a folder, not a slide file"):
        open_slide(tmp_path)
    monkeypatch.setattr("tiling.slide.os.access", lambda path, mode: False)   # tests run as root
    with pytest.raises(SlideError, match=r"small\.tiff: permission denied; give this user read access"):
        open_slide(small_slide)


def test_an_unsupported_codec_is_not_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "webp.tiff"
    with tifffile.TiffWriter(path) as tif:
        tif.write(IMAGE, tile=(256, 256), photometric="rgb", compression="webp", metadata=None,
                  resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with pytest.raises(SlideError, match=r"webp\.tiff: .*OpenSlide does not support its image "
                       r"compression \(Unsupported TIFF compression: 50001\); convert") as caught:
        open_slide(path).read_region((0, 0), 0, (64, 64))
    assert "corrupt" not in str(caught.value)


def test_a_missing_annotation_file_fails_the_tile_stage_naming_it(small_slide: Path, tmp_path: Path) -> None:
    gone = tmp_path / "notes" / "small.geojson"
    record = SlideRecord("small", small_slide, (1,), (gone,))
    state = run_stage("tile", SlideState(record), Context(tmp_path / "out", tmp_path, PipelineConfig()))
    assert state.failure is not None and state.failure["stage"] == "tile"
    assert state.failure["message"].startswith(f"{gone}: no such annotation file")
    assert not (tmp_path / "out" / "slides" / "small" / PATCHES).exists()

"""Level reads copied from decoded TIFF tiles: OpenSlide's pixels, or left to OpenSlide."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from conftest import manifest_rows, on_white, shared_file
from tiling.slide import open_slide
from tiling.tiff_tiles import TiffTiles


def regions(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) level regions: one tile, across four tiles, over the right and bottom edges."""
    return [(0, 0, tile, tile), (tile // 2, tile // 3, tile + 7, tile + 5),
            (width - 100, height // 2, 224, 150), (width // 2, height - 50, 300, 224)]


@pytest.mark.parametrize("which", ["sample", "aperio"])
def test_every_level_equals_openslide_read_region(which: str, sample_archive: Path) -> None:
    sample = Path(manifest_rows(sample_archive)[0]["path"])
    path = shared_file("CMU-1-Small-Region.svs") if which == "aperio" else sample
    with openslide.OpenSlide(path) as osr, tifffile.TiffFile(path) as tif:
        tiles = TiffTiles(path, tuple(osr.level_dimensions), tuple(osr.level_downsamples))
        assert sorted(tiles.pages) == list(range(osr.level_count))
        for level, (width, height) in enumerate(osr.level_dimensions):
            downsample = osr.level_downsamples[level]
            for x, y, w, h in regions(width, height, tif.pages[0].tilewidth):
                location = (round(x * downsample), round(y * downsample))
                got = tiles.read(location, level, (w, h))
                assert got is not None and got.shape == (h, w, 3) and got.dtype == np.uint8
                np.testing.assert_array_equal(got, on_white(osr.read_region(location, level, (w, h))))
        tiles.close()


def test_reads_it_cannot_copy_exactly_are_left_to_openslide(sample_archive: Path, tmp_path: Path) -> None:
    path = Path(manifest_rows(sample_archive)[0]["path"])
    with open_slide(path) as slide, openslide.OpenSlide(path) as osr:
        tiles = TiffTiles(path, slide.level_dimensions, slide.level_downsamples)
        assert tiles.read((3, 4), 1, (64, 64)) is None              # level 1 starts on even level-0 px
        assert tiles.read((2, 4), 1, (64, 64)) is not None
        tiles.close()
        np.testing.assert_array_equal(slide.read_region((3, 5), 1, (40, 30)),
                                      on_white(osr.read_region((3, 5), 1, (40, 30))))
    deflate = tmp_path / "deflate.tiff"
    tifffile.imwrite(deflate, np.zeros((512, 512, 3), np.uint8), tile=(256, 256), compression="zlib")
    assert TiffTiles(deflate, ((512, 512),), (1.0,)).pages == {}    # not JPEG: OpenSlide reads it
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    assert TiffTiles(text, ((512, 512),), (1.0,)).pages == {}

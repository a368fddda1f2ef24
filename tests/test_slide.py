"""Reading slides: generated pyramidal TIFFs and a real Aperio slide through OpenSlide, arrays."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
from skimage.transform import resize

from conftest import SAMPLE_SIZE, manifest_rows, shared_file
from tiling.errors import SlideError
from tiling.samples.tiff import write_pyramid_tiff
from tiling.slide import ArraySlide, open_slide


def first_slide(sample_archive: Path) -> Path:
    return Path(manifest_rows(sample_archive)[0]["path"])


def openslide_rgb(path: Path, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    with openslide.OpenSlide(path) as osr:
        return np.asarray(osr.read_region(location, level, size))[..., :3]


def test_sample_slide_levels_and_mpp_as_openslide_reports_them(sample_archive: Path) -> None:
    path = first_slide(sample_archive)
    with openslide.OpenSlide(path) as osr:
        assert osr.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
    with open_slide(path) as slide:
        assert slide.path == path
        assert slide.dimensions == (SAMPLE_SIZE, SAMPLE_SIZE * 3 // 4)
        assert slide.level_count >= 3
        assert slide.level_downsamples[:3] == (1.0, 2.0, 4.0)
        assert slide.level_dimensions[1] == (SAMPLE_SIZE // 2, SAMPLE_SIZE * 3 // 8)
        assert slide.mpp == pytest.approx(0.5)


def test_read_at_mpp_reads_the_best_level_then_resizes(sample_archive: Path) -> None:
    path = first_slide(sample_archive)
    with open_slide(path) as slide:
        assert [slide.best_level(m) for m in (0.2, 0.5, 0.9, 1.0, 1.5, 2.0, 1e3)] == \
            [0, 0, 0, 1, 1, 2, slide.level_count - 1]
        exact = slide.read_at_mpp((800, 600), (100, 80), 1.0)
        np.testing.assert_array_equal(exact, openslide_rgb(path, (800, 600), 1, (100, 80)))
        resized = slide.read_at_mpp((800, 600), (64, 48), 1.5)   # level 1, 96 x 72 px read
    assert resized.shape == (48, 64, 3) and resized.dtype == np.uint8
    reference = resize(openslide_rgb(path, (800, 600), 1, (96, 72)), (48, 64), anti_aliasing=True,
                       preserve_range=True)
    assert np.abs(resized - reference).mean() < 4


def test_array_slide_poses_as_a_one_level_slide() -> None:
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    with ArraySlide(image, mpp=0.5) as slide:
        assert slide.path is None and slide.dimensions == (80, 60) and slide.level_count == 1
        region = slide.read_region((70, 50), 0, (20, 15))       # runs off the bottom-right corner
        np.testing.assert_array_equal(region[:10, :10], image[50:60, 70:80])
        assert (region[10:] == 255).all() and (region[:, 10:] == 255).all()
        half = slide.read_at_mpp((0, 0), (40, 30), 1.0)
        assert half.shape == (30, 40, 3)
        assert abs(half.astype(float).mean() - image.mean()) < 3
        assert slide.thumbnail(20).shape == (15, 20, 3)
    with pytest.raises(SlideError, match="uint8 RGB"):
        ArraySlide(image.astype(np.float32), mpp=0.5)


def test_thumbnail_averages_the_pixels_each_of_its_pixels_covers() -> None:
    blocks = np.random.default_rng(1).integers(1, 255, (15, 20, 3))
    image = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)  # each 4 x 4 block: its value +- 1
    image[0::2] += 1
    image[1::2] -= 1
    with ArraySlide(image.astype(np.uint8), mpp=0.5) as slide:
        np.testing.assert_array_equal(slide.thumbnail(20), blocks)


def test_real_aperio_slide_opens_with_its_mpp() -> None:
    path = shared_file("CMU-1-Small-Region.svs")
    with open_slide(path) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.mpp == pytest.approx(0.499)
        np.testing.assert_array_equal(slide.read_region((1000, 1200), 0, (50, 40)),
                                      openslide_rgb(path, (1000, 1200), 0, (50, 40)))
        assert slide.thumbnail(300).shape == (300, 224, 3)


def test_unreadable_files_raise_slide_error_naming_the_file(tmp_path: Path, sample_archive: Path) -> None:
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n")
    with pytest.raises(SlideError, match=r"notes\.svs: OpenSlide cannot read it"):
        open_slide(text)
    with pytest.raises(SlideError, match=r"missing\.tiff: no such slide file"):
        open_slide(tmp_path / "missing.tiff")
    data = first_slide(sample_archive).read_bytes()
    for keep in (len(data) // 3, len(data) - 5000):    # cut in level 0, in the last level
        truncated = tmp_path / f"truncated-{keep}.tiff"
        truncated.write_bytes(data[:keep])
        # the cut shows when the slide is opened or when a level is read, whichever comes first
        with pytest.raises(SlideError, match=rf"truncated-{keep}\.tiff: .*truncated"):  # noqa: PT012, SIM117
            with open_slide(truncated) as slide:
                for level in range(slide.level_count):
                    slide.read_region((0, 0), level, slide.level_dimensions[level])


def test_slide_without_mpp_needs_one_given(tmp_path: Path) -> None:
    path = tmp_path / "no-mpp.tiff"
    write_pyramid_tiff(path, np.full((512, 512, 3), 200, np.uint8), mpp=None)
    with pytest.raises(SlideError, match=r"no-mpp\.tiff: .*records no resolution.*--slide-mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.level_count == 3


def test_slide_pickles_by_path(sample_archive: Path, tmp_path: Path) -> None:
    path = shutil.copy(first_slide(sample_archive), tmp_path / "copy.tiff")
    with open_slide(path) as slide:
        clone = pickle.loads(pickle.dumps(slide))
        np.testing.assert_array_equal(clone.read_region((0, 0), 2, (32, 32)), slide.read_region((0, 0), 2, (32, 32)))
        clone.close()

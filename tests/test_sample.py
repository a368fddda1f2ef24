"""The sample-slide generator: manifest, files, determinism, what the slides show."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import openslide
import pytest
from click.testing import CliRunner
from scipy.ndimage import binary_dilation

from conftest import manifest_rows
from pipeline.cli import main
from tiling.annotations import rasterize_lesions, read_classified
from tiling.config import TileConfig
from tiling.samples.archives import write_sample_archive
from tiling.samples.draw import STROMA, draw_slide, swatches
from tiling.samples.tiff import TILE
from tiling.slide import open_slide
from tiling.store import file_sha256, open_patch_store
from tiling.tile import tile_slide
from tiling.tissue import saturation, tissue_mask


def test_manifest_lists_slides_and_annotations(sample_archive: Path) -> None:
    with open(sample_archive, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["slide_id", "path", "label", "annotation", "annotation_xml", "ink"]
    assert [r["slide_id"] for r in rows] == ["sample_000", "sample_001", "sample_002", "sample_003"]
    assert [r["label"] for r in rows] == ["1", "0", "1", "0"]
    assert [r["ink"] for r in rows] == ["1", "1", "0", "0"]
    for row in rows:
        for key in ("path", "annotation", "annotation_xml"):
            assert not Path(row[key]).is_absolute() and (sample_archive.parent / row[key]).is_file()
    for row in manifest_rows(sample_archive):
        assert (len(read_classified(Path(row["annotation"]))[0]) > 0) == (row["label"] == "1")


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def digests(folder: Path, seed: int) -> dict[str, str]:
        write_sample_archive(folder, slides=2, seed=seed, size=1024)
        return {p.name: file_sha256(p) for p in sorted(folder.iterdir())}

    first = digests(tmp_path / "a", 7)
    assert len(first) == 2 * 3 + 2                      # 2 x (tiff, geojson, xml), manifest, stamp
    assert digests(tmp_path / "b", 7) == first
    other = digests(tmp_path / "c", 8)
    assert other["sample_000.tiff"] != first["sample_000.tiff"]


def test_rerun_with_same_arguments_is_skipped(tmp_path: Path) -> None:
    manifest = write_sample_archive(tmp_path, slides=1, seed=0, size=1024)
    slide = tmp_path / "sample_000.tiff"
    before = slide.stat().st_mtime_ns
    assert write_sample_archive(tmp_path, slides=1, seed=0, size=1024) == manifest
    assert slide.stat().st_mtime_ns == before
    slide.unlink()                                       # a missing file is rewritten
    write_sample_archive(tmp_path, slides=1, seed=0, size=1024)
    assert slide.is_file()


def test_lesions_are_dark_purple_and_stroma_pink(sample_archive: Path) -> None:
    row = manifest_rows(sample_archive)[0]
    with open_slide(Path(row["path"])) as slide:
        image = slide.read_region((0, 0), 2, slide.level_dimensions[2]).astype(float)
    lesion = rasterize_lesions(read_classified(Path(row["annotation"]))[0], image.shape[:2], 4.0)
    tissue = saturation(image.astype(np.uint8)) > 0.15
    stroma = tissue & ~lesion
    assert lesion.sum() > 0.02 * lesion.size and stroma.sum() > 0.2 * lesion.size
    red, green, blue = (image[..., c] for c in range(3))
    assert image[lesion].mean() < image[stroma].mean() - 40           # darker
    assert (blue - red)[lesion].mean() > 30 > (blue - red)[stroma].mean()   # purple vs pink
    assert red[stroma].mean() > green[stroma].mean() + 40
    glass = ~tissue
    assert image[glass].mean() > 235                                 # bright glass around


def test_ink_is_drawn_only_when_asked(tmp_path: Path) -> None:
    plain = draw_slide(np.random.default_rng(3), (384, 512), 1.0, 2.0, positive=False, ink=False)
    inked = draw_slide(np.random.default_rng(3), (384, 512), 1.0, 2.0, positive=False, ink=True)
    changed = (plain.image != inked.image).any(axis=2)
    assert 0.003 < changed.mean() < 0.2                   # one stroke, everything else identical
    assert (inked.image[changed].sum(axis=1) < plain.image[changed].sum(axis=1)).all()
    manifest = write_sample_archive(tmp_path, slides=4, seed=1, size=1024, ink_correlated=True)
    assert [(r["label"], r["ink"]) for r in manifest_rows(manifest)] == [("1", "1"), ("0", "0")] * 2


@pytest.mark.slow
def test_default_size_gives_a_few_hundred_tissue_patches(tmp_path: Path) -> None:
    manifest = write_sample_archive(tmp_path / "archive", slides=1, seed=0)
    row = manifest_rows(manifest)[0]
    with open_slide(Path(row["path"])) as slide:
        assert slide.level_count >= 4
    store = open_patch_store(tile_slide(Path(row["path"]), tmp_path / "out", TileConfig()))
    assert 100 <= len(store) <= 400


def test_cli_writes_the_archive(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sample", str(tmp_path), "--slides", "2", "--seed", "3",
                                       "--size", "1024"])
    assert result.exit_code == 0, result.output
    assert "manifest.csv" in result.output
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"sample_00{i}.{ext}" for i in range(2) for ext in ("tiff", "geojson", "xml")]
        + ["manifest.csv", "sample.json"])


def test_large_slide_opens_with_its_size_resolution_tissue_and_lesions(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sample", str(tmp_path), "--large", "--size", "8192"])
    assert result.exit_code == 0, result.output
    row = manifest_rows(tmp_path / "manifest.csv")[0]
    with openslide.OpenSlide(row["path"]) as osr:
        assert osr.dimensions == (8192, 6144)
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert osr.level_count >= 4 and osr.level_downsamples[1] == pytest.approx(2)
        image = np.asarray(osr.read_region((0, 0), 2, osr.level_dimensions[2]))[..., :3]
    assert 0.2 < tissue_mask(image).mean() < 0.4                      # about 30 % tissue
    lesion = rasterize_lesions(read_classified(Path(row["annotation"]))[0], image.shape[:2], 4.0)
    stroma = tissue_mask(image) & ~binary_dilation(lesion, iterations=8)
    assert lesion.sum() > 0 and image[lesion].mean() < image[stroma].mean() - 40   # dark lesions
    squares = swatches(np.random.default_rng(0), TILE, 1.0)            # the JPEGs decode to the squares
    assert np.abs(image[stroma].mean(0) - squares[STROMA].reshape(-1, 3).mean(0)).max() < 4


def test_lesion_contrast_makes_lesions_subtle_and_smaller() -> None:
    def drawn(contrast: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = draw_slide(np.random.default_rng([3, 0]), (384, 512), px_um=8.0, downsample=16.0, positive=True,
                       ink=False, lesion_contrast=contrast)
        lesion = rasterize_lesions(d.lesions, (384, 512), 16.0)
        return d.image.astype(np.float64), lesion, saturation(d.image) > 0.2

    image, lesion, tissue = drawn(1.0)
    subtle, small, _ = drawn(0.3)
    stroma = tissue & ~lesion & ~small

    def gap(img: np.ndarray, where: np.ndarray) -> float:
        return float(np.abs(img[where].mean(0) - img[stroma].mean(0)).sum())  # summed RGB difference

    assert gap(subtle, small) < 0.5 * gap(image, lesion)
    assert 0.3 < small.sum() / lesion.sum() < 0.6                    # radius x (1 + 0.3) / 2: area ~ 0.42
    with pytest.raises(ValueError, match="lesion contrast"):
        write_sample_archive(Path("unused"), slides=1, seed=0, size=1024, lesion_contrast=0.0)

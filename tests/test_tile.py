"""Tiling slides into patch stores: contents against OpenSlide, tissue selection, reruns, bad input."""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from click.testing import CliRunner
from skimage.transform import resize

from conftest import SAMPLE_SIZE, manifest_rows, on_white, shared_file
from pipeline.cli import main
from tiling.annotations import read_classified
from tiling.artefacts import artefact_shares, dominant_kind
from tiling.config import TileConfig
from tiling.errors import SlideError
from tiling.grid import grid_coords
from tiling.samples.tiff import write_pyramid_tiff
from tiling.slide import open_slide
from tiling.store import PATCHES, file_sha256, open_patch_store, read_stamp
from tiling.store.patches import FORMAT_VERSION
from tiling.threads import stage_threads
from tiling.tile import MASK_SIDES, plan_patches, tile_slide
from tiling.tissue import saturation

SMALL = TileConfig(mpp=1.5, patch=96, chunk=8)        # level 1 (1.0 µm/px) read at 144 px, resized


def slide_path(sample_archive: Path, index: int = 0) -> Path:
    return Path(manifest_rows(sample_archive)[index]["path"])


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_store_layout_and_attrs(tile_sample: Callable[..., Path], sample_archive: Path) -> None:
    store = open_patch_store(tile_sample(0))
    n = len(store)
    assert n > 5
    assert store.patches.shape == (n, 224, 224, 3) and store.patches.dtype == np.uint8
    assert store.patches.chunks == (64, 224, 224, 3)
    assert store.coords.shape == (n, 2) and store.tissue.shape == (n,)
    assert (store.tissue >= 0.5).all() and (store.tissue <= 1).all()
    width, height = SAMPLE_SIZE, SAMPLE_SIZE * 3 // 4
    assert (store.coords >= 0).all() and (store.coords[:, 0] < width).all() and (store.coords[:, 1] < height).all()
    path = slide_path(sample_archive)
    expected = {"source_path": str(path.resolve()), "source_sha256": file_sha256(path), "slide_id": "sample_000",
                "mpp": 1.0, "slide_mpp": 0.5, "level": 1, "patch_size": 224, "stride": 224,
                "footprint": 448.0, "dimensions": [width, height]}
    assert {k: store.attrs[k] for k in expected} == expected
    assert read_stamp(store.path)["source_sha256"] == file_sha256(path)
    assert store.attrs["format_version"] == FORMAT_VERSION


def test_store_keeps_the_thumbnail_of_the_tissue_mask(tile_sample: Callable[..., Path],
                                                      sample_archive: Path) -> None:
    store = open_patch_store(tile_sample(0))
    thumb = store.thumbnail[...]
    assert thumb.dtype == np.uint8 and thumb.shape[2] == 3
    assert MASK_SIDES[0] <= max(thumb.shape[:2]) <= MASK_SIDES[1]
    with open_slide(slide_path(sample_archive)) as slide:
        np.testing.assert_array_equal(thumb, plan_patches(slide, TileConfig())[3])


def test_patches_equal_openslide_read_region(tile_sample: Callable[..., Path], sample_archive: Path) -> None:
    path = slide_path(sample_archive)
    exact = open_patch_store(tile_sample(0))                     # mpp 1.0 = level 1: no resize
    resized = open_patch_store(tile_sample(0, SMALL))
    assert resized.attrs["level"] == 1 and resized.patches.chunks[0] == 8
    with openslide.OpenSlide(path) as osr:
        for i in range(len(exact)):
            x, y = exact.coords[i].tolist()
            np.testing.assert_array_equal(exact.patches[i], on_white(osr.read_region((x, y), 1, (224, 224))))
        for i in range(0, len(resized), 7):
            x, y = resized.coords[i].tolist()
            region = on_white(osr.read_region((x, y), 1, (144, 144)))
            expected = resize(region, (96, 96), anti_aliasing=True, preserve_range=True)
            assert np.abs(resized.patches[i] - expected).mean() < 4
            level0 = on_white(osr.read_region((x, y), 0, (288, 288)))     # other JPEG data
            expected = resize(level0, (96, 96), anti_aliasing=True, preserve_range=True)
            assert np.abs(resized.patches[i] - expected).mean() < 8


def test_glass_is_dropped_and_tissue_kept(tile_sample: Callable[..., Path], sample_archive: Path) -> None:
    store = open_patch_store(tile_sample(0, SMALL))
    with open_slide(slide_path(sample_archive)) as slide:
        size = SMALL.patch * SMALL.mpp / slide.mpp
        every = grid_coords(slide.dimensions, size, size)
        kept = {tuple(c) for c in store.coords.tolist()}
        dropped = np.array([c for c in every.tolist() if tuple(c) not in kept])
        on_artefact = dominant_kind(artefact_shares(store.artefacts.labels, slide.dimensions, dropped, size)) > 0
        dropped = dropped[~on_artefact].tolist()   # glass; pen ink and folds are left out too (stained)
        assert len(dropped) > 0.2 * len(every) and len(kept) > 0.2 * len(every)
        for coords, has_tissue in ((store.coords.tolist(), True), (dropped, False)):
            for x, y in coords[::3]:
                stained = (saturation(slide.read_at_mpp((x, y), (96, 96), SMALL.mpp)) > 0.15).mean()
                assert stained > 0.3 if has_tissue else stained < 0.7
    cx, cy = read_classified(Path(manifest_rows(sample_archive)[0]["annotation"]))[0][0].exterior.mean(axis=0)
    assert any(x <= cx < x + size and y <= cy < y + size for x, y in store.coords.tolist())


def test_overlapping_stride(tile_sample: Callable[..., Path]) -> None:
    plain = open_patch_store(tile_sample(0, SMALL))
    overlap = open_patch_store(tile_sample(0, TileConfig(mpp=1.5, patch=96, stride=48, chunk=8)))
    assert overlap.attrs["stride"] == 48 and overlap.attrs["footprint"] == 288
    assert (overlap.coords % 144 == 0).all() and ((overlap.coords // 144) % 2 == 1).any()
    assert 3 * len(plain) < len(overlap) < 5 * len(plain)


def test_rerun_skips_and_a_changed_config_recomputes(sample_archive: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = slide_path(sample_archive, 1)
    store = tile_slide(path, tmp_path, SMALL)
    assert store == tmp_path / "slides" / "sample_001" / PATCHES
    stamp_file = store / "zarr.json"
    before = stamp_file.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="tiling.tile"):
        assert tile_slide(path, tmp_path, SMALL) == store
    assert "up to date" in caplog.text and stamp_file.stat().st_mtime_ns == before
    stricter = TileConfig(mpp=1.5, patch=96, chunk=8, min_tissue=0.9)
    tile_slide(path, tmp_path, stricter)
    assert len(open_patch_store(store)) < len(open_patch_store(tile_slide(path, tmp_path / "b", SMALL)))
    assert sorted(p.name for p in store.parent.iterdir()) == [PATCHES]      # no temporaries left


@pytest.mark.slow
def test_distributed_client_writes_the_same_store_and_cleans_up_failures(
        tile_sample: Callable[..., Path], sample_archive: Path, shared_cluster: str, tmp_path: Path) -> None:
    from distributed import Client

    damaged = damaged_copy(slide_path(sample_archive), tmp_path / "damaged.tiff")
    with Client(shared_cluster):
        remote = open_patch_store(tile_slide(slide_path(sample_archive), tmp_path, SMALL))
        with pytest.raises(SlideError, match=r"damaged\.tiff: reading level 1"):
            tile_slide(damaged, tmp_path / "failed", TileConfig(chunk=4))
    assert files_under(tmp_path / "failed") == []
    local = open_patch_store(tile_sample(0, SMALL))
    np.testing.assert_array_equal(remote.coords, local.coords)
    np.testing.assert_array_equal(remote.patches[:], local.patches[:])


def test_real_aperio_slide(tmp_path: Path) -> None:
    path = shared_file("CMU-1-Small-Region.svs")
    config = TileConfig(mpp=2.0, patch=64, chunk=16)
    store = open_patch_store(tile_slide(path, tmp_path, config))
    assert store.attrs["level"] == 0 and store.attrs["slide_mpp"] == pytest.approx(0.499)
    assert len(store) > 20 and len(store) == len(store.tissue)
    read = round(64 * 2.0 / 0.499)
    with openslide.OpenSlide(path) as osr:
        for i in (0, len(store) // 2, len(store) - 1):
            x, y = store.coords[i].tolist()
            region = on_white(osr.read_region((x, y), 0, (read, read)))
            expected = resize(region, (64, 64), anti_aliasing=True, preserve_range=True)
            assert np.abs(store.patches[i] - expected).mean() < 6


def test_slide_without_tissue_gives_an_empty_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    glass = np.random.default_rng(0).normal(244, 2, (768, 1024, 3)).clip(0, 255).astype(np.uint8)
    path = tmp_path / "blank.tiff"
    write_pyramid_tiff(path, glass, mpp=0.5, upsample_first=True)
    with caplog.at_level(logging.WARNING, logger="tiling.tile"):
        store = open_patch_store(tile_slide(path, tmp_path / "out", TileConfig()))
    assert "no tissue" in caplog.text and "blank.tiff" in caplog.text
    assert len(store) == 0 and store.patches.shape == (0, 224, 224, 3) and store.coords.shape == (0, 2)


def test_unreadable_slides_fail_and_leave_nothing(sample_archive: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    data = slide_path(sample_archive).read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[:len(data) // 2])
    for bad, problem in ((text, "OpenSlide cannot read it"), (cut, "truncated"),
                         (tmp_path / "absent.tiff", "no such slide file")):
        out = tmp_path / f"out-{bad.stem}"
        with pytest.raises(SlideError, match=rf"{re.escape(bad.name)}: .*{re.escape(problem)}"):
            tile_slide(bad, out, TileConfig())
        assert files_under(out) == []


def damaged_copy(source: Path, path: Path) -> Path:
    """A copy of `source` whose thumbnail levels are intact but half of whose level-1 tiles (the
    patches' level) are zeroed: tiling opens it and plans its grid, then patch blocks fail."""
    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tif:
        page = tif.pages[1]
        for offset, count in list(zip(page.dataoffsets, page.databytecounts, strict=True))[len(page.dataoffsets) // 2:]:
            data[offset:offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    return path


def test_failure_while_reading_patches_removes_the_partial_store(sample_archive: Path, tmp_path: Path) -> None:
    damaged = damaged_copy(slide_path(sample_archive), tmp_path / "damaged.tiff")
    with pytest.raises(SlideError, match=r"damaged\.tiff: reading level 1"):
        tile_slide(damaged, tmp_path / "out", TileConfig(chunk=4))
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize(("value", "threads"), [("3", 3), ("4,2", 4), ("0", 1), ("many", None), (None, None)])
def test_reads_take_the_threads_a_launcher_shares_out(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                                      threads: int | None) -> None:
    """The pipeline's LocalCluster sets OMP_NUM_THREADS = cores // workers on each worker."""
    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert stage_threads() == (threads or os.cpu_count())


def test_cli_tile(sample_archive: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["tile", str(slide_path(sample_archive)), "--out", str(tmp_path),
                                  "--mpp", "2", "--patch", "64", "--stride", "32", "--min-tissue", "0.8"])
    assert result.exit_code == 0, result.output
    store = open_patch_store(tmp_path / "slides" / "sample_000")
    assert f"{len(store)} patches of 64 px" in result.output and store.attrs["stride"] == 32
    bad = tmp_path / "slide.svs"
    bad.write_text("text")
    result = runner.invoke(main, ["tile", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 3 and "slide.svs: OpenSlide cannot read it" in result.output
    assert "Traceback" not in result.output
    nompp = tmp_path / "nompp.tiff"
    write_pyramid_tiff(nompp, np.full((512, 512, 3), 128, np.uint8), mpp=None)
    result = runner.invoke(main, ["tile", str(nompp), "--out", str(tmp_path)])
    assert result.exit_code == 3 and "--slide-mpp" in result.output
    result = runner.invoke(main, ["tile", str(nompp), "--out", str(tmp_path), "--slide-mpp", "0.5"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["tile", str(nompp), "--out", str(tmp_path), "--slide-id", "../escape"])
    assert result.exit_code == 2 and "--slide-id: slide id '../escape' is not a usable folder name" in result.output
    assert not (tmp_path / "escape").exists()
    result = runner.invoke(main, ["tile", str(nompp), "--out", str(tmp_path), "--min-tissue", "2"])
    assert result.exit_code == 2 and "min_tissue = 2.0: must be a fraction in [0, 1]" in result.output

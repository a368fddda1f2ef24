"""Stores that prove they are whole: a truncated or bit-flipped chunk in patches.zarr, explain.zarr
or maps.zarr, made by the real pipeline on generated sample slides, is found by the next run (the
ledger's check before Dask starts, or the stage's own), said in one line naming the store and the
file, removed and computed again from the slide; what is recomputed equals what was damaged.
`explain` alone on a damaged patch store exits 3 with that line, not as a bug.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from explainers.config import ExplainConfig
from explainers.explain import explain_store
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import EXIT_SLIDES_FAILED
from pipeline.runner import run_archive
from tiling.config import TileConfig
from tiling.errors import StoreError
from tiling.samples.archives import write_sample_archive
from tiling.store import EXPLAIN, MAPS, PATCHES, damage, open_patch_store, seal
from tiling.store.explain import read_embeddings
from tiling.store.maps import open_maps
from tiling.tile import tile_slide

pytestmark = pytest.mark.slow

SIZE = 1536  # level-0 px wide at 0.5 µm/px: a few of the SMALL model's patches
DAMAGED = "sample_000"
STORES = (PATCHES, EXPLAIN, MAPS)


def truncate(path: Path) -> None:
    """Cut the file to half its size, as a write stopped halfway would."""
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def flip(path: Path) -> None:
    """Flip one bit in the middle of the file, in place (same size)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    with open(path, "r+b") as f:
        f.write(data)


def flip_keeping_times(path: Path) -> None:
    """`flip`, then the file's access and modification times put back: only its ctime tells."""
    st = path.stat()
    flip(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def chunk_file(store: Path, array: str) -> Path:
    """The first chunk file of `array` (a path in the store) in the zarr `store`."""
    return next(p for p in sorted((store / array).rglob("*")) if p.is_file() and p.name != "zarr.json")


def contents(store: Path) -> dict[str, np.ndarray]:
    """Every array of a zarr store, by its path in the store."""
    group = zarr.open_group(store, mode="r")
    return {name: np.asarray(member[...]) for name, member in group.members(max_depth=None)
            if isinstance(member, zarr.Array)}


def audit_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "audit.csv", newline="") as f:
        return list(csv.DictReader(f))


def damage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ": damaged: " in r.getMessage()]


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manifest.csv of 2 tiny sample slides (seed 5)."""
    return write_sample_archive(tmp_path_factory.mktemp("tiny"), slides=2, seed=5, size=SIZE)


@pytest.mark.parametrize("harm", [truncate, flip])
def test_a_damaged_chunk_in_each_store_is_found_by_the_next_run_and_recomputed(
        harm: Callable[[Path], None], tiny_archive: Path, model_dir: Path, shared_cluster: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(overrides={"run.scheduler": shared_cluster, "stitch.max_side": 256,
                                    "impressions.steps": 0, "explain.device": "cpu"})
    out = tmp_path / "out"
    assert run_archive(tiny_archive, model_dir, out, config).exit_code == 0
    folder = out / "slides" / DAMAGED
    whole = {name: contents(folder / name) for name in STORES}
    rows = audit_rows(out)
    damaged = {PATCHES: chunk_file(folder / PATCHES, "patches"), EXPLAIN: chunk_file(folder / EXPLAIN, "gradcam"),
               MAPS: chunk_file(folder / MAPS, f"{open_maps(folder).attrs['images']['attention']}/0")}
    for path in damaged.values():
        harm(path)

    with caplog.at_level(logging.WARNING):
        again = run_archive(tiny_archive, model_dir, out, config)  # the next run: the ledger's check
    assert again.exit_code == 0 and not again.failed
    lines = damage_lines(caplog)
    assert len(lines) == len(STORES), lines  # one line per damaged store
    for name, path in damaged.items():
        [line] = [x for x in lines if f"{folder / name}: damaged: " in x]
        assert path.relative_to(folder / name).as_posix() in line and "computing it again" in line
    [state] = [s for s in again.states if s.record.slide_id == DAMAGED]
    assert [state.stages[s] for s in ("tile", "explain", "stitch", "audit")] == [
        "computed", "computed", "computed", "current"]
    for name in STORES:  # computed again from the slide: the same values as before the damage
        recomputed = contents(folder / name)
        assert recomputed.keys() == whole[name].keys()
        for array, values in whole[name].items():
            np.testing.assert_array_equal(recomputed[array], values, err_msg=f"{name}/{array}")
        assert damage(folder / name) is None
    assert audit_rows(out) == rows

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        third = run_archive(tiny_archive, model_dir, out, config)
    assert len(third.current) == 2 and not damage_lines(caplog)  # repaired: a no-op again


def test_a_stage_finds_its_own_damaged_store_even_when_only_the_ctime_changed(
        tiny_archive: Path, model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No ledger here (the `tile` and `explain` commands): the stage's own stamp check finds it."""
    slide = next(tiny_archive.parent.rglob(f"{DAMAGED}.tif*"))
    tile_config = TileConfig(mpp=3.5, patch=64, chunk=1)
    store = tile_slide(slide, tmp_path, tile_config)
    explained = explain_store(store.parent, model_dir, ExplainConfig(methods=("gradcam",), device="cpu"))
    patches, explanation = contents(store), contents(explained)
    assert len(patches["patches"]) > 1  # several chunks: the first one damaged
    hit = chunk_file(store, "patches")
    flip_keeping_times(hit)
    embeddings = chunk_file(explained, "embeddings")
    flip_keeping_times(embeddings)

    with pytest.raises(StoreError, match=f"{store}: damaged: patches/{hit.name} fails its crc32c check"):
        open_patch_store(store)
    assert read_embeddings(explained, zarr.open_group(explained).attrs["encoder_stamp"], len(patches["coords"])) is None
    with caplog.at_level(logging.WARNING, logger="tiling.store.stamps"):
        tile_slide(slide, tmp_path, tile_config)
        explain_store(store.parent, model_dir, ExplainConfig(methods=("gradcam",), device="cpu"))
    assert damage_lines(caplog) == [
        f"{store}: damaged: patches/{hit.name} fails its crc32c check (changed since written); "
        "removing it and computing it again",
        f"{explained}: damaged: embeddings/{embeddings.relative_to(explained / 'embeddings').as_posix()} fails "
        "its crc32c check (changed since written); removing it and computing it again"]
    for before, path in ((patches, store), (explanation, explained)):
        after = contents(path)
        assert after.keys() == before.keys()
        for array, values in before.items():
            np.testing.assert_array_equal(after[array], values, err_msg=array)


def test_a_copied_store_is_whole_and_a_file_left_out_is_named(tiny_archive: Path, tmp_path: Path) -> None:
    """A copy (every ctime new) is verified by its checksums and passes; a missing file is named."""
    slide = next(tiny_archive.parent.rglob(f"{DAMAGED}.tif*"))
    store = tile_slide(slide, tmp_path / "a", TileConfig(mpp=3.5, patch=64, chunk=1))
    copy = tmp_path / "b" / PATCHES
    shutil.copytree(store, copy)
    attrs = dict(zarr.open_group(copy).attrs)
    assert damage(copy, attrs) is None
    assert set(attrs["files"]) == set(seal(store)["files"]) and "zarr.json" not in attrs["files"]
    (copy / "tissue" / "zarr.json").unlink()
    assert damage(copy, attrs) == "tissue/zarr.json is missing"


def test_explain_alone_on_a_damaged_patch_store_says_which_file_and_exits_3(
        tiny_archive: Path, model_dir: Path, tmp_path: Path) -> None:
    slide = next(tiny_archive.parent.rglob(f"{DAMAGED}.tif*"))
    store = tile_slide(slide, tmp_path, TileConfig(mpp=3.5, patch=64, chunk=1))
    hit = chunk_file(store, "patches")
    truncate(hit)
    result = CliRunner().invoke(main, ["explain", str(store.parent), "--model", str(model_dir), "--device", "cpu"])
    assert result.exit_code == EXIT_SLIDES_FAILED, result.output
    assert f"{store}: damaged: patches/{hit.name} is " in result.output
    assert "run `slideaudit tile` (or `run`) on the slide again to recompute it" in result.output
    assert "Traceback" not in result.output and "bug" not in result.output
    assert hit.exists()  # an input of this command: left for `tile` to recompute

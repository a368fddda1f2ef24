"""Shared fixtures: a small sample archive (real pyramidal TIFFs) and patch stores tiled from it.

`sample_archive`: manifest.csv of 4 slides (seed 0, SAMPLE_SIZE px wide: 3072 x 2304 level-0 px
at 0.5 µm/px); slides 0 and 2 are positive. `tile_sample(index=0, config=TileConfig())` tiles
slide `index` with `config` and returns its patches.zarr (one store folder per config, so
different configs never overwrite each other; a repeated call is skipped by the stamp).
`sample_stores`: the OUT folder holding all 4 sample slides tiled with TileConfig()
(slides/<id>/patches.zarr), e.g. as `train(..., stores=)` so training tiles nothing.
`report_archive`: fake_stores.build_archive, stitched, audited and reported once per session.
`shared_cluster`: the address of one LocalCluster kept for the session; a run whose subject is not
the local cluster passes it as `run.scheduler` (`--scheduler`), so its workers start only once.
Session fixtures are shared: tests copy them before writing into them.
Per-tier timeouts (pytest-timeout): pyproject's `--timeout` is the fast tier's limit per test;
`slow`, `browser` and `airflow` tests get `TIER_TIMEOUT` s (`pytest_collection_modifyitems`).
"""
from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model
from tiling.config import TileConfig
from tiling.store import config_hash
from tiling.tile import tile_slide

SAMPLE_SIZE = 3072
# s per test (setup, call, teardown) of the slow, browser and airflow tiers; the fast tier's limit is
# `--timeout` in pyproject's addopts. A test's own @pytest.mark.timeout wins over both.
TIER_TIMEOUT = 900
SLOW_TIERS = ("slow", "browser", "airflow")
SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give the tests of the slow tiers `TIER_TIMEOUT` (or a larger `--timeout`), unless the timeout
    is off (`--timeout=0`) or the test sets its own."""
    limit = config.getoption("timeout", None)
    if not limit:  # no pytest-timeout, or the timeout turned off
        return
    tier_limit = max(TIER_TIMEOUT, float(limit))
    for item in items:
        if item.get_closest_marker("timeout") is None and any(item.get_closest_marker(m) for m in SLOW_TIERS):
            item.add_marker(pytest.mark.timeout(tier_limit))


def shared_file(name: str) -> Path:
    """A file of the shared real test data; fails the test clearly when it is missing."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the shared test data must be in ../shared/data (see its README)")
    return path


def on_white(region: object) -> np.ndarray:
    """An OpenSlide RGBA region composited on white (outside the slide it is transparent)."""
    rgba = np.asarray(region).astype(float)
    alpha = rgba[..., 3:] / 255
    return rgba[..., :3] * alpha + 255 * (1 - alpha)


def manifest_rows(manifest: Path) -> list[dict[str, str]]:
    """The manifest's rows with `path`, `annotation` and `annotation_xml` made absolute."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("path", "annotation", "annotation_xml"):
            row[key] = str(manifest.parent / row[key])
    return rows


@pytest.fixture(scope="session")
def sample_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manifest.csv of 4 small sample slides (seed 0)."""
    from tiling.samples.archives import write_sample_archive

    return write_sample_archive(tmp_path_factory.mktemp("sample"), slides=4, seed=0, size=SAMPLE_SIZE)


@pytest.fixture(scope="session")
def tile_sample(sample_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """tile_sample(index=0, config=TileConfig()) -> patches.zarr of that sample slide."""
    stores = tmp_path_factory.mktemp("stores")
    rows = manifest_rows(sample_archive)

    def tile(index: int = 0, config: TileConfig | None = None) -> Path:
        config = config or TileConfig()
        row = rows[index]
        return tile_slide(Path(row["path"]), stores / config_hash(config), config, slide_id=row["slide_id"])

    return tile


@pytest.fixture(scope="session")
def sample_stores(sample_archive: Path, tile_sample: Callable[..., Path]) -> Path:
    """OUT folder with slides/<id>/patches.zarr of every sample slide (TileConfig()); read-only."""
    stores = [tile_sample(i) for i in range(len(manifest_rows(sample_archive)))]
    return stores[0].parents[2]


@pytest.fixture(scope="session")
def report_archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fake_stores.build_archive: "positive", "evil", "broken" slide folders, "index", "csv"; read-only."""
    from fake_stores import build_archive

    return build_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[str]:
    """The scheduler address of a LocalCluster of 2 worker processes (1 thread each), kept for the session."""
    from distributed import LocalCluster

    from pipeline.cluster import THREAD_VARS

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      env={**dict.fromkeys(THREAD_VARS, "1"), "TQDM_DISABLE": "1"}) as cluster:
        yield cluster.scheduler_address


SMALL = ModelConfig(name="small", encoder_kwargs={"width": 4}, seed=1)   # 64 px at 3.5 µm/px


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained SMALL model folder (a test module may define its own `model_dir`)."""
    return save_model(build_model(SMALL), SMALL, tmp_path_factory.mktemp("model") / "small")


@pytest.fixture
def slide_dir(tile_sample: Callable[..., Path], tmp_path: Path) -> Path:
    """A private copy of a real tiled sample slide (224 px at 1 µm/px) in OUT/slides/<id>."""
    target = tmp_path / "out" / "slides" / "sample_000"
    shutil.copytree(tile_sample(0), target / "patches.zarr")
    return target

"""Benchmark: `tile_slide` against raw OpenSlide `read_region` of the same tiles.

Generates one large sample slide (or takes --slide, e.g. the 40x-size one `slideaudit sample
OUT --large` writes), tiles it with `tile_slide` (thumbnail, tissue mask, grid,
Dask-parallel reads, zarr writes, sha256 stamp: everything) and reads exactly the same tiles
with `openslide.OpenSlide.read_region` (same level and size, then the same resize) on a thread
pool of the same size. Prints tiles/s of each and their ratio (goal >= 0.8), the CPU time per
tile of each and their ratio (less sensitive to other load on the machine than wall time), and
the cores tile_slide kept busy (process CPU time / wall time). Best of --repeats runs, alternated.
tile_slide copies OpenSlide's pixels from the decoded TIFF tiles where it can (`tiling.tiff_tiles`):
for reads without resize the last column counts how many of CHECKED stored patches equal
OpenSlide's region composited on white (untimed).

    .venv/bin/python bench/tiling_throughput.py [--size 16384 | --slide PATH] [--repeats 5]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from unittest import mock

import numpy as np
import openslide

from pipeline.cluster import THREAD_VARS
from tiling.config import TileConfig
from tiling.samples.archives import write_sample_archive
from tiling.slide import on_white, read_size, resize_rgb
from tiling.store import PatchStore, open_patch_store
from tiling.tile import read_threads, tile_slide

CHECKED = 50  # stored patches compared with OpenSlide per config without resize
CONFIGS = {"mpp 1.0, patch 224": TileConfig(mpp=1.0, patch=224),  # a pyramid level: no resize
           "mpp 0.75, patch 224": TileConfig(mpp=0.75, patch=224)}  # between levels: resized


def run_tile_slide(slide: Path, out: Path, config: TileConfig) -> tuple[float, float, Path]:
    """(wall s, CPU s) of a fresh tile_slide run, and its store."""
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    store = tile_slide(slide, out, config)
    return time.perf_counter() - wall, time.process_time() - cpu, store


def run_raw(slide: Path, coords: np.ndarray, level: int, read_wh: tuple[int, int],
            patch: int) -> tuple[float, float]:
    """(wall s, CPU s) to read every tile with OpenSlide on `tiling.tile.read_threads` threads (one
    per core unless a launcher shares the cores out), then resize."""
    def read(xy: list[int]) -> np.ndarray:
        region = np.asarray(osr.read_region((xy[0], xy[1]), level, read_wh))[..., :3]
        return resize_rgb(region, (patch, patch))

    wall, cpu = time.perf_counter(), time.process_time()
    with openslide.OpenSlide(slide) as osr, ThreadPoolExecutor(read_threads()) as pool:
        for _ in pool.map(read, coords.tolist()):
            pass
    return time.perf_counter() - wall, time.process_time() - cpu


def _tile_copy(slide: Path, out: Path, config: TileConfig, copy: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    tile_slide(slide, out, config, slide_id=f"copy{copy}")


def run_archive(slide: Path, out: Path, config: TileConfig, coords: np.ndarray, level: int,
                read_wh: tuple[int, int], copies: int, repeats: int) -> tuple[float, float]:
    """(tile s, raw s), best of `repeats`: wall time to tile `copies` copies of `slide` (fresh
    stores) on one worker process per core, as `slideaudit run` tiles an archive (its LocalCluster
    workers share the cores out through THREAD_VARS, here one thread each, and show no progress
    bars), and to read the same tiles of every copy with `run_raw` on the same workers. Each
    worker first tiles one untimed copy (imports, first calls)."""
    cores = os.cpu_count() or 1
    tiled, raw = [], []
    # the workers inherit the environment they start with: the LocalCluster's, at one thread each
    with mock.patch.dict(os.environ, {**dict.fromkeys(THREAD_VARS, "1"), "TQDM_DISABLE": "1"}), \
            ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:
        for _ in pool.map(_tile_copy, *zip(*[(slide, out / "warm", config, i) for i in range(cores)], strict=True)):
            pass
        for _ in range(repeats):
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            for _ in pool.map(_tile_copy, *zip(*[(slide, out, config, i) for i in range(copies)], strict=True)):
                pass
            tiled.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in pool.map(run_raw, *zip(*[(slide, coords, level, read_wh, config.patch)] * copies, strict=True)):
                pass
            raw.append(time.perf_counter() - start)
    shutil.rmtree(out, ignore_errors=True)
    return min(tiled), min(raw)


def equal_patches(slide: Path, store: PatchStore, level: int) -> int:
    """How many of CHECKED evenly spaced patches of `store` equal OpenSlide's region on white."""
    size, equal = (store.attrs["patch_size"],) * 2, 0
    with openslide.OpenSlide(slide) as osr:
        for i in np.linspace(0, len(store) - 1, CHECKED).astype(int).tolist():
            x, y = store.coords[i].tolist()
            equal += np.array_equal(store.patches[i], on_white(osr.read_region((x, y), level, size)))
    return equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="level-0 width of the slide, px")
    parser.add_argument("--slide", type=Path, default=None, help="an existing slide to bench instead")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-tiling-"))
    start = time.perf_counter()
    slide = args.slide or write_sample_archive(work / "archive", slides=1, seed=0, size=args.size).parent / \
        "sample_000.tiff"
    with openslide.OpenSlide(slide) as osr:
        print(f"slide {osr.dimensions[0]} x {osr.dimensions[1]} px, {osr.level_count} levels, "
              f"{slide.stat().st_size / 2 ** 20:.0f} MiB, generated in {time.perf_counter() - start:.1f} s; "
              f"{os.cpu_count()} cores")
        downsamples = osr.level_downsamples
    print(f"{'config':40s} {'tiles':>5s} | {'tiles/s: tile_slide':>19s} {'raw':>5s} {'ratio':>5s} | "
          f"{'CPU ms/tile: tile_slide':>23s} {'raw':>5s} {'ratio':>5s} | {'cores busy':>10s} | equal")
    for name, config in CONFIGS.items():
        tiled, raw = [], []
        for _ in range(args.repeats):
            wall, cpu, path = run_tile_slide(slide, work / "out", config)
            store = open_patch_store(path)
            level = store.attrs["level"]
            scale = config.mpp / (store.attrs["slide_mpp"] * downsamples[level])
            tiled.append((wall, cpu))
            raw.append(run_raw(slide, store.coords, level, read_size((config.patch,) * 2, scale), config.patch))
        n = len(store)
        (t_wall, t_cpu), (r_wall, r_cpu) = (tuple(map(min, zip(*runs, strict=True))) for runs in (tiled, raw))
        resized = read_size((config.patch,) * 2, scale) != (config.patch,) * 2
        label = f"{name} (level {level}, {'resized' if resized else 'no resize'})"
        equal = "-" if resized else f"{equal_patches(slide, store, level)}/{CHECKED}"
        print(f"{label:40s} {n:5d} | {n / t_wall:19.0f} {n / r_wall:5.0f} {r_wall / t_wall:5.2f} | "
              f"{1e3 * t_cpu / n:23.2f} {1e3 * r_cpu / n:5.2f} {r_cpu / t_cpu:5.2f} | "
              f"{max(c / w for w, c in tiled):10.1f} | {equal}")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

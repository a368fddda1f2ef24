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
import time
from pathlib import Path

import numpy as np
import openslide
from common import MiB, least, run_raw, run_tile_slide, workdir

from tiling.config import TileConfig
from tiling.samples.archives import write_sample_archive
from tiling.slide import on_white, read_size
from tiling.store import PatchStore, open_patch_store

CHECKED = 50  # stored patches compared with OpenSlide per config without resize
CONFIGS = {"mpp 1.0, patch 224": TileConfig(mpp=1.0, patch=224),  # a pyramid level: no resize
           "mpp 0.75, patch 224": TileConfig(mpp=0.75, patch=224)}  # between levels: resized


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
    with workdir(args.workdir, "bench-tiling-") as work:
        start = time.perf_counter()
        slide = args.slide or write_sample_archive(work / "archive", slides=1, seed=0, size=args.size).parent / \
            "sample_000.tiff"
        with openslide.OpenSlide(slide) as osr:
            print(f"slide {osr.dimensions[0]} x {osr.dimensions[1]} px, {osr.level_count} levels, "
                  f"{slide.stat().st_size / MiB:.0f} MiB, generated in {time.perf_counter() - start:.1f} s; "
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
            (t_wall, t_cpu), (r_wall, r_cpu) = least(tiled), least(raw)
            resized = read_size((config.patch,) * 2, scale) != (config.patch,) * 2
            label = f"{name} (level {level}, {'resized' if resized else 'no resize'})"
            equal = "-" if resized else f"{equal_patches(slide, store, level)}/{CHECKED}"
            print(f"{label:40s} {n:5d} | {n / t_wall:19.0f} {n / r_wall:5.0f} {r_wall / t_wall:5.2f} | "
                  f"{1e3 * t_cpu / n:23.2f} {1e3 * r_cpu / n:5.2f} {r_cpu / t_cpu:5.2f} | "
                  f"{max(c / w for w, c in tiled):10.1f} | {equal}")


if __name__ == "__main__":
    main()

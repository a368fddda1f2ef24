"""Benchmark: `PatchGrid.stitch` (batched bilinear resampling) against a per-patch baseline.

A synthetic 40,000 x 30,000 px slide with a full grid of 450 px patches (about 6,000), one
(7, 7) CAM each, stitched onto a 4,096 px map (D = 10). The baseline resizes every patch's CAM
with skimage.transform.resize and adds it into the canvas one patch at a time, the obvious
implementation. Prints both times, their ratio and the largest difference between the maps.

    .venv/bin/python bench/stitching.py [--side 40000] [--repeats 3]
"""
from __future__ import annotations

import argparse

import numpy as np
from common import best
from skimage.transform import resize

from tiling.config import StitchConfig
from tiling.stitch import PatchGrid, map_downsample, map_shape


def baseline(grid: PatchGrid, cams: np.ndarray) -> np.ndarray:
    """Per patch: resize the CAM to its footprint, add it and a weight of 1, then divide."""
    total = np.zeros(grid.shape, np.float32)
    weight = np.zeros(grid.shape, np.float32)
    for i, cam in enumerate(cams):
        r0, r1, c0, c1 = grid.r0[i], grid.r1[i], grid.c0[i], grid.c1[i]
        total[r0:r1, c0:c1] += resize(cam, (r1 - r0, c1 - c0), order=1, mode="edge",
                                      anti_aliasing=False)
        weight[r0:r1, c0:c1] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=40000, help="slide width, level-0 px")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    footprint = 450  # 45 map px per patch: the baseline's integer resize is then exact too
    dims = (args.side // footprint * footprint, args.side * 3 // 4 // footprint * footprint)
    xs, ys = np.arange(0, dims[0], footprint), np.arange(0, dims[1], footprint)
    coords = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.int64)
    cams = np.random.default_rng(0).random((len(coords), 7, 7), np.float32)
    downsample = map_downsample(dims, StitchConfig())
    grid = PatchGrid(coords, footprint, downsample, map_shape(dims, downsample))
    ours, ours_map = best(lambda: grid.stitch(cams, grid.coverage()), args.repeats)
    base, base_map = best(lambda: baseline(grid, cams), args.repeats)
    print(f"{len(coords)} patches of (7, 7) onto a {grid.shape[1]} x {grid.shape[0]} map (D = "
          f"{downsample:g})")
    print(f"  PatchGrid.stitch      {ours:7.3f} s")
    print(f"  per-patch resize loop {base:7.3f} s")
    print(f"  speed-up (baseline / ours) {base / ours:6.1f}x; largest difference "
          f"{np.nanmax(np.abs(ours_map - base_map)):.2e}")


if __name__ == "__main__":
    main()

"""Benchmark: each audit metric on a full-size map, as a ratio to one sort of its pixels.

A 4,096 x 3,072 map (the largest the stitcher writes) with 60% tissue and one lesion. Rank-based
metrics cannot beat a sort of the tissue pixels, so `np.sort` of the same pixels, timed in the
same run, is the baseline: a ratio near 1 is as fast as it gets.

    .venv/bin/python bench/audit_metrics.py [--side 4096] [--repeats 3]
"""
from __future__ import annotations

import argparse

import numpy as np
from common import best
from scipy import ndimage

from reports.audit import metrics as M
from reports.audit.agreement import agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.side, args.side * 3 // 4)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    tissue = np.hypot((rr - shape[0] / 2) / shape[0], (cc - shape[1] / 2) / shape[1]) < 0.44
    lesion = np.hypot(rr - shape[0] * 0.4, cc - shape[1] * 0.5) < shape[0] * 0.08
    labels = lesion.astype(np.uint16)
    noise = ndimage.gaussian_filter(rng.random(shape, np.float32), 6)
    a = np.where(tissue, noise + labels * 0.05, np.nan).astype(np.float32)
    b = np.where(tissue, noise[::-1] + labels * 0.02, np.nan).astype(np.float32)
    valid = tissue
    found = M.peaks(a, valid, 5, 80)
    baseline, _ = best(lambda: np.sort(a[valid]), args.repeats)
    cases = {
        "pixel_auroc": lambda: M.pixel_auroc(a, lesion, valid),
        "pointing_game": lambda: M.pointing_game(a, lesion, valid, 20.0),
        "relevance_mass": lambda: M.relevance_mass(a, lesion, valid),
        "relevance_rank_accuracy": lambda: M.relevance_rank_accuracy(a, lesion, valid),
        "top_k_mask + iou + dice": lambda: (M.iou(t := M.top_k_mask(a, valid, 0.1), lesion),
                                            M.dice(t, lesion)),
        "peaks (top 5)": lambda: M.peaks(a, valid, 5, 80),
        "lesion_hit_rate": lambda: M.lesion_hit_rate(found, labels, valid),
        "agreement (2 maps, 1M px)": lambda: agreement({"a": a, "b": b}, valid, 0.1),
    }
    print(f"{shape[1]} x {shape[0]} map, {valid.sum():,} tissue pixels; baseline np.sort of them: "
          f"{baseline:.3f} s")
    for name, fn in cases.items():
        seconds, _ = best(fn, args.repeats)
        print(f"  {name:26s} {seconds:7.3f} s  {seconds / baseline:6.2f}x sort")


if __name__ == "__main__":
    main()

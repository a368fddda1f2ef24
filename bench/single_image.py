"""Benchmark: `explain_region` on one image vs running each method on its own.

A real H&E region of CMU-1-Small-Region (../shared/data) at the model's µm/px, `--side` px square
(16 tiles of 64 px by default), the default small_cnn A-MIL model with 6 classes (seeded random
weights), targets = the top 5 and the four page methods (Grad-CAM, Grad-CAM++, guided backprop,
guided Grad-CAM). `explain_region` runs the encoder forward once and shares the target layer's
activations among methods and targets. The baseline, timed in the same run, explains each
(target, method) pair on its own (one `explain_region` per pair: its own forward, backward and
stitching); both give the same maps (max difference printed).
ratio = baseline time / explain_region time (> 1: faster than the baseline).

    .venv/bin/python bench/single_image.py [--side 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from common import best

from explainers.models.config import ModelConfig
from explainers.models.io import build_model
from explainers.single_image import RegionConfig, explain_region
from tiling.slide import open_slide

SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "CMU-1-Small-Region.svs"
CLASSES = ["normal", "lesion", "stroma", "necrosis", "fat", "mucin"]


def baseline(image: np.ndarray, model, config: ModelConfig, targets: list[str], methods: tuple[str, ...]) -> dict:
    """{(class, method): stitched map} with one `explain_region` per pair."""
    return {(c, m): explain_region(image, config.mpp, model, config,
                                   RegionConfig(targets=(c,), methods=(m,))).targets[0].maps[m]
            for c in targets for m in methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not SLIDE.is_file():
        sys.exit(f"{SLIDE} is missing: the shared test data must be in ../shared/data")
    config = ModelConfig(classes=CLASSES, seed=0)
    model = build_model(config).eval()
    with open_slide(SLIDE) as slide:
        image = slide.read_at_mpp((200, 300), (args.side, args.side), config.mpp)
    region_config = RegionConfig(targets=("top5",))
    ours_s, result = best(lambda: explain_region(image, config.mpp, model, config, region_config), args.repeats)
    classes = [t.name for t in result.targets]
    base_s, maps = best(lambda: baseline(image, model, config, classes, region_config.methods), args.repeats)
    diff = max(float(np.abs(t.maps[m] - maps[t.name, m]).max() / max(np.abs(maps[t.name, m]).max(), 1e-12))
               for t in result.targets for m in region_config.methods)
    print(f"single image: {image.shape[1]}x{image.shape[0]} px, {len(result.tiles)} tiles, "
          f"{len(classes)} targets x {len(region_config.methods)} methods (torch threads {torch.get_num_threads()})")
    print(f"  explain_region            {ours_s:8.3f} s")
    print(f"  baseline, per method      {base_s:8.3f} s")
    print(f"  ratio baseline/ours       {base_s / ours_s:8.2f}   (largest relative map difference {diff:.1e})")


if __name__ == "__main__":
    main()

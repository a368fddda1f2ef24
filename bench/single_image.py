"""Benchmark: `explain_region` on one image vs running each method on its own.

A real H&E region of CMU-1-Small-Region (../shared/data) at the model's µm/px, `--side` px square
(16 tiles of 64 px by default), the default small_cnn A-MIL model with 6 classes (seeded random
weights), targets = the top 5 and the four page methods (Grad-CAM, Grad-CAM++, guided backprop,
guided Grad-CAM). `explain_region` runs the encoder forward once and shares the target layer's
activations among methods and targets. The baseline, timed in the same run, calls the
explainers' per-method classes once per (target, method) on the bag (each its own forward and
backward through the whole model); both give the same maps (max difference printed).
ratio = baseline time / explain_region time (> 1: faster than the baseline).

    .venv/bin/python bench/single_image.py [--side 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from explainers.cam import upsample
from explainers.cams import GradCAM, GradCAMpp
from explainers.guided import GuidedBackprop, GuidedGradCAM
from explainers.model_io import ModelConfig, build_model
from explainers.patches import normalise, resize
from explainers.single_image import RegionConfig, cut_tiles, explain_region, to_model_grid
from tiling.slide import open_slide

SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "CMU-1-Small-Region.svs"
CLASSES = ["normal", "lesion", "stroma", "necrosis", "fat", "mucin"]


class BagLogits(nn.Module):
    """A bag of tiles (N, 3, P, P) -> its A-MIL logits (1, C), for the per-method classes."""

    def __init__(self, mil: nn.Module) -> None:
        super().__init__()
        self.mil = mil

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mil(x)[0][None]


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def baseline(model: nn.Module, config: ModelConfig, x: torch.Tensor, classes: list[int]) -> dict:
    """{(class, method): maps (N, h, w)} with one full forward + backward per pair."""
    bag, layer = BagLogits(model), "mil." + config.target_layer
    methods = {"gradcam": GradCAM(bag, layer), "gradcampp": GradCAMpp(bag, layer),
               "guided_backprop": GuidedBackprop(bag), "guided_gradcam": GuidedGradCAM(bag, layer)}
    return {(c, name): m(x, target=c).maps[:, 0] for c in classes for name, m in methods.items()}


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
    region, tiles = to_model_grid(image, config.mpp, config, region_config.max_tiles)
    x = normalise(resize(cut_tiles(region, tiles, config.patch), config.patch), config, torch.device("cpu"))
    classes = [t.index for t in result.targets]
    base_s, maps = best(lambda: baseline(model, config, x, classes), args.repeats)
    # the same maps: compare one tile's Grad-CAM, upsampled as the region stitches it
    target = result.targets[0]
    tile0 = upsample(maps[target.index, "gradcam"][:1], (config.patch, config.patch))[0].numpy()
    diff = np.abs(target.maps["gradcam"][:config.patch, :config.patch] - tile0).max() / max(tile0.max(), 1e-12)
    print(f"single image: {image.shape[1]}x{image.shape[0]} px, {len(tiles)} tiles, "
          f"{len(classes)} targets x 4 methods (torch threads {torch.get_num_threads()})")
    print(f"  explain_region            {ours_s:8.3f} s")
    print(f"  baseline, per method      {base_s:8.3f} s")
    print(f"  ratio baseline/ours       {base_s / ours_s:8.2f}   (tile-0 Grad-CAM relative max diff {diff:.1e})")


if __name__ == "__main__":
    main()

"""Benchmark: the explain engine on CLAM's encoder (ResNet-50 cut after layer3, 1024-d, random
weights) with our gated-attention head, on N random 224-px patches already in memory as model
inputs. The three paths of `bench/explain.py` (bench/common.py):

  (a) floor:   encoder + MIL head forward, autograd on;
  (b) explain: attention + slide-level and instance Grad-CAM at `encoder.layer3` from one forward;
  (c) captum:  LayerGradCam (instance target) + a separate A-MIL forward for the attention.

Prints patches/s (wall) and CPU s per 1000 patches, time(b)/time(a) (goal <= 1.25) and
time(b)/time(c) (goal <= 0.6). Best of --repeats runs, the paths alternated.

    .venv/bin/python bench/explain_resnet50.py [--patches 64] [--batch 32] [--repeats 3] [--device auto]
"""
from __future__ import annotations

import argparse
import logging

import torch
from common import best_times, captum, explain, floor

from explainers.explain import resolve_device
from explainers.models.checkpoints import encoder_config
from explainers.models.io import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = encoder_config("resnet50_trunc", None, name="amil-resnet50_trunc")
    model = build_model(config).to(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.patches, 3, config.patch, config.patch, generator=generator).to(device)
    batches = [(lo, min(lo + args.batch, args.patches), x[lo:lo + args.batch])
               for lo in range(0, args.patches, args.batch)]
    layer = config.target_layer
    runs = {"(a) floor: encoder + MIL forward, autograd on": lambda: floor(model, batches),
            "(b) explain: attention + slide & instance Grad-CAM": lambda: explain(model, batches, layer),
            "(c) captum LayerGradCam + A-MIL forward": lambda: captum(model, batches, layer)}
    best = best_times(model, runs, args.repeats)
    n = args.patches
    print(f"{n} random patches of {config.patch} px, {config.encoder} (target {layer}), device {device}, "
          f"batch {args.batch}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    for name, (wall, cpu) in best.items():
        print(f"  {name:52s} {n / wall:8.1f} patches/s   {1000 * cpu / n:7.1f} CPU s / 1000 patches")
    (a, _), (b, _), (c, _) = best.values()
    print(f"time(b)/time(a) = {b / a:.2f}   (goal <= 1.25)")
    print(f"time(b)/time(c) = {b / c:.2f}   (goal <= 0.6)")


if __name__ == "__main__":
    main()

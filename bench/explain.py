"""Benchmark: the explain stage against the forward-pass floor and a captum-based assembly.

On the patches of one tiled sample slide and one model (the default architecture), with the
model inputs (decoded, resized, normalised) prepared once in memory:

  (a) floor:   one forward of the encoder and the MIL head with autograd on;
  (b) explain: attention + slide-level Grad-CAM + instance Grad-CAM from one forward pass
               (`BagExplainer`, the engine of `slideaudit explain`);
  (c) captum:  `LayerGradCam` for the instance target plus a separate A-MIL forward for the
               attention, what a user would assemble from existing tools.

Then the same from the store on disk, zarr decode and resize included: (a') the floor reading
through the stage's loader, and (b') the whole stage `explain_store` (slide Grad-CAM, zarr writes).
Prints patches/s (wall) and CPU s per 1000 patches, and time(b)/time(a) (goal <= 1.25),
time(b)/time(c) (goal <= 0.6), time(b')/time(a'). Best of --repeats runs, the methods alternated.
(a), (b) and (c) are in bench/common.py, which bench/explain_resnet50.py runs too.

    .venv/bin/python bench/explain.py [--size 16384] [--repeats 7] [--batch 64] [--device auto] [--threads N]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from common import best_times, captum, explain, floor

from explainers.config import ExplainConfig
from explainers.explain import explain_store, resolve_device
from explainers.models.config import ModelConfig
from explainers.models.inputs import PatchReader
from explainers.models.io import build_model, load_model, save_model
from tiling.config import TileConfig
from tiling.samples.archives import write_sample_archive
from tiling.store import EXPLAIN, open_patch_store
from tiling.tile import tile_slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="sample slide width in level-0 px")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: an untrained default model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    try:
        manifest = write_sample_archive(work / "archive", slides=1, seed=11, size=args.size)
        model_dir = args.model or save_model(build_model(ModelConfig()), ModelConfig(), work / "model")
        model, config = load_model(model_dir)
        tiles = TileConfig() if args.model is None else TileConfig(mpp=config.mpp, patch=config.patch)
        slide_dir = tile_slide(manifest.parent / "sample_000.tiff", work / "out", tiles).parent
        device = resolve_device(args.device)
        model.to(device)
        reader = PatchReader(open_patch_store(slide_dir), config, device)
        n, layer = len(reader), config.target_layer
        batches = list(reader.batches(args.batch))
        stage = ExplainConfig(methods=("gradcam",), device=args.device, batch=args.batch)

        def whole_stage() -> None:
            shutil.rmtree(slide_dir / EXPLAIN, ignore_errors=True)
            explain_store(slide_dir, model_dir, stage)

        runs = {"(a) floor: encoder + MIL forward, autograd on": lambda: floor(model, batches),
                "(b) explain: attention + slide & instance Grad-CAM": lambda: explain(model, batches, layer),
                "(c) captum LayerGradCam + A-MIL forward": lambda: captum(model, batches, layer),
                "(a') floor, reading the store": lambda: floor(model, list(reader.batches(args.batch))),
                "(b') explain_store: slide Grad-CAM, store to store": whole_stage}
        best = best_times(model, runs, args.repeats)
        print(f"{n} patches of {config.patch} px (stored at 224 px), model {config.name}, device {device}, "
              f"batch {args.batch}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
        for name, (wall, cpu) in best.items():
            print(f"  {name:52s} {n / wall:8.0f} patches/s   {1000 * cpu / n:6.2f} CPU s / 1000 patches")
        (a, _), (b, _), (c, _), (a2, _), (b2, _) = best.values()
        print(f"time(b)/time(a)   = {b / a:.2f}   (goal <= 1.25)")
        print(f"time(b)/time(c)   = {b / c:.2f}   (goal <= 0.6)")
        print(f"time(b')/time(a') = {b2 / a2:.2f}   (store to store)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""GPU check: explain one sample slide on CUDA and on the CPU with a ViT-B/16 and a ResNet-50.

For whoever has a GPU machine, in one go (random weights, nothing downloaded):

    .venv/bin/python bench/gpu_check.py [--size 4096] [--encoders vit_base_patch16,resnet50]

For each encoder the slide is tiled at the encoder's µm/px and patch size, then the explain stage
(`explain_store`: attention, slide Grad-CAM) runs on the CPU in float32 and on CUDA with bf16
autocast and the batch sized to free memory. Prints patches/s on each, the CUDA/CPU speed-up, the
peak GPU memory, and whether the maps agree: Grad-CAM within 3 % of the map's largest |value| and
attention within 1e-3 (the explain stage's bf16 tolerances). Without CUDA it says so and times the
CPU only. Exit code 1 when a CUDA map disagrees.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from explainers.config import ExplainConfig
from explainers.explain import explain_store
from explainers.models.config import ModelConfig
from explainers.models.encoders import encoder_spec
from explainers.models.io import build_model, save_model
from tiling.config import TileConfig
from tiling.samples.archives import write_sample_archive
from tiling.tile import tile_slide

MAP_TOLERANCE, ATTENTION_TOLERANCE = 0.03, 1e-3


def model_folder(encoder: str, out: Path) -> tuple[Path, ModelConfig]:
    """A random A-MIL model on `encoder`, as its record declares its input."""
    spec = encoder_spec(encoder)
    config = ModelConfig(name=f"amil-{encoder}-random", encoder=encoder, encoder_kwargs={}, attention_hidden=128,
                         target_layer=spec.default_target_layer, mpp=spec.mpp, patch=spec.patch,
                         mean=list(spec.mean), std=list(spec.std))
    return save_model(build_model(config), config, out), config


def run(slide_dir: Path, model_dir: Path, device: str) -> tuple[float, dict[str, np.ndarray], int]:
    """(seconds, {"attention", "gradcam"} maps, patches) of the explain stage on `device`."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    path = explain_store(slide_dir, model_dir, ExplainConfig(device=device, autocast=device == "cuda"))
    seconds = time.perf_counter() - start
    group = zarr.open_group(path, mode="r")
    maps = {name: np.asarray(group[name][:], np.float64) for name in ("attention", "gradcam")}
    return seconds, maps, int(maps["attention"].shape[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="sample slide width in level-0 px")
    parser.add_argument("--encoders", default="vit_base_patch16,resnet50")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CUDA: {torch.cuda.get_device_name(0) if cuda else 'none (CPU only)'}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        manifest = write_sample_archive(work / "archive", slides=1, seed=11, size=args.size)
        for encoder in args.encoders.split(","):
            model_dir, config = model_folder(encoder, work / f"model-{encoder}")
            slide_dir = tile_slide(manifest.parent / "sample_000.tiff", work / f"out-{encoder}",
                                   TileConfig(mpp=config.mpp, patch=config.patch)).parent
            cpu_s, cpu_maps, n = run(slide_dir, model_dir, "cpu")
            print(f"{encoder}: {n} patches; CPU float32 {n / cpu_s:.1f} patches/s")
            if not cuda:
                continue
            gpu_s, gpu_maps, _ = run(slide_dir, model_dir, "cuda")
            scale = max(float(np.abs(cpu_maps["gradcam"]).max()), 1e-12)
            cam = np.abs(gpu_maps["gradcam"] - cpu_maps["gradcam"]).max() / scale
            attention = np.abs(gpu_maps["attention"] - cpu_maps["attention"]).max()
            agree = cam <= MAP_TOLERANCE and attention <= ATTENTION_TOLERANCE
            failed |= not agree
            print(f"  CUDA bf16 {n / gpu_s:.1f} patches/s ({cpu_s / gpu_s:.1f}x the CPU), peak GPU memory "
                  f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB; Grad-CAM differs by {cam:.2%} of its "
                  f"largest value, attention by {attention:.2e}: {'agree' if agree else 'DISAGREE'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

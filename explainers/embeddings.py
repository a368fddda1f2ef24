"""Embeddings h (N, D) of a slide's patches by a frozen encoder: computed once, reused by stamp.

The encoder stamp says what h was computed from: config_hash of {encoder name, encoder_kwargs,
`encoder_sha256` (the model's tensors under `encoder.`), the model's input (patch px, µm/px,
mean, std), bf16 autocast on or off, the patch store's stamp (config_hash, source_sha256)}.
The head, the target layer, the methods and the target are not in it: another head on the same
encoder reuses h. The device is not in it either (a runtime field): h computed on a GPU is reused
on a CPU, equal up to float32 rounding.

What h can honestly replace: attention, the slide and instance logits and a slide target's
g_k = d(logit)/d(h_k) depend on the patches only through h. The CAM methods need the target
layer's activations A (C'·h·w floats a patch: 200,704 for ResNet-50-trunc at 224 px, not kept)
and guided backprop and occlusion need the patches, so they run the encoder; h then comes out
of that same forward (kept h would only spare the stages after the target layer).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from explainers.engine import bf16_autocast, frozen
from explainers.models.config import ModelConfig
from explainers.models.inputs import PatchReader
from explainers.models.mil import MILModel
from tiling.store import EMBEDDINGS, EXPLAIN, PATCHES, config_hash, read_stamp
from tiling.store.explain import read_embeddings, write_embeddings

log = logging.getLogger(__name__)


def encoder_sha256(model: MILModel) -> str:
    """sha256 over the encoder's tensors (state dict entries under `encoder.`): each key, dtype,
    shape and raw bytes, in key order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.encoder.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encoder_stamp(model: MILModel, config: ModelConfig, slide_dir: Path, autocast: bool = False) -> str:
    """The stamp of the embeddings of `slide_dir`'s patches by `model.encoder` (module docstring)."""
    patches = read_stamp(Path(slide_dir) / PATCHES)
    return config_hash({"encoder": config.encoder, "kwargs": config.encoder_kwargs,
                        "weights": encoder_sha256(model), "patch": config.patch, "mpp": config.mpp,
                        "mean": config.mean, "std": config.std, "autocast": autocast, "patches": patches})


def kept_embeddings(slide_dir: Path, stamp: str, n: int) -> np.ndarray | None:
    """Embeddings of `stamp` kept in the slide's explain.zarr or embeddings.zarr, else None."""
    for name in (EXPLAIN, EMBEDDINGS):
        h = read_embeddings(Path(slide_dir) / name, stamp, n)
        if h is not None:
            log.info("%s: reusing the kept embeddings (%d x %d)", Path(slide_dir) / name, *h.shape)
            return h
    return None


@torch.no_grad()
def slide_embeddings(model: MILModel, config: ModelConfig, slide_dir: Path, reader: PatchReader,
                     batch: int, autocast: bool = False) -> torch.Tensor:
    """h (N, D) float32 of the slide's patches on the reader's device: from embeddings.zarr or
    explain.zarr when kept with the same stamp, else one encoder forward (eval mode, bf16 autocast
    if asked), then kept in `slide_dir/embeddings.zarr`."""
    stamp = encoder_stamp(model, config, slide_dir, autocast)
    kept = kept_embeddings(slide_dir, stamp, len(reader))
    if kept is not None:
        return torch.from_numpy(kept).to(reader.device)
    with frozen(model.encoder):
        parts = []
        for _, _, x in reader.batches(batch):
            with bf16_autocast(x.device, autocast):
                parts.append(model.encoder(x).float())
    h = torch.cat(parts)
    write_embeddings(Path(slide_dir) / EMBEDDINGS, h.cpu().numpy(), stamp)
    return h

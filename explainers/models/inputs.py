"""A patch store's patches as model inputs: resized to the model's patch size, normalised."""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from explainers.errors import ModelError
from explainers.models.config import ModelConfig
from tiling.store import PatchStore

FOOTPRINT_TOLERANCE = 0.02  # relative


def check_fits(store: PatchStore, config: ModelConfig) -> None:
    """ModelError unless the store's patches cover the model's footprint (patch·mpp µm, ±2 %);
    a different pixel size alone is fine, the patches are resized."""
    mpp, size = float(store.attrs["mpp"]), int(store.attrs["patch_size"])
    if abs(mpp * size - config.footprint_um) > FOOTPRINT_TOLERANCE * config.footprint_um:
        raise ModelError(f"{store.path}: patches cover {mpp * size:g} µm ({size} px at {mpp:g} µm/px) but "
                         f"model {config.name!r} reads {config.footprint_um:g} µm ({config.patch} px at "
                         f"{config.mpp:g} µm/px); re-tile the slide with "
                         f"`slideaudit tile --mpp {config.mpp:g} --patch {config.patch}`")


def resize(patches: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> uint8 (B, 3, size, size), antialiased bilinear when S != size."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


def normalise(x: torch.Tensor, config: ModelConfig, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, P, P) -> float32 on `device`: (x / 255 - mean) / std per channel, computed
    in place as x * (1 / (255 std)) - mean / std (memory layout kept: channels-last convs are faster)."""
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    return x.to(device, non_blocking=True).float().mul_(1 / (255 * std)).sub_(mean / std)


class PatchReader:
    """Batches of a store's patches as model inputs, the next batch read while one is used."""

    def __init__(self, store: PatchStore, config: ModelConfig, device: torch.device) -> None:
        check_fits(store, config)
        self.store, self.config, self.device = store, config, device

    def __len__(self) -> int:
        return len(self.store)

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """Model inputs (hi - lo, 3, P, P) of patches lo..hi-1."""
        return normalise(self._load(lo, hi), self.config, self.device)

    def _load(self, lo: int, hi: int) -> torch.Tensor:
        """uint8 patches lo..hi-1 at the model's size, in pinned (page-locked) host memory when the
        device is CUDA, so the copy to the GPU runs asynchronously."""
        x = resize(self.store.patches[lo:hi], self.config.patch)
        return x.pin_memory() if self.device.type == "cuda" else x

    def batches(self, batch: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(lo, hi, inputs) over all patches in order, `batch` at a time."""
        starts = range(0, len(self), batch)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._load, 0, min(batch, len(self)))
            for lo in starts:
                hi = min(lo + batch, len(self))
                loaded = pending.result()
                if hi < len(self):
                    pending = pool.submit(self._load, hi, min(hi + batch, len(self)))
                yield lo, hi, normalise(loaded, self.config, self.device)

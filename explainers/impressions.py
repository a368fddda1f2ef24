"""Class impressions: an image the model scores as a class, grown from noise (Addepalli et al. 2020,
after Mopuri et al. 2018's class impressions).

The image is parametrised as x = lo + (hi - lo)·sigmoid(p) (RGB, model-input size), p0 ~ N(0, 0.5²),
where [lo, hi] = [mean - k·std, mean + k·std] ∩ [0, 1] per channel from the model's normalisation
(the training patches' statistics, k = `colour_range`): a colour prior that keeps the stains
plausible instead of letting the ascent saturate them.
Each step draws a random transform T (jitter: circular shift of up to `jitter` px; rotation up
to ±`rotate` degrees; scaling by a factor in [1 - scale, 1 + scale]; colour: per-channel gain in
[1 - colour, 1 + colour] and offset in [-colour, colour]) and takes an Adam step on

    loss(p) = -score_c(normalise(T(x))) + tv_weight · TV(x),
    TV(x)   = mean |x[i+1, j] - x[i, j]| + mean |x[i, j+1] - x[i, j]|   (per pixel, per channel),

where score_c is the patch's class-c logit (the MIL classifier applied to the patch embedding),
centred for a softmax head (logit_c minus the mean of all logits, as softmax ignores a common
shift) and raw for a sigmoid head. Random transforms and the TV prior keep the image from
collapsing into high-frequency adversarial noise.

    >>> result = class_impression(model, model_config, "lesion", ImpressionConfig(steps=100))
    >>> result.image.shape, result.logits_end
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from explainers.config import ImpressionConfig, Transform
from explainers.engine import frozen
from explainers.errors import ModelError
from explainers.models.config import ModelConfig
from explainers.models.io import load_model
from explainers.models.io import model_sha256 as weights_sha256
from explainers.models.mil import MILModel
from tiling.store import IMPRESSIONS, atomic_path, config_hash, is_current

log = logging.getLogger(__name__)

INDEX = "impressions.json"


@dataclass
class Impression:
    """One class impression: the RGB image and the patch logits (C,) before and after."""

    class_name: str
    image: np.ndarray
    logits_start: np.ndarray
    logits_end: np.ndarray


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """TV(x) = mean |vertical neighbour differences| + mean |horizontal neighbour differences| of (B, 3, H, W)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def patch_logits(model: MILModel, config: ModelConfig, x: torch.Tensor) -> torch.Tensor:
    """Instance logits (B, C) of RGB images x (B, 3, H, W) in [0, 1]: the head on encoder((x - mean) / std)."""
    mean = torch.tensor(config.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=x.dtype).view(1, 3, 1, 1)
    return model.instance_logits(model.encoder((x - mean) / std))


def colour_box(config: ModelConfig, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi - lo) per channel (1, 3, 1, 1): [lo, hi] = [mean - k·std, mean + k·std] ∩ [0, 1]."""
    mean, std = torch.tensor(config.mean).view(1, 3, 1, 1), torch.tensor(config.std).view(1, 3, 1, 1)
    lo, hi = (mean - k * std).clamp(0, 1), (mean + k * std).clamp(0, 1)
    return lo, hi - lo


def _uniform(gen: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape or (1,), generator=gen)


def random_transform(x: torch.Tensor, cfg: Transform, gen: torch.Generator) -> torch.Tensor:
    """T(x): jitter (circular shift), rotation and scaling (bilinear, reflected borders), colour gain/offset."""
    if cfg.jitter > 0:
        dy, dx = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=gen).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    angle = math.radians(_uniform(gen, -cfg.rotate, cfg.rotate).item())
    zoom = _uniform(gen, 1 - cfg.scale, 1 + cfg.scale).item()
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gain = _uniform(gen, 1 - cfg.colour, 1 + cfg.colour, 1, 3, 1, 1)
    offset = _uniform(gen, -cfg.colour, cfg.colour, 1, 3, 1, 1)
    return (x * gain + offset).clamp(0, 1)


def _score(logits: torch.Tensor, cls: int, head: str) -> torch.Tensor:
    return logits[:, cls] - logits.mean(dim=1) if head == "softmax" else logits[:, cls]


def class_impression(model: MILModel, config: ModelConfig, class_name: str,
                     cfg: ImpressionConfig = ImpressionConfig()) -> Impression:
    """Grow the impression of `class_name` (see the module docstring); the model is left as it was
    (training flag restored, parameter gradients untouched)."""
    if class_name not in config.classes:
        raise ModelError(f"class {class_name!r} is not one of the model's classes {config.classes}")
    cls = config.classes.index(class_name)
    lo, span = colour_box(config, cfg.colour_range)
    gen = torch.Generator().manual_seed(cfg.seed)
    p = (0.5 * torch.randn(1, 3, config.patch, config.patch, generator=gen)).requires_grad_(True)
    optimiser = torch.optim.Adam([p], lr=cfg.lr)
    with frozen(model):
        with torch.no_grad():
            start = patch_logits(model, config, lo + span * torch.sigmoid(p))[0]
        for _ in tqdm(range(cfg.steps), desc=f"impression {class_name}", leave=False, disable=None):
            x = lo + span * torch.sigmoid(p)
            score = _score(patch_logits(model, config, random_transform(x, cfg.transform, gen)), cls, config.head)
            (p.grad,) = torch.autograd.grad(-score.sum() + cfg.tv_weight * total_variation(x), [p])
            optimiser.step()
        with torch.no_grad():
            x = lo + span * torch.sigmoid(p)
            end = patch_logits(model, config, x)[0]
    image = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Impression(class_name, image, start.numpy(), end.numpy())


def _file_name(index: int, class_name: str) -> str:
    return f"{index:02d}-{re.sub(r'[^A-Za-z0-9_-]+', '_', class_name)[:40]}.png"


def render_impressions(model_dir: Path, cache_dir: Path, cfg: ImpressionConfig = ImpressionConfig(),
                       model_sha256: str | None = None) -> dict[str, Path]:
    """{class name: PNG path} of every class's impression, written once to `cache_dir/impressions/`.

    The folder holds one PNG per class (model input size, RGB) and `impressions.json` (stamp:
    config hash of `cfg` and the model weights' sha256; per class: file, logits before/after).
    A rerun with the same model and settings reads it back instead of recomputing.
    model_sha256: the weights' sha256 when the caller has it; None hashes the file here.
    """
    folder = Path(cache_dir) / IMPRESSIONS
    sha = model_sha256 if model_sha256 is not None else weights_sha256(model_dir)
    stamp = {"config_hash": config_hash(cfg), "source_sha256": sha}
    if not is_current(folder / INDEX, **stamp):
        model, config = load_model(model_dir)
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            entries = {}
            for i, name in enumerate(tqdm(config.classes, desc="class impressions", disable=None)):
                imp = class_impression(model, config, name, cfg)
                Image.fromarray(imp.image).save(tmp / _file_name(i, name))
                entries[name] = {"file": _file_name(i, name), "logits_start": imp.logits_start.tolist(),
                                 "logits_end": imp.logits_end.tolist()}
            index = {"stamp": stamp, "settings": dataclasses.asdict(cfg), "classes": entries}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        log.info("wrote %d class impressions to %s", len(entries), folder)
    entries = json.loads((folder / INDEX).read_text())["classes"]
    return {name: folder / entry["file"] for name, entry in entries.items()}

"""Feature views: what a model's layers respond to.

- Activation views: for a patch (or a bag of tiles), the target layer's k most active channels,
  ranked by mean activation over every tile and position, with their maps.
- Filter views: the first convolution's filters (out, 3, kh, kw) as one RGB image grid, each
  filter scaled by the largest |weight| of all filters so that 0 is mid-grey:
  pixel = 0.5 + w / (2 max |W|).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn

from explainers.errors import ModelError


@dataclass
class ActivationViews:
    """channels (k,) indices, most active first; means (k,) their mean activation;
    maps (N, k, h, w) float32 raw activations of each tile."""

    channels: np.ndarray
    means: np.ndarray
    maps: np.ndarray


def activation_views(acts: np.ndarray, k: int = 8) -> ActivationViews:
    """The k channels of target-layer activations `acts` (N, C, h, w) with the highest mean."""
    acts = np.asarray(acts, dtype=np.float32)
    if acts.ndim != 4:
        raise ValueError(f"activations must be (N, C, h, w), got shape {acts.shape}")
    means = acts.mean(axis=(0, 2, 3))
    channels = np.argsort(-means, kind="stable")[:k]
    return ActivationViews(channels, means[channels], acts[:, channels])


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first nn.Conv2d of `model` in module order, which must read 3 (RGB) channels."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != 3:
                break
            return module
    raise ModelError(f"{type(model).__name__} has no first convolution reading RGB images; "
                     "filter views need one")


def filter_grid(model: nn.Module, scale: int = 8, gap: int = 1) -> np.ndarray:
    """The first convolution's filters as an RGB uint8 grid of ceil(sqrt(out)) columns, each
    filter enlarged `scale` times (nearest neighbour) and separated by `gap` white pixels."""
    weight = first_conv(model).weight.detach().float().cpu().numpy()        # (out, 3, kh, kw)
    peak = np.abs(weight).max()
    tiles = 0.5 + weight / (2 * peak) if peak > 0 else np.full_like(weight, 0.5)
    tiles = np.repeat(np.repeat(tiles.transpose(0, 2, 3, 1), scale, 1), scale, 2)   # (out, s·kh, s·kw, 3)
    n, th, tw, _ = tiles.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3), np.float32)
    r, c = np.divmod(np.arange(n), cols)
    for i in range(n):
        y, x = gap + r[i] * (th + gap), gap + c[i] * (tw + gap)
        grid[y:y + th, x:x + tw] = tiles[i]
    return (grid * 255).round().astype(np.uint8)

"""Occlusion sensitivity (Zeiler & Fergus 2014) on patches.

The patch is cut into a grid x grid of windows of side ceil(P / grid) px; window (i, j) is set
to 0 (the normalisation mean of the model's inputs) and the map holds the exact drop of the
target score: map[i, j] = s(x) - s(x with window (i, j) occluded). Positive = evidence for the
target. Costs grid² encoder forwards per patch.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from explainers.methods.registry import MapMethod, implements

if TYPE_CHECKING:
    from explainers.engine import Chunk


def occlusions(images: torch.Tensor, grid: int, value: float = 0.0) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(i, j, copy of images (B, C, H, W) with window (i, j) set to `value`) for every window."""
    side_h, side_w = math.ceil(images.shape[-2] / grid), math.ceil(images.shape[-1] / grid)
    for i in range(grid):
        for j in range(grid):
            occluded = images.clone()
            occluded[..., i * side_h:(i + 1) * side_h, j * side_w:(j + 1) * side_w] = value
            yield i, j, occluded


@implements("occlusion")
class Occlusion(MapMethod):
    """Occlusion maps (B, grid, grid): each patch's windows blanked in turn, the rest of the bag as it is."""

    grid = 8

    def explain(self, chunk: Chunk) -> torch.Tensor:
        x, encoder = chunk.inputs, chunk.engine.model.encoder
        idx = torch.arange(chunk.lo, chunk.hi, device=x.device)
        maps = x.new_zeros(len(idx), self.grid, self.grid)
        with torch.no_grad():
            for i, j, occluded in occlusions(x, self.grid):
                maps[:, i, j] = chunk.target.drop(idx, encoder(occluded))
        return maps

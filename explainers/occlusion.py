"""Occlusion sensitivity (Zeiler & Fergus 2014) on patches.

The image is cut into a grid x grid of windows of side ceil(P / grid) px; window (i, j) is set
to `value` (0 = the normalisation mean for normalised inputs) and the map holds the drop of the
target score: map[i, j] = s(x) - s(x with window (i, j) occluded). Positive = evidence for the
target. Costs grid² forwards per image.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from explainers.cam import Explainer


def occlusions(images: torch.Tensor, grid: int, value: float = 0.0) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(i, j, copy of images (B, C, H, W) with window (i, j) set to `value`) for every window."""
    side_h, side_w = math.ceil(images.shape[-2] / grid), math.ceil(images.shape[-1] / grid)
    for i in range(grid):
        for j in range(grid):
            occluded = images.clone()
            occluded[..., i * side_h:(i + 1) * side_h, j * side_w:(j + 1) * side_w] = value
            yield i, j, occluded


class Occlusion(Explainer):
    """Occlusion maps (B, grid, grid) of each image's target score.

        >>> Occlusion(model, grid=8)(images, target=1).maps      # (B, 1, 8, 8)
    """

    name = "occlusion"

    def __init__(self, model: nn.Module, grid: int = 8, value: float = 0.0) -> None:
        super().__init__(model)
        self.grid, self.value = grid, value

    def attribute(self, images, logits, classes, kept):
        with torch.no_grad():
            base = logits.gather(1, classes[:, None])[:, 0]
            maps = images.new_zeros(images.shape[0], self.grid, self.grid)
            for i, j, occluded in occlusions(images, self.grid, self.value):
                maps[:, i, j] = base - self.model(occluded).gather(1, classes[:, None])[:, 0]
        return maps

"""Per-image reference explainers: the textbook computation on a plain (B, 3, H, W) -> (B, C)
classifier, with hooks and one full autograd call per target, to check the bag engine against.

    >>> ImageExplainer(net, "gradcam", layer="conv2")(images, target=[0, 3]).maps   # (B, 1, h, w)
    >>> ImageExplainer(net, "gradcam", layer="conv2")(images, target=TopK(2)).maps  # (B, 2, h, w)

A CAM method's channel weights α come from its registered class (`weights`), so what is checked
here is everything around them: activations, gradients, targets, batch independence, hygiene.
Guided backprop and occlusion are computed per image from scratch.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from explainers.engine import frozen
from explainers.errors import ModelError
from explainers.methods.cams import CAM, upsample
from explainers.methods.guided import guided_relus, saliency
from explainers.methods.occlusion import occlusions
from explainers.methods.registry import implementation


class TopK(NamedTuple):
    """Target each of the k highest-scoring classes of every image."""
    k: int


Target = int | Sequence[int] | torch.Tensor | TopK | None


@dataclass
class Explanation:
    maps: torch.Tensor      # (B, K, h, w) raw values, one map per image and target
    classes: torch.Tensor   # (B, K) the class each map explains
    logits: torch.Tensor    # (B, C)


def resolve_targets(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """Class indices (B, K): None = argmax, an int = that class for all, a sequence = one per
    image (length must equal B), TopK(k) = the k highest classes of each image."""
    b, c = logits.shape
    if target is None:
        classes = logits.argmax(1, keepdim=True)
    elif isinstance(target, TopK):
        classes = logits.topk(target.k, dim=1).indices
    else:
        classes = torch.as_tensor(target, dtype=torch.long)
        classes = classes.repeat(b) if classes.ndim == 0 else classes
        classes = classes[:, None] if classes.ndim == 1 else classes
        if classes.ndim != 2 or classes.shape[0] != b:
            raise ValueError(f"got targets of shape {tuple(classes.shape)} for {b} images; give one target per image")
    if not (int(classes.min()) >= 0 and int(classes.max()) < c):
        raise ValueError(f"target classes {classes.unique().tolist()} out of range for {c} classes")
    return classes


@contextlib.contextmanager
def capture(layer: nn.Module | None) -> Iterator[dict[str, torch.Tensor]]:
    """Keep `layer`'s output as `["acts"]` (a clone goes downstream, so in-place ops cannot change it)."""
    kept: dict[str, torch.Tensor] = {}
    if layer is None:
        yield kept
        return

    def hook(module, inputs, output):
        acts = output if output.requires_grad else output.detach().requires_grad_()
        kept["acts"] = acts
        return acts.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield kept
    finally:
        handle.remove()


class ImageExplainer:
    """Method `name` on a plain classifier, per image. `layer`: the target layer (CAM methods);
    `fc`: the linear layer after global pooling (CAM); `grid`: occlusion windows per side."""

    def __init__(self, model: nn.Module, name: str, layer: str | None = None, fc: str | None = None,
                 grid: int = 8) -> None:
        self.model, self.name, self.grid = model, name, grid
        self.impl = implementation(name)()
        try:
            self.layer = model.get_submodule(layer) if layer else None
            self.fc = model.get_submodule(fc) if fc else None
        except AttributeError as exc:
            raise ModelError(f"unknown layer {layer!r}") from exc

    def __call__(self, images: torch.Tensor, target: Target = None) -> Explanation:
        guided = self.name == "guided_backprop"
        hooks = guided_relus(self.model) if guided else contextlib.nullcontext()
        with frozen(self.model), hooks, capture(self.layer) as kept, torch.enable_grad():
            images = images.detach().requires_grad_(guided)
            logits = self.model(images)
            classes = resolve_targets(logits.detach(), target)
            maps = [self._map(images, logits, classes[:, k], kept) for k in range(classes.shape[1])]
        return Explanation(torch.stack(maps, 1).detach(), classes, logits.detach())

    def _map(self, images, logits, classes, kept) -> torch.Tensor:
        score = logits.gather(1, classes[:, None]).sum()   # images are independent in eval mode
        if isinstance(self.impl, CAM):
            acts = kept["acts"]
            grads, = torch.autograd.grad(score, acts, retain_graph=True)
            linear = self.fc.weight[classes] if self.fc is not None else None
            return self.impl.compute(acts.detach(), grads, linear)
        if self.name == "guided_backprop":
            grads, = torch.autograd.grad(score, images, retain_graph=True)
            return saliency(grads)
        if self.name == "guided_gradcam":
            cam = ImageExplainer(self.model, "gradcam", self._layer_name())(images, classes)
            guide = ImageExplainer(self.model, "guided_backprop")(images, classes)
            return (guide.maps * upsample(cam.maps, tuple(images.shape[-2:])))[:, 0]
        if self.name == "occlusion":
            with torch.no_grad():
                base = logits.gather(1, classes[:, None])[:, 0]
                maps = images.new_zeros(images.shape[0], self.grid, self.grid)
                for i, j, occluded in occlusions(images, self.grid):
                    maps[:, i, j] = base - self.model(occluded).gather(1, classes[:, None])[:, 0]
            return maps
        raise ValueError(f"no per-image reference for {self.name!r}")

    def _layer_name(self) -> str:
        return next(n for n, m in self.model.named_modules() if m is self.layer)

"""The base class of every explanation method: it owns the model's hygiene, hooks, targets and
display normalisation; a method is a short subclass.

    >>> cam = GradCAM(model, "layer4")                 # any (B, 3, H, W) -> (B, C) classifier
    >>> out = cam(images)                              # the predicted class of each image
    >>> out = cam(images, target=3)                    # class 3 for every image
    >>> out = cam(images, target=[0, 2, 1])            # one class per image (length must match)
    >>> out = cam(images, target=TopK(2))              # each of the top-2 classes (multi-label)
    >>> out.maps.shape                                 # (B, K, h, w), raw (unnormalised) values

While a method runs the model is in eval mode, hooks live only inside the call (removed even
after an exception), the training flag of every submodule is restored afterwards, and
gradients are taken with `torch.autograd.grad` to the layer or the input only, so parameter
`.grad`s are never touched.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from explainers.errors import ModelError


class TopK(NamedTuple):
    """Target each of the k highest-scoring classes of every image."""
    k: int


Target = int | Sequence[int] | torch.Tensor | TopK | None


@dataclass
class Explanation:
    maps: torch.Tensor      # (B, K, h, w) raw values, one map per image and target
    classes: torch.Tensor   # (B, K) the class each map explains
    logits: torch.Tensor    # (B, C) the model's output


def resolve_targets(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """Class indices (B, K) for logits (B, C): None = predicted class (argmax), an int = that
    class for all, a sequence/tensor = one class per image (length must equal B; a (B, K)
    tensor gives K per image), TopK(k) = the k highest classes of each image."""
    b, c = logits.shape
    if target is None:
        classes = logits.argmax(1, keepdim=True)
    elif isinstance(target, TopK):
        if not 1 <= target.k <= c:
            raise ValueError(f"TopK({target.k}) needs 1 <= k <= {c} classes")
        classes = logits.topk(target.k, dim=1).indices
    else:
        classes = torch.as_tensor(target, dtype=torch.long)
        classes = classes.repeat(b) if classes.ndim == 0 else classes
        classes = classes[:, None] if classes.ndim == 1 else classes
        if classes.ndim != 2 or classes.shape[0] != b:
            raise ValueError(f"got targets of shape {tuple(classes.shape)} for {b} images; "
                             "give exactly one target (or one row of targets) per image")
    if classes.numel() and not (0 <= int(classes.min()) and int(classes.max()) < c):
        raise ValueError(f"target classes {classes.unique().tolist()} out of range for {c} classes")
    return classes.to(logits.device)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`; ModelError listing some valid names when there is none."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ModelError(f"unknown target layer {name!r}; layers include {names}") from exc


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; every submodule's training flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def capture(layer: nn.Module | None) -> Iterator[dict[str, torch.Tensor]]:
    """Keep `layer`'s output of the forward run inside the block as `["acts"]`.

    The layer passes a clone downstream, so later in-place ops (ReLU(inplace=True)) cannot
    overwrite the kept activations; an output without a graph (frozen weights) becomes a
    leaf that requires grad, so gradients can still reach it.
    """
    kept: dict[str, torch.Tensor] = {}
    if layer is None:
        yield kept
        return

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        acts = output if output.requires_grad else output.detach().requires_grad_()
        kept["acts"] = acts
        return acts.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield kept
    finally:
        handle.remove()


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of maps (..., h, w) to `size`."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


class Explainer:
    """Base class: subclasses set `name` and implement `attribute` for one target per image."""

    name: ClassVar[str] = ""
    input_gradients: ClassVar[bool] = False   # whether `attribute` needs d(score)/d(images)

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.model = model
        self.layer_name = layer
        self.layer = find_layer(model, layer) if layer is not None else None

    def hooks(self) -> contextlib.AbstractContextManager[dict[str, torch.Tensor]]:
        """The hooks one call needs (default: keep the target layer's output)."""
        return capture(self.layer)

    def __call__(self, images: torch.Tensor, target: Target = None) -> Explanation:
        with frozen(self.model), self.hooks() as kept, torch.enable_grad():
            images = images.detach().requires_grad_(self.input_gradients)
            logits = self.model(images)
            classes = resolve_targets(logits.detach(), target)
            maps = [self.attribute(images, logits, classes[:, k], kept) for k in range(classes.shape[1])]
        return Explanation(torch.stack(maps, 1).detach(), classes, logits.detach())

    def attribute(self, images: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor,
                  kept: dict[str, torch.Tensor]) -> torch.Tensor:
        """Maps (B, h, w) explaining logits[b, classes[b]] for each image b."""
        raise NotImplementedError

    @staticmethod
    def score(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Σ_b logits[b, classes[b]]: images are independent in eval mode, so its gradient
        with respect to image b's tensors is that of image b's own score."""
        return logits.gather(1, classes[:, None]).sum()

    @staticmethod
    def normalise(maps: torch.Tensor) -> torch.Tensor:
        """Min-max scale each map (last two dims) to [0, 1] for display; a flat map becomes 0.
        The store keeps raw values; this is for figures only (the maximum stays the maximum)."""
        lo = maps.amin((-2, -1), keepdim=True)
        span = maps.amax((-2, -1), keepdim=True) - lo
        return torch.where(span > 0, (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


class CAM(Explainer):
    """Base of the class-activation family, for activations A (B, C, h, w) of the target layer
    and the gradients G = d(score)/dA:

        map = relu(Σ_c α_c ⊙ A_c)

    where a subclass gives α from `weights` (per channel (B, C, 1, 1), or per element).
    """

    uses_gradients: ClassVar[bool] = True

    def weights(self, acts: torch.Tensor, grads: torch.Tensor | None,
                linear: torch.Tensor | None) -> torch.Tensor:
        """α, broadcastable to acts. `linear` (B, C) are the target score's weights on the
        globally pooled activations, where the network has them (used by CAM only)."""
        raise NotImplementedError

    def compute(self, acts: torch.Tensor, grads: torch.Tensor | None,
                linear: torch.Tensor | None = None) -> torch.Tensor:
        """relu(Σ_c α_c ⊙ A_c): maps (B, h, w)."""
        return torch.relu((self.weights(acts, grads, linear) * acts).sum(1))

    def linear(self, classes: torch.Tensor) -> torch.Tensor | None:
        """The score's weights on pooled activations, per image (B, C); None if not needed."""
        return None

    def attribute(self, images, logits, classes, kept):
        if "acts" not in kept:
            raise ModelError(f"layer {self.layer_name!r} did not run in the model's forward pass")
        acts = kept["acts"]
        grads = None
        if self.uses_gradients:
            grads, = torch.autograd.grad(self.score(logits, classes), acts, retain_graph=True)
        return self.compute(acts.detach(), grads, self.linear(classes))

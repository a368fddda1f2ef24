"""Guided backpropagation (Springenberg et al. 2015) and guided Grad-CAM (Selvaraju et al. 2017).

At every ReLU y = relu(x) the backward pass is changed from g ⊙ 1[x > 0] to
relu(g) ⊙ 1[x > 0]: only positive gradients flow back, and only through active units.
A map is the saliency max_channel |d(score)/d(image)| (B, H, W) at the model's input size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from explainers.methods.cams import upsample
from explainers.methods.registry import MapMethod, implements

if TYPE_CHECKING:
    from explainers.engine import Chunk


class _GuidedGrad(torch.autograd.Function):
    """Identity on a ReLU's output y; backward relu(g) ⊙ 1[y > 0] (y > 0 exactly where x > 0)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y)
        return y.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        y, = ctx.saved_tensors
        return grad.clamp(min=0) * (y > 0)


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Guided backward through every nn.ReLU of `model` inside the block; hooks removed after."""
    handles = [m.register_forward_hook(lambda mod, inputs, out: _GuidedGrad.apply(out))
               for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def saliency(grads: torch.Tensor) -> torch.Tensor:
    """max_c |g_c| over the colour channels: (B, 3, H, W) -> (B, H, W)."""
    return grads.abs().amax(1)


@implements("guided_backprop")
class GuidedBackprop(MapMethod):
    """Guided-backprop saliency of the target score, re-running the encoder on the patches:
    the score depends on patch k only through h_k, so d(score)/dx_k = (dh_k/dx_k)^T g_k."""

    def explain(self, chunk: Chunk) -> torch.Tensor:
        encoder = chunk.engine.model.encoder
        with guided_relus(encoder), torch.enable_grad():
            x = chunk.inputs.detach().requires_grad_()
            grads, = torch.autograd.grad(encoder(x), x, grad_outputs=chunk.target.grad[chunk.lo:chunk.hi])
        return saliency(grads)


@implements("guided_gradcam")
class GuidedGradCAM(MapMethod):
    """Guided Grad-CAM: guided-backprop saliency ⊙ Grad-CAM upsampled (bilinear) to the patch."""

    def explain(self, chunk: Chunk) -> torch.Tensor:
        guided = chunk.maps["guided_backprop"]
        return guided * upsample(chunk.maps["gradcam"], (guided.shape[-2], guided.shape[-1]))

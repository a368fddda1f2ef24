"""Guided backpropagation (Springenberg et al. 2015) and guided Grad-CAM (Selvaraju et al. 2017).

At every ReLU y = relu(x) the backward pass is changed from g ⊙ 1[x > 0] to
relu(g) ⊙ 1[x > 0]: only positive gradients flow back, and only through active units.
A map is the saliency max_channel |d(score)/d(image)| (B, H, W) at the model's input size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from explainers.cam import Explainer, upsample
from explainers.cams import GradCAM


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
def guided_relus(model: nn.Module) -> Iterator[dict]:
    """Guided backward through every nn.ReLU of `model` inside the block; hooks removed after."""
    handles = [m.register_forward_hook(lambda mod, inputs, out: _GuidedGrad.apply(out))
               for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield {}
    finally:
        for handle in handles:
            handle.remove()


def saliency(grads: torch.Tensor) -> torch.Tensor:
    """max_c |g_c| over the colour channels: (B, 3, H, W) -> (B, H, W)."""
    return grads.abs().amax(1)


class GuidedBackprop(Explainer):
    """Guided-backprop saliency of each image's target score.

        >>> GuidedBackprop(model)(images, target=1).maps     # (B, 1, H, W)
    """

    name = "guided_backprop"
    input_gradients = True

    def hooks(self):
        return guided_relus(self.model)

    def attribute(self, images, logits, classes, kept):
        grads, = torch.autograd.grad(self.score(logits, classes), images, retain_graph=True)
        return saliency(grads)


class GuidedGradCAM(Explainer):
    """Guided Grad-CAM: guided-backprop saliency ⊙ Grad-CAM upsampled (bilinear) to the image.

        >>> GuidedGradCAM(model, "layer4")(images).maps      # (B, 1, H, W)
    """

    name = "guided_gradcam"

    def __call__(self, images, target=None):
        cam = GradCAM(self.model, self.layer_name)(images, target)
        guided = GuidedBackprop(self.model)(images, cam.classes)
        guided.maps = guided.maps * upsample(cam.maps, tuple(images.shape[-2:]))
        return guided

"""The class-activation methods: each only says how it weights the target layer's channels.

A = activations (B, C, h, w) of the target layer, G = d(score)/dA, Z = h·w; every map is
relu(Σ_c α_c ⊙ A_c) (see `explainers.cam.CAM`).
"""
from __future__ import annotations

import torch
from torch import nn

from explainers.cam import CAM, find_layer
from explainers.errors import ModelError


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017): α_c = (1/Z) Σ_ij G_cij, the spatial mean gradient.

        >>> GradCAM(model, "layer4")(images).maps      # (B, 1, h, w)
    """

    name = "gradcam"

    def weights(self, acts, grads, linear):
        return grads.mean((2, 3), keepdim=True)


class GradCAMpp(CAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), in the closed form that assumes an exponential
    score, so only first-order gradients are needed:

        a_cij = G_cij² / (2 G_cij² + (Σ_kl A_ckl) G_cij³)    (0 where the denominator is 0)
        α_c   = Σ_ij a_cij · relu(G_cij)

        >>> GradCAMpp(model, "layer4")(images, target=1).maps
    """

    name = "gradcampp"

    def weights(self, acts, grads, linear):
        g2 = grads.pow(2)
        denom = 2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads
        safe = torch.where(denom != 0, denom, torch.ones_like(denom))
        a = torch.where(denom != 0, g2 / safe, torch.zeros_like(g2))
        return (a * torch.relu(grads)).sum((2, 3), keepdim=True)


class HiResCAM(CAM):
    """HiResCAM (Draelos & Carin 2020): α = G element-wise, map = relu(Σ_c G_c ⊙ A_c).

        >>> HiResCAM(model, "layer4")(images).maps
    """

    name = "hirescam"

    def weights(self, acts, grads, linear):
        return grads


class ClassCAM(CAM):
    """CAM (Zhou et al. 2016), for a network whose target layer is followed by global average
    pooling and the linear layer `fc`: α_c = W[class, c]. On such a network Grad-CAM's
    α_c = W[class, c] / Z, so CAM = Z · Grad-CAM.

        >>> ClassCAM(model, "layer4", fc="fc")(images).maps
    """

    name = "cam"
    uses_gradients = False

    def __init__(self, model: nn.Module, layer: str, fc: str) -> None:
        super().__init__(model, layer)
        self.fc = find_layer(model, fc)
        if not isinstance(self.fc, nn.Linear):
            raise ModelError(f"CAM needs a linear layer after global pooling; {fc!r} is a {type(self.fc).__name__}")

    def linear(self, classes):
        return self.fc.weight[classes]

    def weights(self, acts, grads, linear):
        if linear is None or linear.shape[1] != acts.shape[1]:
            raise ModelError(f"CAM needs one linear weight per channel of the target layer "
                             f"({acts.shape[1]}); use gradcam for this network")
        return linear[:, :, None, None]


CAM_METHODS: dict[str, type[CAM]] = {m.name: m for m in (GradCAM, GradCAMpp, HiResCAM, ClassCAM)}

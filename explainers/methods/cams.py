"""The class-activation methods: each only says how it weights the target layer's channels.

A = activations (B, C, h, w) of the target layer, G = d(score)/dA, Z = h·w; every map is

    map = relu(Σ_c α_c ⊙ A_c)

with α per channel (B, C, 1, 1) or per element, from `weights`. Maps keep raw (unnormalised)
values on the target layer's grid.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from explainers.errors import ModelError
from explainers.methods.registry import MapMethod, implements

if TYPE_CHECKING:
    from explainers.engine import BagExplainer, Chunk



class CAM(MapMethod):
    """Base of the class-activation family: a subclass gives α from `weights`."""

    def weights(self, acts: torch.Tensor, grads: torch.Tensor | None,
                linear: torch.Tensor | None) -> torch.Tensor:
        """α, broadcastable to acts. `linear` (B, C) are the target score's weights on the
        globally pooled activations (used by CAM only)."""
        raise NotImplementedError

    def compute(self, acts: torch.Tensor, grads: torch.Tensor | None,
                linear: torch.Tensor | None = None) -> torch.Tensor:
        """relu(Σ_c α_c ⊙ A_c): maps (B, h, w)."""
        return torch.relu((self.weights(acts, grads, linear) * acts).sum(1))

    def explain(self, chunk: Chunk) -> torch.Tensor:
        grads = chunk.grads if "gradients" in self.method.needs else None
        return self.compute(chunk.acts, grads, chunk.linear)


@implements("gradcam")
class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017): α_c = (1/Z) Σ_ij G_cij, the spatial mean gradient."""

    def weights(self, acts, grads, linear):
        return grads.mean((2, 3), keepdim=True)


@implements("gradcampp")
class GradCAMpp(CAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), in the closed form that assumes an exponential
    score, so only first-order gradients are needed:

        a_cij = G_cij² / (2 G_cij² + (Σ_kl A_ckl) G_cij³)    (0 where the denominator is 0)
        α_c   = Σ_ij a_cij · relu(G_cij)
    """

    def weights(self, acts, grads, linear):
        g2 = grads.pow(2)
        denom = 2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads
        safe = torch.where(denom != 0, denom, torch.ones_like(denom))
        a = torch.where(denom != 0, g2 / safe, torch.zeros_like(g2))
        return (a * torch.relu(grads)).sum((2, 3), keepdim=True)


@implements("hirescam")
class HiResCAM(CAM):
    """HiResCAM (Draelos & Carin 2020): α = G element-wise, map = relu(Σ_c G_c ⊙ A_c)."""

    def weights(self, acts, grads, linear):
        return grads


@implements("cam")
class ClassCAM(CAM):
    """CAM (Zhou et al. 2016), for a target layer followed by global average pooling and a
    linear score: α_c = W[class, c] (for the slide target, a_k W[class, c]). On such a network
    Grad-CAM's α_c = W[class, c] / Z, so CAM = Z · Grad-CAM."""

    def check(self, engine: BagExplainer) -> None:
        if not engine.model.linear_features:
            raise ModelError(f"method 'cam' needs a head linear in the embedding; {type(engine.model).__name__} "
                             "transforms the embedding first; use gradcam")
        if not engine.global_pool:
            raise ModelError(f"method 'cam' needs global average pooling right after the target layer; this "
                             f"encoder has {[type(m).__name__ for m in engine.tail]} there; use gradcam")

    def weights(self, acts, grads, linear):
        if linear is None or linear.shape[1] != acts.shape[1]:
            raise ModelError(f"CAM needs one linear weight per channel of the target layer "
                             f"({acts.shape[1]}); use gradcam for this network")
        return linear[:, :, None, None]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of maps (..., h, w) to `size`."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


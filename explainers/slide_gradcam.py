"""Every explanation of a bag of patches from one forward pass, exact and in bounded memory.

Pass 1, per batch of patches x: A = head(x), the target layer's activations, are kept on the
host (in RAM up to RAM_LIMIT bytes, beyond that in a memory-mapped temporary file the OS pages
to disk); h = tail(A) are the embeddings (kept, N x D) and W h + b the instance logits.
MIL head: over all N embeddings at once, the attention a, the slide logits and, for the slide
target, g_k = d(slide logit_t)/d(h_k) in one small backward.
Pass 2, per chunk: only the tail is re-run, on the kept A, and
G = torch.autograd.grad(tail(A), A, grad_outputs=g): since the slide logit depends on A_k only
through h_k, this is exactly d(slide logit_t)/d(A_k), whatever the chunk size (when the tail is
global average pooling, G_cij = g_c / (hw) directly, without autograd). For the instance
target (score W_t h_k + b_t) g_k = W_t. Every CAM method is computed from the same (A, G);
guided backprop and occlusion re-read the chunk's patches and re-run the encoder on them.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explainers.cam import upsample
from explainers.cams import CAM_METHODS, ClassCAM, GradCAM
from explainers.errors import ModelError
from explainers.guided import guided_relus, saliency
from explainers.mil import AttentionMIL, split_encoder
from explainers.occlusion import occlusions

METHODS = (*CAM_METHODS, "guided_backprop", "guided_gradcam", "occlusion")
OCCLUSION_GRID = 8
RAM_LIMIT = 1 << 30  # bytes of kept activations held in RAM; a larger bag spills to a mapped file


def activation_cache(shape: tuple[int, ...]) -> np.ndarray:
    """An empty float32 array of `shape`: in RAM up to RAM_LIMIT bytes, else mapped to an
    anonymous temporary file, so host memory stays bounded for any number of patches."""
    if 4 * math.prod(shape) <= RAM_LIMIT:
        return np.empty(shape, dtype=np.float32)
    return np.memmap(tempfile.TemporaryFile(), dtype=np.float32, mode="w+", shape=shape)


@dataclass
class BagForward:
    """What pass 1 keeps of a bag of N patches."""
    h: torch.Tensor                # (N, D) embeddings, on the model's device
    instance_logits: torch.Tensor  # (N, C)
    acts: np.ndarray               # (N, C', h, w) float32 target-layer activations (activation_cache)


@dataclass
class BagTarget:
    """The score being explained, seen from the embeddings h (N, D)."""
    cls: int
    grad: torch.Tensor    # (N, D) d(score)/d(h_k)
    linear: torch.Tensor  # (N, D) the score's weights on globally pooled activations (for CAM)
    drop: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (idx, h_new) -> exact score drop


def slide_target(model: AttentionMIL, h: torch.Tensor, cls: int) -> BagTarget:
    """Target = the slide logit `cls` of embeddings h (N, D), through the attention pooling.
    CAM's weights are a_k W_cls: the slide logit is Σ_k a_k W_cls·pool(A_k) + b."""
    with torch.enable_grad():
        hg = h.detach().requires_grad_()
        logits, attention = model.pool(hg)
        grad, = torch.autograd.grad(logits[cls], hg)
    logits, attention = logits.detach(), attention.detach()
    weight = model.classifier.weight[cls].detach()

    def drop(idx: torch.Tensor, h_new: torch.Tensor) -> torch.Tensor:
        return logits[cls] - model.pool_replacing(h, idx, h_new)[:, cls]

    return BagTarget(cls, grad, attention[:, None] * weight, drop)


def instance_target(model: AttentionMIL, h: torch.Tensor, cls: int) -> BagTarget:
    """Target = each patch's own instance logit `cls`, W_cls·h_k + b_cls."""
    weight = model.classifier.weight[cls].detach()
    grad = weight.expand_as(h)

    def drop(idx: torch.Tensor, h_new: torch.Tensor) -> torch.Tensor:
        return (h[idx] - h_new) @ weight

    return BagTarget(cls, grad, grad, drop)


def _is_global_pool(tail: nn.Sequential) -> bool:
    """True when the tail is global average pooling (plus flattening) and nothing else."""
    pools = [m for m in tail if isinstance(m, nn.AdaptiveAvgPool2d)]
    return (len(pools) == 1 and pools[0].output_size in (1, (1, 1))
            and all(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)) for m in tail))


class BagExplainer:
    """Runs pass 1 (`forward`) and pass 2 (`maps`) of a model on one bag of patches."""

    def __init__(self, model: AttentionMIL, target_layer: str, methods: Sequence[str]) -> None:
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        self.model, self.methods = model, tuple(methods)
        self.head, self.tail = split_encoder(model, target_layer)
        self.global_pool = _is_global_pool(self.tail)
        if "cam" in methods and not self.global_pool:
            raise ModelError(f"method 'cam' needs global average pooling right after the target layer "
                             f"{target_layer!r}; this encoder has {[type(m).__name__ for m in self.tail]}; use gradcam")
        self.cams = {name: (ClassCAM(model, target_layer, fc="classifier") if name == "cam"
                            else CAM_METHODS[name](model, target_layer))
                     for name in methods if name in CAM_METHODS}
        self.gradcam = GradCAM(model, target_layer)
        self.needs_patches = bool({"guided_backprop", "guided_gradcam", "occlusion"} & set(methods))

    @torch.no_grad()
    def forward(self, batches: Iterable[tuple[int, int, torch.Tensor]], n: int) -> BagForward:
        """Pass 1 over `batches` of (lo, hi, inputs) covering patches 0..n-1 in order."""
        acts = h = logits = None
        for lo, hi, x in batches:
            a = self.head(x)
            if acts is None:
                acts = activation_cache((n, *a.shape[1:]))
            acts[lo:hi] = a.float().cpu().numpy()     # kept before the tail may change `a` in place
            emb = self.tail(a)
            out = self.model.classifier(emb)
            if h is None:
                h = emb.new_empty(n, emb.shape[1])
                logits = out.new_empty(n, out.shape[1])
            h[lo:hi], logits[lo:hi] = emb, out
        return BagForward(h, logits, acts)

    def maps(self, bag: BagForward, target: BagTarget, batch: int,
             read: Callable[[int, int], torch.Tensor] | None = None,
             ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Pass 2: (lo, hi, {method: maps (hi-lo, h, w)}) chunk by chunk; `read(lo, hi)` gives
        the chunk's model inputs again (needed by guided backprop and occlusion only)."""
        if self.needs_patches and read is None:
            raise ValueError("guided backprop and occlusion need `read` to re-read the patches")
        device = bag.h.device
        for lo in range(0, bag.h.shape[0], batch):
            hi = min(lo + batch, bag.h.shape[0])
            out = self._cams(torch.as_tensor(bag.acts[lo:hi], device=device), target, lo, hi)
            if self.needs_patches:
                out.update(self._input_methods(read(lo, hi), target, lo, hi, out.get("gradcam")))
            yield lo, hi, {name: out[name].detach().cpu().numpy() for name in self.methods}

    def _cams(self, acts: torch.Tensor, target: BagTarget, lo: int, hi: int) -> dict[str, torch.Tensor]:
        wanted = dict(self.cams)
        if "guided_gradcam" in self.methods:
            wanted.setdefault("gradcam", self.gradcam)
        if not wanted:
            return {}
        if self.global_pool:  # h = mean_ij A_ij, so dh_c/dA_cij = 1/(hw): no autograd needed
            grads = (target.grad[lo:hi] / acts[0, 0].numel())[:, :, None, None].expand_as(acts)
        else:
            with torch.enable_grad():
                acts.requires_grad_()
                emb = self.tail(acts.clone())  # the clone keeps in-place ops in the tail off the leaf
                grads, = torch.autograd.grad(emb, acts, grad_outputs=target.grad[lo:hi])
            acts = acts.detach()
        return {name: cam.compute(acts, grads, target.linear[lo:hi]) for name, cam in wanted.items()}

    def _input_methods(self, x: torch.Tensor, target: BagTarget, lo: int, hi: int,
                       gradcam: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = {}
        if {"guided_backprop", "guided_gradcam"} & set(self.methods):
            with guided_relus(self.model.encoder), torch.enable_grad():
                xg = x.detach().requires_grad_()
                grads, = torch.autograd.grad(self.model.encoder(xg), xg, grad_outputs=target.grad[lo:hi])
            out["guided_backprop"] = saliency(grads)
            if gradcam is not None:
                out["guided_gradcam"] = out["guided_backprop"] * upsample(gradcam, tuple(x.shape[-2:]))
        if "occlusion" in self.methods:
            idx = torch.arange(lo, hi, device=x.device)
            maps = x.new_zeros(hi - lo, OCCLUSION_GRID, OCCLUSION_GRID)
            with torch.no_grad():
                for i, j, occluded in occlusions(x, OCCLUSION_GRID):
                    maps[:, i, j] = target.drop(idx, self.model.encoder(occluded))
            out["occlusion"] = maps
        return out

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
a transformer's target layer gives tokens (B, T, C): A and G are its patch tokens on their grid,
tokens[:, L:] as (B, C, h, w) after the L class and register tokens (the encoder's
`prefix_tokens` and `patch_grid`), while the tail re-runs on all tokens; a channels-last stage
(B, h, w, C) (Swin: the encoder's `channels_last`) is read as (B, C, h, w).
guided backprop and occlusion re-read the chunk's patches and re-run the encoder on them.
`autocast`: pass 1's forward runs under bf16 autocast (`bf16_autocast`); A and h are kept as
float32 and everything after pass 1 (MIL head, pass 2's tail and gradients) runs in float32.
The methods come from the registry (`explainers.methods.registry`); in each chunk every method is
computed once, after the methods it requires.
"""
from __future__ import annotations

import contextlib
import functools
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from explainers.errors import ModelError
from explainers.methods import cams, guided, occlusion  # noqa: F401  (implement the built-in methods)
from explainers.methods.registry import METHODS, MapMethod, implementation, parse_methods
from explainers.models.mil import MILModel, split_encoder

RAM_LIMIT = 1 << 30  # bytes of kept activations held in RAM; a larger bag spills to a mapped file


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


def activation_cache(shape: tuple[int, ...]) -> np.ndarray:
    """An empty float32 array of `shape`: in RAM up to RAM_LIMIT bytes, else mapped to an
    anonymous temporary file, so host memory stays bounded for any number of patches."""
    if 4 * math.prod(shape) <= RAM_LIMIT:
        return np.empty(shape, dtype=np.float32)
    return np.memmap(tempfile.TemporaryFile(), dtype=np.float32, mode="w+", shape=shape)


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """torch.autocast to bfloat16 on `device`'s type when `enabled` (8-bit mantissa: a relative
    rounding of 2^-8 per op), else no change."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class BagForward:
    """What pass 1 keeps of a bag of N patches."""
    h: torch.Tensor                # (N, D) embeddings, on the model's device
    instance_logits: torch.Tensor  # (N, C)
    acts: np.ndarray               # (N, C', h, w) or (N, T, C') float32 target-layer output (activation_cache)


@dataclass
class BagTarget:
    """The score being explained, seen from the embeddings h (N, D)."""
    cls: int
    grad: torch.Tensor    # (N, D) d(score)/d(h_k)
    linear: torch.Tensor | None  # (N, D) the score's weights on globally pooled activations (CAM), if linear
    drop: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (idx, h_new) -> exact score drop


def slide_target(model: MILModel, h: torch.Tensor, cls: int) -> BagTarget:
    """Target = the slide logit `cls` of embeddings h (N, D), through the attention pooling.
    CAM's weights (heads with z = h) are a_k w_cls: the slide logit is Σ_k a_k w_cls·pool(A_k) + b."""
    with torch.enable_grad():
        hg = h.detach().requires_grad_()
        logits, attention = model.pool(hg, cls)
        grad, = torch.autograd.grad(logits[cls], hg)
    logits, attention = logits.detach(), attention.detach()

    def drop(idx: torch.Tensor, h_new: torch.Tensor) -> torch.Tensor:
        return logits[cls] - model.pool_replacing(h, idx, h_new)[:, cls]

    linear = attention[:, None] * model.class_weights(cls).detach() if model.linear_features else None
    return BagTarget(cls, grad, linear, drop)


def instance_target(model: MILModel, h: torch.Tensor, cls: int) -> BagTarget:
    """Target = each patch's own instance logit `cls` (the head applied to that patch alone);
    g_k = d(instance logit_cls of k)/d(h_k), each k independent of the others."""
    with torch.enable_grad():
        hg = h.detach().requires_grad_()
        grad, = torch.autograd.grad(model.instance_logits(hg)[:, cls].sum(), hg)
    scores = model.instance_logits(h)[:, cls].detach()

    def drop(idx: torch.Tensor, h_new: torch.Tensor) -> torch.Tensor:
        return scores[idx] - model.instance_logits(h_new)[:, cls]

    linear = model.class_weights(cls).detach().expand_as(h) if model.linear_features else None
    return BagTarget(cls, grad, linear, drop)


# the explain stage's targets (`explainers.config.TARGETS`) -> how to build each
BAG_TARGETS: dict[str, Callable[[MILModel, torch.Tensor, int], BagTarget]] = {
    "slide": slide_target, "instance": instance_target}


def _is_global_pool(tail: nn.Sequential) -> bool:
    """True when the tail is global average pooling (plus flattening) and nothing else."""
    pools = [m for m in tail if isinstance(m, nn.AdaptiveAvgPool2d)]
    return (len(pools) == 1 and pools[0].output_size in (1, (1, 1))
            and all(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)) for m in tail))


@dataclass
class Chunk:
    """What a method sees of patches lo..hi-1 in pass 2: the kept target-layer output, the
    target, the maps computed so far; activations and gradients on the grid and re-read patches
    are computed once, when first asked for."""

    engine: BagExplainer
    target: BagTarget
    lo: int
    hi: int
    kept: torch.Tensor                 # the target layer's output: (B, C, h, w), or (B, T, C) tokens
    read: Callable[[int, int], torch.Tensor] | None
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    @functools.cached_property
    def acts(self) -> torch.Tensor:
        """A (B, C, h, w): the target layer's activations on their grid."""
        return self.engine.grid(self.kept)

    @property
    def linear(self) -> torch.Tensor | None:
        """(B, D) the score's weights on globally pooled activations (for CAM), None for nonlinear heads."""
        return None if self.target.linear is None else self.target.linear[self.lo:self.hi]

    @functools.cached_property
    def grads(self) -> torch.Tensor:
        """G = d(score)/dA (B, C, h, w), through the re-run tail (module docstring)."""
        g = self.target.grad[self.lo:self.hi]
        if self.engine.global_pool:  # h = mean_ij A_ij, so dh_c/dA_cij = 1/(hw): no autograd needed
            return (g / self.acts[0, 0].numel())[:, :, None, None].expand_as(self.acts)
        with torch.enable_grad():
            kept = self.kept.detach().requires_grad_()
            emb = self.engine.tail(kept.clone())  # the clone keeps in-place ops in the tail off the leaf
            grads, = torch.autograd.grad(emb, kept, grad_outputs=g)
        return self.engine.grid(grads)

    @functools.cached_property
    def inputs(self) -> torch.Tensor:
        """The chunk's patches again as model inputs (B, 3, P, P)."""
        if self.read is None:
            raise ValueError("methods that need the patches need `read` to re-read them")
        return self.read(self.lo, self.hi)


class BagExplainer:
    """Runs pass 1 (`forward`) and pass 2 (`maps`) of a model on one bag of patches, for the
    registered methods `methods` (see `explainers.methods.registry`; none: pass 1 only, for attention and
    logits); `autocast`: pass 1 under bf16 autocast (module docstring)."""

    def __init__(self, model: MILModel, target_layer: str, methods: Sequence[str], autocast: bool = False) -> None:
        self.model, self.autocast = model, autocast
        self.methods = parse_methods(methods, allow_empty=True)
        self.head, self.tail = split_encoder(model, target_layer)
        self.global_pool = _is_global_pool(self.tail)
        self.steps: dict[str, MapMethod] = {}
        for name in self.methods:
            self._add(name)
        for step in self.steps.values():
            step.check(self)
        self.needs_patches = any("patches" in METHODS[name].needs for name in self.steps)
        self.needs_encoder = any(METHODS[name].needs for name in self.steps)  # else kept h will do
        self.prefix_tokens = int(getattr(model.encoder, "prefix_tokens", 0))
        self.patch_grid: tuple[int, int] | None = getattr(model.encoder, "patch_grid", None)
        self.channels_last = bool(getattr(model.encoder, "channels_last", False))

    def grid(self, kept: torch.Tensor) -> torch.Tensor:
        """The target layer's output as (B, C, h, w): as it is for a CNN, permuted from (B, h, w, C)
        for a channels-last encoder; a transformer's patch tokens (B, T, C) without the
        `prefix_tokens` class/register tokens, on `patch_grid`."""
        if kept.ndim == 4:
            return kept.permute(0, 3, 1, 2) if self.channels_last else kept
        if kept.ndim != 3 or self.patch_grid is None:
            raise ModelError(f"the target layer gives {tuple(kept.shape)} values per batch; CAM methods need "
                             "(B, C, h, w) maps or (B, T, C) tokens of an encoder with `patch_grid`")
        h, w = self.patch_grid
        return kept[:, self.prefix_tokens:].transpose(1, 2).reshape(kept.shape[0], kept.shape[2], h, w)

    def _add(self, name: str) -> None:
        """Add `name` after the methods it requires (each computed once)."""
        record = METHODS[name]
        for required in record.requires:
            self._add(required)
        if name not in self.steps and record.choosable:
            self.steps[name] = implementation(name)()

    @torch.no_grad()
    def forward(self, batches: Iterable[tuple[int, int, torch.Tensor]], n: int) -> BagForward:
        """Pass 1 over `batches` of (lo, hi, inputs) covering patches 0..n-1 in order."""
        acts: np.ndarray | None = None
        h: torch.Tensor | None = None
        logits: torch.Tensor | None = None
        for lo, hi, x in batches:
            with bf16_autocast(x.device, self.autocast):
                a = self.head(x)
                if acts is None:
                    acts = activation_cache((n, *a.shape[1:]))
                acts[lo:hi] = a.float().cpu().numpy()     # kept before the tail may change `a` in place
                emb = self.tail(a).float()
            out = self.model.instance_logits(emb)
            if h is None or logits is None:
                h, logits = emb.new_empty(n, emb.shape[1]), out.new_empty(n, out.shape[1])
            h[lo:hi], logits[lo:hi] = emb, out
        if acts is None or h is None or logits is None:
            raise ValueError("an empty bag: `batches` gave no patches")
        return BagForward(h, logits, acts)

    def maps(self, bag: BagForward, target: BagTarget, batch: int,
             read: Callable[[int, int], torch.Tensor] | None = None,
             ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Pass 2: (lo, hi, {method: maps (hi-lo, h, w)}) chunk by chunk; `read(lo, hi)` gives
        the chunk's model inputs again (needed by methods that need the patches)."""
        if self.needs_patches and read is None:
            raise ValueError(f"{', '.join(self.steps)} need `read` to re-read the patches")
        device = bag.h.device
        for lo in range(0, bag.h.shape[0], batch):
            hi = min(lo + batch, bag.h.shape[0])
            chunk = Chunk(self, target, lo, hi, torch.as_tensor(bag.acts[lo:hi], device=device), read)
            for name, step in self.steps.items():
                chunk.maps[name] = step.explain(chunk)
            yield lo, hi, {name: chunk.maps[name].detach().cpu().numpy() for name in self.methods}

    @torch.no_grad()
    def from_embeddings(self, h: torch.Tensor) -> BagForward:
        """Pass 1's result from kept embeddings h (N, D), without the encoder: enough for attention,
        logits and targets, not for maps (`needs_encoder`; its activations are empty)."""
        if self.needs_encoder:
            raise ValueError(f"{', '.join(self.steps)} need the encoder's activations, not kept embeddings")
        return BagForward(h, self.model.instance_logits(h), np.empty((h.shape[0], 0), np.float32))

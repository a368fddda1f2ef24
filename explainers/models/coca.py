"""CONCH's image tower (CoCa, as mahmoodlab/CONCH builds it) as a `TokenEncoder`
(`explainers.models.tokens`): a timm VisionTransformer trunk (`explainers.models.timm_vit`) whose
normed tokens are pooled by open_clip's `AttentionalPooler`, then a LayerNorm:

    z = LN(AttentionalPooler(tokens)[:, 0])        one learnt query attending over all tokens
                                                  (class and patch), D = embed_dim_contrast

This is the embedding pathology pipelines take from CONCH (`encode_image(x, proj_contrast=False,
normalize=False)`); the contrastive projection, the captioning pooler and the text towers are
not part of the encoder.

A CONCH file is the whole CoCa state dict: `visual.trunk.*` (timm's keys), `visual.attn_pool_contrast.*`,
`visual.ln_contrast.*`, `visual.proj_contrast`, `visual.attn_pool_caption.*`, `visual.ln_caption.*`,
`text.*`, `text_decoder.*`, `logit_scale`. `convert` keeps the `visual.` keys (prefix stripped);
the key map then reads `trunk.<timm key>` and the pooler's keys as ours, and the weight reader
drops the projection and the captioning pooler (`explainers.models.weights.DROP["open_clip"]`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from explainers.models.timm_vit import timm_vit
from explainers.models.tokens import TokenEncoder

VISUAL = "visual."
TRUNK = "trunk."


class AttentionalPool(nn.Module):
    """Tokens (B, L + N, C) -> (B, D): z = LN(AttentionalPooler(tokens)[:, 0]) (module docstring);
    open_clip's AttentionalPooler with one query, `heads` heads, keys and values of width C."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        from open_clip.transformer import AttentionalPooler, LayerNorm

        self.attn_pool_contrast = AttentionalPooler(dim, context_dim, n_head=heads, n_queries=1)
        self.ln_contrast = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(x)[:, 0])


def visual_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's keys of a CoCa state dict, `visual.` stripped (a file of the tower alone
    is kept as it is)."""
    if not any(k.startswith(VISUAL) for k in state):
        return state
    return {k.removeprefix(VISUAL): v for k, v in state.items() if k.startswith(VISUAL)}


def coca_vit(embed_dim_contrast: int = 512, attn_pooler_heads: int = 8, **kwargs: Any) -> TokenEncoder:
    """CONCH's image tower: timm's ViT built with `kwargs` (`timm_vit`), pooled by AttentionalPool
    of width `embed_dim_contrast` with `attn_pooler_heads` heads."""
    kwargs.pop("pooling", None)
    encoder = timm_vit(pooling="cls", **kwargs)
    trunk: Any = encoder.embed
    width = int(trunk.embed_dim)
    encoder.pool = AttentionalPool(embed_dim_contrast, width, attn_pooler_heads)
    pool_keys = {k: f"pool.{k}" for k in encoder.pool.state_dict()}
    encoder.library_keys = {TRUNK + k: v for k, v in encoder.library_keys.items()} | pool_keys
    encoder.unused_keys = frozenset(TRUNK + k for k in encoder.unused_keys)
    encoder.prefixes = (*((TRUNK + theirs, ours) for theirs, ours in encoder.prefixes), (TRUNK, ""))
    encoder.convert = visual_keys
    return encoder

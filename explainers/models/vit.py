"""Vision Transformer encoders (Dosovitskiy et al. 2021) whose weights use timm's parameter names.

A P x P image (P = img_size) is cut into an (h, w) = (P/p, P/p) grid of p x p patches. With
C the width, L the number of prefix tokens (1 class token + R register tokens) and N = h·w:

    embed:  x_n = W_e vec(patch_n) + b_e                 (N, C), a p x p stride-p convolution
            z = [cls, reg_1..reg_R, x_1..x_N] + E        (L + N, C); E covers all L + N tokens,
                                                          or only the N patches (`no_embed_class`:
                                                          E is added to x before the prefix is joined)
    block:  z = z + γ1 ⊙ Attn(LN1(z));  z = z + γ2 ⊙ MLP(LN2(z))      (pre-norm; γ = LayerScale or 1)
            Attn: softmax(q kᵀ / sqrt(C/H)) v per head, H heads, qkv with bias, then `proj`
            MLP:  fc2(GELU(fc1 z)), hidden width 4C;  LN: LayerNorm with eps 1e-6
    norm:   LN(z);   pool: the class token z_0 (timm's global_pool='token')  -> (B, C)

The encoder is `nn.Sequential(embed, blocks, norm, pool)` with `blocks` itself a Sequential, so
`encoder.blocks.<i>` is a target layer. Its outputs are tokens (B, L + N, C); the encoder carries

    prefix_tokens: int              L = 1 + R, the tokens before the patch tokens
    patch_grid: tuple[int, int]     (h, w), so tokens[:, L:] reshape row-major to (B, h, w, C),
                                    i.e. tokens[:, L:].transpose(1, 2).reshape(B, C, h, w)

State dicts: our keys equal timm's except that the embedding's (`cls_token`, `reg_token`,
`pos_embed`, `patch_embed.*`) gain the prefix `embed.`; timm's `head.*` is the classifier and is
not part of the encoder (`from_timm` drops it).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

EMBED_KEYS = ("cls_token", "reg_token", "pos_embed", "patch_embed.")
LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """p x p patches -> tokens (B, N, C) through a stride-p convolution `proj`."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Embed(nn.Module):
    """Images (B, 3, P, P) -> tokens (B, L + N, C): class, registers, patches, plus positions."""

    def __init__(self, img_size: int, patch: int, dim: int, registers: int, no_embed_class: bool) -> None:
        super().__init__()
        if img_size % patch:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch}")
        self.grid = (img_size // patch, img_size // patch)
        self.no_embed_class = no_embed_class
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
        n = self.grid[0] * self.grid[1] + (0 if no_embed_class else 1 + registers)
        self.pos_embed = nn.Parameter(torch.randn(1, n, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        n = self.grid[0] * self.grid[1]
        if tokens.shape[1] != n:
            raise ValueError(f"a {tuple(x.shape[-2:])} image gives {tokens.shape[1]} patches; this ViT "
                             f"was built for {n} ({self.grid[0]}x{self.grid[1]}): resize the input")
        prefix = [self.cls_token.expand(len(x), -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(len(x), -1, -1))
        if self.no_embed_class:
            return torch.cat([*prefix, tokens + self.pos_embed], dim=1)
        return torch.cat([*prefix, tokens], dim=1) + self.pos_embed


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q kᵀ / sqrt(d)) v per head (d = C/H), then `proj`."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class LayerScale(nn.Module):
    """x ⊙ γ, γ (C,) learnt (initialised to `init_values`)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc2(GELU(fc1 x)) with the exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: z + γ1 ⊙ Attn(LN1 z), then + γ2 ⊙ MLP(LN2 z)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, layer_scale: float | None) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=LN_EPS), Attention(dim, heads)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=LN_EPS), Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTEncoder(nn.Sequential):
    """`Sequential(embed, blocks, norm, pool)` plus what a token grid needs (module docstring)."""

    prefix_tokens: int
    patch_grid: tuple[int, int]


class ClassToken(nn.Module):
    """Tokens (B, T, C) -> the class token (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def vision_transformer(dim: int, depth: int, heads: int, patch_size: int = 16, img_size: int = 224,
                       mlp_ratio: float = 4.0, registers: int = 0, layer_scale: float | None = None,
                       no_embed_class: bool = False) -> ViTEncoder:
    """A ViT encoder `Sequential(embed, blocks, norm, pool)` (module docstring) giving (B, dim).

    `registers`: R register tokens (timm's `reg_tokens`); `layer_scale`: LayerScale's initial
    value (timm's `init_values`; None = no LayerScale); `no_embed_class`: positions for the patch
    tokens only (timm's `no_embed_class`, e.g. DINOv2 with registers)."""
    encoder = ViTEncoder(OrderedDict(
        embed=Embed(img_size, patch_size, dim, registers, no_embed_class),
        blocks=nn.Sequential(*[Block(dim, heads, mlp_ratio, layer_scale) for _ in range(depth)]),
        norm=nn.LayerNorm(dim, eps=LN_EPS), pool=ClassToken()))
    encoder.prefix_tokens = 1 + registers
    encoder.patch_grid = (img_size // patch_size, img_size // patch_size)
    return encoder


def from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm VisionTransformer state dict in our keys: embedding keys gain `embed.`, `head.*` dropped."""
    return {("embed." + k if k.startswith(EMBED_KEYS) else k): v
            for k, v in state.items() if not k.startswith("head.")}


def to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ViT state dict in timm's keys (the inverse of `from_timm`, without a head)."""
    return {k.removeprefix("embed."): v for k, v in state.items()}


def timm_kwargs(state: dict[str, torch.Tensor], img_size: int = 224, patch_size: int = 16) -> dict[str, object]:
    """The kwargs of `vision_transformer` that a timm state dict decides: `registers` (rows of
    `reg_token`), `layer_scale` (1.0 when it has `blocks.0.ls1.gamma`: the loaded γ replace it) and
    `no_embed_class` (`pos_embed` has N = (img_size/patch_size)² rows, not N + 1 + registers).
    `dim`, `depth` and `heads` come from the named variant. ValueError when pos_embed fits neither."""
    registers = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    rows, n = int(state["pos_embed"].shape[1]), (img_size // patch_size) ** 2
    if rows not in (n, n + 1 + registers):
        raise ValueError(f"pos_embed has {rows} positions; a {img_size}-px input with {patch_size}-px patches "
                         f"needs {n} (patches only) or {n + 1 + registers} (with class and register tokens)")
    return {"registers": registers, "layer_scale": 1.0 if "blocks.0.ls1.gamma" in state else None,
            "no_embed_class": rows == n}

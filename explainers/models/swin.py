"""CTransPath: timm's Swin Transformer (Swin-T) with a convolutional stem, as a `TokenEncoder`
(`explainers.models.tokens`) whose stages keep timm's channels-last maps:

    embed   ConvStem: two 3x3 stride-2 convolutions (C/8, C/4 channels, batch norm, ReLU), a 1x1
            convolution to C, LayerNorm: images (B, 3, P, P) -> (B, P/4, P/4, C)
    blocks  timm's four SwinTransformerStages (window attention; patch merging at the start of
            stages 1-3): -> (B, P/32, P/32, 8C)
    norm    timm's final LayerNorm;  pool: the mean over the map, (B, 8C)

`channels_last` tells the explain engine that a stage gives (B, h, w, C) maps; the Grad-CAM target
is the last stage (`encoder.blocks.3`). CTransPath's published file holds timm 0.5.4's keys
(`{"model": state_dict}`, patch merging at the end of stages 0-2, relative position indices);
`convert` is timm's own `checkpoint_filter_fn`, which moves the merging layers and drops the
indices, then the key map gives ours (`layers.*` -> `blocks.*`, `patch_embed.*` -> `embed.*`).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from explainers.models.tokens import TokenEncoder, assemble

PREFIXES = (("patch_embed.", "embed."), ("layers.", "blocks."), ("norm.", "norm."))


class ConvStem(nn.Module):
    """CTransPath's patch embedding (module docstring); timm's embed_layer arguments."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 96, norm_layer: type[nn.Module] | None = None, output_fmt: str = "NHWC",
                 **_: Any) -> None:
        super().__init__()
        if patch_size != 4 or embed_dim % 8 or output_fmt != "NHWC":
            raise ValueError(f"CTransPath's stem gives channels-last 4-px patches of a width divisible by 8, not "
                             f"patch {patch_size}, width {embed_dim}, {output_fmt}")
        side = img_size if isinstance(img_size, int) else img_size[0]
        self.img_size, self.patch_size = (side, side), (patch_size, patch_size)
        self.grid_size = (side // patch_size, side // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        c1, c2 = embed_dim // 8, embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.Conv2d(c2, embed_dim, 1))
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).permute(0, 2, 3, 1)           # (B, h, w, C)
        return self.norm(x)


class SpatialMean(nn.Module):
    """(B, h, w, C) -> (B, C): the mean over the map (timm's global average pooling, NHWC)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2))


def ctranspath(model: str = "swin_tiny_patch4_window7_224", **kwargs: Any) -> TokenEncoder:
    """timm's `model` with CTransPath's stem and `kwargs` (timm's SwinTransformer arguments)."""
    import timm
    from timm.models.swin_transformer import checkpoint_filter_fn

    swin: Any = timm.create_model(model, pretrained=False, num_classes=0, embed_layer=ConvStem, **kwargs)
    library_state = dict(swin.state_dict(keep_vars=True))
    grid = tuple(int(g) // 2 ** (len(swin.layers) - 1) for g in swin.patch_embed.grid_size)
    encoder = assemble(swin.patch_embed, swin.layers, swin.norm, SpatialMean(), library_state, (grid[0], grid[1]),
                       "", prefixes=PREFIXES, convert=functools.partial(checkpoint_filter_fn, model=swin))
    encoder.channels_last = True
    return encoder

"""A transformer encoder as the explain engine splits it: `Sequential(embed, blocks, norm, pool)`.

The stages are the defining library's own modules (timm: `explainers.models.timm_vit`;
transformers: `explainers.models.hf_vit`), re-assembled so that `encoder.blocks.<i>` is a
target layer:

    embed   images (B, 3, P, P) -> tokens (B, L + N, C): L prefix tokens (class, registers), then
            the N = h·w patch tokens row-major on their (h, w) grid, positions added
    blocks  nn.Sequential of the library's transformer blocks, tokens -> tokens
    norm    the final LayerNorm
    pool    tokens -> embedding (B, D), `TokenPool` (class token, or class ‖ mean of patch tokens)

The encoder carries what the engine (`explainers.engine.BagExplainer.grid`) and the weight
reader (`explainers.models.weights`) need:

    prefix_tokens: int              L, the tokens before the patch tokens
    patch_grid: tuple[int, int]     (h, w): tokens[:, L:].transpose(1, 2).reshape(B, C, h, w)
    library_keys: dict[str, str]    the library model's state-dict key -> ours (same tensors)
    unused_keys: frozenset[str]     keys of the library model that the encoder does not use
    optional_keys: frozenset[str]   ours that a weights file may lack (unused at inference)
    patch_key: str                  our key of the patch projection's weight (C, 3, p, p), or ""
    channels_last: bool             the stages give (B, h, w, C) maps, not tokens (Swin)
    convert: callable or None       the library's own renaming of older file layouts
    prefixes: ((theirs, ours), ...) how the library's key prefixes read in ours, for keys the
                                    encoder lacks (so that an error names them as the encoder would)
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

POOLINGS = ("cls", "cls+mean", "pooler")


class TokenPool(nn.Module):
    """Tokens (B, L + N, C) -> (B, D): "cls" (and "pooler", a library's pooler output that is
    the class token, as DINOv2's) the class token z_0, D = C; "cls+mean" the class token
    concatenated with the mean of the N patch tokens (Virchow), D = 2C."""

    def __init__(self, mode: str, prefix_tokens: int) -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"pooling {mode!r} is not one of {POOLINGS}")
        self.mode, self.prefix_tokens = mode, prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls+mean":
            return torch.cat([x[:, 0], x[:, self.prefix_tokens:].mean(1)], dim=-1)
        return x[:, 0]

    def extra_repr(self) -> str:
        return f"{self.mode}, prefix_tokens={self.prefix_tokens}"


class TokenEncoder(nn.Sequential):
    """`Sequential(embed, blocks, norm, pool)` of a library's transformer (module docstring)."""

    prefix_tokens: int
    patch_grid: tuple[int, int]
    library_keys: dict[str, str]
    unused_keys: frozenset[str]
    optional_keys: frozenset[str]
    patch_key: str
    channels_last: bool = False
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None
    prefixes: tuple[tuple[str, str], ...]

    def our_key(self, key: str) -> str:
        """Our name of the library's `key`: from the key map, else by its prefix."""
        if key in self.library_keys:
            return self.library_keys[key]
        theirs, ours = next(((t, o) for t, o in self.prefixes if key.startswith(t)), ("", ""))
        return ours + key.removeprefix(theirs)

    def from_library(self, state: dict[str, torch.Tensor], drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        """A state dict as the library saves it, in our keys: the library's own renaming of older
        layouts (`convert`), then its keys mapped to ours; the library model's keys we do not use
        and those starting with `drop` (a classifier) left out; others renamed by their prefix."""
        if self.convert is not None:
            state = self.convert(state)
        return {self.our_key(k): v for k, v in state.items() if k not in self.unused_keys and not k.startswith(drop)}

    def to_library(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our state dict in the library model's in-memory keys (the inverse of the key map)."""
        ours = {v: k for k, v in self.library_keys.items()}
        return {ours.get(k, k): v for k, v in state.items()}


def assemble(embed: nn.Module, blocks: nn.Sequential, norm: nn.Module, pool: nn.Module,
             library_state: dict[str, torch.Tensor], grid: tuple[int, int], patch_key: str,
             optional: tuple[str, ...] = (), prefixes: tuple[tuple[str, str], ...] = (),
             convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> TokenEncoder:
    """The TokenEncoder of a library model's stages. `library_state` is the library model's
    `state_dict(keep_vars=True)` taken before its stages were moved: each of its tensors is
    found again in the encoder by identity, which gives the key map without writing one."""
    encoder = TokenEncoder(OrderedDict(embed=embed, blocks=blocks, norm=norm, pool=pool))
    ours = {id(t): k for k, t in encoder.state_dict(keep_vars=True).items()}
    encoder.library_keys = {k: ours[id(t)] for k, t in library_state.items() if id(t) in ours}
    encoder.unused_keys = frozenset(k for k, t in library_state.items() if id(t) not in ours)
    encoder.optional_keys = frozenset(encoder.library_keys[k] for k in optional if k in encoder.library_keys)
    encoder.prefix_tokens = int(getattr(pool, "prefix_tokens", 0))
    encoder.patch_grid = grid
    encoder.patch_key = patch_key
    encoder.convert = convert
    encoder.prefixes = prefixes
    return encoder

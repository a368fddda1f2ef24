"""Vision Transformers built by timm (`timm.create_model(name, pretrained=False, **args)`), as a
`TokenEncoder` (`explainers.models.tokens`): timm's own VisionTransformer, its `blocks` and final
`norm` moved out beside it, so that `encoder.blocks.<i>` is a target layer:

    embed   the VisionTransformer itself, left with patch_embed, cls_token, reg_token, pos_embed
            (and norm_pre): its forward is timm's (patch_embed, _pos_embed, patch_drop, norm_pre)
    blocks  timm's Blocks;  norm: timm's final LayerNorm;  pool: TokenPool (class token, or
            class ‖ mean of patch tokens)

Our keys equal timm's except the embedding's, which gain `embed.` (`cls_token` ->
`embed.cls_token`); timm's classifier `head.*` is not part of the encoder. Nothing is downloaded
(`pretrained=False`); timm's pretrained loader would resample a patch or position embedding of
another size (`checkpoint_filter_fn`), the weight reader refuses one instead.

The arguments are timm's VisionTransformer's, plus `model` (the timm model name whose defaults
they override) and `pooling`; `mlp_layer` and `act_layer` are named by strings ("swiglu_packed",
"silu") so that records stay plain data. Older names are accepted: dim, heads, registers,
layer_scale (= embed_dim, num_heads, reg_tokens, init_values).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from explainers.errors import ModelError
from explainers.models.tokens import TokenEncoder, TokenPool, assemble

ALIASES = {"dim": "embed_dim", "heads": "num_heads", "registers": "reg_tokens", "layer_scale": "init_values"}
PATCH_KEY = "embed.patch_embed.proj.weight"
DROP = ("head.",)  # timm's classifier
PREFIXES = tuple((k, "embed." + k) for k in ("cls_token", "reg_token", "pos_embed", "patch_embed.", "norm_pre."))


def timm_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` in timm's names, layers resolved: aliases renamed, `mlp_layer` / `act_layer`
    strings turned into timm's classes."""
    from timm.layers import Mlp, SwiGLU, SwiGLUPacked, get_act_layer

    args = {ALIASES.get(k, k): v for k, v in kwargs.items()}
    if isinstance(args.get("mlp_layer"), str):
        layers = {"mlp": Mlp, "swiglu_packed": SwiGLUPacked, "swiglu": SwiGLU}
        if args["mlp_layer"] not in layers:
            raise ValueError(f"mlp_layer {args['mlp_layer']!r} is not one of {sorted(layers)}")
        args["mlp_layer"] = layers[args["mlp_layer"]]
    if isinstance(args.get("act_layer"), str):
        args["act_layer"] = get_act_layer(args["act_layer"])
    return args


def timm_vit(model: str = "vit_base_patch16_224", pooling: str = "cls", **kwargs: Any) -> TokenEncoder:
    """timm's `model` with `kwargs` (module docstring), as a TokenEncoder pooled by `pooling`."""
    import timm

    for fixed in ("pretrained", "num_classes", "global_pool", "class_token", "fc_norm"):
        if fixed in kwargs:
            raise TypeError(f"{fixed!r} is decided by the encoder record (pooling={pooling!r}), not an option")
    args = timm_args(kwargs)
    if torch.get_default_device().type == "meta":   # nothing to draw on meta tensors: timm's init skipped
        args.setdefault("weight_init", "skip")
    vit: Any
    try:
        vit = timm.create_model(model, pretrained=False, num_classes=0, global_pool="", **args)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"timm cannot build {model!r} with {kwargs}: {exc}") from exc
    library_state = dict(vit.state_dict(keep_vars=True))
    blocks, norm = vit.blocks, vit.norm
    vit.blocks, vit.norm = nn.Sequential(), nn.Identity()   # the embedding stage keeps the rest
    grid = tuple(int(g) for g in vit.patch_embed.grid_size)
    return assemble(vit, blocks, norm, TokenPool(pooling, vit.num_prefix_tokens), library_state,
                    (grid[0], grid[1]), PATCH_KEY, prefixes=PREFIXES)


def options_from_weights(state: dict[str, torch.Tensor], img_size: int = 224, patch_size: int = 16,
                         path: object = "the weights") -> dict[str, Any]:
    """The options of a timm ViT that its weights decide (state in timm's keys): `reg_tokens`
    (rows of `reg_token`), `init_values` (1.0 when it has LayerScale `blocks.0.ls1.gamma`: the
    loaded γ replace it; else None) and `no_embed_class` (`pos_embed` has N = (img_size/patch_size)²
    rows, not N + 1 + registers). ModelError, one line, when the patch size or positions do not fit."""
    proj = state.get("patch_embed.proj.weight")
    if proj is not None and tuple(proj.shape[-2:]) != (patch_size, patch_size):
        raise ModelError(f"{path}: a patch-{proj.shape[-1]} ViT (patch_embed.proj.weight {tuple(proj.shape)}), "
                         f"not patch {patch_size}: use an encoder with {proj.shape[-1]}-px patches")
    if "pos_embed" not in state:
        raise ModelError(f"{path}: no pos_embed: not the weights of a timm VisionTransformer")
    registers = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    rows, n = int(state["pos_embed"].shape[1]), (img_size // patch_size) ** 2
    if rows not in (n, n + 1 + registers):
        raise ModelError(f"{path}: pos_embed has {rows} positions; a {img_size}-px input with {patch_size}-px "
                         f"patches needs {n} (patches only) or {n + 1 + registers} (with class and register tokens)")
    return {"reg_tokens": registers, "init_values": 1.0 if "blocks.0.ls1.gamma" in state else None,
            "no_embed_class": rows == n}

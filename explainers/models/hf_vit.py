"""Vision Transformers built by transformers (`ViTModel`, `Dinov2Model`, `Dinov2WithRegistersModel`
from their configs), as a `TokenEncoder` (`explainers.models.tokens`):

    embed   the model's `embeddings` (class token, registers, patches, positions interpolated
            to the input as the model does)
    blocks  its layers (`encoder.layer` / `layers`);  norm: its `layernorm`;  pool: TokenPool
            (the class token: `last_hidden_state[:, 0]`, which is also DINOv2's `pooler_output`)

A weights file (or a snapshot folder's `model.safetensors` / `pytorch_model.bin`) holds the keys
`save_pretrained` writes (`embeddings.cls_token`, `encoder.layer.0.attention.attention.query.weight`,
...); `convert` renames them as `from_pretrained` does (transformers' own checkpoint conversion
mapping, which also splits a SwiGLU `mlp.weights_in` into `gate_proj` and `up_proj`), then the
key map of the TokenEncoder gives ours (`embed.cls_token`, `blocks.0.attention.q_proj.weight`,
...). A ViT pooler (`pooler.*`: dense + tanh) is not used: the embedding is the class token.

The arguments are the model class name and pooling, then the config's fields (hidden_size,
num_hidden_layers, num_attention_heads, patch_size, image_size, num_register_tokens, ...), and
`input_size`, the side of the input when it is not `image_size` (DINOv2 models interpolate their
positions, stored for `image_size`, to the input; a snapshot's image_size may be DINOv2's 518
while the model reads 224-px patches).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from explainers.models.tokens import TokenEncoder, TokenPool, assemble

MODELS = ("ViTModel", "Dinov2Model", "Dinov2WithRegistersModel")
PATCH_KEY = "embed.patch_embeddings.projection.weight"
DROP = ("pooler.",)
OPTIONAL = ("embeddings.mask_token",)  # used in pre-training only; some snapshots leave it out
PREFIXES = (("embeddings.", "embed."), ("encoder.layer.", "blocks."), ("layers.", "blocks."), ("layernorm.", "norm."))


def hf_vit(model_class: str = "Dinov2Model", pooling: str = "cls", input_size: int | None = None,
           **config: Any) -> TokenEncoder:
    """transformers' `model_class` built from a config with `config` (module docstring)."""
    import transformers

    if model_class not in MODELS:
        raise ValueError(f"model_class {model_class!r} is not one of {MODELS}")
    if int(transformers.__version__.split(".")[0]) < 5:
        raise ValueError(f"transformers {transformers.__version__} is too old: its layers return tuples; "
                         "install transformers >= 5")
    cls = getattr(transformers, model_class)
    cfg = cls.config_class(**config)
    side = (input_size or cfg.image_size) // cfg.patch_size
    if model_class == "ViTModel" and input_size not in (None, cfg.image_size):
        raise ValueError(f"ViTModel reads {cfg.image_size}-px inputs only (input_size {input_size})")
    hf = cls(cfg, add_pooling_layer=False) if model_class == "ViTModel" else cls(cfg)
    library_state = dict(hf.state_dict(keep_vars=True))
    layers = next(m for m in hf.modules() if isinstance(m, nn.ModuleList) and len(m) == cfg.num_hidden_layers)
    prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
    return assemble(hf.embeddings, nn.Sequential(*layers), hf.layernorm, TokenPool(pooling, prefix), library_state,
                    (side, side), PATCH_KEY, OPTIONAL, PREFIXES,
                    functools.partial(convert, model_class, cfg.model_type))


def conversions(model_class: str, model_type: str) -> list:
    """transformers' checkpoint conversion mapping of the model (class name first, then model
    type), as `from_pretrained` looks it up; empty where the library has none."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:  # a transformers whose in-memory keys are the saved ones
        return []
    return (get_checkpoint_conversion_mapping(model_class) or get_checkpoint_conversion_mapping(model_type) or [])


def convert(model_class: str, model_type: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as `save_pretrained` writes it, in the model's in-memory keys: transformers'
    renamings, and at most one converter per key (e.g. SwiGLU `weights_in` chunked into
    gate_proj and up_proj) whose operations are the library's own."""
    transforms = conversions(model_class, model_type)
    if not transforms:
        return state
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        renamed, pattern = rename_source_key(key, renamings, converters)
        if pattern is None:
            out[renamed] = tensor
            continue
        converter = next(c for c in converters if pattern in c.source_patterns)
        targets = [renamed.replace(converter.target_patterns[0], t) for t in converter.target_patterns]
        values: dict[str, Any] = {key: [tensor]}
        for op in converter.operations:
            values = op.convert(values, source_patterns=[key], target_patterns=targets)
        out.update(values)
    return out

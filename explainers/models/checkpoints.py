"""Import a MIL head trained elsewhere, with its frozen encoder, into a model folder.

    >>> import_model("clam_sb", Path("s_0_checkpoint.pt"), "resnet50_trunc", Path("resnet50.pth"),
    ...              ["normal", "tumor"], Path("models/clam"))

The head checkpoint is read as its training code saved it (a state dict; `module.` from
DataParallel and CLAM's `instance_loss_fn.*` entries dropped; CLAM's multi-GPU runs wrapped only
the attention net in DataParallel, so `attention_net.module.*` reads as `attention_net.*`, as CLAM's
own evaluation code reads it), the architecture read off its keys and shapes
(`explainers.models.heads`), the encoder built from its record (µm/px, patch size, normalisation,
target layer: `explainers.models.encoders`) and its weights file or snapshot folder
(`explainers.models.weights`). The folder then holds model.safetensors + config.json like a trained one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from explainers.errors import ModelError
from explainers.models.config import ModelConfig
from explainers.models.encoders import HF, encoder_record, encoder_spec
from explainers.models.heads import HEADS, n_classes_of
from explainers.models.io import build_model, save_model
from explainers.models.weights import check_keys, load_encoder_weights, read_state_dict, snapshot_config, strip_prefixes

log = logging.getLogger(__name__)

FORMATS = tuple(HEADS)
DATA_PARALLEL = ("attention_net.module.", "attention_net.")  # CLAM's relocate() on several GPUs
# the fields of a Hugging Face snapshot's config.json that decide the architecture
HF_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "mlp_ratio",
             "patch_size", "image_size", "num_register_tokens", "use_swiglu_ffn", "layer_norm_eps",
             "layerscale_value", "qkv_bias", "hidden_act")


def read_head(path: Path, mil: str) -> dict[str, torch.Tensor]:
    """The head's state dict from its checkpoint, in the keys of `explainers.models.heads`."""
    state = strip_prefixes(read_state_dict(path))
    old, new = DATA_PARALLEL
    return {(new + k.removeprefix(old) if k.startswith(old) else k): v for k, v in state.items()
            if not k.startswith("instance_loss_fn")}


def encoder_options(encoder: str, encoder_weights: Path | None, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The encoder options a model config records: those its weights decide (a generic timm ViT's
    registers, LayerScale and position layout; a Hugging Face snapshot's config.json), then
    `given` (the user's, which win)."""
    record = encoder_record(encoder)
    given = dict(given or {})
    options: dict[str, Any] = {}
    if encoder_weights is not None and record.from_weights:
        from explainers.models.timm_vit import options_from_weights
        vit = record.geometry(**given)
        state = strip_prefixes(read_state_dict(encoder_weights))
        options = options_from_weights(state, vit.img if vit else 224, vit.token_patch if vit else 16, encoder_weights)
    elif encoder_weights is not None and record.builder == HF:
        options = snapshot_config(encoder_weights, HF_FIELDS)
        changed = {k: v for k, v in options.items() if record.kwargs.get(k) != v}
        if changed:
            log.info("%s: the snapshot's config.json sets %s (the %s record: %s)", encoder_weights, changed, encoder,
                     {k: record.kwargs.get(k) for k in changed})
        options = changed
    return {**options, **given}


def encoder_config(encoder: str, encoder_weights: Path | None, encoder_kwargs: dict[str, Any] | None = None,
                   **fields: Any) -> ModelConfig:
    """A ModelConfig for `encoder` as its record declares it (µm/px, patch size, normalisation,
    default target layer), its options from `encoder_options`; other `fields` as given (they win:
    e.g. mean/std for an encoder with its own normalisation). An encoder without a spec
    (small_cnn) keeps ModelConfig's defaults for these."""
    kwargs = encoder_options(encoder, encoder_weights, encoder_kwargs)
    if encoder_record(encoder).spec(**kwargs) is None:
        if kwargs:
            fields = {"encoder_kwargs": kwargs, **fields}
        return ModelConfig(encoder=encoder, **fields)
    spec = encoder_spec(encoder, **kwargs)
    declared = {"target_layer": spec.default_target_layer, "mpp": spec.mpp, "patch": spec.patch,
                "mean": list(spec.mean), "std": list(spec.std)}
    return ModelConfig(encoder=encoder, encoder_kwargs=kwargs, **{**declared, **fields})


def import_model(mil: str, checkpoint: Path, encoder: str, encoder_weights: Path, classes: list[str],
                 out: Path, name: str | None = None, encoder_kwargs: dict[str, Any] | None = None,
                 mean: list[float] | None = None, std: list[float] | None = None) -> Path:
    """Write the model folder `out` for head `mil` (one of FORMATS) from `checkpoint` on `encoder`
    with `encoder_weights` (options `encoder_kwargs`; `mean`/`std` replace the record's
    normalisation); ModelError naming the file for any key, shape or class mismatch."""
    if mil not in HEADS:
        raise ModelError(f"unknown head format {mil!r}; choose one of {', '.join(FORMATS)}")
    head = read_head(checkpoint, mil)
    try:
        mil_kwargs = HEADS[mil][1](head)
        n_classes = n_classes_of(head, mil)
    except ModelError as exc:
        raise ModelError(f"{checkpoint}: not a {mil} checkpoint: {exc}") from exc
    if len(classes) != n_classes:
        raise ModelError(f"{checkpoint}: the {mil} head predicts {n_classes} classes but --classes names "
                         f"{len(classes)} ({', '.join(classes)}); name them in the order of training")
    normalisation = {k: list(v) for k, v in (("mean", mean), ("std", std)) if v is not None}
    config = encoder_config(encoder, encoder_weights, encoder_kwargs, name=name or f"{mil}-{encoder}", mil=mil,
                            mil_kwargs=mil_kwargs, classes=list(classes), head="softmax", **normalisation)
    spec = encoder_spec(encoder, **config.encoder_kwargs)
    model = build_model(config)
    load_encoder_weights(model.encoder, encoder_weights, spec.layout, encoder)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    check_keys(head, expected, checkpoint, f"a {mil} head on {spec.dim}-d embeddings",
               f"Check --format and that the head was trained on {encoder} embeddings")
    model.load_state_dict(head, strict=False)
    return save_model(model.eval(), config, out)

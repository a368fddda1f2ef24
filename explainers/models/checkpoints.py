"""Import a MIL head trained elsewhere, with its frozen encoder, into a model folder.

    >>> import_model("clam_sb", Path("s_0_checkpoint.pt"), "resnet50_trunc", Path("resnet50.pth"),
    ...              ["normal", "tumor"], Path("models/clam"))

The head checkpoint is read as its training code saved it (a state dict; `module.` from
DataParallel and CLAM's `instance_loss_fn.*` entries dropped), the architecture read off its keys
and shapes (`explainers.models.heads`), the encoder built from its spec (µm/px, patch size,
normalisation, target layer: `explainers.models.encoders.encoder_spec`) and its weights file
(`explainers.models.weights`). The folder then holds model.safetensors + config.json like a trained one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from explainers.errors import ModelError
from explainers.models.config import ModelConfig
from explainers.models.encoders import SPECS, encoder_spec
from explainers.models.heads import HEADS, n_classes_of
from explainers.models.io import build_model, save_model
from explainers.models.vit import timm_kwargs
from explainers.models.weights import check_keys, load_encoder_weights, read_state_dict, strip_prefixes

FORMATS = tuple(HEADS)


def read_head(path: Path, mil: str) -> dict[str, torch.Tensor]:
    """The head's state dict from its checkpoint, in the keys of `explainers.models.heads`."""
    state = strip_prefixes(read_state_dict(path))
    return {k: v for k, v in state.items() if not k.startswith("instance_loss_fn")}


def encoder_config(encoder: str, encoder_weights: Path | None, **fields: Any) -> ModelConfig:
    """A ModelConfig (other `fields` as given) for `encoder` as its spec declares it (µm/px,
    patch size, normalisation, default target layer); a ViT's options read off its weights file.
    An encoder without a spec (small_cnn) keeps ModelConfig's defaults for these."""
    kwargs = (timm_kwargs(strip_prefixes(read_state_dict(encoder_weights)))
              if encoder.startswith("vit_") and encoder_weights is not None else {})
    if encoder not in SPECS:
        return ModelConfig(encoder=encoder, **fields)
    spec = encoder_spec(encoder, **kwargs)
    return ModelConfig(encoder=encoder, encoder_kwargs=kwargs, target_layer=spec.default_target_layer,
                       mpp=spec.mpp, patch=spec.patch, mean=list(spec.mean), std=list(spec.std), **fields)


def import_model(mil: str, checkpoint: Path, encoder: str, encoder_weights: Path, classes: list[str],
                 out: Path, name: str | None = None) -> Path:
    """Write the model folder `out` for head `mil` (one of FORMATS) from `checkpoint` on `encoder`
    with `encoder_weights`; ModelError naming the file for any key, shape or class mismatch."""
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
    config = encoder_config(encoder, encoder_weights, name=name or f"{mil}-{encoder}", mil=mil,
                            mil_kwargs=mil_kwargs, classes=list(classes), head="softmax")
    spec = encoder_spec(encoder, **config.encoder_kwargs)
    model = build_model(config)
    load_encoder_weights(model.encoder, encoder_weights, spec.layout)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    check_keys(head, expected, checkpoint, f"a {mil} head on {spec.dim}-d embeddings",
               f"Check --format and that the head was trained on {encoder} embeddings")
    model.load_state_dict(head, strict=False)
    return save_model(model.eval(), config, out)

"""Train an attention-MIL head on a frozen encoder's embeddings (CLAM style).

Each slide's patches go through the encoder once (`explainers.embeddings.slide_embeddings`: kept
as `<stores>/slides/<slide_id>/embeddings.zarr` and reused on a rerun with the same encoder and
patches); then only the head learns, by the training loop of `explainers.train.fit` on bags of
embeddings (no augmentation): one step = one slide, up to `bag_size` of its embeddings drawn at
random, the bag's slide logits, cross-entropy (softmax head) or binary cross-entropy (sigmoid
head), the gradient's norm clipped to `clip`, one Adam update of the head's parameters. The
encoder's weights are saved unchanged beside the head. Every random choice comes from `seed`.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from explainers.embeddings import slide_embeddings
from explainers.explain import resolve_device
from explainers.models.checkpoints import encoder_config
from explainers.models.encoders import encoder_spec
from explainers.models.inputs import FOOTPRINT_TOLERANCE, PatchReader
from explainers.models.io import build_model, save_model
from explainers.models.mil import MILModel
from explainers.models.weights import load_encoder_weights
from explainers.train import TrainConfig, fit, read_bags
from tiling.store import PatchStore

log = logging.getLogger(__name__)

EMBED_BATCH = 64  # patches per encoder forward


def frozen_model(config: TrainConfig, encoder: str, encoder_weights: Path | None) -> tuple[MILModel, TrainConfig]:
    """Our gated-attention head (seed `config.seed`) on `encoder` (read as its spec declares,
    weights from `encoder_weights`, else its random initialisation), and `config` with that model
    and a tile config at the model's µm/px and patch size when its footprint differs."""
    model_config = encoder_config(encoder, encoder_weights, name=f"amil-{encoder}", classes=config.model.classes,
                                  head=config.model.head, attention_hidden=config.model.attention_hidden,
                                  seed=config.seed)
    if encoder != config.model.encoder:   # small_cnn keeps the configured width
        config = dataclasses.replace(config, model=model_config)
    else:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, name=model_config.name,
                                                                       seed=config.seed))
    model = build_model(config.model)
    if encoder_weights is not None:
        layout = encoder_spec(encoder, **config.model.encoder_kwargs).layout
        load_encoder_weights(model.encoder, encoder_weights, layout)
    else:
        log.warning("no --encoder-weights: the %s encoder keeps its random initialisation (seed %d)",
                    encoder, config.seed)
    tile, (mpp, patch) = config.tile, config.tile.target
    if abs(mpp * patch - config.model.footprint_um) > FOOTPRINT_TOLERANCE * config.model.footprint_um:
        tile = dataclasses.replace(tile, mpp=config.model.mpp, patch=config.model.patch)
    return model, dataclasses.replace(config, tile=tile)


def train_head(manifest: Path, model_dir: Path, config: TrainConfig, encoder: str,
               encoder_weights: Path | None = None, stores: Path | None = None) -> Path:
    """Train our gated-attention head on `encoder`'s embeddings of the labelled slides of
    `manifest` (module docstring); write `model_dir` (encoder + head, model.safetensors + config.json).
    stores: where patch stores and embeddings are kept (None: a temporary folder)."""
    device = resolve_device(config.device)
    model, config = frozen_model(config, encoder, encoder_weights)
    model.to(device)

    def embed(patches: Path, store: PatchStore) -> torch.Tensor:
        reader = PatchReader(store, config.model, device)
        return slide_embeddings(model, config.model, patches.parent, reader, EMBED_BATCH).cpu()

    bags = read_bags(manifest, stores, config, embed, "embed slides")
    config.model.metrics = fit(model, config.model, bags, lambda h, _: model.pool(h.to(device))[0], config,
                               frozen_encoder=True)
    return save_model(model.cpu().requires_grad_(True).eval(), config.model, model_dir)

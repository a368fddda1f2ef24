"""Train an attention-MIL head on a frozen encoder's embeddings (CLAM style).

Each slide's patches go through the encoder once (`explainers.embeddings.slide_embeddings`: kept
as `<stores>/slides/<slide_id>/embeddings.zarr` and reused on a rerun with the same encoder and
patches); then only the head learns: one step = one slide, up to `bag_size` of its embeddings
drawn at random, the bag's slide logits, cross-entropy (softmax head) or binary cross-entropy
(sigmoid head), the gradient's norm clipped to `clip`, one Adam update of the head's parameters.
The encoder's weights are saved unchanged beside the head. Every random choice comes from `seed`.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from explainers.embeddings import slide_embeddings
from explainers.explain import resolve_device
from explainers.models.checkpoints import encoder_config
from explainers.models.encoders import encoder_spec
from explainers.models.inputs import FOOTPRINT_TOLERANCE, PatchReader
from explainers.models.io import build_model, save_model
from explainers.models.mil import MILModel
from explainers.models.weights import load_encoder_weights
from explainers.train import TrainConfig, bag_loss, class_target, labelled_records, mean_scores, slide_score
from tiling.errors import ArchiveError
from tiling.store import open_patch_store
from tiling.tile import tile_slide

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


def embed_slides(model: MILModel, config: TrainConfig, manifest: Path, stores: Path,
                 device: torch.device) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(slide_id, h (N, D) on the CPU, target) of each labelled slide with tissue patches, tiling
    each into `stores` where needed."""
    bags = []
    for record in tqdm(labelled_records(manifest, config.model), desc="embed slides", unit="slide"):
        patches = tile_slide(record.path, stores, config.tile, slide_id=record.slide_id)
        store = open_patch_store(patches)
        if len(store) == 0:
            log.warning("%s: no tissue patches; left out of training", record.slide_id)
            continue
        reader = PatchReader(store, config.model, device)
        h = slide_embeddings(model, config.model, patches.parent, reader, EMBED_BATCH).cpu()
        bags.append((record.slide_id, h, class_target(record.labels, len(config.model.classes), config.model.head)))
    return bags


def train_head(manifest: Path, model_dir: Path, config: TrainConfig, encoder: str,
               encoder_weights: Path | None = None, stores: Path | None = None) -> Path:
    """Train our gated-attention head on `encoder`'s embeddings of the labelled slides of
    `manifest` (module docstring); write `model_dir` (encoder + head, model.safetensors + config.json).
    stores: where patch stores and embeddings are kept (None: a temporary folder)."""
    device = resolve_device(config.device)
    model, config = frozen_model(config, encoder, encoder_weights)
    with tempfile.TemporaryDirectory() as scratch:
        bags = embed_slides(model.to(device), config, manifest, Path(stores) if stores else Path(scratch), device)
    if not bags:
        raise ArchiveError(f"{manifest}: no labelled slide with tissue patches to train on; fill the "
                           "`label` column (a class name or index of the model)")
    head = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    model.encoder.requires_grad_(False)
    optimiser = torch.optim.Adam(head, lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    history = []
    for _ in tqdm(range(config.epochs), desc="train head", unit="epoch"):
        losses = []
        for i in rng.permutation(len(bags)):
            _, h, target = bags[i]
            pick = np.sort(rng.choice(len(h), min(config.bag_size, len(h)), replace=False))
            loss = bag_loss(model.pool(h[pick].to(device))[0], target.to(device), config.model.head)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head, config.clip)
            optimiser.step()
            losses.append(float(loss.detach()))
        history.append(round(float(np.mean(losses)), 4))
    with torch.no_grad():
        metrics = mean_scores([slide_score(model.pool(h.to(device))[0], t.to(device), config.model.head)
                               for _, h, t in bags])
    model_config = config.model
    model_config.metrics = {"train_" + k: v for k, v in metrics.items()} | {
        "epochs": config.epochs, "loss_per_epoch": history, "slides": len(bags),
        "patches": sum(len(h) for _, h, _ in bags), "frozen_encoder": True}
    log.info("trained a head on %s embeddings of %d slides: %s", encoder, len(bags), model_config.metrics)
    return save_model(model.cpu().requires_grad_(True).eval(), model_config, model_dir)

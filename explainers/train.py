"""Train an attention-MIL model from slide-level labels: the training loop (`fit`) shared by
end-to-end training (`train`, here) and head-only training on a frozen encoder
(`explainers.train_head.train_head`).

Each slide is a bag of items: its patches, or their embeddings by a frozen encoder, read from its
patch store (tiled first where missing). One step = one slide: up to `bag_size` of its items drawn
at random (patches: then a random flip and 90° rotation), the bag's slide logits and a
cross-entropy (softmax head) or binary cross-entropy (sigmoid head) loss, the gradient's norm
clipped to `clip`, one Adam update of the trained parameters. Every random choice comes from `seed`.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from explainers.config import DEVICES
from explainers.explain import resolve_device
from explainers.models.config import ModelConfig
from explainers.models.inputs import check_fits, normalise, resize
from explainers.models.io import build_model, save_model
from explainers.models.mil import MILModel
from tiling.archive import SlideRecord, read_archive
from tiling.config import TileConfig
from tiling.errors import ArchiveError, require
from tiling.store import PatchStore, open_patch_store, runtime
from tiling.tile import tile_slide

log = logging.getLogger(__name__)

ItemReader = Callable[[Path, PatchStore], torch.Tensor]
"""(patches.zarr path, its open store) -> the slide's bag items."""
Forward = Callable[[torch.Tensor, np.random.Generator | None], torch.Tensor]
"""(bag items, rng) -> the bag's slide logits (C,), the items augmented with draws from rng (None: not augmented)."""


@dataclass
class TrainConfig:
    """epochs: passes over the slides; bag_size: most patches drawn per slide and step; lr,
    weight_decay: Adam's; clip: largest gradient norm; model: the architecture (mean/std and
    seed are filled in by training); tile: how missing patch stores are tiled (its footprint
    must be the model's). The defaults train on 16 sample slides in well under a minute on
    two CPU cores."""

    epochs: int = 12
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    bag_size: int = 256
    clip: float = 1.0
    device: str = runtime("auto")
    model: ModelConfig = field(default_factory=ModelConfig)
    tile: TileConfig = field(default_factory=TileConfig)

    def __post_init__(self) -> None:
        for key in ("epochs", "bag_size"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "a whole number >= 1")
        require(self.lr > 0, "lr", self.lr, "a positive learning rate")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        require(self.clip > 0, "clip", self.clip, "a positive gradient norm")
        require(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")


@dataclass
class Bag:
    slide_id: str
    items: torch.Tensor   # uint8 patches (N, 3, P, P) at the model's input size, or embeddings h (N, D)
    target: torch.Tensor  # class index (softmax head) or multi-hot float (C,) (sigmoid head)


def class_target(labels: tuple[int, ...], classes: int, head: str) -> torch.Tensor:
    """A slide's class indices -> its training target: the index (softmax head) or a multi-hot
    vector of `classes` (sigmoid head)."""
    if head == "softmax":
        return torch.tensor(labels[0])
    multi_hot = torch.zeros(classes)
    multi_hot[list(labels)] = 1.0
    return multi_hot


def labelled_records(manifest: Path, model: ModelConfig) -> list[SlideRecord]:
    """The slides of `manifest` with a label (read against the model's classes; ';'-separated
    labels for a sigmoid head); the others are logged and left out."""
    records = read_archive(manifest, model.classes, model.head == "sigmoid")
    unknown = [r.slide_id for r in records if r.labels is None]
    if unknown:
        log.warning("%s: %d slide(s) without a label left out of training: %s", manifest, len(unknown),
                    ", ".join(unknown))
    return [r for r in records if r.labels is not None]


def read_bags(manifest: Path, stores: Path | None, config: TrainConfig, items: ItemReader, desc: str) -> list[Bag]:
    """A bag (items: `items` of its patch store) of each labelled slide of `manifest` with tissue
    patches, each slide tiled into `stores` where needed (None: a temporary folder removed
    afterwards); ArchiveError when no slide is left."""
    records = labelled_records(manifest, config.model)
    bags = []
    with tempfile.TemporaryDirectory() as scratch:
        for record in tqdm(records, desc=desc, unit="slide"):
            patches = tile_slide(record.path, Path(stores) if stores is not None else Path(scratch), config.tile,
                                 slide_id=record.slide_id)
            store = open_patch_store(patches)
            if len(store) == 0:
                log.warning("%s: no tissue patches; left out of training", record.slide_id)
                continue
            target = class_target(record.labels, len(config.model.classes), config.model.head)
            bags.append(Bag(record.slide_id, items(patches, store), target))
    if not bags:
        raise ArchiveError(f"{manifest}: no labelled slide with tissue patches to train on; fill the "
                           "`label` column (a class name or index of the model)")
    return bags


def read_patches(store: PatchStore, model: ModelConfig) -> torch.Tensor:
    """The store's patches as uint8 (N, 3, P, P) at the model's size (kept in RAM: 3·P² bytes a
    patch, 12 KiB at 64 px); ModelError unless they cover the model's footprint."""
    check_fits(store, model)
    step = store.patches.chunks[0]
    return torch.cat([resize(store.patches[lo:lo + step], model.patch) for lo in range(0, len(store), step)])


def channel_stats(bags: list[Bag]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of all training patches, on the [0, 1] scale."""
    total, squares, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for bag in bags:
        x = bag.items.double() / 255
        total += x.sum((0, 2, 3))
        squares += x.pow(2).sum((0, 2, 3))
        count += x.numel() // 3
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random horizontal flip and rotation by a multiple of 90°, one draw per bag."""
    if rng.random() < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(rng.integers(4)), dims=(-2, -1))


def bag_loss(logits: torch.Tensor, target: torch.Tensor, head: str) -> torch.Tensor:
    """Cross-entropy -log softmax(logits)[target] (softmax head), or the mean over classes of the
    binary cross-entropy of sigmoid(logits) against the multi-hot target (sigmoid head)."""
    target = target.to(logits.device)
    if head == "softmax":
        return F.cross_entropy(logits[None], target[None])
    return F.binary_cross_entropy_with_logits(logits, target)


def slide_score(logits: torch.Tensor, target: torch.Tensor, head: str) -> tuple[float, float]:
    """(loss, hit) of one slide: hit = argmax is the label (softmax) or every class right at 0.5 (sigmoid)."""
    target = target.to(logits.device)
    hit = logits.argmax() == target if head == "softmax" else ((logits > 0).float() == target).all()
    return float(bag_loss(logits, target, head)), float(hit)


def fit(model: MILModel, model_config: ModelConfig, bags: list[Bag], forward: Forward, config: TrainConfig,
        frozen_encoder: bool = False) -> dict[str, Any]:
    """Train `model` on `bags` as the module docstring says, its slide logits from `forward`; only
    its head (the encoder's weights frozen) when `frozen_encoder`. Log and return the metrics: the
    means over slides of `slide_score` after training (train_loss, train_slide_accuracy, in eval
    mode), the mean loss of each epoch, the counts of epochs, slides and patches."""
    params = [p for name, p in model.named_parameters() if not (frozen_encoder and name.startswith("encoder."))]
    model.encoder.requires_grad_(not frozen_encoder)
    model.train()
    optimiser = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    history = []
    for _ in tqdm(range(config.epochs), desc="train head" if frozen_encoder else "train", unit="epoch"):
        losses = []
        for i in rng.permutation(len(bags)):
            bag = bags[i]
            pick = np.sort(rng.choice(len(bag.items), min(config.bag_size, len(bag.items)), replace=False))
            loss = bag_loss(forward(bag.items[pick], rng), bag.target, model_config.head)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.clip)
            optimiser.step()
            losses.append(float(loss.detach()))
        history.append(round(float(np.mean(losses)), 4))
    model.eval()
    with torch.no_grad():
        scores = [slide_score(forward(bag.items, None), bag.target, model_config.head) for bag in bags]
    final_losses, hits = zip(*scores, strict=True)
    metrics = {"train_loss": float(np.mean(final_losses)), "train_slide_accuracy": float(np.mean(hits)),
               "epochs": config.epochs, "loss_per_epoch": history, "slides": len(bags),
               "patches": sum(len(bag.items) for bag in bags)} | ({"frozen_encoder": True} if frozen_encoder else {})
    what = f"{model_config.name}'s head on frozen-encoder embeddings" if frozen_encoder else model_config.name
    log.info("trained %s on %d slides: %s", what, len(bags), metrics)
    return metrics


def train(manifest: Path, model_dir: Path, config: TrainConfig, stores: Path | None = None) -> Path:
    """Train on the labelled slides of `manifest` (read by `tiling.archive.read_archive` against
    the model's classes; unlabelled slides are left out), normalised by their patches' channel
    mean and std; write `model_dir` (model.safetensors + config.json).

    stores: the folder whose `slides/<slide_id>/patches.zarr` are used (and written where
    missing); None tiles into a temporary folder removed afterwards.
    """
    bags = read_bags(manifest, stores, config, lambda _, store: read_patches(store, config.model), "read slides")
    mean, std = channel_stats(bags)
    model_config = dataclasses.replace(config.model, seed=config.seed, mean=mean, std=std, metrics={})
    device = resolve_device(config.device)
    model = build_model(model_config).to(device)

    def forward(patches: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
        x = normalise(patches, model_config, device)
        return model(x if rng is None else augment(x, rng))[0]

    model_config.metrics = fit(model, model_config, bags, forward, config)
    return save_model(model.cpu(), model_config, model_dir)

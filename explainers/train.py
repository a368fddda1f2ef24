"""Train an attention-MIL model end to end from slide-level labels.

Each slide is a bag of its patches, read from its patch store (tiled first where missing).
One step = one slide: up to `bag_size` of its patches drawn at random, a random flip and
90° rotation, the bag's slide logits and a cross-entropy (softmax head) or binary
cross-entropy (sigmoid head) loss, the gradient's norm clipped to `clip`, one Adam update.
Every random choice comes from `seed`.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

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
from tiling.store import open_patch_store, runtime
from tiling.tile import tile_slide

log = logging.getLogger(__name__)


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
    patches: torch.Tensor  # uint8 (N, 3, P, P) at the model's input size
    target: torch.Tensor   # class index (softmax head) or multi-hot float (C,) (sigmoid head)


def class_target(labels: tuple[int, ...], classes: int, head: str) -> torch.Tensor:
    """A slide's class indices -> its training target: the index (softmax head) or a multi-hot
    vector of `classes` (sigmoid head)."""
    if head == "softmax":
        return torch.tensor(labels[0])
    multi_hot = torch.zeros(classes)
    multi_hot[list(labels)] = 1.0
    return multi_hot


def load_bags(records: list[SlideRecord], stores: Path, config: TrainConfig) -> list[Bag]:
    """Tile each labelled slide into `stores` where needed, then read its patches at the model's
    size (kept in RAM as uint8: 3·P² bytes a patch, 12 KiB at 64 px)."""
    bags = []
    for record in tqdm(records, desc="read slides", unit="slide"):
        store = open_patch_store(tile_slide(record.path, stores, config.tile, slide_id=record.slide_id))
        if len(store) == 0:
            log.warning("%s: no tissue patches; left out of training", record.slide_id)
            continue
        check_fits(store, config.model)
        step = store.patches.chunks[0]
        patches = torch.cat([resize(store.patches[lo:lo + step], config.model.patch)
                             for lo in range(0, len(store), step)])
        target = class_target(record.labels, len(config.model.classes), config.model.head)
        bags.append(Bag(record.slide_id, patches, target))
    return bags


def channel_stats(bags: list[Bag]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of all training patches, on the [0, 1] scale."""
    total, squares, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for bag in bags:
        x = bag.patches.double() / 255
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
    if head == "softmax":
        return F.cross_entropy(logits[None], target[None])
    return F.binary_cross_entropy_with_logits(logits, target)


def evaluate(model: MILModel, bags: list[Bag], config: ModelConfig, device: torch.device) -> dict[str, float]:
    """Mean loss and slide accuracy (softmax: argmax = label; sigmoid: every class right at 0.5)."""
    model.eval()
    with torch.no_grad():
        scores = [slide_score(model(normalise(bag.patches, config, device))[0], bag.target.to(device), config.head)
                  for bag in bags]
    model.train()
    return mean_scores(scores)


def slide_score(logits: torch.Tensor, target: torch.Tensor, head: str) -> tuple[float, float]:
    """(loss, hit) of one slide: hit = argmax is the label (softmax) or every class right at 0.5 (sigmoid)."""
    hit = logits.argmax() == target if head == "softmax" else ((logits > 0).float() == target).all()
    return float(bag_loss(logits, target, head)), float(hit)


def mean_scores(scores: list[tuple[float, float]]) -> dict[str, float]:
    """{"loss", "slide_accuracy"}: the means over slides of `slide_score`s."""
    losses, hits = zip(*scores, strict=True)
    return {"loss": float(np.mean(losses)), "slide_accuracy": float(np.mean(hits))}


def labelled_records(manifest: Path, model: ModelConfig) -> list[SlideRecord]:
    """The slides of `manifest` with a label (read against the model's classes; ';'-separated
    labels for a sigmoid head); the others are logged and left out."""
    records = read_archive(manifest, model.classes, model.head == "sigmoid")
    unknown = [r.slide_id for r in records if r.labels is None]
    if unknown:
        log.warning("%s: %d slide(s) without a label left out of training: %s", manifest, len(unknown),
                    ", ".join(unknown))
    return [r for r in records if r.labels is not None]


def train(manifest: Path, model_dir: Path, config: TrainConfig, stores: Path | None = None) -> Path:
    """Train on the labelled slides of `manifest` (read by `tiling.archive.read_archive` against
    the model's classes; unlabelled slides are left out); write `model_dir` (model.safetensors +
    config.json).

    stores: the folder whose `slides/<slide_id>/patches.zarr` are used (and written where
    missing); None tiles into a temporary folder removed afterwards.
    """
    labelled = labelled_records(manifest, config.model)
    with tempfile.TemporaryDirectory() as scratch:
        bags = load_bags(labelled, Path(stores) if stores is not None else Path(scratch), config)
    if not bags:
        raise ArchiveError(f"{manifest}: no labelled slide with tissue patches to train on; fill the "
                           "`label` column (a class name or index of the model)")
    mean, std = channel_stats(bags)
    model_config = dataclasses.replace(config.model, seed=config.seed, mean=mean, std=std, metrics={})
    device = resolve_device(config.device)
    model = build_model(model_config).to(device)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    history = []
    for _ in tqdm(range(config.epochs), desc="train", unit="epoch"):
        losses = []
        for i in rng.permutation(len(bags)):
            bag = bags[i]
            pick = np.sort(rng.choice(len(bag.patches), min(config.bag_size, len(bag.patches)), replace=False))
            x = augment(normalise(bag.patches[pick], model_config, device), rng)
            logits, _ = model(x)
            loss = bag_loss(logits, bag.target.to(device), model_config.head)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimiser.step()
            losses.append(float(loss.detach()))
        history.append(round(float(np.mean(losses)), 4))
    metrics = evaluate(model, bags, model_config, device)
    model_config.metrics = {"train_" + k: v for k, v in metrics.items()} | {
        "epochs": config.epochs, "loss_per_epoch": history, "slides": len(bags),
        "patches": sum(len(b.patches) for b in bags)}
    log.info("trained %s on %d slides: %s", model_config.name, len(bags), model_config.metrics)
    return save_model(model.cpu(), model_config, model_dir)

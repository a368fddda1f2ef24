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
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from explainers.errors import ManifestError
from explainers.explain import resolve_device
from explainers.mil import AttentionMIL
from explainers.model_io import ModelConfig, build_model, save_model
from explainers.patches import check_fits, normalise, resize
from tiling.store import open_patch_store
from tiling.tile import TileConfig, tile_slide

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("slide_id", "path", "label")


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
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    tile: TileConfig = field(default_factory=TileConfig)


@dataclass
class Bag:
    slide_id: str
    patches: torch.Tensor  # uint8 (N, 3, P, P) at the model's input size
    target: torch.Tensor   # class index (softmax head) or multi-hot float (C,) (sigmoid head)


def read_manifest(manifest: Path) -> pd.DataFrame:
    """The manifest's rows with `path` made absolute (relative paths are to its folder)."""
    manifest = Path(manifest)
    try:
        rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (FileNotFoundError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{manifest}: cannot read the manifest ({exc}); give a CSV with columns "
                            f"{', '.join(MANIFEST_COLUMNS)}") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in rows.columns]
    if missing or rows.empty:
        raise ManifestError(f"{manifest}: needs at least one row and the columns {', '.join(MANIFEST_COLUMNS)} "
                            f"(missing {missing})")
    rows["path"] = [str((manifest.parent / p).resolve()) for p in rows["path"]]
    return rows


def class_targets(labels: list[str], classes: list[str], head: str, manifest: Path) -> list[torch.Tensor]:
    """Manifest labels -> training targets. A label is a class index or name; for a sigmoid
    head a cell may list several, separated by ';' (an empty cell = none)."""
    def index(label: str) -> int:
        label = label.strip()
        if label in classes:
            return classes.index(label)
        if label.isdigit() and int(label) < len(classes):
            return int(label)
        raise ManifestError(f"{manifest}: label {label!r} is neither a class of {classes} nor an index below "
                            f"{len(classes)}; fix the label column or set the model's classes")
    if head == "softmax":
        return [torch.tensor(index(label)) for label in labels]
    targets = []
    for label in labels:
        multi_hot = torch.zeros(len(classes))
        multi_hot[[index(part) for part in label.split(";") if part.strip()]] = 1.0
        targets.append(multi_hot)
    return targets


def load_bags(rows: pd.DataFrame, targets: list[torch.Tensor], stores: Path, config: TrainConfig) -> list[Bag]:
    """Tile each slide into `stores` where needed, then read its patches at the model's size
    (kept in RAM as uint8: 3·P² bytes a patch, 12 KiB at 64 px)."""
    bags = []
    for (_, row), target in tqdm(zip(rows.iterrows(), targets, strict=True), total=len(rows), desc="read slides",
                                 unit="slide"):
        store = open_patch_store(tile_slide(Path(row["path"]), stores, config.tile, slide_id=row["slide_id"]))
        if len(store) == 0:
            log.warning("%s: no tissue patches; left out of training", row["slide_id"])
            continue
        check_fits(store, config.model)
        step = store.patches.chunks[0]
        patches = torch.cat([resize(store.patches[lo:lo + step], config.model.patch)
                             for lo in range(0, len(store), step)])
        bags.append(Bag(row["slide_id"], patches, target))
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


def evaluate(model: AttentionMIL, bags: list[Bag], config: ModelConfig, device: torch.device) -> dict[str, float]:
    """Mean loss and slide accuracy (softmax: argmax = label; sigmoid: every class right at 0.5)."""
    model.eval()
    losses, hits = [], []
    with torch.no_grad():
        for bag in bags:
            logits, _ = model(normalise(bag.patches, config, device))
            target = bag.target.to(device)
            losses.append(float(bag_loss(logits, target, config.head)))
            hit = logits.argmax() == target if config.head == "softmax" else ((logits > 0).float() == target).all()
            hits.append(float(hit))
    model.train()
    return {"loss": float(np.mean(losses)), "slide_accuracy": float(np.mean(hits))}


def train(manifest: Path, model_dir: Path, config: TrainConfig, stores: Path | None = None) -> Path:
    """Train on the slides of `manifest`; write `model_dir` (model.safetensors + config.json).

    stores: the folder whose `slides/<slide_id>/patches.zarr` are used (and written where
    missing); None tiles into a temporary folder removed afterwards.
    """
    rows = read_manifest(manifest)
    targets = class_targets(list(rows["label"]), list(config.model.classes), config.model.head, Path(manifest))
    with tempfile.TemporaryDirectory() as scratch:
        bags = load_bags(rows, targets, Path(stores) if stores is not None else Path(scratch), config)
    if not bags:
        raise ManifestError(f"{manifest}: no slide with tissue patches to train on")
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

"""A model folder's `config.json` (the architecture and what the model expects) and its weights file.

Read without torch (a rerun with nothing to do needs the model's resolution and classes, not the
model); `explainers.models.io` builds, saves and loads the model itself.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explainers.errors import ModelError

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.pt")
HEADS = ("softmax", "sigmoid")


@dataclass
class ModelConfig:
    """What a model is and what it expects.

    mil names the head: "amil" (ours, `attention_hidden` units) or one read from a checkpoint
    (`explainers.models.heads.HEADS`: clam_sb, clam_mb, abmil) with its `mil_kwargs`, checked when the
    model is built (`explainers.models.io.build_model`).
    The model reads `patch` x `patch` RGB patches at `mpp` µm/px (footprint patch*mpp µm),
    scaled to [0, 1] then normalised per channel as (x - mean) / std. The default reads the
    pipeline's 224-px patches at 1 µm/px reduced to 64 px (3.5 µm/px, the same 224 µm
    footprint): fast to train on two CPU cores and enough to see lesion texture.
    """

    name: str = "amil-small-cnn"
    encoder: str = "small_cnn"
    encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 8})
    attention_hidden: int = 32
    mil: str = "amil"
    mil_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: ["normal", "lesion"])
    head: str = "softmax"
    target_layer: str = "encoder.block4"
    mpp: float = 3.5
    patch: int = 64
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    seed: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    def check(self, where: str = "model config") -> None:
        """Raise ModelError naming `where` when a field is out of range."""
        problems = []
        if self.head not in HEADS:
            problems.append(f"head {self.head!r} is not one of {HEADS}")
        if len(self.classes) < (2 if self.head == "softmax" else 1):
            problems.append(f"{len(self.classes)} classes is too few for a {self.head} head")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 values each, std > 0")
        if self.patch < 8 or self.mpp <= 0:
            problems.append(f"patch {self.patch} px at {self.mpp} µm/px is not a usable input")
        if problems:
            raise ModelError(f"{where}: " + "; ".join(problems))

    @property
    def footprint_um(self) -> float:
        """Side of the tissue a patch covers, in µm."""
        return self.patch * self.mpp


def read_config(model_dir: Path) -> ModelConfig:
    """The ModelConfig in `model_dir/config.json`; ModelError when missing or malformed."""
    path = Path(model_dir) / CONFIG
    try:
        raw = json.loads(path.read_text())
        config = ModelConfig(**raw)
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: not found; point --model at a folder written by `slideaudit train`") from exc
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a valid model config ({exc}); fix or re-create it") from exc
    config.check(str(path))
    return config


def weights_path(model_dir: Path) -> Path:
    """The weights file of `model_dir` (see WEIGHT_FILES for the order tried)."""
    for name in WEIGHT_FILES:
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    raise ModelError(f"{model_dir}: no weights file (one of {', '.join(WEIGHT_FILES)}); "
                     "train a model with `slideaudit train` or copy its weights there")

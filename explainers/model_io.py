"""A model on disk: `config.json` (the architecture and what the model expects) plus its weights.

Weights are read from the first of `model.safetensors` or `model.pt` (a state dict of tensors,
read with `torch.load(weights_only=True)`). TorchScript archives are not read: loading one runs
code stored in the file.
Nothing a user supplies is ever unpickled; the architecture always comes from `config.json`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from explainers.encoders import build_encoder, embedding_dim
from explainers.errors import ModelError
from explainers.heads import HEADS as MIL_HEADS
from explainers.mil import AttentionMIL, MILModel, split_encoder
from explainers.weights import read_state_dict
from tiling.store import atomic_path, file_sha256

log = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.pt")
HEADS = ("softmax", "sigmoid")


@dataclass
class ModelConfig:
    """What a model is and what it expects.

    mil names the head: "amil" (ours, `attention_hidden` units) or one read from a checkpoint
    (`explainers.heads.HEADS`: clam_sb, clam_mb, abmil) with its `mil_kwargs`.
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
        if self.mil not in ("amil", *MIL_HEADS):
            problems.append(f"mil {self.mil!r} is not one of amil, {', '.join(MIL_HEADS)}")
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


def build_model(config: ModelConfig) -> MILModel:
    """A freshly initialised model for `config` (initial weights drawn from `config.seed`)."""
    config.check()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = build_encoder(config.encoder, **config.encoder_kwargs)
        dim = embedding_dim(encoder, config.patch)
        model: MILModel
        if config.mil == "amil":
            model = AttentionMIL(encoder, dim, config.attention_hidden, len(config.classes))
        else:
            try:
                model = MIL_HEADS[config.mil][0](encoder, dim, len(config.classes), **config.mil_kwargs)
            except TypeError as exc:
                raise ModelError(f"mil {config.mil!r} does not take these settings {config.mil_kwargs}: {exc}") from exc
    split_encoder(model, config.target_layer)  # fails early on an unknown target layer
    return model


def save_model(model: MILModel, config: ModelConfig, model_dir: Path) -> Path:
    """Write `model_dir/model.safetensors` and `model_dir/config.json` atomically."""
    model_dir = Path(model_dir)
    with atomic_path(model_dir) as tmp:
        tmp.mkdir(parents=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHT_FILES[0]), metadata={"name": config.name})
        (tmp / CONFIG).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return model_dir


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


def model_sha256(model_dir: Path) -> str:
    """sha256 of the model's weights file."""
    return file_sha256(weights_path(model_dir))


def load_model(model_dir: Path) -> tuple[MILModel, ModelConfig]:
    """(model in eval mode on the CPU, its config) from `model_dir`; ModelError on any mismatch."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: no such model folder; train one with `slideaudit train`")
    config = read_config(model_dir)
    model = build_model(config)
    path = weights_path(model_dir)
    state = read_state_dict(path)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(f"{path}: weights do not match the {config.encoder!r} model of {model_dir / CONFIG} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]}); save weights and config together")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise ModelError(f"{path}: weight {key!r} has shape {tuple(state[key].shape)}, the config "
                             f"{model_dir / CONFIG} needs {tuple(tensor.shape)}; save weights and config together")
    model.load_state_dict(state)
    model.eval()
    log.debug("loaded %s from %s", config.name, path)
    return model, config

"""A model on disk, built, saved and loaded: `config.json` (`explainers.models.config`) plus its weights.

Weights are read from the first of `model.safetensors` or `model.pt` (a state dict of tensors,
read with `torch.load(weights_only=True)`). TorchScript archives are not read: loading one runs
code stored in the file.
Nothing a user supplies is ever unpickled; the architecture always comes from `config.json`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from explainers.errors import ModelError
from explainers.models.config import CONFIG, WEIGHT_FILES, ModelConfig, read_config, weights_path
from explainers.models.encoders import build_encoder, embedding_dim
from explainers.models.heads import HEADS as MIL_HEADS
from explainers.models.mil import AttentionMIL, MILModel, split_encoder
from explainers.models.weights import read_state_dict
from tiling.store import atomic_path, file_sha256

log = logging.getLogger(__name__)

def build_model(config: ModelConfig, where: str = "model config") -> MILModel:
    """A freshly initialised model for `config` (initial weights drawn from `config.seed`);
    ModelError naming `where` when its head or target layer is unknown."""
    config.check()
    if config.mil not in ("amil", *MIL_HEADS):
        raise ModelError(f"{where}: mil {config.mil!r} is not one of amil, {', '.join(MIL_HEADS)}")
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


def model_sha256(model_dir: Path) -> str:
    """sha256 of the model's weights file."""
    return file_sha256(weights_path(model_dir))


def load_model(model_dir: Path) -> tuple[MILModel, ModelConfig]:
    """(model in eval mode on the CPU, its config) from `model_dir`; ModelError on any mismatch."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: no such model folder; train one with `slideaudit train`")
    config = read_config(model_dir)
    model = build_model(config, str(model_dir / CONFIG))
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

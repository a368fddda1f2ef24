"""Encoder weights from a local file: a safetensors file or a torch state dict, never unpickled.

`load_encoder_weights(encoder, path, layout)` reads the file, unwraps a checkpoint that nests its
state dict under "state_dict" or "model", strips a prefix that every key carries (`module.`,
`model.`, `backbone.`, `encoder.`, repeatedly), renames the keys from `layout` to the encoder's
and drops the classifier:

    "native"       the encoder's own keys (as `encoder.state_dict()` writes them)
    "torchvision"  ResNet keys are already ours (conv1, bn1, layer1.0.conv1, layerN.0.downsample.0/1,
                   ...); `fc.*` is dropped, and so are the stages a truncated encoder lacks (`layer4.*`)
    "timm"         ViT keys: `cls_token`, `reg_token`, `pos_embed`, `patch_embed.*` gain `embed.`
                   (explainers.models.vit.from_timm); `head.*` is dropped

Any key left missing, unexpected or of another shape is a ModelError naming the file.
"""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from explainers.errors import ModelError
from explainers.models.vit import from_timm

log = logging.getLogger(__name__)

PREFIXES = ("module.", "model.", "backbone.", "encoder.")
NESTED = ("state_dict", "model")
LAYOUTS = ("native", "torchvision", "timm")
SHOWN = 10  # keys listed per kind in an error


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file or a torch state-dict file (`torch.load(weights_only=True)`),
    unwrapped from a "state_dict"/"model" entry when the file nests them; ModelError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file; give the path of a .safetensors or state-dict file")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(f"{path}: holds objects other than tensors, which are never loaded; save only the "
                         "state dict (torch.save(model.state_dict(), path)) or convert it to safetensors") from None
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as exc:
        raise ModelError(f"{path}: unreadable weights ({type(exc).__name__}); check that it is a complete "
                         ".safetensors or torch state-dict file") from None
    for key in NESTED:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: is not a state dict of tensors; save the encoder's state_dict()")
    return state


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without a leading `module.`/`model.`/`backbone.`/`encoder.` that every key has."""
    while state:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def to_native(state: dict[str, torch.Tensor], layout: str, encoder: nn.Sequential) -> dict[str, torch.Tensor]:
    """`state` (prefixes stripped) in the encoder's keys, its classifier and absent stages dropped."""
    if layout == "timm":
        return from_timm(state)
    if layout == "torchvision":
        stages = {name for name, _ in encoder.named_children()}
        return {k: v for k, v in state.items()
                if not k.startswith("fc.") and not (re.match(r"layer\d+\.", k) and k.split(".")[0] not in stages)}
    if layout == "native":
        return state
    raise ModelError(f"unknown weight layout {layout!r}; use one of {LAYOUTS}")


def _listed(keys: list[str]) -> str:
    more = f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return f"{len(keys)} [{', '.join(keys[:SHOWN])}{more}]"


ENCODER_HINT = ("Check that the encoder name and its options (e.g. a ViT's registers, layer_scale, "
                "no_embed_class, img_size) match the checkpoint, and the layout")


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, what: str,
               hint: str = ENCODER_HINT) -> None:
    """ModelError naming `path` and listing the missing, unexpected and mis-shaped keys, if any;
    `what` names what the weights must fit, `hint` what to check."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)}, needed {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{what} {_listed(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes)) if keys]
    if problems:
        raise ModelError(f"{path}: weights (after stripping prefixes) do not fit {what}: "
                         + "; ".join(problems) + f". {hint}")


def load_encoder_weights(encoder: nn.Sequential, path: Path, layout: str = "native") -> nn.Sequential:
    """Load `path` (`layout`: module docstring) into `encoder` in place and return it; ModelError
    when the file is unreadable or its keys or shapes do not match exactly."""
    state = to_native(strip_prefixes(read_state_dict(path)), layout, encoder)
    expected = encoder.state_dict()
    check_keys(state, expected, Path(path), f"the encoder ({layout} layout)")
    encoder.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    log.debug("loaded %d encoder tensors from %s (%s layout)", len(state), path, layout)
    return encoder

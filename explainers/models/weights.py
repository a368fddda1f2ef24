"""Encoder weights from local files: safetensors or a torch state dict, never unpickled.

`load_encoder_weights(encoder, path, layout)` reads `path` (a file, or a snapshot folder as
Hugging Face writes it: `model.safetensors`, sharded `model.safetensors.index.json`, or
`pytorch_model.bin`), unwraps a checkpoint that nests its state dict under "state_dict" or "model",
strips a prefix that every key carries (`module.`, `model.`, `backbone.`, `encoder.`, repeatedly),
renames the keys from `layout` to the encoder's and drops the classifier:

    "native"        the encoder's own keys (as `encoder.state_dict()` writes them)
    "torchvision"   ResNet keys are already ours (conv1, bn1, layer1.0.conv1, layerN.0.downsample.0/1,
                    ...); `fc.*` is dropped, and so are the stages a truncated encoder lacks (`layer4.*`)
    "timm"          timm's VisionTransformer keys: `cls_token`, `reg_token`, `pos_embed`,
                    `patch_embed.*` gain `embed.`; `head.*` is dropped
    "transformers"  the keys `save_pretrained` writes, renamed as `from_pretrained` does, then ours
                    (`explainers.models.hf_vit`); `pooler.*` is dropped
    "open_clip"     a CoCa checkpoint (CONCH): the image tower's keys, read as `explainers.models.coca`
                    says; the text towers, the projection and the captioning pooler are dropped

The ViT layouts use the encoder's own key map (`explainers.models.tokens.TokenEncoder`). A ViT
whose patch size, width or depth differ from the encoder's is refused in one line naming both;
any other key left missing, unexpected or of another shape is a ModelError naming the file.
A TorchScript archive is refused: loading one runs the code stored in it.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from explainers.errors import ModelError
from explainers.models.tokens import TokenEncoder

log = logging.getLogger(__name__)

PREFIXES = ("module.", "model.", "backbone.", "encoder.")
NESTED = ("state_dict", "model")
LAYOUTS = ("native", "torchvision", "timm", "transformers", "open_clip")
DROP = {"timm": ("head.",), "transformers": ("pooler.",), "open_clip": ("proj_contrast", "attn_pool_caption.",
                                                                          "ln_caption.", "trunk.head.")}
SNAPSHOT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                  "pytorch_model.bin.index.json")
SHOWN = 10  # keys listed per kind in an error


def is_torchscript(path: Path) -> bool:
    """True when `path` is a TorchScript archive (a zip holding `constants.pkl` and `code/`)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names)


def snapshot_file(folder: Path) -> Path:
    """The weights file of a snapshot folder (SNAPSHOT_FILES, in that order); ModelError if none."""
    for name in SNAPSHOT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"{folder}: a folder without weights (none of {', '.join(SNAPSHOT_FILES)}); give a "
                     "snapshot folder as save_pretrained writes it, or the weights file itself")


def _read_file(path: Path) -> object:
    if path.name.endswith(".index.json"):  # a sharded checkpoint: every shard it names
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{path}: not a checkpoint index (no weight_map); check the snapshot") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            part = _read_file(path.parent / shard)
            if not isinstance(part, dict):
                raise ModelError(f"{path.parent / shard}: not a state dict of tensors")
            state.update(part)
        return state
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file; give the path of a .safetensors or state-dict file")
    if is_torchscript(path):
        raise ModelError(f"{path}: a TorchScript archive, which is refused because loading it runs the code "
                         "stored in it; save the model's state_dict() (or convert it to safetensors) and give that")
    try:
        return load_file(str(path)) if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(f"{path}: holds objects other than tensors, which are never loaded; save only the "
                         "state dict (torch.save(model.state_dict(), path)) or convert it to safetensors") from None
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as exc:
        raise ModelError(f"{path}: unreadable weights ({type(exc).__name__}); check that it is a complete "
                         ".safetensors or torch state-dict file") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, a torch state-dict file (`torch.load(weights_only=True)`)
    or a snapshot folder (`snapshot_file`), unwrapped from a "state_dict"/"model" entry when the
    file nests them; ModelError otherwise."""
    path = Path(path)
    state = _read_file(snapshot_file(path) if path.is_dir() else path)
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
    if layout in DROP:
        if not isinstance(encoder, TokenEncoder):
            raise ModelError(f"a {layout}-layout weights file needs a ViT encoder built by {layout}, "
                             f"not a {type(encoder).__name__}")
        return encoder.from_library(state, DROP[layout])
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
               hint: str = ENCODER_HINT, optional: frozenset[str] = frozenset()) -> None:
    """ModelError naming `path` and listing the missing, unexpected and mis-shaped keys, if any;
    `what` names what the weights must fit, `hint` what to check; `optional` keys may be missing."""
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)}, needed {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{what} {_listed(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes)) if keys]
    if problems:
        raise ModelError(f"{path}: weights (after stripping prefixes) do not fit {what}: "
                         + "; ".join(problems) + f". {hint}")


def _depth(keys: Iterable[str]) -> int:
    return len({int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))})


def check_vit(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], encoder: nn.Module,
              path: Path, name: str) -> None:
    """One-line ModelError when the weights (in our keys) are a ViT of another patch size, width
    or depth than `encoder` (a TokenEncoder named `name`)."""
    key = getattr(encoder, "patch_key", None)
    if key is None or key not in state or key not in expected:
        return
    got, need = tuple(state[key].shape), tuple(expected[key].shape)
    if got[-2:] != need[-2:]:
        from explainers.models.encoders import ENCODERS
        fits = [n for n, r in ENCODERS.items() if (g := r.geometry()) is not None and g.token_patch == got[-1]]
        raise ModelError(f"{path}: the weights are a patch-{got[-1]} ViT ({key} {got}) but encoder {name} takes "
                         f"{need[-1]}-px patches ({need}): give {name}'s weights, or an encoder with "
                         f"{got[-1]}-px patches ({', '.join(fits) or 'none registered'})")
    if got[0] != need[0] or _depth(state) != _depth(expected):
        raise ModelError(f"{path}: the weights are a ViT {got[0]} wide and {_depth(state)} blocks deep but encoder "
                         f"{name} is {need[0]} x {_depth(expected)}: give {name}'s weights or the encoder they "
                         "belong to")


def load_encoder_weights(encoder: nn.Sequential, path: Path, layout: str = "native",
                         name: str = "the encoder") -> nn.Sequential:
    """Load `path` (`layout`: module docstring) into `encoder` in place and return it; ModelError
    when the file is unreadable or its keys or shapes do not match exactly."""
    state = to_native(strip_prefixes(read_state_dict(path)), layout, encoder)
    expected = encoder.state_dict()
    check_vit(state, expected, encoder, Path(path), name)
    optional = frozenset(getattr(encoder, "optional_keys", frozenset()))
    check_keys(state, expected, Path(path), f"the encoder ({layout} layout)", optional=optional)
    encoder.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
    log.debug("loaded %d encoder tensors from %s (%s layout)", len(state), path, layout)
    return encoder


def snapshot_config(path: Path, fields: tuple[str, ...]) -> dict[str, object]:
    """The `fields` of `config.json` beside the weights (a snapshot folder's, or the file's
    folder's) that a Hugging Face snapshot records; {} without one. Read as JSON: no code runs."""
    path = Path(path)
    config = (path if path.is_dir() else path.parent) / "config.json"
    if not config.is_file():
        return {}
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError):
        raise ModelError(f"{config}: not a valid JSON config; fix or remove it") from None
    return {k: raw[k] for k in fields if isinstance(raw, dict) and k in raw}

"""The explain stage: a slide's patch store + a model -> `<slide_dir>/explain.zarr`.

Arrays: `attention` (N,) summing to 1, `slide_logits` (C,), `instance_logits` (N, C), and one
float32 array per method named after it: (N, h, w) raw values on the target layer's grid
(gradcam, gradcampp, hirescam, cam), at the model's input size (guided_backprop,
guided_gradcam) or on the occlusion grid (occlusion). Attrs: the stamp, `classes`, `head`,
`target`, `target_class`, `methods`, `model` ({name, sha256, config}).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import zarr
from tqdm import tqdm

from explainers.engine import BagExplainer, frozen, instance_target, slide_target
from explainers.errors import ModelError
from explainers.methods import parse_methods
from explainers.model_io import load_model, model_sha256, read_config
from explainers.patches import PatchReader
from tiling.errors import StoreError, require
from tiling.store import EXPLAIN, PATCHES, atomic_path, chained_stamp, is_current, open_patch_store, runtime

log = logging.getLogger(__name__)

TARGETS = ("slide", "instance")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ExplainConfig:
    """methods: registered method names (`explainers.methods`); target: "slide" (the slide logit, through the attention
    pooling) or "instance" (each patch's own logit); target_class: None = the slide's
    predicted class; device: "auto" (CUDA when present), "cpu" or "cuda"; batch: patches per
    forward (bounds memory, changes no value)."""

    methods: tuple[str, ...] = ("gradcam",)
    target: str = "slide"
    target_class: int | None = None
    device: str = runtime("auto")
    batch: int = runtime(64)

    def __post_init__(self) -> None:
        self.methods = parse_methods(self.methods, "methods")
        require(self.target in TARGETS, "target", self.target, f"one of {', '.join(TARGETS)}")
        require(self.target_class is None or self.target_class >= 0, "target_class", self.target_class,
                "a class index >= 0 or null (the predicted class)")
        require(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        require(self.batch >= 1, "batch", self.batch, "a whole number of patches >= 1")


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else the CPU; "cuda" without a GPU is a ModelError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def explain_store(slide_dir: Path, model_dir: Path, config: ExplainConfig) -> Path:
    """Write `slide_dir/explain.zarr` (skipped when current); returns its path."""
    slide_dir, out = Path(slide_dir), Path(slide_dir) / EXPLAIN
    store = open_patch_store(slide_dir)
    model_config, sha = read_config(model_dir), model_sha256(model_dir)
    stamp = chained_stamp(config, slide_dir / PATCHES, model_sha256=sha,
                          model_config=dataclasses.asdict(model_config))
    if is_current(out, **stamp):
        log.info("%s: up to date", out)
        return out
    if len(store) == 0:
        raise StoreError(f"{store.path}: 0 patches, nothing to explain; check the slide's tissue "
                         "or tile it again with a lower --min-tissue")
    model, model_config = load_model(model_dir)
    classes = model_config.classes
    if config.target_class is not None and not 0 <= config.target_class < len(classes):
        raise ModelError(f"target class {config.target_class} out of range: model {model_dir} has classes {classes}")
    device = resolve_device(config.device)
    reader = PatchReader(store, model_config, device)
    explainer = BagExplainer(model, model_config.target_layer, config.methods)
    n, steps = len(store), math.ceil(len(store) / config.batch)
    with frozen(model.to(device)), tqdm(total=2 * steps, desc=f"explain {slide_dir.name}", unit="batch") as bar:
        bag = explainer.forward(_counted(reader.batches(config.batch), bar), n)
        with torch.no_grad():
            slide_logits, attention = model.pool(bag.h)
        cls = int(slide_logits.argmax()) if config.target_class is None else config.target_class
        target = (slide_target(model, bag.h, cls) if config.target == "slide"
                  else instance_target(model, bag.h, cls))
        with atomic_path(out) as tmp:
            group = zarr.open_group(tmp, mode="w")
            _array(group, "attention", attention, config.batch)
            _array(group, "slide_logits", slide_logits, config.batch)
            _array(group, "instance_logits", bag.instance_logits, config.batch)
            arrays: dict[str, zarr.Array] = {}
            for lo, hi, maps in _counted(explainer.maps(bag, target, config.batch, reader.read), bar):
                for name, values in maps.items():
                    if name not in arrays:
                        arrays[name] = group.create_array(name, shape=(n, *values.shape[1:]), dtype="float32",
                                                          chunks=(config.batch, *values.shape[1:]))
                    arrays[name][lo:hi] = values
            group.update_attributes({
                **stamp, "classes": list(classes), "head": model_config.head, "target": config.target,
                "target_class": cls, "methods": list(config.methods),
                "model": {"name": model_config.name, "sha256": sha, "config": dataclasses.asdict(model_config)}})
    log.info("%s: %d patches, target %s class %s (%s)", out, n, config.target, cls, classes[cls])
    return out


def _array(group: zarr.Group, name: str, values: torch.Tensor, batch: int) -> None:
    data = values.detach().float().cpu().numpy()
    group.create_array(name, data=data, chunks=(min(batch, data.shape[0]), *data.shape[1:]))


def _counted(items, bar: tqdm):
    for item in items:
        yield item
        bar.update()

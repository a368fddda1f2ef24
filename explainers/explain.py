"""The explain stage: a slide's patch store + a model -> `<slide_dir>/explain.zarr`
(layout: tiling.store.explain).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
from tqdm import tqdm

from explainers.config import ExplainConfig
from explainers.embeddings import encoder_stamp, kept_embeddings
from explainers.engine import BAG_TARGETS, BagExplainer, frozen
from explainers.errors import ModelError
from explainers.methods.registry import parse_methods
from explainers.models.config import read_config
from explainers.models.inputs import PatchReader
from explainers.models.io import load_model
from explainers.models.io import model_sha256 as weights_sha256
from explainers.models.mil import MILModel
from tiling.errors import StoreError
from tiling.store import EXPLAIN, PATCHES, atomic_path, chained_stamp, is_current, open_patch_store
from tiling.store.explain import ExplainWriter

log = logging.getLogger(__name__)

CPU_BATCH, MAX_BATCH = 64, 4096  # patches per forward on the CPU; most on a GPU


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else the CPU; "cuda" without a GPU is a ModelError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def fit_batch(free_bytes: int, per_patch_bytes: int, share: float = 0.5, cap: int = MAX_BATCH) -> int:
    """Patches per forward that fit in `share` of the free memory: min(cap, share · free / per
    patch), at least 1."""
    return max(1, min(cap, int(share * free_bytes // max(per_patch_bytes, 1))))


def batch_size(batch: int | None, model: MILModel, probe: torch.Tensor) -> int:
    """`batch` when given; else CPU_BATCH on the CPU and, on CUDA, `fit_batch` of the free memory
    and the peak bytes of one probe patch (1, 3, P, P) through the encoder on its device."""
    if batch is not None:
        return batch
    if probe.device.type != "cuda":
        return CPU_BATCH
    torch.cuda.reset_peak_memory_stats(probe.device)
    start = torch.cuda.memory_allocated(probe.device)
    with torch.no_grad():
        model.encoder(probe)
    free, _ = torch.cuda.mem_get_info(probe.device)
    return fit_batch(free, torch.cuda.max_memory_allocated(probe.device) - start)


def require_finite(what: str, values: torch.Tensor, slide_dir: Path, model_dir: Path) -> None:
    """ModelError "model output is not finite" when `values` (a model output of the slide) hold
    NaN or ±Inf: written to the store they would read as a prediction and crash the report."""
    bad = int((~torch.isfinite(values.detach())).sum())
    if bad:
        raise ModelError(
            f"{slide_dir.name}: model output is not finite: {bad} of {values.numel()} values of {what} are NaN "
            f"or infinite (model {model_dir}); check the model's weights (NaN after training?) and its input "
            "normalisation, or set explain.autocast off; the slide was not explained")


def explain_store(slide_dir: Path, model_dir: Path, config: ExplainConfig,
                  model_sha256: str | None = None) -> Path:
    """Write `slide_dir/explain.zarr` (skipped when current); returns its path.

    model_sha256: the sha256 of the model's weights file when the caller has it (a run hashes
    the model once for all its slides); None hashes the file here. ConfigError first when a
    method is not registered.
    """
    parse_methods(config.methods, "explain.methods", allow_empty=True)
    slide_dir, out = Path(slide_dir), Path(slide_dir) / EXPLAIN
    store = open_patch_store(slide_dir)
    model_config = read_config(model_dir)
    sha = model_sha256 if model_sha256 is not None else weights_sha256(model_dir)
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
    explainer = BagExplainer(model, model_config.target_layer, config.methods, config.autocast)
    h_stamp = encoder_stamp(model, model_config, slide_dir, config.autocast)
    n = len(store)
    kept = None if explainer.needs_encoder else kept_embeddings(slide_dir, h_stamp, n)
    with frozen(model.to(device)):
        batch = batch_size(config.batch, model, reader.read(0, 1))
        with tqdm(total=2 * math.ceil(n / batch), desc=f"explain {slide_dir.name}", unit="batch") as bar:
            bag = (explainer.forward(_counted(reader.batches(batch), bar), n) if kept is None
                   else explainer.from_embeddings(torch.from_numpy(kept).to(device)))
            with torch.no_grad():
                slide_logits = model.pool(bag.h)[0]
                cls = int(slide_logits.argmax()) if config.target_class is None else config.target_class
                attention = model.pool(bag.h, cls)[1]     # the attention branch that explains `cls`
            for what, values in (("the attention", attention), ("the slide logits", slide_logits),
                                 ("the patch logits", bag.instance_logits)):  # the likely cause first
                require_finite(what, values, slide_dir, model_dir)
            target = BAG_TARGETS[config.target](model, bag.h, cls)
            with atomic_path(out) as tmp:
                writer = ExplainWriter(tmp, n, batch)
                for name, values in (("attention", attention), ("slide_logits", slide_logits),
                                     ("instance_logits", bag.instance_logits), ("embeddings", bag.h)):
                    writer.array(name, values.detach().float().cpu().numpy())
                for lo, hi, maps in _counted(explainer.maps(bag, target, batch, reader.read), bar):
                    for name, values in maps.items():
                        require_finite(f"the {name} maps of patches {lo}-{hi - 1}", torch.from_numpy(values),
                                       slide_dir, model_dir)
                    writer.maps(lo, hi, maps)
                writer.finish({
                    **stamp, "classes": list(classes), "head": model_config.head, "target": config.target,
                    "target_class": cls, "methods": list(config.methods), "mil": model_config.mil,
                    "attention_branch": model.branch(cls), "encoder_stamp": h_stamp,
                    "model": {"name": model_config.name, "sha256": sha, "config": dataclasses.asdict(model_config)}})
    log.info("%s: %d patches, target %s class %s (%s)", out, n, config.target, cls, classes[cls])
    return out


def _counted(items, bar: tqdm):
    for item in items:
        yield item
        bar.update()

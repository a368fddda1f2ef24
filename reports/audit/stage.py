"""The audit stage: each map against the lesions, methods against each other, flags,
validation and provenance, written to ``slide_dir/audit.json`` (layout: tiling.store.records).

Metrics are computed on the stitched maps (maps.zarr, D level-0 px per map px) over the valid
pixels: tissue where the map is finite. A-MIL attention and every CAM method are scored alike.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import os
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explainers.config import FaithfulnessConfig, SanityConfig
from explainers.explain import batch_size, resolve_device
from explainers.faithfulness import faithfulness, patch_scores
from explainers.models.config import CONFIG, ModelConfig, weights_path
from explainers.models.io import load_model
from explainers.models.mil import MILModel
from explainers.sanity import randomisation, sample_reader
from reports.audit import metrics as M
from reports.audit.agreement import agreement
from reports.audit.artefact_focus import focus_record, top_patches
from reports.audit.config import AuditConfig
from reports.audit.flags import FlagInputs, raise_flags, slide_verdict
from reports.audit.registry import MapView, metrics_for
from reports.audit.validation import map_stats, validate_attention, validate_coords, validate_maps
from tiling.artefacts import PATCH_SHARE, artefact_name
from tiling.grid import footprint_fraction
from tiling.store import AUDIT, EXPLAIN, MAPS, PatchStore, chained_stamp, is_current, open_patch_store
from tiling.store.explain import open_explain_store
from tiling.store.maps import ATTENTION, Maps, open_maps
from tiling.store.records import write_audit
from tiling.threads import stage_threads

log = logging.getLogger(__name__)

FLOAT32_MAX = float(np.finfo(np.float32).max)
VERSIONED = ("slideaudit", "torch", "monai", "openslide-python", "openslide-bin")


def peak_distance_px(config: AuditConfig, pixel_um: float) -> int:
    """The least distance between two peaks in map pixels, at least 1."""
    return max(1, round(config.peak_distance_um / pixel_um))


def score_map(view: MapView) -> dict[str, dict[str, Any]]:
    """Every registered metric of one map: {name: {"value": float | None, "preprocessing": str}}."""
    return {name: {"value": spec.score(view), "preprocessing": spec.preprocessing(view)}
            for name, spec in metrics_for(view.config).items()}


def nearest_lesion(labels: np.ndarray, tissue: np.ndarray, pixel_um: float,
                   points: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(distance in µm from each of `points` ((K, 2) row, col) to the nearest lesion pixel on
    tissue, that lesion's label), None without a lesion on tissue. Euclidean, exact: min over
    the lesion pixels of √((r - r')² + (c - c')²), the first in row-major order on a tie."""
    rows, cols = np.nonzero((labels > 0) & tissue)
    if rows.size == 0:
        return None
    points = np.asarray(points, np.int64).reshape(-1, 2)
    nearest = np.array([np.argmin((rows - r) ** 2 + (cols - c) ** 2) for r, c in points], np.int64)
    squared = (rows[nearest] - points[:, 0]) ** 2 + (cols[nearest] - points[:, 1]) ** 2
    return np.sqrt(squared.astype(np.float64)) * pixel_um, labels[rows[nearest], cols[nearest]]


def peak_records(m: np.ndarray, found: np.ndarray, nearest: tuple[np.ndarray, np.ndarray] | None,
                 artefacts: np.ndarray, downsample: float, names: list[str],
                 tolerance_um: float) -> list[dict[str, Any]]:
    """The peaks `found` (row, col): level-0 centre x, y, value; the nearest lesion on tissue and
    its distance (`nearest_lesion` of `found`: µm, 0 inside; None without lesions); the artefact kind it lies on
    (`tiling.artefacts.artefact_name`, None off artefacts); hit: within `tolerance_um` of a lesion
    and not on an artefact (the pointing game's rule)."""
    records = []
    for i, (row, col) in enumerate(found):
        kind = int(artefacts[row, col])
        distance, k = (float(nearest[0][i]), int(nearest[1][i])) if nearest else (None, 0)
        records.append({"x": round((col + 0.5) * downsample), "y": round((row + 0.5) * downsample),
                        "row": int(row), "col": int(col), "value": float(m[row, col]),
                        "lesion": (names[k - 1] or f"lesion {k}") if k else None, "lesion_um": distance,
                        "artefact": artefact_name(kind) if kind else None,
                        "hit": distance is not None and distance <= tolerance_um and not kind})
    return records


def method_patch_scores(explain: Any) -> dict[str, np.ndarray]:
    """(N,) per-patch score of attention and of each CAM method (`patch_scores`) of explain.zarr."""
    return {ATTENTION: np.asarray(explain[ATTENTION][:], np.float64),
            **{m: patch_scores(explain[m][:]) for m in explain.attrs["methods"]}}


def slide_prediction(logits: np.ndarray, head: str, classes: list[str]) -> dict[str, Any]:
    """Predicted class and per-class probabilities from the slide logits.

    softmax: p = exp(z) / Σ exp(z); sigmoid with one logit: p(positive) = 1 / (1 + e^-z) and
    p(negative) = 1 - that; sigmoid with C logits: p_c = 1 / (1 + e^-z_c). Prediction = argmax p.
    Each class's logit is recorded beside its p (the one-logit sigmoid's negative class: -z, as
    1 - sigmoid(z) = sigmoid(-z)): it still separates predictions whose p rounds to 100 %.
    """
    z = np.asarray(logits, np.float64).ravel()
    if head == "softmax":
        p = np.exp(z - z.max())
        p /= p.sum()
    else:
        if z.size == 1:
            z = np.array([-z[0], z[0]])
        p = 1 / (1 + np.exp(-z))
    names = list(classes) if len(classes) == p.size else [str(i) for i in range(p.size)]
    index = int(np.argmax(p))
    return {"prediction": index, "prediction_name": names[index],
            "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)},
            "logits": {n: float(v) for n, v in zip(names, z, strict=True)}}


def flags(label: int | None, prediction: int, scores: dict[str, dict], pairs: list[dict],
          suites: list[dict], config: AuditConfig, lesions_on_tissue: int = 0,
          unfaithful: list[str] | None = None, resolution: dict[str, Any] | None = None,
          artefact: dict[str, Any] | None = None, insensitive: list[str] | None = None) -> list[dict[str, Any]]:
    """The slide's flags by the rules of `reports.audit.flags.FLAGS`; each {"flag", "verdict",
    "severity", "methods", "message"}."""
    return raise_flags(FlagInputs(label, prediction, scores, pairs, suites, config, lesions_on_tissue,
                                  unfaithful or [], resolution or {}, artefact, insensitive or []))


def without_artefacts(model: MILModel, h: torch.Tensor, shares: np.ndarray, on_lesion: np.ndarray, head: str,
                      classes: list[str], max_change: float) -> dict[str, Any]:
    """The counterfactual slide without its artefact patches, each kind in turn and all together,
    pooled from the kept embeddings `h` by the MIL head alone. A patch lies on kind k when
    `shares` (N, K) [:, k - 1] >= PATCH_SHARE; a patch on an annotated lesion (`on_lesion` (N,)
    bool) stays: it is evidence of the lesion too, and dropping it would blame the artefact for
    the lesion. Returns "before" (`slide_prediction`), "kinds" {kind name: `_without`} for each
    kind some patch lies on, "all" (every kind at once; None when no patch lies on any),
    "kept_on_lesion", "max_change", and "depends": the kinds whose removal alone moves the
    prediction, or every kind present when only their removal together does."""
    covered = np.asarray(shares) >= PATCH_SHARE
    on = covered & ~np.asarray(on_lesion, bool)[:, None]
    with torch.no_grad():
        before = slide_prediction(model.pool(h)[0].cpu().numpy(), head, classes)
    kinds = {artefact_name(k + 1): _without(model, h, on[:, k], before, head, classes, max_change)
             for k in range(on.shape[1]) if on[:, k].any()}
    together = _without(model, h, on.any(axis=1), before, head, classes, max_change) if kinds else None
    depends = [name for name, r in kinds.items() if r["depends"]] or (
        list(kinds) if together and together["depends"] else [])
    return {"before": before, "kinds": kinds, "all": together, "max_change": max_change, "depends": depends,
            "kept_on_lesion": int((covered.any(axis=1) & on_lesion).sum())}


def _without(model: MILModel, h: torch.Tensor, drop: np.ndarray, before: dict[str, Any], head: str,
             classes: list[str], max_change: float) -> dict[str, Any]:
    """The slide pooled without the patches `drop` (N,) bool: "dropped" (patches), "after" (None
    when every patch would go), "change" = p_after - p_before of the class predicted before,
    "flipped", and "depends" = flipped or |change| > `max_change`."""
    record: dict[str, Any] = {"dropped": int(drop.sum()), "after": None, "change": None, "flipped": False,
                              "depends": False}
    if drop.all():
        return record
    with torch.no_grad():
        after = slide_prediction(model.pool(h[torch.from_numpy(~drop)])[0].cpu().numpy(), head, classes)
    name = before["prediction_name"]
    change = after["probabilities"][name] - before["probabilities"][name]
    flipped = after["prediction"] != before["prediction"]
    return record | {"after": after, "change": change, "flipped": flipped,
                     "depends": flipped or abs(change) > max_change}


def deletion_record(model: MILModel, h: torch.Tensor, explain: Any, config: FaithfulnessConfig) -> dict[str, Any]:
    """Deletion faithfulness (`explainers.faithfulness`) of attention and each method's per-patch
    score, from the kept embeddings `h` and the model's MIL head: fractions, curves, areas, the
    random baseline and the methods no better than it."""
    attrs = dict(explain.attrs)
    scores = method_patch_scores(explain)
    result = faithfulness(model, h, int(attrs["target_class"]), str(attrs["head"]), scores, config)
    log.debug("%s: deletion areas %s (random %s)", attrs.get("slide_id"), result.areas, result.random_area)
    return {"fractions": list(result.fractions), "curves": result.curves, "areas": result.areas,
            "random_curve": result.random_curve, "random_area": result.random_area,
            "margin": config.margin, "unfaithful": result.unfaithful(config.margin)}


def model_signature(model_dir: Path) -> tuple[tuple[int, int, int, int], ...]:
    """(size, mtime_ns, ctime_ns, inode) of the model's config and weights files: any rewrite
    or edit in place changes it."""
    return tuple((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                 for st in map(os.stat, (Path(model_dir) / CONFIG, weights_path(model_dir))))


@functools.lru_cache(maxsize=4)
def _cached_model(model_dir: str, signature: tuple, device: str) -> tuple[MILModel, ModelConfig]:
    if device == "cpu":
        return load_model(Path(model_dir))
    model, config = _cached_model(model_dir, signature, "cpu")
    return copy.deepcopy(model).to(device), config


def worker_model(model_dir: Path, device: str | torch.device = "cpu") -> tuple[MILModel, ModelConfig]:
    """(model in eval mode on `device`, its config), loaded from disk once per worker process and
    model signature (`model_signature`); callers never change it (the randomisation check
    changes copies)."""
    return _cached_model(str(Path(model_dir).absolute()), model_signature(model_dir), str(device))


def sanity_record(slide_dir: Path, explain: Any, model_dir: Path, config: SanityConfig,
                  device: str = "auto", batch: int | None = None) -> dict[str, Any]:
    """The model-randomisation check (`explainers.sanity`) of the slide's explained class and
    target (slide or instance logit), on a seeded sample of its patches: Spearman ρ per method
    and re-initialised layer. `device` and `batch` as the explain stage's (`ExplainConfig`)."""
    model, model_config = worker_model(model_dir, resolve_device(device))
    store = open_patch_store(slide_dir)
    attrs = dict(explain.attrs)
    n = len(store)
    index = np.sort(np.random.default_rng(config.seed).choice(n, min(n, config.max_patches), replace=False))
    read = sample_reader(store, model_config, next(model.parameters()).device, index)
    result = randomisation(model, model_config.target_layer, tuple(attrs["methods"]), read, index.size,
                           int(attrs["target_class"]), batch_size(batch, model, read(0, 1)), config,
                           str(attrs["target"]))
    log.debug("%s: sanity ρ %s", slide_dir.name, result["rho"])
    return result


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(model: dict[str, Any], stamp: dict[str, str], config: AuditConfig) -> dict[str, Any]:
    """Package versions, the model (name, sha256, config), config hash, source slide sha256 and
    the UTC time of the run."""
    import openslide

    return {"versions": {**{p: _version(p) for p in VERSIONED},
                         "openslide_library": openslide.__library_version__},
            "model": model, "config_hash": stamp["config_hash"],
            "source_sha256": stamp["source_sha256"], "audit_config": dataclasses.asdict(config),
            "run_at": datetime.now(UTC).isoformat(timespec="seconds")}


def resolution(patches: dict[str, Any], maps: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Where the slide's and the annotations' scales came from and how the model saw the slide:
    slide level-0 µm/px and its source ("file", "manifest", "flag"), the read level and its µm/px,
    the stored patches' side (px) and µm/px, the model's input side (px) and µm/px,
    `patch_to_model` (model input px per stored patch px), `upsample` (model input px per slide
    px of the read level; > 1 = upsampled), and the annotation downsample (annotation px per
    level-0 px) with its source. Values a store does not record are None."""
    level_mpp, model_mpp = patches.get("level_mpp"), model.get("mpp")
    patch, model_patch = patches.get("patch_size"), model.get("patch")
    return {"slide_mpp": patches.get("slide_mpp"), "mpp_source": patches.get("mpp_source"),
            "level": patches.get("level"), "level_mpp": level_mpp, "patch_mpp": patches.get("mpp"),
            "patch_size": patch, "model_mpp": model_mpp, "model_patch": model_patch,
            "patch_to_model": model_patch / patch if patch and model_patch else None,
            "upsample": level_mpp / model_mpp if level_mpp and model_mpp else None,
            "annotation_downsample": maps.get("annotation_downsample"),
            "annotation_scale_source": maps.get("annotation_scale_source")}


def _validation(store: PatchStore, attention: np.ndarray, heatmaps: dict[str, np.ndarray],
                tissue: np.ndarray) -> list[dict[str, Any]]:
    """The three stage-boundary suites: patch coords, attention, stitched maps."""
    ranges = {name: (0.0, 1.0) if name.startswith(ATTENTION) else (-FLOAT32_MAX, FLOAT32_MAX)
              for name in heatmaps}
    width, height = (int(v) for v in store.attrs["dimensions"])
    return [validate_coords(store.coords, (width, height)).to_dict(),
            validate_attention(attention, len(store)).to_dict(),
            validate_maps(map_stats(heatmaps, tissue, ranges)).to_dict()]


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _top_patches(store: PatchStore, attention: np.ndarray, n: int) -> list[dict[str, Any]]:
    kinds = store.artefacts.kind
    return [{"index": int(i), "x": int(store.coords[i, 0]), "y": int(store.coords[i, 1]),
             "attention": float(attention[i]), "artefact": artefact_name(kinds[i]) if kinds[i] else None}
            for i in top_patches(attention, n)]


def _lesions(maps: Maps, labels: np.ndarray, tissue: np.ndarray) -> dict[str, Any]:
    names = [str(n) for n in maps.attrs.get("lesion_names", [])]
    on_tissue = np.unique(labels[tissue & (labels > 0)]).size
    share = float((labels > 0)[tissue].mean()) if tissue.any() else 0.0
    return {"annotated": len(names), "on_tissue": int(on_tissue), "names": names,
            "tissue_share": share, "classes": maps.attrs.get("annotation_classes")}


def compare_maps(maps: Maps, heatmaps: dict[str, np.ndarray], top_kinds: dict[str, np.ndarray],
                 config: AuditConfig, pool: Executor) -> dict[str, Any]:
    """Attention and each CAM method against the lesions and artefacts (metrics, peaks, focus by
    artefact kind, given the kind under each method's top patches) and each other. Tissue pixels
    where a map has no finite value (no patch covers them) are left out of its scores and counted
    in "unscored_tissue_px". Computed on the tissue's bounding box (`Maps.tissue_box`): the same
    numbers, since nothing outside it counts, from a fraction of the pixels. Each map, and the
    agreement, is scored on `pool`."""
    box = maps.tissue_box
    offset = np.array([box[0].start, box[1].start])
    tissue, labels, artefacts = maps.tissue[box], maps.lesion[box], maps.artefacts[box]
    names = list(maps.attrs.get("lesion_names", []))
    scored = [ATTENTION, *maps.methods]
    boxed = {name: heatmaps[name][box] for name in scored}
    valid = {name: tissue & np.isfinite(boxed[name]) for name in scored}

    def one_map(name: str) -> dict[str, Any]:
        found = M.peaks(boxed[name], valid[name], config.n_peaks, peak_distance_px(config, maps.pixel_um))
        view = MapView(boxed[name], labels, valid[name], found, maps.pixel_um, config, artefacts, top_kinds[name])
        nearest = nearest_lesion(labels, tissue, maps.pixel_um, found)
        return {"metrics": score_map(view), "artefact_focus": focus_record(view.peak_kinds, view.top_kinds),
                "peaks": peak_records(heatmaps[name], found + offset, nearest, maps.artefacts, maps.downsample,
                                      names, config.tolerance_um)}

    common = np.logical_and.reduce(list(valid.values()))
    compared = pool.submit(agreement, boxed, common, config.agreement_fraction, config.agreement_pixels,
                           config.seed)
    each = dict(zip(scored, pool.map(one_map, scored), strict=True))
    return {
        "methods": scored,
        **{key: {name: each[name][key] for name in scored} for key in ("metrics", "artefact_focus", "peaks")},
        "agreement": compared.result(),
        "unscored_tissue_px": {name: int(np.count_nonzero(tissue & ~valid[name])) for name in scored},
    }


def audit_slide(slide_dir: Path, label: int | None, config: AuditConfig, model_dir: Path | None = None,
                sanity: bool = False, device: str = "auto", batch: int | None = None) -> Path:
    """Write ``slide_dir/audit.json`` (module docstring) unless current; return its path. With the
    model's folder, the record also holds the deletion faithfulness of each method and, with
    `sanity`, the model-randomisation check (`sanity_record`, on `device` with `batch` patches
    per forward). The model is loaded once per worker (`worker_model`)."""
    slide_dir = Path(slide_dir)
    out = slide_dir / AUDIT
    sanity = sanity and model_dir is not None
    stamp = chained_stamp(config, slide_dir / MAPS, label=label, **({"sanity": True} if sanity else {}))
    if is_current(out, **stamp):
        log.info("%s is current; skipping audit", out)
        return out
    store, maps = open_patch_store(slide_dir), open_maps(slide_dir)
    explain = open_explain_store(slide_dir / EXPLAIN, store)
    attrs, attention = dict(explain.attrs), np.asarray(explain["attention"][:], np.float64)
    heatmaps = {name: maps[name] for name in maps.heatmaps}
    tissue = maps.tissue
    top_kinds = {name: store.artefacts.kind[top_patches(scores, config.top_patches)]
                 for name, scores in method_patch_scores(explain).items()}
    with ThreadPoolExecutor(stage_threads()) as pool:  # the suites beside the maps' scores
        validated = pool.submit(_validation, store, attention, heatmaps, tissue)
        compared = compare_maps(maps, heatmaps, top_kinds, config, pool)
        suites = validated.result()
    classes = [str(c) for c in attrs.get("classes", [])]
    predicted = slide_prediction(np.asarray(explain["slide_logits"][:]),
                                 attrs.get("head", "softmax"), classes)
    lesions = _lesions(maps, maps.lesion, tissue)
    model = attrs.get("model", {})
    scales = resolution(store.attrs, maps.attrs, model.get("config", {}))
    deletion = artefact = None
    if model_dir:
        mil, _ = worker_model(model_dir)
        h = torch.from_numpy(np.asarray(explain["embeddings"][:], np.float32))
        deletion = deletion_record(mil, h, explain, config.faithfulness)
        width, height = store.attrs["dimensions"]
        on_lesion = footprint_fraction(maps.lesion > 0, (width, height), store.coords, store.attrs["footprint"]) > 0
        artefact = without_artefacts(mil, h, store.artefacts.shares, on_lesion, attrs.get("head", "softmax"),
                                     classes, config.max_artefact_change)
    randomised = sanity_record(slide_dir, explain, model_dir, config.sanity, device, batch) \
        if sanity and model_dir else None
    raised = flags(label, predicted["prediction"], compared["metrics"], compared["agreement"],
                   suites, config, lesions["on_tissue"], deletion["unfaithful"] if deletion else [], scales,
                   artefact, randomised["insensitive"] if randomised else [])
    verdict, reason = slide_verdict(raised)
    record = {
        "slide_id": str(store.attrs.get("slide_id", slide_dir.name)), "label": label,
        "classes": classes, **predicted, "head": attrs.get("head"), "target": attrs.get("target"),
        "mil": attrs["mil"], "attention_branch": attrs["attention_branch"],
        "target_class": attrs.get("target_class"),
        "map": {"downsample": maps.downsample, "pixel_um": maps.pixel_um,
                "shape": list(tissue.shape)},
        "lesions": lesions, **compared,
        "top_patches": _top_patches(store, attention, config.top_patches),
        "flags": raised, "verdict": verdict, "verdict_reason": reason, "faithfulness": deletion,
        "sanity": randomised,
        "artefacts": {"dropped_at_tile": store.attrs["drop_artefacts"], "left_out": store.attrs["artefacts_dropped"]},
        "without_artefacts": artefact,
        "validation": suites,
        "provenance": {**provenance(model, stamp, config), "resolution": scales},
        "stamp": stamp,
    }
    write_audit(out, _finite(record))
    log.info("audited %s: %s, %d flag(s)", record["slide_id"], record["verdict"], len(record["flags"]))
    return out


def is_negative(audit: dict[str, Any]) -> bool:
    """True when no annotated lesion lies on the slide's tissue (lesion metrics are n/a)."""
    return audit["lesions"]["on_tissue"] == 0


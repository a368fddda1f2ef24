"""The JSON documents of the store; each carries ``format_version`` at its top level.

``<slide_dir>/audit.json`` (AUDIT_VERSION), written by the audit stage: slide_id, label,
classes, prediction, head, target, target_class, map {downsample, pixel_um, shape}, lesions,
metrics {method: {metric: {value, ...}}}, artefact_focus {method: {peaks, top_patches, summary,
...}}, peaks {method: [{x, y, row, col, value, lesion (the nearest), lesion_um, artefact, hit}]},
agreement, top_patches, flags [{flag, verdict, severity, methods, message}], verdict (PASS,
UNCHECKED, REVIEW or FAIL), verdict_reason, artefacts {dropped_at_tile, left_out}, without_artefacts (the
counterfactual per kind and for all, `reports.audit.stage.without_artefacts`; null without the model), validation,
provenance, stamp {config_hash, source_sha256}. Non-finite numbers are written as null.
Version 2 added verdict, verdict_reason and each flag's verdict; version 3 the artefacts; version 4
each peak's nearest lesion, distance and hit (no hit on an artefact), the UNCHECKED verdict and
the randomisation check's draws (sanity: rho_draws, rho as their median, rho_range) and the
counterfactual per artefact kind.

``<slide_dir>/failure.json`` (FAILURE_VERSION), written when a stage of the slide fails:
slide_id, stage, message, label, source_path, error_type, and traceback for an unexpected
exception.

``<out>/run.json`` (RUN_VERSION), the run manifest, written when a run starts and again when it
ends: slideaudit (version), archive, model, model_files {file: sha256}, out, config,
config_hash, only_new, gpu, scheduler, started, finished (absent until the run ends), counts
{state: n}, slides [{slide_id, state ("pending", "done" or "skipped"), ...}] and failures
[{stage, error_type, reason, count, slide_ids (the first few)}] (the failed slides by reason,
`pipeline.failures`; each one's detail is in its failure.json). Version 2 moved the failed
slides from `slides` to `failures`, so that run.json stays small however many slides fail.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiling.errors import StoreError
from tiling.store.names import AUDIT, FAILURE, FORMAT_VERSIONS, RUN_MANIFEST
from tiling.store.stamps import VERSION_KEY, atomic_path, check_version

AUDIT_VERSION, FAILURE_VERSION, RUN_VERSION = (FORMAT_VERSIONS[name] for name in (AUDIT, FAILURE, RUN_MANIFEST))
VALIDATE = "validate"  # the failure stage of a slide whose audit failed a check (the run's last stage)


def _write(path: Path, doc: dict[str, Any], version: int, **dump: Any) -> Path:
    """Write `doc` with its format `version` as indented JSON at `path` (atomic)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({VERSION_KEY: version, **doc}, indent=2, **dump))
    return path


def _read(path: Path, version: int, remedy: str) -> dict[str, Any]:
    """The JSON object at `path` in format `version`; StoreError naming it and `remedy` else."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: missing or unreadable ({exc}); {remedy}") from exc
    if not isinstance(doc, dict):
        raise StoreError(f"{path}: not a JSON object; {remedy}")
    check_version(path, doc, version, remedy)
    return doc


def _file(path: Path, name: str) -> Path:
    """`path/name` when `path` is a folder, else `path`."""
    path = Path(path)
    return path / name if path.is_dir() else path


def write_audit(path: Path, record: dict[str, Any]) -> Path:
    """Write audit.json at `path` atomically; `record` must hold finite numbers only."""
    return _write(path, record, AUDIT_VERSION, allow_nan=False)


def load_audit(path: Path) -> dict[str, Any]:
    """Read an audit.json (a slide folder or the file itself)."""
    return _read(_file(path, AUDIT), AUDIT_VERSION, "run the audit stage on the slide again")


def write_failure_record(path: Path, failure: dict[str, Any]) -> Path:
    """Write failure.json at `path` atomically."""
    return _write(path, failure, FAILURE_VERSION)


def load_failure(path: Path) -> dict[str, Any]:
    """Read a failure.json (a slide folder or the file itself)."""
    return _read(_file(path, FAILURE), FAILURE_VERSION, "run the slide again")


def write_manifest(out: Path, info: dict[str, Any], slides: list[dict[str, Any]]) -> Path:
    """OUT/run.json: `info` plus the slides and their counts by state, the failed ones counted
    from info["failures"] (groups with a count) (atomic)."""
    counts: dict[str, int] = {}
    for s in slides:
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    if info.get("failures"):
        counts["failed"] = counts.get("failed", 0) + sum(g["count"] for g in info["failures"])
    return _write(Path(out) / RUN_MANIFEST, {**info, "counts": counts, "slides": slides},
                  RUN_VERSION, default=str)


def load_manifest(out: Path) -> dict[str, Any]:
    """Read OUT/run.json (the folder or the file itself)."""
    return _read(_file(out, RUN_MANIFEST), RUN_VERSION, "run `slideaudit run` again")

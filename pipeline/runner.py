"""Audit a whole archive: read it, pick the slides, run the graph, write the run manifest.

OUT/run.json (layout: tiling.store.records) records the run: archive, model (sha256 of its
files), config and its hash, when it started and finished, and each slide's state ("pending"
until the run ends, then "done", "failed" or "skipped"), per-stage "computed"/"current" and
seconds, and the CI gate: fail_on and thresholds_met [{slide_id, verdict, verdict_reason, met}],
the slides of this run that meet it (`reports.gate`). It is written when the run starts and again
when it ends, so an interrupted run leaves "pending" slides and no "finished".
The model's files are hashed once, here, for every stage.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from explainers.impressions import render_impressions
from explainers.model_io import read_config, weights_path
from explainers.sanity import SanityConfig
from pipeline.cluster import open_client
from pipeline.config import PipelineConfig
from pipeline.errors import EXIT_OK, EXIT_SLIDES_FAILED, EXIT_THRESHOLDS
from pipeline.graph import build_graph, compute
from pipeline.stages import Context, SlideState
from reports.gate import gate_reasons
from tiling.archive import SlideRecord, group_values, read_archive
from tiling.errors import ConfigError
from tiling.store import AUDIT, RUN_MANIFEST, file_sha256, slide_dir
from tiling.store.records import load_audit, write_manifest

log = logging.getLogger(__name__)
MODEL_CACHE = "model"  # OUT/model/: what is computed once per model (class impressions)


@dataclass
class RunResult:
    """What a run did. `exit_code`: 4 when a slide of the run met `run.fail_on` (`gated`; it wins
    over 3, as the thresholds call for a person while failed slides are retried by the next
    run), else 3 when some slide failed, else 0."""

    out: Path
    states: list[SlideState]
    skipped: list[str]
    gated: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[SlideState]:
        return [s for s in self.states if s.failure]

    @property
    def exit_code(self) -> int:
        if self.gated:
            return EXIT_THRESHOLDS
        return EXIT_SLIDES_FAILED if self.failed else EXIT_OK

    @property
    def index(self) -> Path:
        return self.out / "index.html"

    @property
    def audit_csv(self) -> Path:
        return self.out / "audit.csv"

    @property
    def manifest(self) -> Path:
        return self.out / RUN_MANIFEST


def select(records: list[SlideRecord], out: Path, only_new: bool) -> tuple[list[SlideRecord], list[str]]:
    """(slides to audit, ids skipped): with `only_new`, slides that have an audit.json are skipped."""
    if not only_new:
        return records, []
    done = {r.slide_id for r in records if (slide_dir(out, r.slide_id) / AUDIT).is_file()}
    return [r for r in records if r.slide_id not in done], sorted(done)


def uses_gpu(device: str) -> bool:
    """True when explain runs on CUDA: device "cuda", or "auto" with CUDA available here."""
    if device != "auto":
        return device == "cuda"
    import torch

    return torch.cuda.is_available()


def _model_files(model_dir: Path) -> dict[str, str]:
    """sha256 of each file of the model folder; ConfigError when it holds no model config."""
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir}: no model here (config.json missing); train one with "
                          "`slideaudit train` or pass the folder that holds it")
    return {p.name: file_sha256(p) for p in sorted(model_dir.iterdir()) if p.is_file()}


def gated_slides(out: Path, states: list[SlideState], criteria: tuple[str, ...]) -> list[dict[str, Any]]:
    """The slides of the run, audited without failure, that meet `criteria` (`reports.gate`):
    [{slide_id, verdict, verdict_reason, met}]."""
    gated = []
    for state in states:
        if criteria and not state.failure:
            audit = load_audit(slide_dir(out, state.record.slide_id))
            met = gate_reasons(audit, criteria)
            if met:
                gated.append({"slide_id": state.record.slide_id, "verdict": audit.get("verdict"),
                              "verdict_reason": audit.get("verdict_reason"), "met": met})
    return gated


def sanity_sample(records: list[SlideRecord], sanity: SanityConfig) -> frozenset[str]:
    """The ids of `sanity.slides` slides of the archive drawn with `sanity.seed` (none unless
    enabled): the same archive and seed pick the same slides, whichever of them a run audits."""
    if not sanity.enabled:
        return frozenset()
    ids = sorted(r.slide_id for r in records)
    rng = np.random.default_rng(sanity.seed)
    return frozenset(ids[i] for i in rng.choice(len(ids), min(sanity.slides, len(ids)), replace=False))


def at_model_footprint(config: PipelineConfig, mpp: float, patch: int) -> PipelineConfig:
    """`config` tiling at the model's `mpp` (µm/px) and `patch` (px) unless tile.mpp / tile.patch
    were set (by --config, --set or a command's defaults): no store finer than the model reads."""
    return replace(config, tile=config.tile.resolved(mpp, patch))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_archive(archive: Path, model_dir: Path, out: Path, config: PipelineConfig,
                only_new: bool = False) -> RunResult:
    """Audit every slide of `archive` (manifest CSV or folder) with the model in `model_dir`,
    writing OUT/slides/<id>/..., OUT/index.html, OUT/audit.csv and OUT/run.json.

    Per-slide failures are recorded (failure.json) and do not raise; a bad archive, model folder,
    config or scheduler raises ConfigError/ArchiveError before anything runs.
    """
    archive, model_dir, out = Path(archive).absolute(), Path(model_dir).absolute(), Path(out).absolute()
    model_files = _model_files(model_dir)
    model = read_config(model_dir)
    config = at_model_footprint(config, model.mpp, model.patch)
    records = read_archive(archive, model.classes, model.head == "sigmoid")
    groups = group_values(records, config.run.group_by)
    todo, skipped = select(records, out, only_new)
    gpu = uses_gpu(config.explain.device)
    model_sha = model_files[weights_path(model_dir).name]
    info = {"slideaudit": version("slideaudit"), "archive": str(archive), "model": str(model_dir),
            "model_files": model_files, "out": str(out), "config": config.to_dict(),
            "config_hash": config.hash(), "only_new": only_new, "gpu": gpu, "started": _now()}
    skipped_entries = [{"slide_id": s, "state": "skipped", "reason": f"{AUDIT} exists (--only-new)"}
                       for s in skipped]
    pending = [{"slide_id": r.slide_id, "state": "pending", "source_path": str(r.path)} for r in todo]
    with open_client(config.run, gpu) as client:
        info["scheduler"] = client.scheduler.address
        write_manifest(out, info, pending + skipped_entries)
        log.info("%d slide(s) to audit, %d skipped, config %s", len(todo), len(skipped),
                 info["config_hash"])
        # once per run, before the slides: each report shows what the model learnt
        impressions = (render_impressions(model_dir, out / MODEL_CACHE, config.impressions, model_sha256=model_sha)
                       if todo and config.impressions.steps else {})
        sanity = sanity_sample(records, config.audit.sanity)
        tasks, index = build_graph(todo, Context(out, model_dir, config, impressions, model_sha, sanity), gpu, groups)
        states = compute(client, tasks, index)
    gated = gated_slides(out, states, config.run.fail_on)
    info.update(finished=_now(), fail_on=list(config.run.fail_on), thresholds_met=gated)
    write_manifest(out, info, [s.summary() for s in states] + skipped_entries)
    return RunResult(out, states, skipped, gated)

"""Audit a whole archive: read it, pick the slides, run the graph, write the run manifest.

OUT/run.json (layout: tiling.store.records) records the run: archive, model (sha256 of its
files), config and its hash, when it started and finished, each slide's state ("pending"
until the run ends, then "done" or "skipped"), per-stage "computed"/"current" and seconds, the
failed slides grouped by reason (`pipeline.failures`: count and the first ids; each slide's
detail is in its failure.json, so run.json stays small however many fail), and the CI gate:
fail_on and thresholds_met [{slide_id, verdict, verdict_reason, met}], the slides of this run
that meet it (`reports.audit.gate`). It is written when the run starts and again when it ends,
so an interrupted run leaves "pending" slides and no "finished".
The model's files are hashed once, here, for every stage. A run holds OUT/.lock (filelock)
from start to end, naming itself in OUT/.lock.json (pid, host, start): a second run on the same OUT
exits 2 (OutLocked) naming the holder or, with `wait`, waits, saying whose lock and for how long.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from explainers.config import SanityConfig
from explainers.models.config import ModelConfig, read_config, weights_path
from pipeline.cache import Ledger, cached_sha256
from pipeline.config import PipelineConfig
from pipeline.errors import EXIT_OK, EXIT_SLIDES_FAILED, EXIT_THRESHOLDS, OutLocked
from pipeline.failures import group_failures
from pipeline.stages import PREFLIGHT, STAGES, Context, SlideState, write_failure
from reports.audit.gate import gate_reasons
from tiling.archive import SlideRecord, group_values, read_archive
from tiling.errors import AuditError, ConfigError
from tiling.store import AUDIT, INDEX, LOCK, RUN_MANIFEST, atomic_path, slide_dir
from tiling.store.names import LOCK_OWNER
from tiling.store.records import load_audit, load_manifest, write_manifest

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run did. `exit_code`: 4 when a slide of the run met `run.fail_on` (`gated`; it wins
    over 3, as the thresholds call for a person while failed slides are retried by the next
    run), else 3 when some slide failed, else 0."""

    out: Path
    states: list[SlideState]
    skipped: list[str]
    gated: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the run

    @property
    def current(self) -> list[SlideState]:
        """The slides audited without failure and without recomputing anything."""
        return [s for s in self.states if not s.failure and "computed" not in s.stages.values()]

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
        return self.out / INDEX

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


def _model_files(model_dir: Path, out: Path) -> dict[str, str]:
    """sha256 of each file of the model folder (`cached_sha256`)."""
    return {p.name: cached_sha256(p, out) for p in sorted(model_dir.iterdir()) if p.is_file()}


def _read_model(model_dir: Path) -> ModelConfig:
    """The model folder's config; ConfigError when it holds none."""
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir}: no model here (config.json missing); train one with "
                          "`slideaudit train` or pass the folder that holds it")
    return read_config(model_dir)


def gated_slides(out: Path, states: list[SlideState], criteria: tuple[str, ...]) -> list[dict[str, Any]]:
    """The slides of the run, audited without failure, that meet `criteria` (`reports.audit.gate`):
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


def last_run_groups(out: Path, group_by: tuple[str, ...] | None = None
                    ) -> tuple[tuple[str, ...], dict[str, dict[str, str]]]:
    """The subgroup columns (`group_by`, else the last run's run.group_by from OUT/run.json) and
    each slide's values of them, read from the archive that run read; ((), {}) for none.
    StoreError without a run.json to name the archive; ArchiveError for an unknown column."""
    if group_by == ():
        return (), {}
    manifest = load_manifest(out) if group_by or (Path(out) / RUN_MANIFEST).is_file() else {}
    columns = tuple(group_by or manifest.get("config", {}).get("run", {}).get("group_by", ()))
    if not columns:
        return (), {}
    return columns, group_values(read_archive(Path(manifest["archive"])), columns)


def at_model_footprint(config: PipelineConfig, mpp: float, patch: int) -> PipelineConfig:
    """`config` tiling at the model's `mpp` (µm/px) and `patch` (px) unless tile.mpp / tile.patch
    were set (by --config, --set or a command's defaults): no store finer than the model reads."""
    return replace(config, tile=config.tile.resolved(mpp, patch))


def lock_owner(out: Path) -> str:
    """Who holds OUT's lock, from OUT/.lock.json: "pid P on HOST, started T" ("" when unknown)."""
    try:
        owner = json.loads((out / LOCK_OWNER).read_text())
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


@contextlib.contextmanager
def locked(out: Path, wait: bool, every: float = 30.0) -> Iterator[None]:
    """Hold OUT/.lock for the block, naming this process in OUT/.lock.json; OutLocked at once when
    another run holds it, unless `wait`: then wait, saying whose lock it is and, every `every`
    seconds, how long it has waited."""
    out.mkdir(parents=True, exist_ok=True)
    lock, started, timeout = FileLock(out / LOCK), time.monotonic(), 0.0
    while True:
        try:
            lock.acquire(timeout=timeout)
            break
        except Timeout:
            owner = lock_owner(out)
            held = f" ({owner})" if owner else ""
            if not wait:
                raise OutLocked(f"{out}: another `slideaudit run` is writing here{held}; it holds {out / LOCK}; "
                                "let it finish, pass --wait to wait for it, or choose another --out") from None
            log.info("waiting for the run that holds %s%s: %.0f s so far", out / LOCK, held,
                     time.monotonic() - started)
            timeout = every
    try:
        with atomic_path(out / LOCK_OWNER) as tmp:
            tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}))
        yield
    finally:
        (out / LOCK_OWNER).unlink(missing_ok=True)
        lock.release()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_archive(archive: Path, model_dir: Path, out: Path, config: PipelineConfig,
                only_new: bool = False, wait: bool = False, progress: str = "auto") -> RunResult:
    """Audit every slide of `archive` (manifest CSV or folder) with the model in `model_dir`,
    writing OUT/slides/<id>/..., OUT/index.html, OUT/audit.csv and OUT/run.json.

    Slides whose inputs and outputs are as the ledger recorded (`pipeline.cache`) are current
    without Dask, torch or great-expectations being imported; the others are checked
    (`pipeline.preflight`) and audited on Dask (`pipeline.graph.audit_slides`), with `progress`
    ("auto", "bar", "plain", "none": `pipeline.progress`). Per-slide failures are recorded
    (failure.json) and do not raise; a bad archive, model, config or scheduler raises
    ConfigError/ArchiveError before any slide runs, OutLocked when another run holds OUT's lock
    (unless `wait`), DiskFull when OUT's disk is full.
    """
    started = time.perf_counter()
    archive, model_dir, out = Path(archive).absolute(), Path(model_dir).absolute(), Path(out).absolute()
    model = _read_model(model_dir)
    config = at_model_footprint(config, model.mpp, model.patch)
    records = read_archive(archive, model.classes, model.head == "sigmoid")
    groups = group_values(records, config.run.group_by)
    with locked(out, wait):
        model_files = _model_files(model_dir, out)
        run_key = {"config_hash": config.hash(), "model_files": model_files}
        ledger = Ledger(out)
        candidates, skipped = select(records, out, only_new)
        current_ids = {r.slide_id for r in candidates if ledger.is_current(r, run_key)}
        current = [r for r in candidates if r.slide_id in current_ids]
        todo = [r for r in candidates if r.slide_id not in current_ids]
        problems: dict[str, AuditError] = {}
        if todo:
            from pipeline.preflight import preflight  # torch and OpenSlide: only when a slide needs work

            problems = preflight(todo, model_dir, config)
        info = {"slideaudit": version("slideaudit"), "archive": str(archive), "model": str(model_dir),
                "model_files": model_files, "out": str(out), "config": config.to_dict(),
                "config_hash": run_key["config_hash"], "only_new": only_new, "started": _now()}
        skipped_entries = [{"slide_id": s, "state": "skipped", "reason": f"{AUDIT} exists (--only-new)"}
                           for s in skipped]
        states = [write_failure(SlideState(r), out, PREFLIGHT, problems[r.slide_id])
                  for r in todo if r.slide_id in problems]
        todo = [r for r in todo if r.slide_id not in problems]
        pending = [{"slide_id": r.slide_id, "state": "pending", "source_path": str(r.path)} for r in todo]
        write_manifest(out, {**info, "failures": group_failures(s.failure for s in states if s.failure)},
                       pending + skipped_entries)
        log.info("%d slide(s): %d current, %d to audit, %d failed preflight, %d skipped; config %s",
                 len(records), len(current), len(todo), len(states), len(skipped), run_key["config_hash"])
        if todo or states or not (out / INDEX).is_file():
            from pipeline.graph import audit_slides  # torch, Dask, great-expectations: only when there is work

            ctx = Context(out, model_dir, config, model_sha256=model_files[weights_path(model_dir).name],
                          sanity_slides=sanity_sample(records, config.audit.sanity))
            states += audit_slides(todo, ctx, progress, info, groups)
        states = [*(SlideState(r, dict.fromkeys(STAGES, "current")) for r in current), *states]
        ledger.update([s.record for s in states if not s.failure], [s.record.slide_id for s in states if s.failure],
                      run_key)
        gated = gated_slides(out, states, config.run.fail_on)
        info.update(finished=_now(), fail_on=list(config.run.fail_on), thresholds_met=gated,
                    failures=group_failures(s.failure for s in states if s.failure))
        write_manifest(out, info, [s.summary() for s in states if not s.failure] + skipped_entries)
    return RunResult(out, states, skipped, gated, round(time.perf_counter() - started, 3))

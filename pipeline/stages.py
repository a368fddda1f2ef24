"""The per-slide stage chain, with failure capture.

Each stage is one call into its package, which writes one stamped output and skips itself when
that output is current. `run_stage` wraps a stage for the Dask graph: it takes the slide's
`SlideState` from the previous stage and returns it updated. A failed stage writes
`slide_dir/failure.json` (layout: tiling.store.records) and the later stages of that slide
pass the state through untouched; the slide's other outputs stay as they were. The
last stage, "validate", fails the slide when a great-expectations suite of its audit failed
(after the report that shows it is written). A slide whose chain completes loses its old
failure.json. Each stage imports its package when it first runs: a run whose slides are all
current imports none of them (no torch, OpenSlide or great-expectations), and starts in about a second.
"""
from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.cache import cached_sha256, signature
from pipeline.config import PipelineConfig
from pipeline.errors import DiskFull, ValidationFailed, disk_full
from pipeline.limits import time_limit
from tiling.archive import SlideRecord
from tiling.errors import AuditError
from tiling.store import AUDIT, EXPLAIN, FAILURE, MAPS, PATCHES, REPORT, remove_leftovers, slide_dir
from tiling.store.records import VALIDATE, load_audit, write_failure_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """What every stage of a run needs besides the slide: the store, the model, the settings."""

    out: Path
    model_dir: Path
    config: PipelineConfig
    impressions: dict[str, Path] = field(default_factory=dict)  # class -> PNG, for the reports
    model_sha256: str | None = None  # of the weights file, hashed once per run (None: per slide)
    sanity_slides: frozenset[str] = frozenset()  # slides that get the randomisation check


@dataclass
class SlideState:
    """A slide on its way through the chain.

    stages: stage -> "computed" (written by this run), "current" (an up-to-date output was kept)
            or "checked" (validate);
    seconds: stage -> wall time in s; failure: the failure.json record once a stage failed.
    """

    record: SlideRecord
    stages: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failure: dict[str, Any] | None = None

    @property
    def state(self) -> str:
        return "failed" if self.failure else "done"

    def summary(self) -> dict[str, Any]:
        """The slide's entry in run.json."""
        return {"slide_id": self.record.slide_id, "state": self.state, "label": self.record.label,
                "source_path": str(self.record.path), "stages": self.stages,
                "seconds": self.seconds, "failure": self.failure}


def _tile(rec: SlideRecord, ctx: Context) -> None:
    from tiling.annotations import check_annotation_files
    from tiling.slide import check_readable
    from tiling.tile import tile_slide

    check_annotation_files(rec.annotations)  # before the slide's work, not at the stitch stage
    check_readable(rec.path)  # a SlideError naming the file, before hashing it
    tile_slide(rec.path, ctx.out, ctx.config.tile, slide_id=rec.slide_id, slide_mpp=rec.mpp,
               source_sha256=cached_sha256(rec.path, ctx.out))


def _explain(rec: SlideRecord, ctx: Context) -> None:
    from explainers.explain import explain_store

    explain_store(slide_dir(ctx.out, rec.slide_id), ctx.model_dir, ctx.config.explain,
                  model_sha256=ctx.model_sha256)


def _stitch(rec: SlideRecord, ctx: Context) -> None:
    from tiling.stitch import AnnotationScale, stitch_slide

    stitch_slide(slide_dir(ctx.out, rec.slide_id), list(rec.annotations), ctx.config.stitch,
                 AnnotationScale(rec.annotation_downsample, rec.annotation_mpp))


def _audit(rec: SlideRecord, ctx: Context) -> None:
    from reports.audit.stage import audit_slide

    audit_slide(slide_dir(ctx.out, rec.slide_id), rec.label, ctx.config.audit, ctx.model_dir,
                sanity=rec.slide_id in ctx.sanity_slides, device=ctx.config.explain.device,
                batch=ctx.config.explain.batch)


def _report(rec: SlideRecord, ctx: Context) -> None:
    from reports.html import render_slide_report

    render_slide_report(slide_dir(ctx.out, rec.slide_id), ctx.impressions)


def _validate(rec: SlideRecord, ctx: Context) -> None:
    path = slide_dir(ctx.out, rec.slide_id) / AUDIT
    failed = [s for s in load_audit(path).get("validation", []) if not s["success"]]
    if failed:
        details = "; ".join(f"{s['suite']}: " + ", ".join(f["expectation"] for f in s["failed"])
                            for s in failed)
        raise ValidationFailed(f"{path}: validation failed ({details}); see the slide's report")


PREFLIGHT = "preflight"  # the stage of a failure found before the chain starts (`pipeline.preflight`)
# stage name -> (function, the output it writes in the slide's folder or None), in chain order
STAGES: dict[str, tuple[Callable[[SlideRecord, Context], None], str | None]] = {
    "tile": (_tile, PATCHES),
    "explain": (_explain, EXPLAIN),
    "stitch": (_stitch, MAPS),
    "audit": (_audit, AUDIT),
    "report": (_report, REPORT),
    VALIDATE: (_validate, None),
}


def write_failure(state: SlideState, out: Path, stage: str, exc: BaseException) -> SlideState:
    """`state` failed at `stage` with `exc`, recorded in `slide_dir/failure.json` (atomic)."""
    rec = state.record
    failure = {"slide_id": rec.slide_id, "stage": stage, "message": str(exc), "label": rec.label,
               "source_path": str(rec.path), "error_type": type(exc).__name__}
    if not isinstance(exc, AuditError):
        failure["traceback"] = "".join(traceback.format_exception(exc))
    try:
        write_failure_record(slide_dir(out, rec.slide_id) / FAILURE, failure)
    except OSError as err:  # the slide's folder itself is unusable: run.json still records it
        log.error("%s: cannot write %s (%s)", rec.slide_id, FAILURE, err)
    return replace(state, failure=failure)


def _run(stage: str, rec: SlideRecord, ctx: Context) -> str:
    """Run `stage` for `rec`; its status as in `SlideState.stages`."""
    func, output = STAGES[stage]
    limit = time_limit(ctx.config.run.stage_timeout, f"{rec.slide_id}: the {stage} stage")
    if output is None:
        with limit:
            func(rec, ctx)
        return "checked"
    sdir = slide_dir(ctx.out, rec.slide_id)
    if sdir.is_dir():
        remove_leftovers(sdir, output)
    before = signature(sdir / output)  # an atomic rewrite changes it, a skipped stage does not
    with limit:
        func(rec, ctx)
    return "current" if signature(sdir / output) == before else "computed"


def run_stage(stage: str, state: SlideState, ctx: Context) -> SlideState:
    """Run one stage of a slide unless an earlier one failed; capture any exception as its failure
    (failure.json), except a full disk, which is no fault of the slide: that failure (error_type
    DiskFull) is only returned, and `pipeline.graph.compute` stops the run on it."""
    if state.failure:
        return state
    start = time.perf_counter()
    try:
        status = _run(stage, state.record, ctx)
        if stage == list(STAGES)[-1]:
            (slide_dir(ctx.out, state.record.slide_id) / FAILURE).unlink(missing_ok=True)
    except Exception as exc:
        if disk_full(exc):  # not written to failure.json: `compute` stops the run on it
            return replace(state, failure={"stage": stage, "error_type": DiskFull.__name__, "message": (
                f"{ctx.out}: no space left on its disk (at {stage} of {state.record.slide_id}); "
                "free space and run again: finished outputs are kept")})
        expected = isinstance(exc, AuditError)
        log.log(logging.WARNING if expected else logging.ERROR, "%s: %s failed: %s",
                state.record.slide_id, stage, exc, exc_info=not expected)
        return write_failure(state, ctx.out, stage, exc)
    return replace(state, stages={**state.stages, stage: status},
                   seconds={**state.seconds, stage: round(time.perf_counter() - start, 3)})

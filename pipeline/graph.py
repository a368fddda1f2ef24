"""The Dask graph of an audit run: one delayed chain per slide, fanned in to the archive index.

    tile-<id> -> explain-<id> -> stitch-<id> -> audit-<id> -> report-<id> -> validate-<id>
    index <- every slide's last state (the fan-in)

(each key also ends in a token of the run).

Slides run in manifest order, one after the other on each worker: every task of the i-th of n
slides carries priority n - i, so a slide's next stage goes before a later slide's tile (the
reports appear in order, a stopped run leaves the first slides whole, few slides are in flight).
Explain tasks, and the audit tasks of the slides that get the randomisation check (it runs the
encoder), carry `resources={"GPU": 1}` when the run uses CUDA, so a cluster runs them only on
workers that offer a GPU. The dashboard groups tasks by stage.
"""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
import torch
from dask.delayed import Delayed, delayed
from distributed import Client, as_completed

from explainers.impressions import render_impressions
from pipeline.cache import model_cache
from pipeline.cluster import open_client
from pipeline.errors import DiskFull
from pipeline.progress import Progress
from pipeline.stages import STAGES, Context, SlideState, run_stage
from reports.html import render_index
from tiling.archive import SlideRecord
from tiling.store import remove_leftovers, slide_dir


def uses_gpu(device: str) -> bool:
    """True when explain runs on CUDA: device "cuda", or "auto" with CUDA available here."""
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def build_index(out: Path, states: Sequence[SlideState], group_by: tuple[str, ...] = (),
                groups: dict[str, dict[str, str]] | None = None) -> list[SlideState]:
    """Render OUT/index.html and OUT/audit.csv over every slide folder in OUT (with the subgroup
    rates of `group_by`, `reports.html.render_index`); pass `states` on."""
    render_index(out, group_by, groups)
    return list(states)


def build_graph(records: Sequence[SlideRecord], ctx: Context, gpu: bool,
                groups: dict[str, dict[str, str]] | None = None) -> tuple[list[Delayed], Delayed]:
    """Every stage task of every slide (for progress), and the index task whose result is the
    list of final `SlideState`s; `groups`: each slide's values of run.group_by. Keys end in a
    token of this graph, so two runs sharing a scheduler never share a task."""
    token = uuid.uuid4().hex[:8]
    tasks: list[Delayed] = []
    finals: list[Delayed] = []
    for order, rec in enumerate(records):
        state: Any = SlideState(rec)  # a Delayed after the first stage
        for stage in STAGES:
            gpu_task = gpu and (stage == "explain" or (stage == "audit" and rec.slide_id in ctx.sanity_slides))
            with dask.annotate(priority=len(records) - order, **({"resources": {"GPU": 1}} if gpu_task else {})):
                state = delayed(run_stage, pure=False)(stage, state, ctx,
                                                      dask_key_name=f"{stage}-{rec.slide_id}-{token}")
            tasks.append(state)
        finals.append(state)
    index = delayed(build_index, pure=False)(ctx.out, finals, ctx.config.run.group_by, groups,
                                             dask_key_name=f"index-{token}")
    return tasks, index


def stage_of(key: str) -> str:
    """The stage of a task key "<stage>-<slide_id>-<token>" (stage names hold no "-")."""
    return key.split("-", 1)[0]


def compute(client: Client, tasks: list[Delayed], index: Delayed, progress: Progress) -> list[SlideState]:
    """Run the graph on `client`, telling `progress` each stage's result; the final slide states.
    Each stage's future is let go once told, so the workers keep a state only while a later
    stage or the index needs it. A full disk (`run_stage`) or a task that raises cancels the
    rest (and so every task after it) and raises here."""
    *stages, final = client.compute([*tasks, index], optimize_graph=False)
    pending = set(stages)
    del stages
    try:
        for future in as_completed(pending):
            pending.discard(future)
            state = future.result()
            if state.failure and state.failure["error_type"] == DiskFull.__name__:
                raise DiskFull(state.failure["message"])
            progress.advance(stage_of(str(future.key)), state)
        return final.result()
    except BaseException:
        client.cancel([*pending, final])
        raise


def audit_slides(todo: list[SlideRecord], ctx: Context, progress: str, info: dict[str, Any],
                 groups: dict[str, dict[str, str]]) -> list[SlideState]:
    """Audit `todo` on Dask (the class impressions first, once per model) and render the index
    (with the subgroups of `groups`): the final states; with no `todo`, the index only. `info`
    (the run manifest) gets the scheduler and whether explain runs on a GPU. A run stopped on a
    local cluster removes the temporary outputs its killed workers left (on a shared scheduler
    a cancelled task may still be writing: the next run removes them, `pipeline.stages`)."""
    if not todo:
        render_index(ctx.out, ctx.config.run.group_by, groups)
        return []
    gpu = uses_gpu(ctx.config.explain.device)
    try:
        with open_client(ctx.config.run, gpu) as client:
            info.update(gpu=gpu, scheduler=client.scheduler.address)
            impressions = (render_impressions(ctx.model_dir, model_cache(ctx.out, ctx.model_sha256),
                                              ctx.config.impressions, model_sha256=ctx.model_sha256)
                           if ctx.config.impressions.steps else {})
            tasks, index = build_graph(todo, replace(ctx, impressions=impressions), gpu, groups)
            bar = Progress(progress, [r.slide_id for r in todo], list(STAGES))
            try:
                return compute(client, tasks, index, bar)
            finally:
                bar.close()
    except BaseException:  # stopped (SIGTERM, Ctrl-C, a full disk): the workers were killed mid-write
        if ctx.config.run.scheduler is None:  # the run's own workers are gone, nothing writes there now
            for rec in todo:
                remove_leftovers(slide_dir(ctx.out, rec.slide_id))
        raise

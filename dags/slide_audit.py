"""Scheduled audit of a slide archive: audit the new slides daily, one task per slide, and
publish the index.

Tasks: `find_new_slides` (slides of the archive without `OUT/slides/<id>/audit.json`: never
audited, or failed last time) -> `audit_slide`, mapped: one task instance per new slide (its map
index shows the slide id), each `slideaudit run` on an archive of that one slide (skipped when
nothing is new) -> `build_index` (`slideaudit report OUT`; runs when every slide's task has
ended, failed or not) -> `publish` (runs unless the index failed, so a snapshot missed earlier
is still published) -> `outcome` (fails, naming them, when a slide could not be audited or met
--fail-on, so the DAG run is marked failed; failed slides are tried again by the next run).

Per-slide tasks (`audit_slide`), set where the DAG is parsed (environment of the DAG processor
and workers):

- `retries` [SLIDEAUDIT_RETRIES, 2] after `retry_delay` [SLIDEAUDIT_RETRY_DELAY_MIN, 10 minutes];
  a slide whose input is bad (it failed preflight: a corrupt file, annotations off the slide) or
  a setting to fix (exit code 2) fails at once without retries.
- `execution_timeout` [SLIDEAUDIT_SLIDE_TIMEOUT_MIN, 360 minutes]: the task is failed and its
  `slideaudit run` stopped with SIGTERM (a rerun resumes where it stopped).
- `pool` [SLIDEAUDIT_POOL, `slideaudit_gpu`]: one slot per slide, for the GPU the explain step
  uses. Create it once: `airflow pools set slideaudit_gpu 1 "slideaudit: one slide per GPU"`.
  Runs on one OUT take turns on its lock (`slideaudit run --wait`), whatever the pool's size.
- `on_failure_callback` of every task: logs the failure, then calls the callable named by
  SLIDEAUDIT_ON_FAILURE (`module:function`, importable on the worker; e.g. a Slack or e-mail
  alert) with Airflow's context.

Params (a value left empty is taken from the worker's environment variable in brackets):

- `archive` [SLIDEAUDIT_ARCHIVE]: manifest CSV (slide_id,path,label,annotation) or a folder of
  slides with their annotations beside them; read only, never written.
- `model` [SLIDEAUDIT_MODEL]: model folder (model.safetensors + config.json).
- `out` [SLIDEAUDIT_OUT]: the store; resumable, so a failed or killed run resumes next time.
- `publish_dir` [SLIDEAUDIT_PUBLISH]: where the QA team reads the reports (default OUT/published).
- `config` [SLIDEAUDIT_CONFIG]: YAML or TOML settings for `slideaudit run --config` (optional).
- `workers`: Dask workers of each slide's run (empty: slideaudit's default).
- `fail_on`: `slideaudit run --fail-on` (review, fail or flag names, comma-separated; empty: the
  config's run.fail_on).
- `keep`: how many published snapshots to keep.
- `slideaudit_bin` [SLIDEAUDIT_BIN]: the slideaudit executable (default `slideaudit` on PATH).

XComs: `find_new_slides` returns the new slide ids; each `audit_slide` returns its slide's
result (slide_id, exit_code, verdict, thresholds_met); `publish` returns the snapshot's path.
The index has no subgroups (run.group_by): each slide's run reads an archive of that slide only.

Published layout, for a shared folder that reviewers open in a browser:

    PUBLISH/latest -> 2026-01-31T020000Z     symlink, swapped atomically after each publication
    PUBLISH/2026-01-31T020000Z/index.html    the archive index; audit.csv, run.json beside it
    PUBLISH/2026-01-31T020000Z/slides/<id>/  report.html, audit.json (failure.json if it failed)

A snapshot is copied under a hidden temporary name and renamed when complete, so `latest`
always points at a whole one; zarr stores stay in OUT. The newest `keep` snapshots are kept.

This file runs in Airflow's own virtual environment (`make airflow` builds `.venv-airflow` from
`dags/requirements.txt`) and never imports slideaudit's packages: it calls the executable.
Try it: `airflow dags test slide_audit -c '{"archive": ..., "model": ..., "out": ...}'`.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import audit_steps as steps
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)

ENV = {"archive": "SLIDEAUDIT_ARCHIVE", "model": "SLIDEAUDIT_MODEL", "out": "SLIDEAUDIT_OUT",
       "publish_dir": "SLIDEAUDIT_PUBLISH", "config": "SLIDEAUDIT_CONFIG",
       "slideaudit_bin": "SLIDEAUDIT_BIN"}


def _path_param(name: str, description: str) -> Param:
    return Param("", type="string", title=name, description=f"{description} Empty: ${ENV[name]}.")


def on_failure(context: dict[str, Any]) -> None:
    """Every task's on_failure_callback: log which task (and slide) failed and why, then call
    $SLIDEAUDIT_ON_FAILURE (`module:function`) with the context, when it is set."""
    ti = context["task_instance"]
    log.error("slide_audit: task %s%s failed: %s", ti.task_id,
              f" [{context['slide_id']}]" if "slide_id" in context else "", context.get("exception"))
    hook = os.environ.get("SLIDEAUDIT_ON_FAILURE")
    if hook:
        module, colon, name = hook.partition(":")
        if not colon:
            raise steps.DagInputError(f"SLIDEAUDIT_ON_FAILURE={hook!r}: write it as module:function")
        getattr(importlib.import_module(module), name)(context)


def _minutes(variable: str, default: int) -> timedelta:
    """$variable (minutes), else `default`, as a timedelta."""
    return timedelta(minutes=float(os.environ.get(variable) or default))


def _setting(name: str, default: str | None = None) -> str:
    """A DAG param, else its environment variable, else `default`; DagInputError if none."""
    value = get_current_context()["params"].get(name) or os.environ.get(ENV[name]) or default
    if value is None:
        raise steps.DagInputError(f"the DAG's `{name}` param is empty and ${ENV[name]} is not "
                                  "set: pass it with -c/--conf or set the variable")
    return value


@dag(
    dag_id="slide_audit",
    schedule="@daily",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["slideaudit", "pathology"],
    default_args={"on_failure_callback": on_failure},
    doc_md=__doc__,
    params={
        "archive": _path_param("archive", "Manifest CSV or folder of slides to audit."),
        "model": _path_param("model", "Model folder (model.safetensors + config.json)."),
        "out": _path_param("out", "The audit store (OUT/slides/<slide_id>/...)."),
        "publish_dir": _path_param("publish_dir", "Folder the reviewers read; else OUT/published."),
        "config": _path_param("config", "YAML/TOML settings for slideaudit run (optional)."),
        "slideaudit_bin": _path_param("slideaudit_bin", "slideaudit executable; else on PATH."),
        "workers": Param(None, type=["null", "integer"], minimum=1, title="workers",
                         description="Dask workers of the run; empty: slideaudit's default."),
        "fail_on": Param("", type="string", title="fail_on",
                         description="slideaudit run --fail-on: review, fail or flag names; empty: none."),
        "keep": Param(7, type="integer", minimum=1, title="keep",
                      description="How many published snapshots to keep."),
    },
)
def slide_audit() -> None:
    @task
    def find_new_slides() -> list[str]:
        """Slide ids of the archive not audited into OUT yet."""
        return steps.new_slide_ids(_setting("slideaudit_bin", "slideaudit"), Path(_setting("archive")),
                                   Path(_setting("out")))

    @task(retries=int(os.environ.get("SLIDEAUDIT_RETRIES") or 2),
          retry_delay=_minutes("SLIDEAUDIT_RETRY_DELAY_MIN", 10),
          execution_timeout=_minutes("SLIDEAUDIT_SLIDE_TIMEOUT_MIN", 360),
          pool=os.environ.get("SLIDEAUDIT_POOL") or "slideaudit_gpu",
          map_index_template="{{ slide_id }}")
    def audit_slide(slide_id: str) -> dict:
        """Audit one slide; fail at once (no retry) on bad input or a setting to fix."""
        context = get_current_context()
        context["slide_id"] = slide_id  # the map index shown in the UI
        params = context["params"]
        try:
            result = steps.run_slide(_setting("slideaudit_bin", "slideaudit"), Path(_setting("archive")), slide_id,
                                     Path(_setting("model")), Path(_setting("out")), params.get("workers"),
                                     _setting("config", "") or None, params.get("fail_on") or None)
        except steps.SlideFailed as e:
            if e.stage == steps.PREFLIGHT:
                raise AirflowFailException(str(e)) from e
            raise
        except steps.DagInputError as e:
            raise AirflowFailException(str(e)) from e
        return asdict(result)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def build_index(slide_ids: list[str]) -> None:
        """The index over every slide of OUT, once every slide's task has ended, failed or not;
        skipped when nothing was new and the index exists."""
        out = Path(_setting("out"))
        if not slide_ids and (out / "index.html").is_file():
            raise AirflowSkipException("no new slides: the index is current")
        steps.build_index(_setting("slideaudit_bin", "slideaudit"), out)

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def publish() -> str:
        """Publish the store's index and reports as a snapshot; skipped before the first audit."""
        out = Path(_setting("out"))
        if not (out / "index.html").is_file():
            raise AirflowSkipException(f"{out / 'index.html'} does not exist yet")
        target = Path(_setting("publish_dir", str(out / "published")))
        return str(steps.publish(out, target, get_current_context()["params"]["keep"]))

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def outcome(slide_ids: list[str], results: list[dict | None]) -> None:
        """Fail, after publishing, when a slide was not audited or met --fail-on."""
        if not slide_ids:
            raise AirflowSkipException("no new slides")
        message = steps.outcome_message(slide_ids, [r for r in results if r], Path(_setting("out")))
        if message:
            raise AirflowFailException(message)

    slide_ids = find_new_slides()
    results = audit_slide.expand(slide_id=slide_ids)
    results >> build_index(slide_ids) >> publish() >> outcome(slide_ids, results)


slide_audit()

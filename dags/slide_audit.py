"""Scheduled audit of a slide archive: audit the new slides daily and publish the index.

Tasks: `find_new_slides` (slides of the archive without `OUT/slides/<id>/audit.json`: never
audited, or failed last time) -> `audit` (`slideaudit run ARCHIVE --model MODEL --out OUT
--only-new [--workers N] [--config FILE] [--fail-on CRITERIA]`; skipped when nothing is new) ->
`publish` (runs unless a task failed, so a snapshot missed earlier is still published) ->
`thresholds` (fails when the run met --fail-on: exit code 4).

Params (a value left empty is taken from the worker's environment variable in brackets):

- `archive` [SLIDEAUDIT_ARCHIVE]: manifest CSV (slide_id,path,label,annotation) or a folder of
  slides with their annotations beside them; read only, never written.
- `model` [SLIDEAUDIT_MODEL]: model folder (model.safetensors + config.json).
- `out` [SLIDEAUDIT_OUT]: the store; resumable, so a failed or killed run resumes next time.
- `publish_dir` [SLIDEAUDIT_PUBLISH]: where the QA team reads the reports (default OUT/published).
- `config` [SLIDEAUDIT_CONFIG]: YAML or TOML settings for `slideaudit run --config` (optional).
- `workers`: Dask workers for the run (empty: slideaudit's default).
- `fail_on`: `slideaudit run --fail-on` (review, fail or flag names, comma-separated; empty: the
  config's run.fail_on).
- `keep`: how many published snapshots to keep.
- `slideaudit_bin` [SLIDEAUDIT_BIN]: the slideaudit executable (default `slideaudit` on PATH).

Outcome: exit code 0 of `slideaudit run` = every new slide audited; 3 = completed with failures:
the DAG run still succeeds (the other slides are audited and the index lists the failures), each
failure is logged as a warning, and the `audit` task pushes the XComs `exit_code`, `audited`
(slide ids) and `failures` (their failure.json records); failed slides are retried by the next
run. 4 = completed, audit thresholds met: `audit` and `publish` succeed (the reports are
published for review) and the last task, `thresholds`, fails with a message naming each slide,
its verdict and why, so the DAG run is marked failed; its XCom `thresholds_met` lists them. Any
other exit code fails the `audit` task.

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

import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import audit_steps as steps
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

ENV = {"archive": "SLIDEAUDIT_ARCHIVE", "model": "SLIDEAUDIT_MODEL", "out": "SLIDEAUDIT_OUT",
       "publish_dir": "SLIDEAUDIT_PUBLISH", "config": "SLIDEAUDIT_CONFIG",
       "slideaudit_bin": "SLIDEAUDIT_BIN"}


def _path_param(name: str, description: str) -> Param:
    return Param("", type="string", title=name, description=f"{description} Empty: ${ENV[name]}.")


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
        """Slide ids of the archive that `slideaudit run --only-new` will audit."""
        return steps.new_slide_ids(_setting("slideaudit_bin", "slideaudit"), Path(_setting("archive")),
                                   Path(_setting("out")))

    @task
    def audit(slide_ids: list[str]) -> dict:
        """Audit the new slides; skipped when there are none."""
        if not slide_ids:
            raise AirflowSkipException("no new slides in the archive")
        result = steps.run_audit(_setting("slideaudit_bin", "slideaudit"),
                                 Path(_setting("archive")), Path(_setting("model")),
                                 Path(_setting("out")), slide_ids,
                                 get_current_context()["params"].get("workers"),
                                 _setting("config", "") or None,
                                 get_current_context()["params"].get("fail_on") or None)
        return asdict(result)

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def publish() -> str:
        """Publish the store's index and reports as a snapshot; skipped before the first audit."""
        out = Path(_setting("out"))
        if not (out / "index.html").is_file():
            raise AirflowSkipException(f"{out / 'index.html'} does not exist yet")
        target = Path(_setting("publish_dir", str(out / "published")))
        return str(steps.publish(out, target, get_current_context()["params"]["keep"]))

    @task
    def thresholds(result: dict) -> None:
        """Fail, after publishing, when the audit met --fail-on (exit code 4)."""
        message = steps.thresholds_message(result)
        if message:
            raise AirflowFailException(message)

    audited = audit(find_new_slides())
    audited >> publish() >> thresholds(audited)


slide_audit()

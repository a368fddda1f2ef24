"""The graph's shape, slide selection and per-slide failure capture, without a cluster."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import PipelineConfig
from pipeline.graph import build_graph, uses_gpu
from pipeline.runner import select
from pipeline.stages import STAGES, Context, SlideState, remove_leftovers, run_stage
from tiling.archive import SlideRecord
from tiling.store.records import load_failure

RECORDS = [SlideRecord("a", Path("/nowhere/a.svs"), (1,)), SlideRecord("b", Path("/nowhere/b.svs"), (0,))]


@pytest.mark.parametrize("gpu", [True, False])
def test_one_chain_per_slide_in_manifest_priority_and_gpu_on_encoder_tasks(tmp_path: Path, gpu: bool) -> None:
    context = Context(tmp_path, tmp_path, PipelineConfig(), sanity_slides=frozenset({"a"}))
    tasks, index = build_graph(RECORDS, context, gpu=gpu)
    token = index.key.removeprefix("index-")
    assert [t.key for t in tasks] == [f"{s}-{r.slide_id}-{token}" for r in RECORDS for s in STAGES]
    for task in tasks:
        graph = task.__dask_graph__()
        encoder = task.key.startswith(("explain-", "audit-a-"))   # audit-a: its randomisation check
        order = [r.slide_id for r in RECORDS].index(task.key.split("-")[1])
        wanted = {"priority": len(RECORDS) - order, **({"resources": {"GPU": 1}} if gpu and encoder else {})}
        assert graph.layers[task.key].annotations == wanted, task.key
        stage, slide, _ = task.key.split("-")
        previous = list(STAGES).index(stage) - 1
        assert graph.dependencies[task.key] == (
            {f"{list(STAGES)[previous]}-{slide}-{token}"} if previous >= 0 else set())
    assert index.__dask_graph__().dependencies[index.key] == {f"validate-a-{token}", f"validate-b-{token}"}
    # another graph of the same slides shares no key with this one
    other, _ = build_graph(RECORDS, Context(tmp_path, tmp_path, PipelineConfig()), gpu=gpu)
    assert not {t.key for t in tasks} & {t.key for t in other}


def test_only_new_skips_slides_with_an_audit(tmp_path: Path) -> None:
    (tmp_path / "slides" / "a").mkdir(parents=True)
    (tmp_path / "slides" / "a" / "audit.json").write_text("{}")
    (tmp_path / "slides" / "b").mkdir()
    (tmp_path / "slides" / "b" / "failure.json").write_text("{}")
    assert select(RECORDS, tmp_path, only_new=True) == (RECORDS[1:], ["a"])
    assert select(RECORDS, tmp_path, only_new=False) == (RECORDS, [])


def test_uses_gpu_follows_the_device() -> None:
    assert uses_gpu("cuda") and not uses_gpu("cpu")


def test_a_failed_stage_is_recorded_and_the_rest_pass_through(tmp_path: Path) -> None:
    ctx = Context(tmp_path, tmp_path / "model", PipelineConfig())
    state = run_stage("tile", SlideState(RECORDS[0]), ctx)
    failure = load_failure(tmp_path / "slides" / "a" / "failure.json")
    assert failure.pop("format_version") == 1 and failure == state.failure
    assert failure["stage"] == "tile" and failure["error_type"] == "SlideError"
    assert failure["slide_id"] == "a" and failure["label"] == 1
    assert failure["source_path"] == "/nowhere/a.svs" and "/nowhere/a.svs" in failure["message"]
    assert "traceback" not in failure  # an AuditError is expected, not a crash
    assert run_stage("explain", state, ctx) is state
    assert state.summary()["state"] == "failed" and state.stages == {}


def test_the_explain_stage_gets_the_run_s_model_sha256(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr("explainers.explain.explain_store", lambda *args, **kwargs: calls.append(kwargs))
    ctx = Context(tmp_path, tmp_path / "model", PipelineConfig(), model_sha256="ab" * 32)
    state = run_stage("explain", SlideState(RECORDS[0]), ctx)
    assert state.failure is None and calls == [{"model_sha256": "ab" * 32}]


def test_leftovers_of_a_killed_stage_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".maps.zarr.tmp-1234abcd").mkdir()
    (tmp_path / ".maps.zarr.tmp-1234abcd" / "zarr.json").write_text("{}")
    (tmp_path / ".maps.zarr.old-deadbeef").mkdir()
    (tmp_path / ".audit.json.tmp-00000000").write_text("{")
    (tmp_path / "maps.zarr").mkdir()
    remove_leftovers(tmp_path, "maps.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".audit.json.tmp-00000000", "maps.zarr"]

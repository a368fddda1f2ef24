"""`run_archive` end to end in the fast tier: two tiny generated slides, the session's untrained SMALL
model (`model_dir`) and the session's LocalCluster (`shared_cluster`), through the real Dask graph.

The slow `test_pipeline_run` covers a trained model, reruns with changed settings, failures and
external schedulers; this one checks, in well under a minute, that a whole run still writes every
output and that a rerun recomputes nothing. Most of its time is the cluster's workers importing
torch, great-expectations and the stages once per session (the slow tests then reuse them warm).
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import manifest_rows
from pipeline.cache import Ledger, signature
from pipeline.config import load_config
from pipeline.runner import run_archive
from tiling.samples.archives import write_sample_archive
from tiling.store import RUN_MANIFEST
from tiling.store.records import load_audit

SIZE = 1536  # level-0 px wide at 0.5 µm/px: a few of the SMALL model's 224 µm patches
STORES = ("patches.zarr", "explain.zarr", "maps.zarr")
OUTPUTS = ("audit.json", "report.html", *STORES)


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manifest.csv of 2 tiny sample slides (seed 5): one positive, one negative."""
    return write_sample_archive(tmp_path_factory.mktemp("tiny"), slides=2, seed=5, size=SIZE)


def signatures(out: Path) -> dict[str, list[int] | None]:
    """[size, mtime_ns, inode] of every file under OUT (the stores' chunks and stamps, the reports,
    audit.csv, the index), but for the run's own records, which every run rewrites: run.json and the ledger."""
    records = {out / RUN_MANIFEST, Ledger(out).path}
    return {str(p.relative_to(out)): signature(p) for p in sorted(out.rglob("*")) if p.is_file() and p not in records}


def test_two_tiny_slides_run_end_to_end_and_a_rerun_is_a_no_op(tiny_archive: Path, model_dir: Path,
                                                                shared_cluster: str, tmp_path: Path) -> None:
    config = load_config(overrides={"run.scheduler": shared_cluster, "stitch.max_side": 256,
                                    "impressions.steps": 0, "explain.device": "cpu"})
    out = tmp_path / "out"
    result = run_archive(tiny_archive, model_dir, out, config)
    assert result.exit_code == 0, [s.failure for s in result.failed]
    assert not result.failed and not result.skipped
    slide_ids = [row["slide_id"] for row in manifest_rows(tiny_archive)]
    assert sorted(s.record.slide_id for s in result.states) == slide_ids == ["sample_000", "sample_001"]
    assert all(s.stages["explain"] == "computed" for s in result.states)

    methods = set()
    for sid in slide_ids:
        folder = out / "slides" / sid
        assert all((folder / name).exists() for name in OUTPUTS), sorted(p.name for p in folder.iterdir())
        audit = load_audit(folder)
        assert audit["verdict"] in ("PASS", "REVIEW", "FAIL") and audit["verdict_reason"]
        assert audit["slide_id"] == sid
        methods.add(tuple(audit["methods"]))
        assert sid in (folder / "report.html").read_text()
    [slide_methods] = methods
    assert "gradcam" in slide_methods and "attention" in slide_methods  # the MIL head's own map, and the CAM
    with open(result.audit_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["slide_id"], r["method"]) for r in rows) == sorted(
        (sid, m) for sid in slide_ids for m in slide_methods)  # one row per slide x method
    index = result.index.read_text()
    assert all(f"slides/{sid}/report.html" in index for sid in slide_ids)
    assert result.manifest.is_file()

    before = signatures(out)
    assert len(before) > 20 and all(f"slides/{sid}/{name}" in before for sid in slide_ids
                                    for name in ("audit.json", "report.html", "explain.zarr/zarr.json"))
    again = run_archive(tiny_archive, model_dir, out, config)
    assert again.exit_code == 0
    assert [s.record.slide_id for s in again.current] == slide_ids  # every stage "current", none computed
    assert signatures(out) == before  # no store, report, audit.csv or index rewritten
    with open(again.audit_csv, newline="") as f:
        assert list(csv.DictReader(f)) == rows

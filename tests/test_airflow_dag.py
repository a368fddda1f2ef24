"""The Airflow DAG `dags/slide_audit.py`, run for real with `airflow dags test` in `.venv-airflow`
(built by `make airflow`) on sample slides, plus its plain-Python steps (`dags/audit_steps.py`)."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tiling.archive import read_archive
from tiling.samples.archives import write_sample_archive

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
SLIDEAUDIT = Path(sys.executable).with_name("slideaudit")


def _load_steps():
    spec = importlib.util.spec_from_file_location("audit_steps", DAGS / "audit_steps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


steps = _load_steps()


def _sha256_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- the steps, on real files --------------------------------------------------------------

def test_the_dag_lists_the_slides_the_reader_reads(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("b.svs", "a.TIF", "a.geojson", "notes.txt"):
        (folder / name).write_bytes(b"x")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,path,label\ns1,x/one.svs,1\n,x/two.tiff,0\n", encoding="utf-8-sig")
    for archive, expected in ((folder, ["a", "b"]), (manifest, ["s1", "two"])):
        assert steps.archive_slide_ids(str(SLIDEAUDIT), archive) == expected
        assert expected == [r.slide_id for r in read_archive(archive)]
    out = tmp_path / "out"
    (out / "slides" / "s1").mkdir(parents=True)
    (out / "slides" / "s1" / "audit.json").write_text("{}")
    (out / "slides" / "two").mkdir()
    (out / "slides" / "two" / "failure.json").write_text("{}")  # failed last time: new again
    assert steps.new_slide_ids(str(SLIDEAUDIT), manifest, out) == ["two"]


def test_bad_archive_is_named(tmp_path: Path) -> None:
    with pytest.raises(steps.DagInputError, match=r"missing\.csv' does not exist"):
        steps.archive_slide_ids(str(SLIDEAUDIT), tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,file\na,a.svs\n")
    with pytest.raises(steps.DagInputError, match=r"exited with code 2: Error: .*bad\.csv: no `path` column"):
        steps.archive_slide_ids(str(SLIDEAUDIT), bad)
    with pytest.raises(steps.DagInputError, match="SLIDEAUDIT_BIN"):
        steps.archive_slide_ids(str(tmp_path / "no-such-slideaudit"), bad)


def _store(out: Path, index: str) -> None:
    """A store as the pipeline leaves it: index, one slide's outputs, a zarr, a temporary."""
    slide = out / "slides" / "s1"
    (slide / "patches.zarr").mkdir(parents=True, exist_ok=True)
    (slide / "patches.zarr" / "zarr.json").write_text("{}")
    (slide / "report.html").write_text("<html>s1</html>")
    (slide / "audit.json").write_text("{}")
    (out / "slides" / ".s2.tmp-1234").mkdir(exist_ok=True)
    (out / "index.html").write_text(index)
    (out / "audit.csv").write_text("slide_id,method\ns1,gradcam\n")


def test_publish_snapshots_atomically(tmp_path: Path) -> None:
    out, pub = tmp_path / "out", tmp_path / "pub"
    _store(out, "<html>v1</html>")
    t = [datetime(2026, 1, d, 2, 0, tzinfo=UTC) for d in (1, 2, 3, 4)]
    first = steps.publish(out, pub, keep=2, now=t[0])
    assert first == pub / "2026-01-01T020000Z"
    assert os.readlink(pub / "latest") == first.name
    assert _sha256_tree(first) == {k: v for k, v in _sha256_tree(out).items()
                                   if ".zarr" not in k and ".tmp-" not in k}
    assert sorted(_sha256_tree(first)) == ["audit.csv", "index.html", "slides/s1/audit.json",
                                           "slides/s1/report.html"]
    # unchanged store: nothing new is written
    assert steps.publish(out, pub, keep=2, now=t[1]) == first
    assert steps.snapshots(pub) == [first]
    # a new index: a new snapshot, `latest` moves, the oldest beyond `keep` is removed
    _store(out, "<html>v2</html>")
    second = steps.publish(out, pub, keep=2, now=t[1])
    _store(out, "<html>v3</html>")
    third = steps.publish(out, pub, keep=2, now=t[2])
    assert steps.snapshots(pub) == [second, third]
    assert (pub / "latest" / "index.html").read_text() == "<html>v3</html>"
    # a copy that fails leaves no snapshot, no temporary, and `latest` where it was
    _store(out, "<html>v4</html>")
    (out / "slides" / "s1" / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OSError):
        steps.publish(out, pub, keep=2, now=t[3])
    assert sorted(p.name for p in pub.iterdir()) == [second.name, third.name, "latest"]
    assert os.readlink(pub / "latest") == third.name
    with pytest.raises(steps.DagInputError, match="nothing to publish"):
        steps.publish(tmp_path / "empty", pub)


def test_run_audit_rejects_crashes(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    with pytest.raises(steps.DagInputError, match="SLIDEAUDIT_BIN"):
        steps.run_audit(str(tmp_path / "no-such-slideaudit"), archive, tmp_path, tmp_path, [])
    with pytest.raises(steps.AuditRunError, match="exited with code"):
        steps.run_audit(str(SLIDEAUDIT), archive, tmp_path / "no-model", tmp_path / "out", [])


def test_exit_4_is_a_completed_run_whose_thresholds_are_named(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    met = [{"slide_id": "s1", "verdict": "FAIL", "verdict_reason": "Prediction wrong: predicted class 1, label 0",
            "met": ["fail"]}]
    (out / "run.json").write_text(json.dumps({"format_version": 1, "thresholds_met": met}))
    fake = tmp_path / "slideaudit"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\nexit 4\n")
    fake.chmod(0o755)
    result = steps.run_audit(str(fake), tmp_path, tmp_path, out, ["s1"], fail_on="fail")
    assert (result.exit_code, result.thresholds_met) == (4, met)
    assert "--fail-on fail" in (tmp_path / "args").read_text()
    message = steps.thresholds_message(dataclasses.asdict(result))
    assert message == ("audit thresholds met (--fail-on) on 1 slide(s):\n"
                       "s1: FAIL (fail): Prediction wrong: predicted class 1, label 0")
    assert steps.thresholds_message({"thresholds_met": []}) is None


# ---- the DAG, run by Airflow ---------------------------------------------------------------

@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the Airflow CLI: AIRFLOW_HOME in a tmp dir with a migrated sqlite db,
    the dags folder at `dags/`, and SLIDEAUDIT_BIN at this venv's `slideaudit`."""
    if not AIRFLOW.is_file():
        pytest.fail(f"{AIRFLOW} is missing: build Airflow's venv with `make airflow`")
    home = tmp_path_factory.mktemp("airflow_home")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "SLIDEAUDIT_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", SLIDEAUDIT_BIN=str(SLIDEAUDIT))
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    return env


def _xcom(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def _dags_test(env: dict[str, str], **conf: object) -> dict:
    """`airflow dags test slide_audit -c CONF`; the run's state, task states and XComs."""
    proc = subprocess.run([str(AIRFLOW), "dags", "test", "slide_audit", "-c", json.dumps(conf)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"airflow dags test failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
    try:
        run_id, state = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id='slide_audit' "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
        tasks = dict(db.execute("SELECT task_id, state FROM task_instance WHERE run_id=?", (run_id,)))
        xcom = {(t, k): _xcom(v) for t, k, v in
                db.execute("SELECT task_id, key, value FROM xcom WHERE run_id=?", (run_id,))}
        schedule = db.execute("SELECT timetable_summary, max_active_runs FROM dag "
                              "WHERE dag_id='slide_audit'").fetchone()
    finally:
        db.close()
    return {"state": state, "tasks": tasks, "xcom": xcom, "schedule": schedule}


def _broken_links(page: Path) -> list[str]:
    """Relative links of an HTML page that point at no file (but the viewer's: `slideaudit serve` makes it)."""
    links = re.findall(r'(?:href|src)="([^"#:]+)"', page.read_text(encoding="utf-8"))
    return [link for link in links if not (page.parent / link).exists() and not link.endswith("/viewer/")]


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("slides/*/audit.json")}


def _add_broken_slide(manifest: Path) -> Path:
    """A manifest beside `manifest` listing its slides plus `broken`, a text file named .svs."""
    (manifest.parent / "broken.svs").write_text("not a slide")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    more = manifest.with_name("manifest-with-broken.csv")
    with open(more, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*rows, {"slide_id": "broken", "path": "broken.svs", "label": "0"}])
    return more


@pytest.mark.airflow
@pytest.mark.slow
def test_dag_audits_new_slides_and_publishes(airflow_env: dict[str, str], model_dir: Path, tmp_path: Path) -> None:
    archive, out, pub = (tmp_path / n for n in ("archive", "out", "pub"))
    manifest = write_sample_archive(archive, slides=2, seed=3, size=2048)
    good = sorted(r.slide_id for r in read_archive(manifest))
    with_broken = _add_broken_slide(manifest)
    before = _sha256_tree(archive)
    config = tmp_path / "config.yaml"  # what the DAG test needs of a run: no class impressions, small maps
    config.write_text("impressions: {steps: 0}\nstitch: {max_side: 256}\nexplain: {methods: [gradcam]}\n")
    conf = {"archive": str(with_broken), "model": str(model_dir), "out": str(out),
            "publish_dir": str(pub), "workers": 1, "config": str(config)}

    # 1. all new, one slide corrupt: the run completes with failures (exit 3); the DAG
    # succeeds, reports the failure and publishes the index
    run = _dags_test(airflow_env, **conf)
    assert run["schedule"] == ("0 0 * * *", 1)  # daily, one run at a time
    assert run["state"] == "success"
    assert run["tasks"] == {"find_new_slides": "success", "audit": "success", "publish": "success",
                            "thresholds": "success"}
    assert run["xcom"][("find_new_slides", "return_value")] == [r.slide_id for r in read_archive(with_broken)]
    assert run["xcom"][("audit", "exit_code")] == 3
    failures = run["xcom"][("audit", "failures")]
    assert [(f["slide_id"], f["stage"]) for f in failures] == [("broken", "preflight")]  # before Dask
    assert sorted(_mtimes(out)) == good
    snapshot = Path(run["xcom"][("publish", "return_value")])
    assert (pub / "latest").resolve() == snapshot
    assert (snapshot / "index.html").read_bytes() == (out / "index.html").read_bytes()
    assert (snapshot / "audit.csv").read_bytes() == (out / "audit.csv").read_bytes()
    assert all((snapshot / "slides" / i / "report.html").is_file() for i in good)
    assert (snapshot / "slides" / "broken" / "failure.json").is_file()
    assert "broken" in (snapshot / "index.html").read_text()
    assert _broken_links(snapshot / "index.html") == []
    assert not list(pub.rglob("*.zarr"))
    assert _sha256_tree(archive) == before

    # 2. the good slides again: nothing new, the audit is skipped, nothing is rewritten and the
    # published snapshot stays
    audited = _mtimes(out)
    run = _dags_test(airflow_env, **{**conf, "archive": str(manifest)})
    assert run["state"] == "success"
    assert run["tasks"] == {"find_new_slides": "success", "audit": "skipped", "publish": "success",
                            "thresholds": "skipped"}
    assert run["xcom"][("find_new_slides", "return_value")] == []
    assert Path(run["xcom"][("publish", "return_value")]) == snapshot
    assert _mtimes(out) == audited
    assert steps.snapshots(pub) == [snapshot]
    assert _sha256_tree(archive) == before

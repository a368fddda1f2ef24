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


def test_one_slide_archive_is_read_as_the_whole_one(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("a.svs", "a.geojson", "a.b.svs", "b.svs", "b.xml"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "x").mkdir()
    for name in ("one.svs", "one.geojson", "two.tiff"):
        (tmp_path / "x" / name).write_bytes(b"x")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,path,label,annotation,annotation_downsample,site\n"
                        "s1,x/one.svs,1,x/one.geojson,32,Leeds\n,x/two.tiff,0,,,York\n", encoding="utf-8-sig")
    before = _sha256_tree(tmp_path)
    for archive, slide_id in ((folder, "a"), (folder, "b"), (manifest, "s1"), (manifest, "two")):
        whole = {r.slide_id: r for r in read_archive(archive)}
        subset = tmp_path / f"subset-{archive.name}-{slide_id}"
        subset.mkdir()
        one = read_archive(steps.one_slide_archive(archive, slide_id, subset))
        assert [r.slide_id for r in one] == [slide_id]
        assert one[0].path.resolve() == whole[slide_id].path.resolve()
        assert [p.resolve() for p in one[0].annotations] == [p.resolve() for p in whole[slide_id].annotations]
        record, cells = one[0], {k: v for k, v in one[0].columns if k not in ("path", "annotation")}
        assert (record.labels, record.mpp, record.annotation_downsample, cells) == (
            whole[slide_id].labels, whole[slide_id].mpp, whole[slide_id].annotation_downsample,
            {k: v for k, v in whole[slide_id].columns if k not in ("path", "annotation")})
    with pytest.raises(steps.DagInputError, match="no slide 'gone'"):
        steps.one_slide_archive(manifest, "gone", tmp_path)
    assert _sha256_tree(tmp_path) == {**before, **{k: v for k, v in _sha256_tree(tmp_path).items() if "subset-" in k}}


def test_run_slide_names_what_to_fix(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,path\ns1,s1.svs\n")
    with pytest.raises(steps.DagInputError, match="SLIDEAUDIT_BIN"):
        steps.run_slide(str(tmp_path / "no-such-slideaudit"), manifest, "s1", tmp_path, tmp_path)
    with pytest.raises(steps.DagInputError,
                       match=r"(?s)exited with code 2 \(a setting to fix\): .*'--model': .*no-model' does not exist"):
        steps.run_slide(str(SLIDEAUDIT), manifest, "s1", tmp_path / "no-model", tmp_path / "out")


def test_exit_4_is_an_audited_slide_whose_thresholds_are_named(tmp_path: Path) -> None:
    met = [{"slide_id": "s1", "verdict": "FAIL", "verdict_reason": "Prediction wrong: predicted class 1, label 0",
            "met": ["fail"]}]
    summary = {"verdicts": {"FAIL": 1}, "failures": [], "thresholds_met": met, "exit_code": 4}
    fake = tmp_path / "slideaudit"  # what `slideaudit run --json` prints and exits with when --fail-on is met
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\necho '{json.dumps(summary)}'\nexit 4\n")
    fake.chmod(0o755)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,path\ns1,s1.svs\n")
    result = steps.run_slide(str(fake), manifest, "s1", tmp_path, tmp_path / "out", fail_on="fail")
    assert result == steps.SlideResult("s1", 4, "FAIL", met)
    args = (tmp_path / "args").read_text()
    assert "--fail-on fail" in args and "--wait --json" in args
    failed = tmp_path / "out" / "slides" / "s2"
    failed.mkdir(parents=True)
    (failed / "failure.json").write_text(json.dumps({"slide_id": "s2", "stage": "tile", "message": "disk full"}))
    message = steps.outcome_message(["s1", "s2", "s3"], [dataclasses.asdict(result)], tmp_path / "out")
    assert message == ("s2: not audited: failed at stage tile: disk full\n"
                       "s3: not audited: no failure.json (see its task's log)\n"
                       "s1: FAIL met --fail-on (fail): Prediction wrong: predicted class 1, label 0")
    assert steps.outcome_message(["s1"], [{"slide_id": "s1", "thresholds_met": []}], tmp_path / "out") is None


# ---- the DAG, run by Airflow ---------------------------------------------------------------

@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the Airflow CLI: AIRFLOW_HOME in a tmp dir with a migrated sqlite db and
    the pool `slideaudit_gpu`, the dags folder at `dags/`, SLIDEAUDIT_BIN at this venv's
    `slideaudit`, and SLIDEAUDIT_ON_FAILURE at a hook that appends each failed task's id, map
    index and error to FAILED_LOG (a JSON line each)."""
    if not AIRFLOW.is_file():
        pytest.fail(f"{AIRFLOW} is missing: build Airflow's venv with `make airflow`")
    home = tmp_path_factory.mktemp("airflow_home")
    (home / "failure_hook.py").write_text(
        "import json, os\n"
        "def record(context):\n"
        "    ti = context['task_instance']\n"
        "    with open(os.environ['FAILED_LOG'], 'a') as f:\n"
        "        f.write(json.dumps([ti.task_id, ti.map_index, str(context.get('exception'))]) + '\\n')\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "SLIDEAUDIT_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", SLIDEAUDIT_BIN=str(SLIDEAUDIT),
               PYTHONPATH=str(home), SLIDEAUDIT_ON_FAILURE="failure_hook:record",
               FAILED_LOG=str(home / "failed.jsonl"))
    for cmd in (["db", "migrate"], ["pools", "set", "slideaudit_gpu", "1", "slideaudit: one slide per GPU"]):
        subprocess.run([str(AIRFLOW), *cmd], env=env, check=True, capture_output=True, timeout=300)
    return env


def _xcom(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def _dags_test(env: dict[str, str], **conf: object) -> dict:
    """`airflow dags test slide_audit -c CONF`; the run's state, its task instances' states
    ({task_id: state}, {(task_id, rendered map index): state} for mapped ones), their pools and
    tries, and XComs; the failure hook's records of the run."""
    failed_log = Path(env["FAILED_LOG"])
    failed_log.unlink(missing_ok=True)
    proc = subprocess.run([str(AIRFLOW), "dags", "test", "slide_audit", "-c", json.dumps(conf)],
                          env=env, capture_output=True, text=True, timeout=600)
    db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
    try:
        run_id, state = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id='slide_audit' "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
        rows = db.execute("SELECT task_id, map_index, rendered_map_index, state, pool, max_tries "
                          "FROM task_instance WHERE run_id=?", (run_id,)).fetchall()
        xcom = {(t, i, k): _xcom(v) for t, i, k, v in
                db.execute("SELECT task_id, map_index, key, value FROM xcom WHERE run_id=?", (run_id,))}
        schedule = db.execute("SELECT timetable_summary, max_active_runs FROM dag "
                              "WHERE dag_id='slide_audit'").fetchone()
    finally:
        db.close()
    tasks = {(t if i < 0 else (t, name)): s for t, i, name, s, _, _ in rows}
    log = f"airflow dags test exited with code {proc.returncode}:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    return {"state": state, "tasks": tasks, "xcom": xcom, "schedule": schedule, "log": log,
            "pools": {t: (pool, tries) for t, i, _, _, pool, tries in rows if i >= 0},
            "failed": [json.loads(line) for line in failed_log.read_text().splitlines()]
            if failed_log.is_file() else []}


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
def test_dag_audits_each_new_slide_in_its_task_and_publishes(airflow_env: dict[str, str], model_dir: Path,
                                                              tmp_path: Path) -> None:
    archive, out, pub = (tmp_path / n for n in ("archive", "out", "pub"))
    manifest = write_sample_archive(archive, slides=1, seed=3, size=2048)
    [good] = [r.slide_id for r in read_archive(manifest)]
    with_broken = _add_broken_slide(manifest)
    before = _sha256_tree(archive)
    config = tmp_path / "config.yaml"  # what the DAG test needs of a run: no class impressions, small maps
    config.write_text("impressions: {steps: 0}\nstitch: {max_side: 256}\nexplain: {methods: [gradcam]}\n")
    conf = {"archive": str(with_broken), "model": str(model_dir), "out": str(out),
            "publish_dir": str(pub), "workers": 1, "config": str(config)}

    # 1. two new slides, one corrupt: its task fails at once (bad input: no retry), the other's
    # succeeds, the index is built and published all the same, and the last task fails the run
    # naming the slide
    run = _dags_test(airflow_env, **conf)
    assert run["schedule"] == ("0 0 * * *", 1), run["log"]  # daily, one run at a time
    assert run["tasks"] == {"find_new_slides": "success", ("audit_slide", good): "success",
                            ("audit_slide", "broken"): "failed", "build_index": "success",
                            "publish": "success", "outcome": "failed"}, run["log"]
    assert run["state"] == "failed"
    assert set(run["pools"].values()) == {("slideaudit_gpu", 2)}  # the pool, and max_tries = retries
    assert run["xcom"][("find_new_slides", -1, "return_value")] == [good, "broken"]
    [result] = [v for (t, _, k), v in run["xcom"].items() if (t, k) == ("audit_slide", "return_value")]
    assert result["slide_id"] == good and result["exit_code"] == 0
    assert result["verdict"] == json.loads((out / "slides" / good / "audit.json").read_text())["verdict"]
    failure = json.loads((out / "slides" / "broken" / "failure.json").read_text())
    assert failure["stage"] == "preflight"  # before Dask
    hooked = {(task, index): error for task, index, error in run["failed"]}
    assert sorted(hooked) == [("audit_slide", 1), ("outcome", -1)]  # the hook saw both failures
    assert "slide broken failed at stage preflight" in hooked[("audit_slide", 1)]
    assert "broken: not audited: failed at stage preflight" in hooked[("outcome", -1)]
    assert sorted(_mtimes(out)) == [good]
    snapshot = Path(run["xcom"][("publish", -1, "return_value")])
    assert (pub / "latest").resolve() == snapshot
    assert (snapshot / "index.html").read_bytes() == (out / "index.html").read_bytes()
    assert (snapshot / "audit.csv").read_bytes() == (out / "audit.csv").read_bytes()
    assert f"\n{good}," in (out / "audit.csv").read_text()
    assert (snapshot / "slides" / good / "report.html").is_file()
    assert (snapshot / "slides" / "broken" / "failure.json").is_file()
    assert "broken" in (snapshot / "index.html").read_text()
    assert _broken_links(snapshot / "index.html") == []
    assert not list(pub.rglob("*.zarr"))
    assert _sha256_tree(archive) == before

    # 2. the good slide again: nothing new, no slide task, the index stays, nothing is rewritten
    # and the published snapshot stays
    audited = _mtimes(out)
    run = _dags_test(airflow_env, **{**conf, "archive": str(manifest)})
    assert run["tasks"] == {"find_new_slides": "success", "audit_slide": "skipped", "build_index": "skipped",
                            "publish": "success", "outcome": "skipped"}, run["log"]
    assert run["state"] == "success"
    assert run["xcom"][("find_new_slides", -1, "return_value")] == []
    assert Path(run["xcom"][("publish", -1, "return_value")]) == snapshot
    assert _mtimes(out) == audited
    assert steps.snapshots(pub) == [snapshot]
    assert run["failed"] == []
    assert _sha256_tree(archive) == before

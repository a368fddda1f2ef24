"""Running archives unattended: preflight, plain progress and the JSON summary, the lock on OUT,
no-op reruns (nothing re-hashed, no cluster), a changed slide recomputed, a full disk.

One archive of 4 rows, 2 of them bad: sample_000 and sample_001 as written, "missing" (its
file does not exist) and "garbled" (sample_002 with a malformed GeoJSON). The first run is a
`slideaudit run` subprocess whose stderr is a pipe (not a terminal); while it runs, a second run
on the same OUT is started. All tests are `slow` (a LocalCluster of 1 worker).
"""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

import pipeline.cache
import pipeline.graph
import pipeline.runner
import tiling.tile
from conftest import manifest_rows
from pipeline.config import load_config
from pipeline.errors import EXIT_SLIDES_FAILED, EXIT_USAGE, DiskFull, OutLocked
from pipeline.progress import Progress
from pipeline.runner import locked, run_archive
from pipeline.stages import STAGES, Context, SlideState, run_stage
from tiling.archive import SlideRecord
from tiling.store import FAILURE, LOCK

SLIDEAUDIT = Path(sys.executable).parent / "slideaudit"
CONFIG = "stitch: {max_side: 256}\nrun: {workers: 1}\nimpressions: {steps: 2}\nexplain: {methods: [gradcam]}\n"
GOOD = ("sample_000", "sample_001")


@dataclass
class FirstRun:
    manifest: Path
    out: Path
    code: int
    stdout: str
    stderr: str
    second: subprocess.CompletedProcess


def bad_archive(sample_archive: Path, root: Path) -> Path:
    """manifest.csv: sample_000, sample_001 (a copy in `root`, to be changed), a missing slide
    file, a malformed annotation."""
    rows = manifest_rows(sample_archive)[:3]
    shutil.copy(rows[1]["path"], root / "sample_001.tiff")
    rows[1]["path"] = str(root / "sample_001.tiff")
    shutil.copy(rows[2]["path"], root / "garbled.tiff")
    (root / "garbled.geojson").write_text('{"type": "FeatureCollection", "features": [')
    rows[2].update(slide_id="garbled", path=str(root / "garbled.tiff"), annotation=str(root / "garbled.geojson"))
    rows.append({**rows[0], "slide_id": "missing", "path": str(root / "gone.tiff")})
    for row in rows:
        row["annotation_xml"] = ""  # one annotation file per slide
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide_id", "path", "label", "annotation"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


def lock_held(out: Path) -> bool:
    try:
        with FileLock(out / LOCK, timeout=0):
            return False
    except Timeout:
        return True


@pytest.fixture(scope="module")
def first_run(sample_archive: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """The first run (subprocess, --json, stderr a pipe), and a second run started while it held OUT."""
    root = tmp_path_factory.mktemp("ops")
    manifest, out = bad_archive(sample_archive, root), root / "out"
    (root / "config.yaml").write_text(CONFIG)
    proc = subprocess.Popen([SLIDEAUDIT, "run", manifest, "--model", model_dir, "--out", out, "--json",
                             "--config", root / "config.yaml"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / LOCK).exists() or not lock_held(out):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    second = subprocess.run([SLIDEAUDIT, "run", manifest, "--model", model_dir, "--out", out],
                            capture_output=True, text=True, timeout=300)
    stdout, stderr = proc.communicate(timeout=900)
    return FirstRun(manifest, out, proc.returncode, stdout, stderr, second)


@pytest.mark.slow
def test_a_second_run_on_the_same_out_exits_2_and_names_the_lock(first_run: FirstRun) -> None:
    assert first_run.second.returncode == EXIT_USAGE, first_run.second.stderr
    assert "another `slideaudit run` is writing here" in first_run.second.stderr
    assert "--wait" in first_run.second.stderr
    assert not lock_held(first_run.out)


@pytest.mark.slow
def test_preflight_names_both_bad_slides_before_the_cluster_and_audits_the_good(first_run: FirstRun) -> None:
    assert first_run.code == EXIT_SLIDES_FAILED, first_run.stderr
    err = first_run.stderr
    assert err.startswith("slideaudit: auditing")
    cluster = err.index("Dask dashboard: http://127.0.0.1:")  # this machine only
    assert "gone.tiff" in err[:cluster] and "garbled.geojson" in err[:cluster]
    summary = json.loads(first_run.stdout)
    assert summary["slides"] == {"current": 0, "recomputed": 2, "failed": 2, "skipped": 0}
    assert {(tuple(f["slide_ids"]), f["stage"], f["count"]) for f in summary["failures"]} == {
        (("missing",), "preflight", 1), (("garbled",), "preflight", 1)}
    assert "Traceback" not in err  # nor at the cluster's shutdown
    assert set(summary["stage_seconds"]) == set(STAGES)
    assert sum(summary["verdicts"].values()) == 2
    for sid in GOOD:
        assert (first_run.out / "slides" / sid / "report.html").is_file()


@pytest.mark.slow
def test_plain_progress_when_stderr_is_not_a_terminal(first_run: FirstRun) -> None:
    assert "\r" not in first_run.stderr
    for sid in GOOD:
        for stage in STAGES:
            assert f"] {sid} {stage} computed" in first_run.stderr or f"] {sid} {stage} checked" in first_run.stderr


def tree_stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_a_rerun_hashes_nothing_starts_no_cluster_and_a_changed_slide_is_recomputed(
        first_run: FirstRun, model_dir: Path, shared_cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out = first_run.out
    config = load_config(first_run.manifest.parent / "config.yaml", {"run.scheduler": shared_cluster})
    before = {sid: tree_stats(out / "slides" / sid) for sid in GOOD}
    index = (out / "index.html").stat().st_mtime_ns

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing to hash or compute on a no-op rerun")

    with monkeypatch.context() as patched:
        for module, name in ((pipeline.cache, "file_sha256"), (tiling.tile, "file_sha256"),
                             (pipeline.graph, "open_client")):
            patched.setattr(module, name, refuse)
        again = run_archive(first_run.manifest, model_dir, out, config)
    assert [s.record.slide_id for s in again.current] == list(GOOD)
    assert {s.record.slide_id: s.failure["stage"] for s in again.failed} == {"missing": "preflight",
                                                                             "garbled": "preflight"}
    assert {sid: tree_stats(out / "slides" / sid) for sid in GOOD} == before
    assert (out / "index.html").stat().st_mtime_ns > index  # the failures were written again

    with open(first_run.manifest, newline="") as f:
        first, second = list(csv.DictReader(f))[:2]
    shutil.copy(first["path"], second["path"])  # sample_001 gets new content
    changed = run_archive(first_run.manifest, model_dir, out, config)
    states = {s.record.slide_id: s.stages for s in changed.states}
    assert states["sample_000"] == dict.fromkeys(STAGES, "current")
    assert states["sample_001"]["tile"] == states["sample_001"]["report"] == "computed"
    assert tree_stats(out / "slides" / "sample_000") == before["sample_000"]


def test_a_full_disk_stops_the_run_instead_of_failing_the_slide(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Monkeypatched: the stitch stage's writer raises OSError(ENOSPC); the test below fills a real tmpfs."""
    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "maps.zarr"))

    monkeypatch.setitem(STAGES, "stitch", (full, "maps.zarr"))
    ctx = Context(tmp_path, tmp_path, load_config())
    state = run_stage("stitch", SlideState(SlideRecord("s", tmp_path / "s.tiff")), ctx)
    assert state.failure is not None and state.failure["error_type"] == DiskFull.__name__
    assert "no space left" in state.failure["message"] and "free space and run again" in state.failure["message"]
    assert not (tmp_path / "slides" / "s" / FAILURE).exists()  # no fault of the slide



@pytest.mark.parametrize("mode", ["plain", "bar"])
def test_progress_counts_slides_and_shows_their_stage(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = SlideRecord("a", Path("a.tiff")), SlideRecord("b", Path("b.tiff"))
    progress = Progress(mode, ["a", "b"], list(STAGES))
    progress.advance("tile", SlideState(a, {"tile": "computed"}, {"tile": 1.0}))
    failed = SlideState(b, failure={"stage": "tile", "message": "not a slide"})
    progress.advance("tile", failed)
    progress.advance("explain", failed)  # a failed slide's state passed through: no event
    progress.close()
    assert progress.stage == {"a": "explain"}
    err = capsys.readouterr().err
    if mode == "plain":
        assert err.splitlines() == ["slideaudit: [0/2] a tile computed in 1.0 s",
                                    "slideaudit: [1/2] b tile FAILED: not a slide"]
    else:
        assert "1/2" in err and "a explain" in err and "\r" in err


@pytest.mark.slow
def test_a_full_tmpfs_stops_the_run_with_one_message_and_a_rerun_resumes(
        sample_archive: Path, model_dir: Path, tmp_path: Path) -> None:
    """A real full disk: OUT is a 2 MiB tmpfs (in a private mount namespace) for two slides that
    need about 2.6 MiB; then it is enlarged and the run repeated."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("no mount namespace here (unshare -rm failed): cannot mount a small tmpfs")
    rows = manifest_rows(sample_archive)[:2]
    manifest = tmp_path / "two.csv"
    manifest.write_text("slide_id,path,label\n" + "".join(f"{r['slide_id']},{r['path']},{r['label']}\n" for r in rows))
    (tmp_path / "config.yaml").write_text(CONFIG)
    out = tmp_path / "out"
    out.mkdir()
    run = f"{SLIDEAUDIT} run {manifest} --model {model_dir} --out {out} --config {tmp_path / 'config.yaml'}"
    script = (f"mount -t tmpfs -o size=2m tmpfs {out} || exit 99\n"
              f"{run} > {tmp_path}/full.log 2>&1; echo $? > {tmp_path}/full.rc\n"
              f"mount -o remount,size=64m {out}\n"
              f"{run} > {tmp_path}/resume.log 2>&1; echo $? > {tmp_path}/resume.rc\n"
              f"find {out} -name '.*.tmp-*' -o -name '.*.old-*' > {tmp_path}/leftovers.txt\n"
              f"cp {out}/audit.csv {tmp_path}/audit.csv\n")
    assert subprocess.run(["unshare", "-rm", "sh", "-c", script], timeout=900).returncode == 0
    full = (tmp_path / "full.log").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == str(EXIT_SLIDES_FAILED), full
    assert full.count("free space and run again") == 1 and "Traceback" not in full, full
    assert (tmp_path / "resume.rc").read_text().strip() == "0", (tmp_path / "resume.log").read_text()
    assert (tmp_path / "leftovers.txt").read_text() == ""
    assert len((tmp_path / "audit.csv").read_text().splitlines()) == 1 + 2 * 2  # header + slide x (attention, gradcam)


def test_with_wait_a_run_waits_for_the_lock_another_process_holds(tmp_path: Path) -> None:
    hold = (f"import time; from filelock import FileLock\nwith FileLock({str(tmp_path / LOCK)!r}):\n"
            " print('held', flush=True); time.sleep(1.5)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    with pytest.raises(OutLocked, match="--wait"), locked(tmp_path, wait=False):
        pass
    start = time.monotonic()
    with locked(tmp_path, wait=True):
        assert time.monotonic() - start > 0.5 and holder.wait(timeout=10) == 0  # it waited for the holder
        assert lock_held(tmp_path)
    assert not lock_held(tmp_path)


"""`slideaudit run` end to end on real sample slides, a real trained model and real Dask clusters.

One reference run (LocalCluster, 2 worker processes) is shared; the other tests copy its OUT or
run afresh (the SIGKILL test on its first two slides) and compare their audit.csv with its, byte
for byte. The reruns use the session's `shared_cluster` through `run.scheduler` (starting a
cluster costs more than a rerun), in this process. All but the usage test are `slow`.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner

from conftest import manifest_rows
from explainers.models.config import ModelConfig, read_config
from explainers.models.io import build_model, save_model
from pipeline.cli import main
from pipeline.cluster import open_client
from pipeline.config import PipelineConfig, RunSettings, load_config
from pipeline.runner import RunResult, at_model_footprint, run_archive
from tiling.store import file_sha256, seal_store
from tiling.store.maps import open_maps
from tiling.store.records import load_manifest

BIN = Path(sys.executable).parent
SLIDEAUDIT, DASK = BIN / "slideaudit", BIN / "dask"
# small maps keep the audit stage quick; 2 ascent steps draw the class impressions the reports show
CONFIG = "stitch: {max_side: 512}\nrun: {workers: 2}\nimpressions: {steps: 2}\n"
STAGE_NAMES = ["tile", "explain", "stitch", "audit", "report", "validate"]


@dataclass
class Workspace:
    root: Path
    manifest: Path
    model: Path
    config: Path
    archive_hashes: dict[str, str]

    def archive_unchanged(self) -> bool:
        return tree_hashes(self.manifest.parent) == self.archive_hashes


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[Path]:
    """Temporary or replaced outputs that atomic_path leaves only when killed."""
    return [p for p in out.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def run_json(out: Path) -> dict:
    return load_manifest(out)


@pytest.fixture(scope="module")
def workspace(sample_archive: Path, sample_stores: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A small model trained on the 4 sample slides, and the run's config file."""
    from explainers.train import TrainConfig, train

    root = tmp_path_factory.mktemp("pipeline")
    hashes = tree_hashes(sample_archive.parent)
    train(sample_archive, root / "model", TrainConfig(epochs=2, bag_size=32), stores=sample_stores)
    (root / "config.yaml").write_text(CONFIG)
    return Workspace(root, sample_archive, root / "model", root / "config.yaml", hashes)


@pytest.fixture(scope="module")
def reference(workspace: Workspace) -> RunResult:
    """The uninterrupted run: a LocalCluster of 2 workers, in this process."""
    return run_archive(workspace.manifest, workspace.model, workspace.root / "reference",
                       load_config(workspace.config))


def config_on(workspace: Workspace, cluster: str, **settings: object) -> PipelineConfig:
    """The run's config, with `settings` changed, on the shared cluster (not part of its hash)."""
    return load_config(workspace.config, {**settings, "run.scheduler": cluster})


def copy_of(reference: RunResult, dest: Path) -> Path:
    shutil.copytree(reference.out, dest)
    return dest


def first_two(workspace: Workspace, dest: Path) -> Path:
    """A manifest at `dest` of the archive's first two slides (a fresh run audits them in half the time)."""
    rows = manifest_rows(workspace.manifest)[:2]
    with open(dest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dest


def reference_csv(reference: RunResult, manifest: Path) -> bytes:
    """The reference run's audit.csv with only the rows of `manifest`'s slides."""
    slide_ids = {row["slide_id"].encode() for row in manifest_rows(manifest)}
    header, *rows = (reference.out / "audit.csv").read_bytes().splitlines(keepends=True)
    return header + b"".join(row for row in rows if row.split(b",")[0] in slide_ids)


@pytest.mark.slow
def test_local_cluster_run(workspace: Workspace, reference: RunResult) -> None:
    out = reference.out
    assert reference.exit_code == 0 and not reference.failed and not reference.skipped
    manifest = run_json(out)
    model = read_config(workspace.model)  # run.json records the config as run: at the model's footprint
    assert manifest["config_hash"] == at_model_footprint(load_config(workspace.config), model.mpp, model.patch).hash()
    assert manifest["config"]["tile"]["mpp"] == model.mpp and manifest["config"]["tile"]["patch"] == model.patch
    assert manifest["counts"] == {"done": 4} and manifest["finished"]
    for slide in manifest["slides"]:
        assert slide["state"] == "done"
        assert list(slide["stages"]) == STAGE_NAMES
        assert all(slide["stages"][s] == "computed" for s in STAGE_NAMES[:-1]), slide
    rows = (out / "audit.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2  # header + slide x (attention, gradcam)
    for sid in ("sample_000", "sample_001", "sample_002", "sample_003"):
        folder = out / "slides" / sid
        assert {p.name for p in folder.iterdir()} == {
            "patches.zarr", "explain.zarr", "maps.zarr", "audit.json", "report.html", "focus.geojson",
            "tiles.geojson", "thumbnail.jpg"}
        assert f"slides/{sid}/report.html" in (out / "index.html").read_text()
        report = (folder / "report.html").read_text()
        assert report.count('alt="class impression of') == 2  # what the model learnt, per class
    [cache] = (out / "cache" / "models").iterdir()  # one model
    assert sorted(p.suffix for p in (cache / "impressions").iterdir()) == [".json", ".png", ".png"]
    assert not leftovers(out)
    assert workspace.archive_unchanged()


def test_the_runs_own_workers_run_without_dasks_profiler() -> None:
    """Its per-second profiles grew each worker by ~1 MiB a slide on a 1,000-slide archive
    (pipeline.cluster.WORKER_CONFIG); the client's own config is left as it was."""
    with open_client(RunSettings(workers=1)) as client:
        profiling = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    assert list(profiling.values()) == [False]
    assert dask.config.get("distributed.worker.profile.enabled") is True


@pytest.mark.slow
def test_rerun_skips_and_a_changed_setting_recomputes_only_what_follows(
        workspace: Workspace, reference: RunResult, shared_cluster: str, tmp_path: Path) -> None:
    out = copy_of(reference, tmp_path / "out")
    again = run_archive(workspace.manifest, workspace.model, out, config_on(workspace, shared_cluster))
    assert again.exit_code == 0
    for state in again.states:
        assert [state.stages[s] for s in ("tile", "explain", "stitch", "audit")] == ["current"] * 4
    assert (out / "audit.csv").read_bytes() == (reference.out / "audit.csv").read_bytes()

    changed = run_archive(workspace.manifest, workspace.model, out,
                          config_on(workspace, shared_cluster, **{"stitch.max_side": 384}))
    for state in changed.states:
        assert state.stages["tile"] == state.stages["explain"] == "current"
        assert state.stages["stitch"] == state.stages["audit"] == "computed"
    assert run_json(out)["config_hash"] != run_json(reference.out)["config_hash"]
    shape = open_maps(out / "slides" / "sample_000").tissue.shape
    assert max(shape) <= 384
    assert workspace.archive_unchanged()


@pytest.mark.slow
def test_only_new_audits_missing_slides_and_indexes_all(
        workspace: Workspace, reference: RunResult, shared_cluster: str, tmp_path: Path) -> None:
    out = copy_of(reference, tmp_path / "out")
    for name in ("audit.json", "report.html"):
        (out / "slides" / "sample_003" / name).unlink()
    (out / "index.html").unlink()
    result = run_archive(workspace.manifest, workspace.model, out,
                         config_on(workspace, shared_cluster, **{"run.group_by": "ink"}), only_new=True)
    assert result.skipped == ["sample_000", "sample_001", "sample_002"]
    assert [s.record.slide_id for s in result.states] == ["sample_003"]
    assert result.states[0].stages["audit"] == "computed"
    assert result.states[0].stages["explain"] == "current"
    assert run_json(out)["counts"] == {"done": 1, "skipped": 3}
    assert (out / "audit.csv").read_bytes() == (reference.out / "audit.csv").read_bytes()
    assert "sample_000" in (out / "index.html").read_text()
    groups = pd.read_csv(out / "subgroups.csv")  # skipped slides keep their manifest values
    assert groups[["column", "value", "slides", "labelled"]].values.tolist() == [["ink", 0, 2, 2], ["ink", 1, 2, 2]]
    (out / "subgroups.csv").unlink()
    rebuilt = CliRunner().invoke(main, ["report", str(out)])  # the index rebuilt keeps the run's subgroups
    assert rebuilt.exit_code == 0 and "(subgroups by ink)" in rebuilt.output, rebuilt.output
    assert pd.read_csv(out / "subgroups.csv").equals(groups)
    unknown = CliRunner().invoke(main, ["report", str(out), "--group-by", "scanner"])
    assert unknown.exit_code == 2 and "--group-by scanner: no such manifest column" in unknown.output


def with_importtime(command: list) -> list[str]:
    """`command` (SLIDEAUDIT, args...) run as `python -X importtime -m pipeline.cli args...`."""
    return [sys.executable, "-X", "importtime", "-m", "pipeline.cli", *map(str, command[1:])]


def imported(stderr: str) -> set[str]:
    """The modules a `with_importtime` process imported, from its stderr."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A `dask scheduler` and `dask worker` (2 processes, 1 thread each) on loopback."""
    info = tmp_path / "scheduler.json"
    with open(tmp_path / "dask.log", "w") as logs:
        procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", info], stdout=logs, stderr=logs)]
        try:
            deadline = time.monotonic() + 60
            while not info.is_file() or not info.read_text().strip():
                assert time.monotonic() < deadline and procs[0].poll() is None, "dask scheduler did not start"
                time.sleep(0.2)
            address = json.loads(info.read_text())["address"]
            procs.append(subprocess.Popen([DASK, "worker", address, "--nworkers", "2", "--nthreads", "1",
                                           "--no-dashboard", "--local-directory", tmp_path / "worker"],
                                          stdout=logs, stderr=logs, cwd=tmp_path))
            yield address
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=60)


@pytest.mark.slow
def test_external_scheduler(workspace: Workspace, reference: RunResult, dask_cluster: str,
                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert dask_cluster.startswith("tcp://127.0.0.1:")
    command = [SLIDEAUDIT, "run", workspace.manifest, "--model", workspace.model, "--out", out,
               "--config", workspace.config, "--scheduler", dask_cluster]
    gpu = CliRunner().invoke(main, [*map(str, command[1:]), "--device", "cuda"])  # refused before any work
    assert gpu.exit_code == 2 and "no worker offers a GPU" in gpu.output
    assert not (out / "slides").exists()  # OUT holds only the lock and the run's pending record
    # `-X importtime` lists every module the process imports
    proc = subprocess.run(with_importtime(command), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"index: {out / 'index.html'}" in proc.stdout
    assert "great_expectations" not in imported(proc.stderr)  # the suites run on the workers
    assert run_json(out)["scheduler"] == dask_cluster
    assert (out / "audit.csv").read_bytes() == (reference.out / "audit.csv").read_bytes()
    assert workspace.archive_unchanged()

    # a rerun with every slide current
    rerun = subprocess.run(with_importtime(command), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "4 current, 0 recomputed" in rerun.stdout + rerun.stderr
    modules = imported(rerun.stderr)
    assert "pipeline.runner" in modules
    assert not modules & {"torch", "great_expectations", "distributed", "openslide", "scipy.stats"}


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_audit(workspace: Workspace, reference: RunResult, shared_cluster: str,
                                                 tmp_path: Path) -> None:
    out, manifest = tmp_path / "out", first_two(workspace, tmp_path / "two.csv")
    command = ["run", str(manifest), "--model", str(workspace.model), "--out", str(out),
               "--config", str(workspace.config)]
    with open(tmp_path / "killed.log", "w") as log:  # its own LocalCluster, killed with it
        proc = subprocess.Popen([SLIDEAUDIT, *command], stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 300
        while not any(out.glob("slides/*/explain.zarr")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no slide got explained in time"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Dask workers, mid-way
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(list(out.glob("slides/*/audit.json"))) < 2
    interrupted = run_json(out)
    assert "finished" not in interrupted
    assert {s["state"] for s in interrupted["slides"]} == {"pending"}

    result = CliRunner().invoke(main, [*command, "--scheduler", shared_cluster])
    assert result.exit_code == 0, result.output[-4000:]
    assert (out / "audit.csv").read_bytes() == reference_csv(reference, manifest)
    assert not leftovers(out)
    assert workspace.archive_unchanged()


def _tamper_attention(slide: Path) -> None:
    """Double the stored attention (its sum becomes 2), keeping the store's stamp and, sealed
    again, its record of files (else the run takes it for damaged and recomputes it)."""
    array = zarr.open_group(slide / "explain.zarr", mode="r+")["attention"]
    array[:] = np.asarray(array[:]) * 2
    seal_store(slide / "explain.zarr")


@pytest.mark.slow
def test_failures_are_recorded_per_slide(workspace: Workspace, reference: RunResult, shared_cluster: str,
                                         tmp_path: Path) -> None:
    out = copy_of(reference, tmp_path / "out")
    rows = manifest_rows(workspace.manifest)
    (tmp_path / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    sample = Path(rows[2]["path"]).read_bytes()
    (tmp_path / "corrupt.tiff").write_bytes(sample[: len(sample) // 3])  # a truncated slide
    rows[2]["annotation"] = str(tmp_path / "broken.geojson")
    rows.append({**rows[0], "slide_id": "corrupt", "path": str(tmp_path / "corrupt.tiff")})
    rows.append({**rows[3], "slide_id": "slot"})
    (out / "slides" / "slot").write_text("a file where the slide's folder should be")
    _tamper_attention(out / "slides" / "sample_001")
    (out / "slides" / "sample_001" / "audit.json").unlink()
    manifest = tmp_path / "bad.csv"
    manifest.write_text("slide_id,path,label,annotation,annotation_xml\n" + "".join(
        f"{r['slide_id']},{r['path']},{r['label']},{r['annotation']},{r['annotation_xml']}\n"
        for r in rows))
    kept = {name: (out / "slides" / "sample_002" / name).stat().st_mtime_ns
            for name in ("maps.zarr", "audit.json")}

    result = CliRunner().invoke(main, ["run", str(manifest), "--model", str(workspace.model), "--out", str(out),
                                       "--config", str(workspace.config), "--scheduler", shared_cluster])
    assert result.exit_code == 3, result.output
    assert "2 current, 0 recomputed, 4 failed" in result.output
    expected = {"corrupt": ("preflight", "SlideError"), "sample_002": ("preflight", "AnnotationError"),
                "sample_001": ("validate", "ValidationFailed")}
    for sid, (stage, error) in expected.items():
        failure = json.loads((out / "slides" / sid / "failure.json").read_text())
        assert (failure["stage"], failure["error_type"]) == (stage, error)
        assert failure["slide_id"] == sid and failure["source_path"]
        assert f"FAILED 1 slide(s) at {stage} ({error}): " in result.output and f"[{sid}]" in result.output
    assert "broken.geojson" in json.loads((out / "slides/sample_002/failure.json").read_text())["message"]
    failures = run_json(out)["failures"]  # by reason: the detail is in each failure.json
    assert all(s["state"] != "failed" for s in run_json(out)["slides"])
    slot = next(f for f in failures if f["slide_ids"] == ["slot"])
    assert slot["count"] == 1 and slot["error_type"] in ("FileExistsError", "NotADirectoryError")
    assert {name: (out / "slides" / "sample_002" / name).stat().st_mtime_ns for name in kept} == kept
    index = (out / "index.html").read_text()
    assert all(sid in index for sid in expected)
    assert run_json(out)["counts"] == {"done": 2, "failed": 4}

    # the slides fixed, a later run clears their failures
    shutil.rmtree(out / "slides" / "sample_001" / "explain.zarr")
    shutil.copytree(reference.out / "slides" / "sample_001" / "explain.zarr",
                    out / "slides" / "sample_001" / "explain.zarr")
    (out / "slides" / "sample_001" / "audit.json").unlink()
    fixed = run_archive(workspace.manifest, workspace.model, out, config_on(workspace, shared_cluster))
    assert fixed.exit_code == 0
    for sid in ("sample_001", "sample_002"):
        assert not (out / "slides" / sid / "failure.json").exists()
    assert (out / "audit.csv").read_bytes() == (reference.out / "audit.csv").read_bytes()
    assert workspace.archive_unchanged()


def test_bad_usage_and_config_exit_2(sample_archive: Path, tmp_path: Path) -> None:
    model = save_model(build_model(ModelConfig()), ModelConfig(), tmp_path / "model")   # untrained: never run
    runner = CliRunner()
    base = ["run", str(sample_archive), "--model", str(model), "--out", str(tmp_path / "o")]
    missing_out = runner.invoke(main, base[:4])
    assert missing_out.exit_code == 2 and "--out" in missing_out.output
    bad_set = runner.invoke(main, [*base, "--set", "stitch.max_sides=3"])
    assert bad_set.exit_code == 2 and "unknown setting(s) max_sides" in bad_set.output
    bad_value = runner.invoke(main, [*base, "--set", "explain.batch=0"])
    assert bad_value.exit_code == 2 and "batch = 0: must be a whole number of patches >= 1" in bad_value.output
    bad_method = runner.invoke(main, [*base, "--methods", "gradcam,nope"])
    assert bad_method.exit_code == 2 and "nope" in bad_method.output
    bad_group = runner.invoke(main, [*base, "--group-by", "ink,scanner"])
    assert bad_group.exit_code == 2 and "--group-by scanner: no such manifest column" in bad_group.output
    assert "annotation_xml, ink" in bad_group.output
    no_model = runner.invoke(main, [*base[:3], str(tmp_path), *base[4:]])
    assert no_model.exit_code == 2 and "config.json missing" in no_model.output
    assert not (tmp_path / "o").exists()
    (tmp_path / "lime.yaml").write_text("explain: {methods: [gradcam, lime]}\n")  # checked by the preflight
    unknown_method = runner.invoke(main, [*base, "--config", str(tmp_path / "lime.yaml")])
    assert unknown_method.exit_code == 2
    assert "explain.methods: unknown or no methods ['lime']" in unknown_method.output
    assert not (tmp_path / "o" / "run.json").exists() and not (tmp_path / "o" / "slides").exists()

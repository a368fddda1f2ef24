"""A SIGTERM during `slideaudit tile`, `explain` or `run` removes the temporary stores; a rerun
removes what a SIGKILL left."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import manifest_rows
from pipeline.cli import main
from pipeline.errors import EXIT_TERMINATED

SLIDEAUDIT = Path(sys.executable).parent / "slideaudit"


def hidden(folder: Path) -> list[Path]:
    return sorted(folder.glob(".patches.zarr.*")) if folder.is_dir() else []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, EXIT_TERMINATED), (signal.SIGINT, 1)])
def test_a_signal_during_tile_leaves_no_temporary_store(sample_archive: Path, tmp_path: Path, signum: int,
                                                       code: int) -> None:
    slide = manifest_rows(sample_archive)[0]["path"]
    folder = tmp_path / "out" / "slides" / "s"
    # 16-px patches at level-0 resolution on glass too: thousands of blocks, a long write
    # Ctrl-C as a terminal delivers it: an ignored SIGINT (inherited from a test process some library
    # set it in) is put back to the default, which Python turns into KeyboardInterrupt
    proc = subprocess.Popen([str(SLIDEAUDIT), "tile", slide, "--out", str(tmp_path / "out"), "--slide-id", "s",
                             "--mpp", "0.5", "--patch", "16", "--min-tissue", "0", "--chunk", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not any(p.glob("patches/c/*") for p in hidden(folder)):  # a first chunk written
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signum)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, output
    assert hidden(folder) == [] and not (folder / "patches.zarr").exists()


def test_a_rerun_removes_what_a_killed_tile_left(sample_archive: Path, tmp_path: Path) -> None:
    slide = manifest_rows(sample_archive)[1]["path"]
    folder = tmp_path / "out" / "slides" / "s"
    (folder / ".patches.zarr.tmp-0badf00d" / "patches").mkdir(parents=True)
    (folder / ".patches.zarr.old-0badf00d").mkdir()
    result = CliRunner().invoke(main, ["tile", slide, "--out", str(tmp_path / "out"), "--slide-id", "s",
                                       "--mpp", "4", "--patch", "32"])
    assert result.exit_code == 0, result.output
    assert hidden(folder) == [] and (folder / "patches.zarr").is_dir()


def test_a_sigterm_during_explain_leaves_no_temporary_store(slide_dir: Path, model_dir: Path) -> None:
    # occlusion one patch at a time: one forward per occluded window, the maps written as they come
    proc = subprocess.Popen([str(SLIDEAUDIT), "explain", str(slide_dir), "--model", str(model_dir),
                             "--methods", "occlusion", "--batch", "1", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not any(slide_dir.glob(".explain.zarr.tmp-*/occlusion/c/*")):  # a first map written
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == EXIT_TERMINATED, output
    assert sorted(slide_dir.glob(".explain.zarr.*")) == [] and not (slide_dir / "explain.zarr").exists()


@pytest.mark.slow
def test_a_sigterm_during_a_run_leaves_no_temporary_store(sample_archive: Path, model_dir: Path,
                                                           tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("impressions: {steps: 0}\n")  # 2 workers: one may be cut mid-write
    out = tmp_path / "out"
    proc = subprocess.Popen([str(SLIDEAUDIT), "run", str(sample_archive), "--model", str(model_dir), "--out", str(out),
                             "--config", str(tmp_path / "config.yaml"), "--progress", "plain"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not any(out.glob("slides/*/.maps.zarr.tmp-*")):  # a worker is writing a slide's maps
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == EXIT_TERMINATED, output
    assert sorted(out.glob("slides/*/.*")) == []

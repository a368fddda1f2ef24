"""Many slides failing for one reason: one summary line and one log line per reason, with a count
and the first ids; run.json holds counts per reason, not a record per failed slide."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import EXIT_SLIDES_FAILED
from tiling.store import FAILURE, RUN_MANIFEST

SLIDEAUDIT = Path(sys.executable).parent / "slideaudit"


@pytest.mark.slow
def test_many_missing_slides_give_one_line_and_a_small_run_json(model_dir: Path, tmp_path: Path) -> None:
    n = 300
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,label\n" + "".join(f"s{i:04d},gone/s{i:04d}.tiff,\n" for i in range(n)))
    out = tmp_path / "out"
    done = subprocess.run([SLIDEAUDIT, "run", manifest, "--model", model_dir, "--out", out, "--progress", "none"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == EXIT_SLIDES_FAILED, done.stderr
    failed = [line for line in done.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1, done.stdout
    assert failed[0].startswith(f"  FAILED {n} slide(s) at preflight (SlideError): <slide>: no such slide file")
    assert "[s0000, s0001, s0002, s0003, s0004, and 295 more]" in failed[0]
    logged = [line for line in done.stderr.splitlines() if "s0299" in line or "<slide>" in line]
    assert len(logged) == 1 and len(done.stderr.splitlines()) < 20, done.stderr[-2000:]
    run = json.loads((out / RUN_MANIFEST).read_text())
    assert run["counts"] == {"failed": n} and run["slides"] == []
    assert [(g["count"], g["slide_ids"][:2], g["stage"]) for g in run["failures"]] == [(n, ["s0000", "s0001"],
                                                                                       "preflight")]
    assert (out / RUN_MANIFEST).stat().st_size < 4000  # however many fail
    detail = json.loads((out / "slides" / "s0299" / FAILURE).read_text())  # the detail stays per slide
    assert detail["slide_id"] == "s0299" and "s0299.tiff" in detail["message"]

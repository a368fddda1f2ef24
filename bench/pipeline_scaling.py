"""Benchmark of `slideaudit run`: scaling over Dask workers and a worker's memory vs slide size.

1. Throughput: the same archive of sample slides (8 by default) audited from scratch with 1 and
   with 2 local workers; slides/min = slides / wall-clock minutes of `run_archive` (cluster start
   included); ratio = 2-worker rate / 1-worker rate (goal >= 1.7 on 2 cores). Also printed: the
   CPU seconds of the run (this process and its workers) and cores busy = CPU / wall.
2. Memory: one sample slide, and the same slide drawn sqrt(10) times larger (10x the area, so
   ~10x the patches), each audited alone by 1 worker; peak = the worker process's VmHWM (peak
   resident set, /proc/PID/status); ratio = peak(10x) / peak(1x) (goal <= 1.5).

    .venv/bin/python bench/pipeline_scaling.py [--slides 8] [--size PX] [--keep DIR] [--no-memory]
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
from common import MiB

from explainers.train import TrainConfig, train
from pipeline.config import load_config
from pipeline.runner import run_archive
from tiling.samples.archives import DEFAULT_SIZE, write_sample_archive
from tiling.store import open_patch_store, slide_dir


class PeakMemory:
    """Samples VmHWM of this process's Dask worker processes every `interval` s, in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peaks = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for proc in psutil.Process().children(recursive=True):
                try:
                    if "spawn_main" not in " ".join(proc.cmdline()):
                        continue
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                except (psutil.Error, OSError):
                    continue
                hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines()
                           if line.startswith("VmHWM:"))
                self.peaks[proc.pid] = max(hwm, self.peaks.get(proc.pid, 0))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the Dask workers), user + system."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def audit(archive: Path, model: Path, out: Path, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds to audit `archive` from scratch into `out` with `workers` local workers."""
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = run_archive(archive, model, out, load_config(overrides={"run.workers": workers}))
    if result.failed:
        raise SystemExit(f"benchmark run failed: {[s.failure for s in result.failed]}")
    return time.perf_counter() - wall, cpu_seconds() - cpu


def patches(out: Path, slide_id: str) -> int:
    return len(open_patch_store(slide_dir(out, slide_id)))


def throughput(root: Path, model: Path, slides: int, size: int) -> None:
    """Print slides/min with 1 and 2 workers on `slides` sample slides, and their ratio."""
    archive = write_sample_archive(root / "slides", slides, seed=3, size=size)
    runs = {w: audit(archive, model, root / f"out-{w}w", w) for w in (1, 2)}
    rate = {w: slides / (wall / 60) for w, (wall, _) in runs.items()}
    mean_patches = sum(patches(root / "out-1w", f"sample_{i:03d}") for i in range(slides)) / slides
    print(f"throughput, {slides} sample slides of {size} px (~{mean_patches:.0f} patches each), "
          f"{os.cpu_count()} cores:")
    for w, (wall, cpu) in runs.items():
        print(f"  {w} worker(s): {rate[w]:6.2f} slides/min ({wall:.1f} s wall, {cpu:.1f} s CPU, "
              f"{cpu / wall:.2f} cores busy)")
    print(f"  ratio 2 workers / 1 worker: {rate[2] / rate[1]:.2f} (goal >= 1.7; other load on the "
          "machine lowers 'cores busy' and this ratio)")


def memory(root: Path, model: Path, size: int) -> None:
    """Print a worker's peak memory for one slide and for one with 10x its area, and their ratio."""
    peaks, counts = {}, {}
    for scale in (1, 10):
        one = write_sample_archive(root / f"one-{scale}x", 1, seed=4, size=int(size * math.sqrt(scale)))
        with PeakMemory() as watch:
            audit(one, model, root / f"mem-{scale}x", 1)
        peaks[scale], counts[scale] = watch.peak, patches(root / f"mem-{scale}x", "sample_000")
    print("peak memory of a worker (VmHWM):")
    for scale in (1, 10):
        print(f"  {scale:2d}x slide ({counts[scale]} patches): {peaks[scale] / MiB:7.0f} MiB")
    print(f"  ratio 10x / 1x: {peaks[10] / peaks[1]:.2f} for {counts[10] / counts[1]:.1f}x the patches "
          "(goal <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="sample slide width, px")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the inputs and outputs (kept)")
    parser.add_argument("--no-memory", action="store_true", help="measure the throughput only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        model = root / "model"
        if not (model / "config.json").is_file():
            manifest = write_sample_archive(root / "train", 4, seed=1, size=args.size)
            train(manifest, model, TrainConfig(epochs=2), stores=root / "train-store")
        throughput(root, model, args.slides, args.size)
        if not args.no_memory:
            memory(root, model, args.size)


if __name__ == "__main__":
    main()

"""Benchmark of `slideaudit run`: scaling over Dask workers and a worker's memory vs slide size.

1. Throughput: the same archive of sample slides (8 by default) audited from scratch with 1 and
   with 2 local workers; slides/min = slides / wall-clock minutes of `run_archive` (cluster start
   included); ratio = 2-worker rate / 1-worker rate (goal >= 1.7 on 2 cores).
2. Memory: one sample slide, and the same slide drawn sqrt(10) times larger (10x the area, so
   ~10x the patches), each audited alone by 1 worker; peak = the worker process's VmHWM (peak
   resident set, /proc/PID/status); ratio = peak(10x) / peak(1x) (goal <= 1.5).

    .venv/bin/python bench/pipeline.py [--slides 8] [--size 7168] [--keep DIR]
"""
from __future__ import annotations

import argparse
import logging
import math
import tempfile
import threading
import time
from pathlib import Path

import psutil

from explainers.train import TrainConfig, train
from pipeline.config import load_config
from pipeline.runner import run_archive
from tiling.sample import DEFAULT_SIZE, write_sample_archive
from tiling.store import open_patch_store, slide_dir

MiB = 1 << 20


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


def audit(archive: Path, model: Path, out: Path, workers: int) -> float:
    """Seconds to audit `archive` from scratch into `out` with `workers` local workers."""
    start = time.perf_counter()
    result = run_archive(archive, model, out, load_config(overrides={"run.workers": workers}))
    if result.failed:
        raise SystemExit(f"benchmark run failed: {[s.failure for s in result.failed]}")
    return time.perf_counter() - start


def patches(out: Path, slide_id: str) -> int:
    return len(open_patch_store(slide_dir(out, slide_id)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="sample slide width, px")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the outputs (kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        train_manifest = write_sample_archive(root / "train", 4, seed=1, size=args.size)
        model = root / "model"
        if not (model / "config.json").is_file():
            train(train_manifest, model, TrainConfig(epochs=2), stores=root / "train-store")

        archive = write_sample_archive(root / "slides", args.slides, seed=3, size=args.size)
        seconds = {w: audit(archive, model, root / f"out-{w}w", w) for w in (1, 2)}
        rate = {w: args.slides / (s / 60) for w, s in seconds.items()}
        mean_patches = sum(patches(root / "out-1w", f"sample_{i:03d}") for i in range(args.slides)) / args.slides
        print(f"throughput, {args.slides} sample slides of {args.size} px (~{mean_patches:.0f} patches each):")
        for w in (1, 2):
            print(f"  {w} worker(s): {rate[w]:6.2f} slides/min ({seconds[w]:.1f} s)")
        print(f"  ratio 2 workers / 1 worker: {rate[2] / rate[1]:.2f} (goal >= 1.7)")

        peaks, counts = {}, {}
        for scale in (1, 10):
            size = int(args.size * math.sqrt(scale))
            one = write_sample_archive(root / f"one-{scale}x", 1, seed=4, size=size)
            with PeakMemory() as memory:
                audit(one, model, root / f"mem-{scale}x", 1)
            peaks[scale], counts[scale] = memory.peak, patches(root / f"mem-{scale}x", "sample_000")
        print("peak memory of a worker (VmHWM):")
        for scale in (1, 10):
            print(f"  {scale:2d}x slide ({counts[scale]} patches): {peaks[scale] / MiB:7.0f} MiB")
        print(f"  ratio 10x / 1x: {peaks[10] / peaks[1]:.2f} for {counts[10] / counts[1]:.1f}x the patches "
              "(goal <= 1.5)")


if __name__ == "__main__":
    main()

"""Benchmark: an archive of N small sample slides (default 1,000) audited end to end by `slideaudit run`.

Writes N sample slides (`write_sample_archive`, --size px wide: ~20 patches each at the model's
footprint) and a fresh A-MIL model with random weights (`ModelConfig()`: an untrained model costs
what a trained one does), then runs `run_archive` on them with the default settings (local
workers, one per core) and, while it runs, watches OUT: the time each slide's report.html
appears, and every 0.25 s the memory of this process and of the Dask workers. Printed at slide
10, 100 and 1,000 (those <= N, and N):

- per-slide wall s = (t_k - t_{k-w}) / w, the time between the reports of slides k-w and k
  (w = min(10, k - 1)): what one more slide costs the run when it is that far in (the slides go
  through in manifest order, so the window at slide 10 holds the run's first slides);
- average s = (t_k - t_1) / (k - 1), the same over every slide so far: a 10-slide window on a
  busy 2-core machine varies by about ±15 % (the spread of all the run's windows is printed);
- stage s = the median over those w slides of the sum of their stages' wall times (run.json);
- peak RSS MiB of the largest worker (VmHWM) and of this process (the client and the scheduler:
  ru_maxrss) so far.

Goal: each within 10 % of the value at slide 10 (flat, not growing). Then: run.json, index.html
and audit.csv sizes (bytes per slide); the index rendered again alone (`render_index`, least
of 3, goal < 2 s for 1,000 slides; the first is printed too: it imports the libraries); and a
no-op rerun of the whole archive (every slide current; goal < 5 % of the first run's wall time).

    .venv/bin/python bench/archive_1000.py [--slides 1000] [--size 2048] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import threading
import time
from pathlib import Path

import psutil
from common import MiB, workdir

from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model
from pipeline.config import load_config
from pipeline.runner import run_archive
from reports.html import render_index
from tiling.samples.archives import write_sample_archive
from tiling.store import REPORT

CHECKPOINTS = (10, 100, 1000)


class Watch:
    """In a thread, every `interval` s: when each slide's report appeared, and the peak memory of
    the Dask workers (largest VmHWM) and of this process so far, at each report count."""

    def __init__(self, out: Path, interval: float = 0.25) -> None:
        self.out, self.interval = out, interval
        self.done: dict[str, float] = {}     # slide id -> s since start when its report appeared
        self.memory: list[tuple[int, int, int]] = []   # (reports so far, worker peak, own peak), bytes
        self.worker_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _scan(self, now: float) -> None:
        slides = self.out / "slides"
        if slides.is_dir():
            for entry in os.scandir(slides):
                if entry.name not in self.done and os.path.exists(os.path.join(entry.path, REPORT)):
                    self.done[entry.name] = now
        for proc in psutil.Process().children(recursive=True):
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            hwm = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            self.worker_peak = max(self.worker_peak, hwm)
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.memory.append((len(self.done), self.worker_peak, own))

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._scan(time.perf_counter() - self.start)
            self._stop.wait(self.interval)

    def __enter__(self) -> Watch:
        self.start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._scan(time.perf_counter() - self.start)

    def at(self, k: int) -> tuple[int, int]:
        """(worker peak, own peak) bytes when the k-th report had appeared."""
        return next((w, o) for n, w, o in self.memory if n >= k)


def report(watch: Watch, seconds: dict[str, float], slides: int) -> None:
    """Print the per-slide table at the checkpoints (module docstring)."""
    order = sorted(watch.done, key=watch.done.get)
    times = [watch.done[s] for s in order]
    print(f"{'slide':>6s} {'per-slide wall s':>16s} {'average s':>9s} {'stage s':>8s} {'worker peak RSS MiB':>19s} "
          f"{'own peak RSS MiB':>16s}")
    first = None
    for k in sorted({c for c in CHECKPOINTS if c <= slides} | {slides}):
        w = min(10, k - 1)
        if k > len(times) or w < 1:
            continue
        wall = (times[k - 1] - times[k - 1 - w]) / w
        average = (times[k - 1] - times[0]) / (k - 1)
        work = sorted(seconds[s] for s in order[k - w:k])[w // 2]
        worker, own = watch.at(k)
        row = (wall, average, work, worker / MiB, own / MiB)
        first = first or row
        change = "  ".join(f"{v / f - 1:+5.0%}" for v, f in zip(row, first, strict=True))
        print(f"{k:6d} {row[0]:16.2f} {row[1]:9.2f} {row[2]:8.2f} {row[3]:19.0f} {row[4]:16.0f}  vs slide 10: {change}")
    windows = sorted((times[k - 1] - times[k - 11]) / 10 for k in range(11, len(times) + 1, 10))
    if windows:
        print(f"per-slide wall of every 10-slide window of the run: least {windows[0]:.2f}, median "
              f"{windows[len(windows) // 2]:.2f}, most {windows[-1]:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=1000)
    parser.add_argument("--size", type=int, default=2048, help="sample slide width, px")
    parser.add_argument("--workdir", type=Path, default=None, help="kept (and its slides and model reused)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"  # the workers inherit it: no progress bar per stage and slide
    with workdir(args.workdir, "bench-archive-") as work:
        start = time.perf_counter()
        manifest = write_sample_archive(work / f"slides-{args.slides}-{args.size}", args.slides, seed=0,
                                        size=args.size)
        print(f"{args.slides} sample slides of {args.size} px written in {time.perf_counter() - start:.0f} s "
              "(0 s when reused)")
        model = ModelConfig()
        if not (work / "model" / "config.json").is_file():
            save_model(build_model(model), model, work / "model")
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        config = load_config()
        with Watch(out) as watch:
            first = run_archive(manifest, work / "model", out, config, progress="none")
        failed = [s.failure for s in first.states if s.failure]
        print(f"first run: {first.seconds:.1f} s wall for {args.slides} slides "
              f"({first.seconds / args.slides:.2f} s a slide), {len(failed)} failed "
              f"{failed[:1] if failed else ''}")
        report(watch, {s.record.slide_id: sum(s.seconds.values()) for s in first.states}, args.slides)
        sizes = {name: (out / name).stat().st_size for name in ("run.json", "index.html", "audit.csv")}
        print("  ".join(f"{name} {size / 1024:.0f} KiB ({size / args.slides:.0f} B a slide)"
                        for name, size in sizes.items()))
        renders = []
        for _ in range(3):
            start, cpu = time.perf_counter(), time.process_time()
            render_index(out, config.run.group_by)
            renders.append((time.perf_counter() - start, time.process_time() - cpu))
        index, cpu = min(renders)
        print(f"index render alone: {index:.2f} s wall, {cpu:.2f} s CPU, least of 3 ({index / args.slides * 1000:.1f} "
              f"ms a slide; goal < 2 s for 1,000 slides); the first, with this process's first imports of "
              f"its libraries: {renders[0][0]:.2f} s")
        rerun = run_archive(manifest, work / "model", out, config, progress="none")
        print(f"no-op rerun: {rerun.seconds:.2f} s = {rerun.seconds / first.seconds:.1%} of the first run "
              "(goal < 5 %)")


if __name__ == "__main__":
    main()

"""Benchmark: CPU time of the audit and report stages per slide, in one process.

Writes a small sample slide (8192 x 6144 px at 0.5 µm/px) and a 40x-style slide `--size` px wide
(tiling/samples/large.py), runs tile, explain and stitch once with a fresh random A-MIL model,
then runs audit and report `--repeats` times on each. Prints the first call (one-off set-up of
the process included) and the mean of the others (what each further slide costs), with patches,
so a fixed cost per slide shows as time that does not grow with patches.

    .venv/bin/python bench/report_cost.py [--size 20000] [--repeats 4] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from common import workdir

from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model
from pipeline.config import PipelineConfig
from pipeline.runner import at_model_footprint
from pipeline.stages import STAGES, Context
from tiling.archive import read_archive
from tiling.samples.archives import DEFAULT_SIZE, write_large_archive, write_sample_archive
from tiling.store import AUDIT, open_patch_store, slide_dir


def cpu_seconds(title: str, manifest: Path, context: Context, repeats: int) -> None:
    """Print audit and report CPU s (first call, mean of the rest) on the manifest's first slide."""
    record = read_archive(manifest, ModelConfig().classes)[0]
    for name in ("tile", "explain", "stitch"):
        STAGES[name][0](record, context)
    folder = slide_dir(context.out, record.slide_id)
    cells = []
    for name in ("audit", "report"):
        times = []
        for _ in range(repeats):
            if name == "audit":
                (folder / AUDIT).unlink(missing_ok=True)  # else it is current and skipped
            start = time.process_time()
            STAGES[name][0](record, context)
            times.append(time.process_time() - start)
        cells.append(f"{times[0]:8.2f} {sum(times[1:]) / (repeats - 1):8.2f}")
    print(f"{title:24s} {len(open_patch_store(folder)):8d} {cells[0]} {cells[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="level-0 width of the larger slide, px")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each stage per slide, >= 2")
    parser.add_argument("--workdir", type=Path, default=None, help="kept (and reused) when given")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with workdir(args.workdir, "bench-report-") as work:
        model = ModelConfig()
        if not (work / "model" / "config.json").is_file():
            save_model(build_model(model), model, work / "model")
        config = at_model_footprint(PipelineConfig(), model.mpp, model.patch)
        print(f"{'slide':24s} {'patches':>8s} {'audit 1st':>8s} {'next':>8s} {'report 1st':>8s} {'next':>8s}"
              "   (CPU s)")
        for kind, size, write in (("small", DEFAULT_SIZE, write_sample_archive),
                                  ("large", args.size, write_large_archive)):
            manifest = write(work / kind, slides=1, seed=0, size=size)
            cpu_seconds(f"{kind} ({size} px wide)", manifest, Context(work / f"out-{kind}", work / "model", config),
                        args.repeats)


if __name__ == "__main__":
    main()

"""Benchmark: one 40x-size slide (80,000 x 60,000 px at 0.25 µm/px) audited end to end.

Writes the slide with `write_large_archive` (a tile mosaic, see tiling/samples/large.py) and a
fresh A-MIL model with random weights (`ModelConfig()`: small CNN, 64 px at 3.5 µm/px; an
untrained model costs the same as a trained one), then runs each stage of the pipeline's chain
(pipeline.stages.STAGES: tile, explain, stitch, audit, report, validate) on it, each in a fresh
process, and the same on a small sample slide (8192 x 6144 px at 0.5 µm/px). Per stage: wall
time, CPU time (the process's, all threads), peak RSS (the process's ru_maxrss, imports
included), patches/s and the size of what the stage wrote. Goals: peak RSS <= 4 GiB; stitch
and report time growing with patches, not fixed per slide.

Then the tiling ratio: `tile_slide` against raw OpenSlide decode of the same tiles on one thread
per core (bench/tiling_throughput.py's baseline, `run_raw` in bench/common.py, measured in the
same run), on both slides, at the audit's footprint (resized reads) and at 224 px, 1 µm/px: for
one slide (wall and CPU time) and for an archive of copies of it tiled at once on one worker
process per core, as `slideaudit run` does (2 copies of the 40x slide, 8 of the small one:
`run_archive`). Goal >= 0.8 with every core busy. Best of --repeats.

With --baseline SRC (another checkout of slideaudit, e.g. `git worktree add SRC <commit>`), the
stages after explain (stitch, audit, report) also run on the 40x slide's tile and explain outputs
with SRC's code and with this one's, alternately, each in a fresh process, --repeats times: wall
and CPU s of each (least of the repeats), and whether the two audit.json are equal but for the
time of the run (the audit's numbers must not change with its speed).

    .venv/bin/python bench/audit_40x.py [--size 80000] [--repeats 2] [--workdir DIR] [--baseline SRC]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import openslide
from common import MiB, least, run_archive, run_raw, run_tile_slide, workdir

# `pipeline.stages` imports a stage's package when the stage first runs: imported here, so that a
# stage timed in a fresh process leaves the imports out, as on a worker after its first slide
import explainers.explain  # noqa: F401
import reports.audit.stage
import reports.html  # noqa: F401
import tiling.stitch
import tiling.tile  # noqa: F401
from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model
from pipeline.config import PipelineConfig
from pipeline.runner import at_model_footprint
from pipeline.stages import STAGES, Context
from tiling.archive import SlideRecord, read_archive
from tiling.config import TileConfig
from tiling.samples.archives import DEFAULT_SIZE, write_large_archive, write_sample_archive
from tiling.slide import read_size
from tiling.store import open_patch_store, slide_dir


def _stage(name: str, record: SlideRecord, context: Context) -> tuple[float, float, float]:
    """In a fresh process: (wall s, CPU s, peak RSS MiB) of one stage on one slide."""
    logging.basicConfig(level=logging.WARNING)
    wall, cpu = time.perf_counter(), time.process_time()
    STAGES[name][0](record, context)
    return time.perf_counter() - wall, time.process_time() - cpu, \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


POST_EXPLAIN = ("stitch", "audit", "report")


def post_explain(out: Path, model_dir: Path, manifest: Path) -> None:
    """Print "stage wall CPU" of each POST_EXPLAIN stage, run here in turn on the manifest's first
    slide in `out` (its tile and explain outputs present, the later ones removed first)."""
    model = ModelConfig()
    record = read_archive(manifest, model.classes)[0]
    context = Context(out, model_dir, at_model_footprint(PipelineConfig(), model.mpp, model.patch))
    for name in POST_EXPLAIN:
        wall, cpu = time.perf_counter(), time.process_time()
        STAGES[name][0](record, context)
        print(name, time.perf_counter() - wall, time.process_time() - cpu)


def _without_time(audit: Path) -> dict:
    record = json.loads(audit.read_text())
    record["provenance"].pop("run_at")
    return record


def against_baseline(baseline: Path, work: Path, manifest: Path, repeats: int) -> None:
    """The module docstring's --baseline comparison on the slide audited under `work/out`."""
    source = slide_dir(work / "out", read_archive(manifest)[0].slide_id)
    codes = {"baseline": Path(baseline).absolute(), "this": Path(__file__).absolute().parent.parent}
    times: dict[str, list[dict[str, tuple[float, float]]]] = {code: [] for code in codes}
    for _ in range(repeats):
        for code, root in codes.items():
            out = work / f"out-{code}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(source.parent.parent, out, ignore=shutil.ignore_patterns(
                *(STAGES[name][1] for name in POST_EXPLAIN), "focus.geojson", "thumbnail.jpg"))
            run = subprocess.run([sys.executable, __file__, "--post-explain", str(out), str(work.parent / "model"),
                                  str(manifest)], env={**os.environ, "PYTHONPATH": str(root), "TQDM_DISABLE": "1"},
                                 capture_output=True, text=True, check=True)
            times[code].append({name: (float(wall), float(cpu)) for name, wall, cpu in
                                (line.split() for line in run.stdout.splitlines() if line.split()[0] in POST_EXPLAIN)})
    print(f"\nafter explain, 40x slide: {'stage':8s} {'baseline wall s':>15s} {'CPU s':>6s} "
          f"{'this wall s':>11s} {'CPU s':>6s}")
    totals = {code: [0.0, 0.0] for code in codes}
    for name in POST_EXPLAIN:
        cells = []
        for code in codes:
            wall, cpu = (min(run[name][i] for run in times[code]) for i in (0, 1))
            totals[code][0] += wall
            totals[code][1] += cpu
            cells.append(f"{wall:{15 if code == 'baseline' else 11}.2f} {cpu:6.2f}")
        print(f"{'':25s} {name:8s} {' '.join(cells)}")
    print(f"{'':25s} {'total':8s} {totals['baseline'][0]:15.2f} {totals['baseline'][1]:6.2f} "
          f"{totals['this'][0]:11.2f} {totals['this'][1]:6.2f}   (goal: this wall <= 6 s)")
    equal = _without_time(work / "out-baseline" / source.relative_to(source.parent.parent) / "audit.json") == \
        _without_time(work / "out-this" / source.relative_to(source.parent.parent) / "audit.json")
    print(f"audit.json of the two equal but for the time of the run: {'yes' if equal else 'NO'}")


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / MiB


def audit_stages(manifest: Path, work: Path) -> None:
    """Run and print every stage on the manifest's first slide (fresh outputs under `work`)."""
    model = ModelConfig()
    model_dir = work.parent / "model"
    if not (model_dir / "config.json").is_file():
        save_model(build_model(model), model, model_dir)
    config = at_model_footprint(PipelineConfig(), model.mpp, model.patch)
    record = read_archive(manifest, model.classes)[0]
    context = Context(work / "out", model_dir, config)
    shutil.rmtree(context.out, ignore_errors=True)
    folder = slide_dir(context.out, record.slide_id)
    print(f"\n{record.path.name}: {size_mib(record.path):.0f} MiB")
    print(f"{'stage':9s} {'wall s':>7s} {'CPU s':>7s} {'peak RSS MiB':>12s} {'patches/s':>9s} "
          f"{'output MiB':>10s}")
    patches = 0
    for name, (_, output) in STAGES.items():
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            wall, cpu, rss = pool.submit(_stage, name, record, context).result()
        patches = patches or len(open_patch_store(folder))
        rate, written = (f"{patches / wall:9.0f}", f"{size_mib(folder / output):10.2f}") if output \
            else (f"{'-':>9s}", f"{'-':>10s}")
        print(f"{name:9s} {wall:7.2f} {cpu:7.2f} {rss:12.0f} {rate} {written}")
    print(f"{patches} patches of {model.patch} px at {model.mpp} µm/px")


def tiling_ratio(slide: Path, work: Path, config: TileConfig, repeats: int, copies: int) -> str:
    """One line: tiles, tiles/s of tile_slide and of raw decode, their wall and CPU ratios for
    one slide, and the wall ratio for an archive of `copies` copies (`run_archive`)."""
    tiled, raw = [], []
    for _ in range(repeats):
        wall, cpu, path = run_tile_slide(slide, work / "ratio", config)
        store = open_patch_store(path)
        with openslide.OpenSlide(slide) as osr:
            level = store.attrs["level"]
            scale = store.attrs["mpp"] / (store.attrs["slide_mpp"] * osr.level_downsamples[level])
        read_wh = read_size((store.attrs["patch_size"],) * 2, scale)
        tiled.append((wall, cpu))
        raw.append(run_raw(slide, store.coords, level, read_wh, store.attrs["patch_size"]))
    (t_wall, t_cpu), (r_wall, r_cpu) = least(tiled), least(raw)
    a_tile, a_raw = run_archive(slide, work / "archive", config, store.coords, level, read_wh, copies, repeats)
    n = len(store)
    resized = "resized" if abs(scale - 1) > 1e-6 else "no resize"
    return (f"{slide.name[:24]:24s} {config.patch:3d} px at {config.mpp:4.2f} µm/px, level {level} "
            f"({resized:9s}) {n:6d} | {n / t_wall:6.0f} {n / r_wall:6.0f} {r_wall / t_wall:5.2f} | "
            f"{r_cpu / t_cpu:5.2f} | {copies:2d} x: {a_raw / a_tile:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=80_000, help="level-0 width of the 40x slide, px")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="kept (and reused) when given")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout: time the stages after "
                        "explain with its code and with this one's")
    parser.add_argument("--post-explain", nargs=3, type=Path, metavar=("OUT", "MODEL", "MANIFEST"),
                        help=argparse.SUPPRESS)  # the --baseline comparison's child process
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.post_explain:
        post_explain(*args.post_explain)
        return
    with workdir(args.workdir, "bench-40x-") as work:
        start, cpu = time.perf_counter(), time.process_time()
        manifest = write_large_archive(work / "large", slides=1, seed=0, size=args.size)
        slide = read_archive(manifest)[0].path
        with openslide.OpenSlide(slide) as osr:
            print(f"40x slide {osr.dimensions[0]:,} x {osr.dimensions[1]:,} px at "
                  f"{osr.properties[openslide.PROPERTY_NAME_MPP_X]} µm/px, {osr.level_count} levels, "
                  f"{size_mib(slide):.0f} MiB: written in {time.perf_counter() - start:.1f} s wall, "
                  f"{time.process_time() - cpu:.1f} s CPU (0 s when reused)")
        small_manifest = write_sample_archive(work / "small", slides=1, seed=0, size=DEFAULT_SIZE)
        audit_stages(manifest, work / "large")
        if args.baseline:
            against_baseline(args.baseline, work / "large", manifest, args.repeats)
        audit_stages(small_manifest, work / "small")
        small = read_archive(small_manifest)[0].path
        model = ModelConfig()
        print(f"\n{'tiling: slide':24s} {'config':44s} {'tiles':>6s} | {'tile_slide':>6s} {'raw':>6s} "
              f"{'ratio':>5s} | {'CPU ratio':>5s} | archive ratio")
        for path, copies in ((slide, 2), (small, 8)):
            for config in (TileConfig(mpp=model.mpp, patch=model.patch), TileConfig(mpp=1.0, patch=224)):
                print(tiling_ratio(path, work, config, args.repeats, copies))


if __name__ == "__main__":
    main()

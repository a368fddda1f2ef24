"""Helpers shared by the bench/ scripts, imported as `from common import ...`.

A script run as `python bench/NAME.py` has bench/ on sys.path, and so do the worker processes it
spawns. Here:

- timing: `best` (least wall time of repeated calls), `least`, `MiB`, and `workdir` (the
  --workdir of a script, or a temporary folder removed when the script completes);
- tiling against raw OpenSlide reads of the same tiles (tiling_throughput.py, audit_40x.py):
  `run_tile_slide`, `run_raw`, `run_archive`;
- the three explain paths and their timing (explain.py, explain_resnet50.py): `floor`,
  `explain`, `captum`, `timed`, `best_times`.

torch, captum, OpenSlide and slideaudit's packages are imported by the helpers that use them, so
that a script imports what it uses and no more (audit_metrics.py and stitching.py no torch).
Run as a script (`make bench` runs every bench/*.py), this file does nothing.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tiling.config import TileConfig

    Batches = list[tuple[int, int, torch.Tensor]]

MiB = 1 << 20


# --- timing ---------------------------------------------------------------------------------------

def best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(least wall s of `repeats` calls of `fn`, what its last call returned)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def least(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """(least wall s, least CPU s) of (wall s, CPU s) runs."""
    wall, cpu = map(min, zip(*runs, strict=True))
    return wall, cpu


@contextmanager
def workdir(given: Path | None, prefix: str) -> Iterator[Path]:
    """`given` (kept), else a new temporary folder, removed when the block completes."""
    work = given or Path(tempfile.mkdtemp(prefix=prefix))
    yield work
    if given is None:
        shutil.rmtree(work)


# --- tiling vs raw OpenSlide reads ----------------------------------------------------------------

def run_tile_slide(slide: Path, out: Path, config: TileConfig) -> tuple[float, float, Path]:
    """(wall s, CPU s) of a fresh tile_slide run, and its store."""
    from tiling.tile import tile_slide

    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    store = tile_slide(slide, out, config)
    return time.perf_counter() - wall, time.process_time() - cpu, store


def run_raw(slide: Path, coords: np.ndarray, level: int, read_wh: tuple[int, int],
            patch: int) -> tuple[float, float]:
    """(wall s, CPU s) to read every tile with OpenSlide on `tiling.threads.stage_threads` threads (one
    per core unless a launcher shares the cores out), then resize."""
    import openslide

    from tiling.slide import resize_rgb
    from tiling.threads import stage_threads

    def read(xy: list[int]) -> np.ndarray:
        region = np.asarray(osr.read_region((xy[0], xy[1]), level, read_wh))[..., :3]
        return resize_rgb(region, (patch, patch))

    wall, cpu = time.perf_counter(), time.process_time()
    with openslide.OpenSlide(slide) as osr, ThreadPoolExecutor(stage_threads()) as pool:
        for _ in pool.map(read, coords.tolist()):
            pass
    return time.perf_counter() - wall, time.process_time() - cpu


def _tile_copy(slide: Path, out: Path, config: TileConfig, copy: int) -> None:
    from tiling.tile import tile_slide

    logging.basicConfig(level=logging.WARNING)
    tile_slide(slide, out, config, slide_id=f"copy{copy}")


def run_archive(slide: Path, out: Path, config: TileConfig, coords: np.ndarray, level: int,
                read_wh: tuple[int, int], copies: int, repeats: int) -> tuple[float, float]:
    """(tile s, raw s), best of `repeats`: wall time to tile `copies` copies of `slide` (fresh
    stores) on one worker process per core, as `slideaudit run` tiles an archive (its LocalCluster
    workers share the cores out through THREAD_VARS, here one thread each, and show no progress
    bars), and to read the same tiles of every copy with `run_raw` on the same workers. Each
    worker first tiles one untimed copy (imports, first calls)."""
    from pipeline.cluster import THREAD_VARS

    cores = os.cpu_count() or 1
    tiled, raw = [], []
    # the workers inherit the environment they start with: the LocalCluster's, at one thread each
    with mock.patch.dict(os.environ, {**dict.fromkeys(THREAD_VARS, "1"), "TQDM_DISABLE": "1"}), \
            ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:
        for _ in pool.map(_tile_copy, *zip(*[(slide, out / "warm", config, i) for i in range(cores)], strict=True)):
            pass
        for _ in range(repeats):
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            for _ in pool.map(_tile_copy, *zip(*[(slide, out, config, i) for i in range(copies)], strict=True)):
                pass
            tiled.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in pool.map(run_raw, *zip(*[(slide, coords, level, read_wh, config.patch)] * copies, strict=True)):
                pass
            raw.append(time.perf_counter() - start)
    shutil.rmtree(out, ignore_errors=True)
    return min(tiled), min(raw)


# --- the explain paths ----------------------------------------------------------------------------

def floor(model, batches: Batches) -> None:
    """(a) encoder + MIL head forward with autograd on, nothing else."""
    import torch

    with torch.enable_grad():
        h = torch.cat([model.encoder(x) for _, _, x in batches])
        logits, _ = model.pool(h)
    _sync(logits)


def explain(model, batches: Batches, layer: str) -> None:
    """(b) attention, slide Grad-CAM and instance Grad-CAM from one forward pass."""
    import torch

    from explainers.engine import BagExplainer, instance_target, slide_target

    explainer = BagExplainer(model, layer, ("gradcam",))
    bag = explainer.forward(batches, batches[-1][1])
    with torch.no_grad():
        logits, attention = model.pool(bag.h)
    cls = int(logits.argmax())
    for target in (slide_target(model, bag.h, cls), instance_target(model, bag.h, cls)):
        for _ in explainer.maps(bag, target, batches[0][1]):
            pass
    _sync(attention)


def captum(model, batches: Batches, layer: str) -> None:
    """(c) a separate A-MIL forward for attention + captum LayerGradCam (instance target)."""
    import torch
    from captum.attr import LayerGradCam
    from torch import nn

    with torch.no_grad():
        logits, _ = model.pool(torch.cat([model.encoder(x) for _, _, x in batches]))
    cls = int(logits.argmax())
    gradcam = LayerGradCam(nn.Sequential(model.encoder, model.classifier), model.get_submodule(layer))
    for _, _, x in batches:
        maps = gradcam.attribute(x, target=cls, relu_attributions=True)
    _sync(maps)


def _sync(t: torch.Tensor) -> None:
    import torch

    if t.is_cuda:
        torch.cuda.synchronize()


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def best_times(model: nn.Module, runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (best wall s, best CPU s)} of each run, after one warm-up of all, the model frozen."""
    from explainers.engine import frozen

    best = {name: (float("inf"), float("inf")) for name in runs}
    with frozen(model):
        for fn in runs.values():
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                wall, cpu = timed(fn)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best

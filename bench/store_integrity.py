"""Benchmark: what proving the stores whole costs (`tiling.store.stamps`: `seal` records each file's
size and crc32c when a store is written, `damage` checks them at a rerun).

1. On one sample slide (--size px wide at 0.5 µm/px) and a fresh default model (`ModelConfig()`:
   small CNN, 64 px at 3.5 µm/px), the tile, explain and stitch stages, fresh each time, with
   `seal` and with it patched out (the stores as before), alternating, best of --repeats; and
   `seal` alone on the store each wrote (the stage's own time varies more than seal costs).
2. `seal` and `damage` alone on a patches.zarr of 224 px patches at 0.5 µm/px (a foundation
   model's input, the largest store the pipeline writes): MB/s of the checksums; `damage` both
   as a rerun meets a store (one stat per file) and on a copy (every ctime new: every file read).
3. A no-op rerun of `run_archive` on --slides sample slides (the ledger skips every slide) with
   the ledger's check of every store (`discard_damaged`) and with it patched out, best of
   --repeats, and that check alone per slide.

    .venv/bin/python bench/store_integrity.py [--size 8192] [--slides 4] [--repeats 3] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from functools import partial
from pathlib import Path
from unittest import mock

from common import MiB, best, workdir

from explainers.config import ExplainConfig
from explainers.explain import explain_store
from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model
from pipeline.cache import STORES
from pipeline.config import load_config
from pipeline.runner import run_archive
from tiling.config import StitchConfig, TileConfig
from tiling.samples.archives import write_sample_archive
from tiling.stitch import stitch_slide
from tiling.store import EXPLAIN, MAPS, damage, seal, slide_dir
from tiling.tile import tile_slide


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MiB


def stage_costs(slide: Path, model_dir: Path, out: Path, repeats: int) -> None:
    """Each stage fresh, with `seal` and without (patched out in the module that writes the store)."""
    model = ModelConfig()
    tile_config = TileConfig(mpp=model.mpp, patch=model.patch)
    folder = slide_dir(out, slide.stem)

    def tile() -> Path:
        shutil.rmtree(out, ignore_errors=True)
        return tile_slide(slide, out, tile_config)

    def explain() -> Path:
        shutil.rmtree(folder / EXPLAIN, ignore_errors=True)
        return explain_store(folder, model_dir, ExplainConfig(device="cpu"))

    def stitch() -> Path:
        shutil.rmtree(folder / MAPS, ignore_errors=True)
        return stitch_slide(folder, [], StitchConfig())

    for name, run, where, unsealed in (("tile", tile, "tiling.tile.seal_store", None),
                                       ("explain", explain, "tiling.store.explain.seal", {}),
                                       ("stitch", stitch, "tiling.store.maps.seal", {})):
        run()  # warm: imports, the model, the page cache
        sealed, plain = float("inf"), float("inf")
        for _ in range(repeats):
            sealed = min(sealed, best(run, 1)[0])
            with mock.patch(where, return_value=unsealed):
                plain = min(plain, best(run, 1)[0])
        store = run()
        alone, attrs = best(partial(seal, store), repeats)  # the direct cost, free of the stage's noise
        print(f"{name:8s} {plain:7.3f} s without seal, {sealed:7.3f} s with; seal alone {alone * 1e3:.1f} ms "
              f"({alone / plain:.1%} of the stage); store {size_mb(store):.1f} MiB in {len(attrs['files'])} files")


def seal_throughput(slide: Path, out: Path, repeats: int) -> None:
    """`seal` and `damage` on a store of 224 px patches at 0.5 µm/px."""
    store = tile_slide(slide, out, TileConfig(mpp=0.5, patch=224))
    mb = size_mb(store)
    wall, attrs = best(lambda: seal(store), repeats)
    check, _ = best(lambda: damage(store, attrs), repeats)
    copy = out / "copy.zarr"
    shutil.copytree(store, copy)  # every ctime new: damage reads every file
    verify, _ = best(lambda: damage(copy, attrs), repeats)
    print(f"224 px patches.zarr: {mb:.0f} MiB in {len(attrs['files'])} files; seal {wall:.3f} s "
          f"({mb / wall:.0f} MiB/s); damage {check * 1e3:.2f} ms as a rerun meets it, "
          f"{verify:.3f} s on a copy ({mb / verify:.0f} MiB/s)")


def noop_rerun(work: Path, model_dir: Path, slides: int, size: int, repeats: int) -> None:
    """A no-op `run_archive` with and without the ledger's check of every store."""
    manifest = write_sample_archive(work / "archive", slides=slides, seed=0, size=size)
    out = work / "run"
    config = load_config(overrides={"impressions.steps": 0, "explain.device": "cpu"})
    start = time.perf_counter()
    run_archive(manifest, model_dir, out, config, progress="none")
    first = time.perf_counter() - start
    checked, plain = float("inf"), float("inf")
    for _ in range(repeats):
        checked = min(checked, best(lambda: run_archive(manifest, model_dir, out, config, progress="none"), 1)[0])
        with mock.patch("pipeline.cache.discard_damaged", return_value=False):
            plain = min(plain, best(lambda: run_archive(manifest, model_dir, out, config, progress="none"), 1)[0])
    ids = [p.name for p in (out / "slides").iterdir()]
    check, _ = best(lambda: [damage(slide_dir(out, i) / name) for i in ids for name in STORES], repeats)
    print(f"{slides} slides: first run {first:.1f} s; no-op rerun {plain:.3f} s without the check, {checked:.3f} s "
          f"with ({checked - plain:+.3f} s); the check alone {check / len(ids) * 1e3:.2f} ms per slide")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="sample slide width, level-0 px")
    parser.add_argument("--slides", type=int, default=4, help="slides of the no-op rerun's archive")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with workdir(args.workdir, "store-integrity-") as work:
        model = ModelConfig()
        model_dir = save_model(build_model(model), model, work / "model")
        manifest = write_sample_archive(work / "one", slides=1, seed=0, size=args.size)
        slide = next(manifest.parent.glob("*.tif*"))
        stage_costs(slide, model_dir, work / "stages", args.repeats)
        seal_throughput(slide, work / "big", args.repeats)
        noop_rerun(work, model_dir, args.slides, args.size // 2, args.repeats)


if __name__ == "__main__":
    main()

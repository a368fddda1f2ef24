"""Tiling a slide into its patch store: tissue mask -> patch grid -> patches read in parallel.

`tile_slide` writes <out>/slides/<slide_id>/patches.zarr (layout: `tiling.store.patches`)
atomically, stamped with the config hash and the slide's sha256 so a rerun skips it. Patches are
read with Dask in blocks of `chunk` patches, one block per zarr chunk, each block written by the
task that reads it: on the current dask.distributed Client if there is one (workers must see
`out`), else on the threaded scheduler with one thread per core (OpenSlide releases the GIL).
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr
from tqdm import tqdm
from tqdm.dask import TqdmCallback

from tiling.errors import SlideError, require
from tiling.grid import footprint, grid_starts, patch_grid
from tiling.slide import BaseSlide, open_slide
from tiling.store import (
    PATCHES,
    atomic_path,
    config_hash,
    create_patch_store,
    file_sha256,
    is_current,
    runtime,
    slide_dir,
)
from tiling.tissue import tissue_mask

log = logging.getLogger(__name__)

MASK_CELLS = 16  # tissue-mask pixels per patch side, within MASK_SIDES (thumbnail longer side, px)
MASK_SIDES = (512, 4096)
DEFAULT_MPP, DEFAULT_PATCH = 1.0, 224  # what an unset tile.mpp / tile.patch means outside `run`


@dataclass(frozen=True)
class TileConfig:
    """mpp: patch resolution, µm/px; patch: side, px (None = unset: `slideaudit run` takes the
    model's config.json `mpp` / `patch`, see `resolved`; elsewhere DEFAULT_MPP / DEFAULT_PATCH);
    stride: step between patches, px at `mpp` (None = patch); min_tissue: least tissue fraction
    kept; slide_mpp: level-0 µm/px for slides that record none; max_patches: most patch positions
    on a slide's grid (glass included), checked before any read; chunk: patches per zarr chunk and per Dask block."""

    mpp: float | None = None
    patch: int | None = None
    stride: int | None = None
    min_tissue: float = 0.5
    slide_mpp: float | None = None
    max_patches: int = 500_000
    chunk: int = runtime(64)  # the zarr layout only: the patches' values do not change

    def __post_init__(self) -> None:
        require(self.mpp is None or self.mpp > 0, "mpp", self.mpp, "a positive number of µm/px or null")
        require(self.patch is None or self.patch >= 1, "patch", self.patch, "a whole number of px >= 1 or null")
        require(self.stride is None or self.stride >= 1, "stride", self.stride, "a whole number of px >= 1 or null")
        require(0 <= self.min_tissue <= 1, "min_tissue", self.min_tissue, "a fraction in [0, 1]")
        require(self.slide_mpp is None or self.slide_mpp > 0, "slide_mpp", self.slide_mpp,
                "a positive number of µm/px or null")
        require(self.max_patches >= 1, "max_patches", self.max_patches, "a whole number of patches >= 1")
        require(self.chunk >= 1, "chunk", self.chunk, "a whole number of patches >= 1")

    def resolved(self, mpp: float = DEFAULT_MPP, patch: int = DEFAULT_PATCH) -> TileConfig:
        """This config with an unset mpp (µm/px) and patch (px) set to the given ones."""
        return replace(self, mpp=mpp if self.mpp is None else self.mpp,
                       patch=patch if self.patch is None else self.patch)

    @property
    def target(self) -> tuple[float, int]:
        """(mpp, patch) the patches are read at: unset ones are DEFAULT_MPP / DEFAULT_PATCH."""
        resolved = self.resolved()
        return float(resolved.mpp or DEFAULT_MPP), int(resolved.patch or DEFAULT_PATCH)

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else self.target[1]


def plan_patches(slide: BaseSlide,
                 config: TileConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray]:
    """The patches to read: coords (N, 2) level-0 x, y, tissue (N,), the store's attrs
    describing the geometry (footprint = patch * mpp / slide_mpp level-0 px; level_mpp: µm/px of
    the level read) and the (h, w, 3)
    uint8 thumbnail the tissue mask comes from: MASK_CELLS px per patch side (its longer side
    within MASK_SIDES)."""
    mpp, patch = config.target
    side = footprint(patch, mpp, slide.mpp)
    check_plan(slide, config, side, footprint(config.step, mpp, slide.mpp))
    mask_side = round(max(slide.dimensions) * MASK_CELLS / side)
    thumbnail = slide.thumbnail(min(max(mask_side, MASK_SIDES[0]), MASK_SIDES[1]))
    mask = tissue_mask(thumbnail)
    coords, tissue = patch_grid(mask, slide.dimensions, side, footprint(config.step, mpp, slide.mpp),
                                config.min_tissue)
    level = slide.best_level(mpp)
    attrs = {"mpp": mpp, "slide_mpp": slide.mpp, "mpp_source": slide.mpp_source, "level": level,
             "level_mpp": slide.mpp * slide.level_downsamples[level], "patch_size": patch, "stride": config.step,
             "footprint": side, "dimensions": list(slide.dimensions)}
    return coords, tissue, attrs, thumbnail


def check_plan(slide: BaseSlide, config: TileConfig, side: float, step: float) -> None:
    """SlideError naming the slide when it is smaller than one patch footprint (`side` level-0 px)
    or its grid (every `step` level-0 px) holds more than config.max_patches positions."""
    width, height = slide.dimensions
    mpp, patch = config.target
    where = f"{slide.path or '<array>'}: the slide is {width:,} x {height:,} px at {slide.mpp:.4g} µm/px " \
            f"(from the {slide.mpp_source})"
    if width < side or height < side:
        raise SlideError(f"{where}, smaller than one patch ({patch} px at {mpp:g} µm/px "
                         f"= {side:,.0f} level-0 px); check the slide's resolution, or lower tile.patch "
                         "or tile.mpp")
    planned = len(grid_starts(width, side, step)) * len(grid_starts(height, side, step))
    if planned > config.max_patches:
        raise SlideError(f"{where}: tiling it at {mpp:g} µm/px plans {planned:,} patches of "
                         f"{side:,.1f} level-0 px, over tile.max_patches = {config.max_patches:,}; check "
                         "the slide's resolution (manifest column `mpp` or --slide-mpp), or raise "
                         "tile.max_patches or tile.mpp")


def read_patches(slide: BaseSlide, coords: np.ndarray, patch: int, mpp: float) -> np.ndarray:
    """(N, patch, patch, 3) uint8: `slide.read_at_mpp` at each level-0 (x, y) of `coords`."""
    out = np.empty((len(coords), patch, patch, 3), dtype=np.uint8)
    for i, (x, y) in enumerate(coords.tolist()):
        out[i] = slide.read_at_mpp((x, y), (patch, patch), mpp)
    return out


def _fill_block(slide: BaseSlide, coords: np.ndarray, patch: int, mpp: float, patches: zarr.Array,
                start: int) -> int:
    """Read the patches at `coords` and write them to rows start.. of `patches`."""
    patches[start:start + len(coords)] = read_patches(slide, coords, patch, mpp)
    return len(coords)


def _current_client() -> Any:
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def _run(tasks: list[Any], label: str) -> None:
    """Compute `tasks`, showing progress. On a failure no task may still be writing when this
    raises (the output is then removed): queued threads are cancelled and running ones awaited;
    on a cluster every task is awaited, since cancelling does not stop a running one."""
    client = _current_client()
    if client is None:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            try:
                with TqdmCallback(desc=label, unit="block"):
                    dask.compute(*tasks, scheduler="threads", pool=pool)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return
    from distributed import as_completed, wait
    futures = client.compute(tasks)
    try:
        for future in tqdm(as_completed(futures), total=len(futures), desc=label, unit="block"):
            future.result()
    except BaseException:
        wait(futures)  # a cancelled task may still be running: let every task end first
        raise


def tile_slide(slide_path: Path, out: Path, config: TileConfig, slide_id: str | None = None,
               slide_mpp: float | None = None, source_sha256: str | None = None) -> Path:
    """Write <out>/slides/<slide_id>/patches.zarr for the slide (slide_id: the file's stem).

    slide_mpp: the slide's level-0 µm/px from the manifest; it overrides config.slide_mpp (the
    flag), which overrides the file's tags (`tiling.resolution`). attrs record which was used.
    source_sha256: the file's sha256 when the caller has it (e.g. cached); None hashes the file.

    Skips when the store is current (same config hash and slide sha256). A slide without tissue
    gives an empty store (N = 0) and a warning. Raises SlideError naming the file when it cannot
    be read; nothing is left behind then. Returns the store's path.
    """
    slide_path = Path(slide_path)
    slide_id = slide_id or slide_path.stem
    target = slide_dir(out, slide_id) / PATCHES
    config = config.resolved()  # unset mpp/patch: the defaults, stamped as such
    if slide_mpp is not None:
        config = replace(config, slide_mpp=slide_mpp)
    mpp, patch = config.target
    source = "manifest" if slide_mpp is not None else "flag"
    with open_slide(slide_path, config.slide_mpp, source) as slide:
        stamp = {"config_hash": config_hash(config), "source_sha256": source_sha256 or file_sha256(slide_path)}
        if is_current(target, **stamp):
            log.info("%s: up to date", target)
            return target
        coords, tissue, geometry, thumbnail = plan_patches(slide, config)
        if len(coords) == 0:
            log.warning("%s: no tissue found (min_tissue %.2f); writing an empty patch store",
                        slide_path, config.min_tissue)
        attrs = {"source_path": str(slide_path.resolve()), "slide_id": slide_id, **geometry, **stamp}
        with atomic_path(target) as tmp:
            patches = create_patch_store(tmp, patch, config.chunk, coords, tissue, attrs, thumbnail)
            blocks = range(0, len(coords), config.chunk)
            _run([dask.delayed(_fill_block)(slide, coords[i:i + config.chunk], patch, mpp,
                                            patches, i) for i in blocks], slide_id)
    log.info("%s: %d patches at level %d -> %s", slide_path.name, len(coords), geometry["level"], target)
    return target

"""Tiling a slide into its patch store: tissue mask -> patch grid -> patches read in parallel.

`tile_slide` writes <out>/slides/<slide_id>/patches.zarr (layout: `tiling.store.patches`)
atomically, stamped with the config hash and the slide's sha256 so a rerun skips it. Patches are
read with Dask in blocks of `chunk` patches, one block per zarr chunk, each block written by the
task that reads it, the store's other records by one more task beside them: on the current
dask.distributed Client if there is one (workers must see `out`), else on the threaded scheduler
with `tiling.threads.stage_threads` threads (OpenSlide and the JPEG decode release the GIL).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr
from tqdm import tqdm
from tqdm.dask import TqdmCallback

from tiling.artefacts import ARTEFACT_KINDS, PATCH_SHARE, artefact_mask, artefact_shares
from tiling.config import ARTEFACT_KEYS, TileConfig
from tiling.errors import SlideError
from tiling.grid import footprint, footprint_fraction, grid_coords, grid_starts
from tiling.slide import BaseSlide, open_slide
from tiling.store import (
    PATCHES,
    Artefacts,
    atomic_path,
    config_hash,
    create_patch_store,
    file_sha256,
    is_current,
    seal_store,
    slide_dir,
    write_patch_records,
)
from tiling.threads import stage_threads
from tiling.tissue import tissue_mask

log = logging.getLogger(__name__)

MASK_CELLS = 16  # tissue-mask pixels per patch side, within MASK_SIDES (thumbnail longer side, px)
MASK_SIDES = (512, 4096)


def plan_patches(slide: BaseSlide, config: TileConfig
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray, Artefacts]:
    """The patches to read: coords (N, 2) level-0 x, y, tissue (N,), the store's attrs
    describing the geometry (footprint = patch * mpp / slide_mpp level-0 px; level_mpp: µm/px of
    the level read; artefacts_dropped: {dropped kind: patches left out, each counted under the
    dropped kind covering most of it}), the (h, w, 3) uint8 thumbnail
    the tissue and artefact masks come from (MASK_CELLS px per patch side, its longer side within
    MASK_SIDES), and the artefacts (`tiling.artefacts`: each patch's share under each kind). The
    pixels of the kinds in config.drop_artefacts are not tissue: a patch is kept when its tissue
    outside them reaches min_tissue, so a lesion next to a pen circle stays."""
    mpp, patch = config.target
    side, step = footprint(patch, mpp, slide.mpp), footprint(config.step, mpp, slide.mpp)
    check_plan(slide, config, side, step)
    mask_side = round(max(slide.dimensions) * MASK_CELLS / side)
    thumbnail = slide.thumbnail(min(max(mask_side, MASK_SIDES[0]), MASK_SIDES[1]))
    mask = tissue_mask(thumbnail)
    labels = artefact_mask(thumbnail, mask)
    grid = grid_coords(slide.dimensions, side, step)
    every = footprint_fraction(mask, slide.dimensions, grid, side)
    left_out = [ARTEFACT_KEYS[name] for name in config.drop_artefacts]
    free = footprint_fraction(mask & ~np.isin(labels, left_out), slide.dimensions, grid, side) if left_out else every
    keep = free >= config.min_tissue
    all_shares = artefact_shares(labels, slide.dimensions, grid, side)
    lost = all_shares[(every >= config.min_tissue) & ~keep][:, [k - 1 for k in left_out]]  # by a dropped kind
    lost_kind = np.asarray(left_out)[lost.argmax(axis=1)] if left_out else np.zeros(0, int)
    dropped = {ARTEFACT_KINDS[k]: int((lost_kind == k).sum()) for k in left_out}
    coords, tissue, shares = grid[keep], free[keep], all_shares[keep]
    artefacts = Artefacts(labels, shares)
    level = slide.best_level(mpp)
    attrs = {"mpp": mpp, "slide_mpp": slide.mpp, "mpp_source": slide.mpp_source, "level": level,
             "level_mpp": slide.mpp * slide.level_downsamples[level], "patch_size": patch, "stride": config.step,
             "footprint": side, "dimensions": list(slide.dimensions),
             "artefact_kinds": {str(k): name for k, name in ARTEFACT_KINDS.items()},
             "artefact_share": PATCH_SHARE, "drop_artefacts": [ARTEFACT_KINDS[k] for k in left_out],
             "artefacts_dropped": dropped}
    return coords, tissue, attrs, thumbnail, artefacts


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
        with ThreadPoolExecutor(stage_threads()) as pool:
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
    with open_slide(slide_path, config.slide_mpp, source) as slide, ThreadPoolExecutor(1) as hasher:
        # hashlib frees the GIL: hashed while planning (unless the caller knows the sha256)
        sha256 = hasher.submit(lambda: source_sha256 or file_sha256(slide_path))
        if target.exists() and is_current(target, config_hash(config), sha256.result()):
            log.info("%s: up to date", target)
            return target
        coords, tissue, geometry, thumbnail, artefacts = plan_patches(slide, config)
        stamp = {"config_hash": config_hash(config), "source_sha256": sha256.result()}
        if len(coords) == 0:
            log.warning("%s: no tissue found (min_tissue %.2f); writing an empty patch store",
                        slide_path, config.min_tissue)
        attrs = {"source_path": str(slide_path.resolve()), "slide_id": slide_id, **geometry, **stamp}
        with atomic_path(target) as tmp:
            patches = create_patch_store(tmp, patch, config.chunk, len(coords))
            records = dask.delayed(partial(write_patch_records, tmp, coords, tissue, attrs, thumbnail, artefacts))
            blocks = range(0, len(coords), config.chunk)
            # bound in a partial: dask would walk the slide and the zarr array looking for its own objects
            fill = dask.delayed(partial(_fill_block, slide, patch=patch, mpp=mpp, patches=patches))
            _run([records(), *(fill(coords[i:i + config.chunk], start=i) for i in blocks)], slide_id)
            seal_store(tmp)
    dropped = ", ".join(f"{n} on {name}" for name, n in geometry["artefacts_dropped"].items() if n)
    log.info("%s: %d patches at level %d -> %s%s", slide_path.name, len(coords), geometry["level"], target,
             f" ({dropped} left out: artefacts)" if dropped else "")
    return target

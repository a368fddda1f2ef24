"""patches.zarr: a slide's tissue patches, written by the tile stage (zarr v3 group).

    patches    (N, S, S, 3) uint8 RGB at the store's target mpp, chunked (B, S, S, 3), uncompressed
    coords     (N, 2) int64 level-0 (x, y) of each patch's top-left corner
    tissue     (N,) float32 tissue fraction of each patch in [0, 1]
    thumbnail  (h, w, 3) uint8 RGB of the whole slide, the one the tissue mask was computed on
               (longer side within tiling.tile.MASK_SIDES); stitching resamples it to the maps
    artefacts  (h, w) uint8 artefact labels on the thumbnail's grid (tiling.artefacts.ARTEFACT_KINDS);
               each patch's share under each kind is derived on opening (`Artefacts`)
    attrs      source_path, source_sha256, slide_id, mpp, slide_mpp, mpp_source (where slide_mpp
               came from: "file", "manifest" or "flag"), level, patch_size, stride,
               footprint (patch side in level-0 px), dimensions (level-0 W, H), config_hash,
               artefact_kinds ({label: name}), drop_artefacts (the kinds whose pixels did not count
               as tissue, `tiling.config.TileConfig`), artefacts_dropped ({name: patches left out
               because that kind covered them}), files and sealed_ns (the record of its files,
               `tiling.store.stamps.seal`), format_version (FORMAT_VERSION)
Version 4 added the record of its files.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import Buffer

from tiling.artefacts import artefact_shares, dominant_kind
from tiling.errors import StoreError
from tiling.store.names import FORMAT_VERSIONS, PATCHES, stage_path
from tiling.store.stamps import VERSION_KEY, check_version, check_whole

FORMAT_VERSION = FORMAT_VERSIONS[PATCHES]
# chunk files side by side in each array's folder (c.0.0.0.0), not in a folder per chunk index
# (c/0/0/0/0) that each chunk write first makes; readers take either
FLAT_CHUNKS = {"name": "default", "separator": "."}


@dataclass
class Artefacts:
    """A slide's artefacts: `labels` (h, w) uint8 on the thumbnail's grid (the store keeps them),
    and per patch the `shares` (N, K) float32 of its footprint under each kind (column k - 1 for
    label k, `tiling.artefacts.artefact_shares`); derived from them, the `kind` (N,) uint8 covering
    most of it (`tiling.artefacts.dominant_kind`, 0 none) and the `fraction` (N,) float32 under any."""

    labels: np.ndarray
    shares: np.ndarray

    def __post_init__(self) -> None:
        self.shares = np.asarray(self.shares, np.float32)

    @functools.cached_property
    def kind(self) -> np.ndarray:
        return dominant_kind(self.shares)

    @functools.cached_property
    def fraction(self) -> np.ndarray:
        return self.shares.sum(axis=1)


@dataclass
class PatchStore:
    """A slide's patches.zarr opened read-only (layout: the module docstring); `patches` and
    `thumbnail` are read lazily, coords and tissue are loaded."""

    path: Path
    patches: zarr.Array
    coords: np.ndarray
    tissue: np.ndarray
    attrs: dict[str, Any]
    thumbnail: zarr.Array
    artefacts: Artefacts

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def open_patch_store(path: Path) -> PatchStore:
    """Open `<slide_dir>/patches.zarr` (or the .zarr path itself) read-only."""
    path = stage_path(path, PATCHES)
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
        check_version(path, attrs, FORMAT_VERSION, "run `slideaudit tile` on the slide again")
        check_whole(path, attrs, "run `slideaudit tile` (or `run`) on the slide again")
        coords, labels = np.asarray(group["coords"][:], np.int64), np.asarray(group["artefacts"][:], np.uint8)
        shares = artefact_shares(labels, attrs["dimensions"], coords, attrs["footprint"])
        return PatchStore(path, group["patches"], coords, np.asarray(group["tissue"][:], dtype=np.float32),
                          attrs, group["thumbnail"], Artefacts(labels, shares))
    except (FileNotFoundError, json.JSONDecodeError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{path}: no complete patch store here ({exc}); run `slideaudit tile` "
                         "on the slide first") from exc


def create_patch_store(path: Path, patch_size: int, chunk: int, count: int) -> zarr.Array:
    """Create the `patches` array of a patches.zarr at `path` and return it empty: (`count`, S, S, 3)
    uint8 in chunks of `chunk` patches, uncompressed, for the caller to fill chunk by chunk (each
    chunk written once, so zarr's check for empty chunks, which costs as much as the write, is
    off); `write_patch_records` writes the rest, the group's own metadata included."""
    # no codec: tiling is meant to run at OpenSlide's decode speed, and Blosc LZ4 cost 0.3-0.7 ms
    # per 224 px patch (a fifth of its decode) to save 11 % on the 40x sample slide, 16 % on the
    # small ones, 26 % on CMU-1; zstd level 1 saves 30-37 % for 0.8-1.1 ms. Readers take any codec.
    return zarr.create_array(Path(path) / "patches", shape=(count, patch_size, patch_size, 3), zarr_format=3,
                             chunks=(chunk, patch_size, patch_size, 3), dtype=np.uint8, compressors=None,
                             fill_value=0, config={"write_empty_chunks": True}, chunk_key_encoding=FLAT_CHUNKS)


def write_patch_records(path: Path, coords: np.ndarray, tissue: np.ndarray, attrs: dict[str, Any],
                        thumbnail: np.ndarray, artefacts: Artefacts) -> None:
    """Write the coords, tissue, thumbnail, artefact labels and attrs of the patches.zarr
    `create_patch_store` made at `path` (the module docstring's layout).

    zarr encodes them into a MemoryStore over a dict of ours, whose keys are paths under the group
    as LocalStore maps them; the files are then written in one pass: about half the CPU of creating
    them on the LocalStore, which takes a thread hop and a file check per zarr operation (on a small
    slide about 25 ms, a seventh of tiling it)."""
    files: dict[str, Buffer] = {}
    group = zarr.open_group(zarr.storage.MemoryStore(files), mode="w", zarr_format=3,
                            attributes={**attrs, VERSION_KEY: FORMAT_VERSION})
    n, whole = len(coords), {"write_empty_chunks": True}  # no check of each chunk against the fill value
    records = {"coords": np.asarray(coords, dtype=np.int64).reshape(n, 2),
               "tissue": np.asarray(tissue, dtype=np.float32).reshape(n),
               "thumbnail": np.ascontiguousarray(thumbnail, dtype=np.uint8),
               "artefacts": np.ascontiguousarray(artefacts.labels, dtype=np.uint8)}
    for name, data in records.items():
        # zstd level 1: the thumbnail 3x faster than the default level 3, within 4 % of its size
        group.create_array(name, data=data, config=whole, compressors=zarr.codecs.ZstdCodec(level=1),
                           chunk_key_encoding=FLAT_CHUNKS)
    for key, buffer in files.items():
        (path / key).parent.mkdir(parents=True, exist_ok=True)
        (path / key).write_bytes(buffer.to_bytes())

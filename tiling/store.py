"""The on-disk store that stages share.

    <out>/slides/<slide_id>/patches.zarr   written by tiling
    <out>/slides/<slide_id>/explain.zarr   written by explainers
    <out>/slides/<slide_id>/maps.zarr      written by stitching
    <out>/slides/<slide_id>/audit.json     written by reports
    <out>/slides/<slide_id>/report.html    written by reports
    <out>/slides/<slide_id>/failure.json   written by the pipeline when a stage of the slide fails

Every stage output is written under a temporary sibling name and renamed when complete
(`atomic_path`), and carries a stamp (`config_hash`, `source_sha256`) that lets a rerun skip it
(`is_current`). Coordinates are level-0 pixels everywhere.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tiling.errors import StoreError

PATCHES, EXPLAIN, MAPS, AUDIT, REPORT = "patches.zarr", "explain.zarr", "maps.zarr", "audit.json", "report.html"
FAILURE = "failure.json"
STAMP_KEYS = ("config_hash", "source_sha256")
# patches: LZ4 (1.9x smaller on real H&E patches, 1.1x on the noisy sample ones) keeps writing
# well below decoding cost; zstd level 1 writes 7-26% fewer bytes for 2-3x the CPU
PATCH_CODEC = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")


def slide_dir(out: Path, slide_id: str) -> Path:
    """The folder holding every stage output of one slide."""
    return Path(out) / "slides" / slide_id


def runtime(default: Any) -> Any:
    """A config field that decides where or how fast a stage runs, never what it writes: left
    out of `config_hash`, so changing it keeps the stamp (e.g. `batch: int = runtime(64)`)."""
    return dataclasses.field(default=default, metadata={"runtime": True})


def stamped(value: Any) -> Any:
    """`value` as plain data for a stamp: dataclasses become dicts without their runtime
    fields (see `runtime`), recursively through dicts, lists and tuples."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: stamped(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.metadata.get("runtime")}
    if isinstance(value, dict):
        return {k: stamped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [stamped(v) for v in value]
    return value


def config_hash(config: Any) -> str:
    """sha256 (first 16 hex digits) of a dataclass or dict without runtime fields (`stamped`),
    as canonical JSON."""
    text = json.dumps(stamped(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; it replaces `final` only if the block completes.

    On an exception the temporary output is removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    _remove(trash)


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp of a stage output (zarr group attrs or a JSON file's "stamp"), None if absent."""
    path = Path(path)
    try:
        if path.suffix == ".zarr":
            attrs = dict(zarr.open_group(path, mode="r").attrs)
        else:
            attrs = json.loads(path.read_text()).get("stamp", {})
    except (FileNotFoundError, json.JSONDecodeError, zarr.errors.GroupNotFoundError, OSError):
        return None
    return {k: attrs.get(k) for k in STAMP_KEYS}


def chained_stamp(config: Any, upstream: Path, **extra: Any) -> dict[str, str]:
    """The stamp of a stage that reads `upstream` (a stage output with its own stamp).

    config_hash = hash(this stage's config, `extra` such as a model's sha256, upstream's
    config_hash), so a changed setting recomputes this stage and everything after it, and
    nothing before; source_sha256 is carried over from upstream.
    """
    up = read_stamp(upstream)
    if up is None or up["config_hash"] is None:
        raise StoreError(f"{upstream}: missing or incomplete; run the stage that writes it first")
    return {"config_hash": config_hash({"config": config, "extra": extra, "upstream": up["config_hash"]}),
            "source_sha256": up["source_sha256"]}


def is_current(path: Path, config_hash: str, source_sha256: str) -> bool:
    """True when `path` exists and was made from the same config and the same source bytes."""
    return read_stamp(path) == {"config_hash": config_hash, "source_sha256": source_sha256}


@dataclass
class PatchStore:
    """A slide's patches.zarr, opened read-only.

    patches: (N, S, S, 3) uint8 at the store's target mpp, chunked (B, S, S, 3);
    coords:  (N, 2) int64 level-0 (x, y) of each patch's top-left corner;
    tissue:  (N,) float32 tissue fraction of each patch in [0, 1];
    attrs:   source_path, source_sha256, slide_id, mpp, slide_mpp, level, patch_size, stride,
             footprint (patch side in level-0 px), dimensions (level-0 W, H), config_hash.
    """

    path: Path
    patches: zarr.Array
    coords: np.ndarray
    tissue: np.ndarray
    attrs: dict[str, Any]

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def stage_path(path: Path, name: str) -> Path:
    """`path` when it names a .zarr store itself, else the stage output `name` in that slide folder."""
    path = Path(path)
    return path if path.suffix == ".zarr" else path / name


def open_patch_store(path: Path) -> PatchStore:
    """Open `<slide_dir>/patches.zarr` (or the .zarr path itself) read-only."""
    path = stage_path(path, PATCHES)
    try:
        group = zarr.open_group(path, mode="r")
        return PatchStore(path, group["patches"], np.asarray(group["coords"][:], dtype=np.int64),
                          np.asarray(group["tissue"][:], dtype=np.float32), dict(group.attrs))
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{path}: no complete patch store here ({exc}); run `slideaudit tile` "
                         "on the slide first") from exc


def create_patch_store(path: Path, patch_size: int, chunk: int, coords: np.ndarray,
                       tissue: np.ndarray, attrs: dict[str, Any]) -> zarr.Array:
    """Create a patches.zarr at `path` (the layout `PatchStore` documents) with its coords, tissue
    and attrs, and return its empty `patches` array (N, S, S, 3) uint8 in chunks of `chunk`
    patches (PATCH_CODEC), for the caller to fill chunk by chunk (each chunk written once, so
    zarr's check for empty chunks, which costs as much as the write, is off)."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    n, size = len(coords), patch_size
    patches = group.create_array("patches", shape=(n, size, size, 3), chunks=(chunk, size, size, 3),
                                 dtype=np.uint8, compressors=PATCH_CODEC, fill_value=0,
                                 config={"write_empty_chunks": True})
    group.create_array("coords", data=np.asarray(coords, dtype=np.int64).reshape(n, 2))
    group.create_array("tissue", data=np.asarray(tissue, dtype=np.float32).reshape(n))
    group.attrs.update(attrs)
    return patches

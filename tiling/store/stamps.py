"""The contract every stage output keeps: written atomically, stamped, versioned.

Every stage output is written under a temporary sibling name and renamed when complete
(`atomic_path`), and carries a stamp (`config_hash`, `source_sha256`) that lets a rerun skip it
(`is_current`). Each output's format version (`tiling.store.names.FORMAT_VERSIONS`) is written
beside the stamp as ``format_version`` (zarr group attrs, or the top level of a JSON document): an
output with another or no version is not current, and its reader raises StoreError asking to
rerun the stage that writes it.

A zarr output also records its files (`seal`): each file's size and crc32c and the time it was
sealed. `damage` checks them cheaply: a missing file or one of another size is damaged; one
changed since sealing (mtime or ctime later than `sealed_ns`) is read and its crc32c compared.
`is_current` (and `pipeline.cache`'s ledger, before a rerun skips a slide) removes a damaged output
with one log line naming the file (`discard_damaged`), so its stage recomputes it; the readers
refuse one (`check_whole`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import google_crc32c
import zarr

from tiling.errors import StoreError
from tiling.store.names import FORMAT_VERSIONS

log = logging.getLogger(__name__)

STAMP_KEYS = ("config_hash", "source_sha256")
VERSION_KEY = "format_version"
FILES_KEY, SEALED_KEY = "files", "sealed_ns"  # a zarr output's {file: [size, crc32c]}, when recorded
ROOT_METADATA = "zarr.json"  # the root group's metadata, which holds the record: not in it


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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (`hashlib.file_digest`: one reused buffer, the GIL released)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_crc32c(path: Path) -> int:
    """crc32c (Castagnoli) of a file's bytes, read in 16 MiB blocks."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            crc = google_crc32c.extend(crc, block)
    return crc


def seal(store: Path) -> dict[str, Any]:
    """The attrs recording a zarr store's files, once every file but its root metadata is written:
    {FILES_KEY: {path under the store: [size in bytes, crc32c]}, SEALED_KEY: time.time_ns()}."""
    store = Path(store)
    sealed = time.time_ns()  # after the last write: a later change to a file has a later ctime
    files = {}
    for path in sorted(store.rglob("*")):
        key = path.relative_to(store).as_posix()
        if path.is_file() and key != ROOT_METADATA:
            files[key] = [path.stat().st_size, file_crc32c(path)]
    return {FILES_KEY: files, SEALED_KEY: sealed}


def seal_store(store: Path) -> None:
    """Write the record of the zarr `store`'s files (`seal`) into its root attrs: after a writer's
    last file, or after editing a store on purpose (tests)."""
    zarr.open_group(store, mode="r+").update_attributes(seal(store))


def damage(store: Path, attrs: Mapping[str, Any] | None = None) -> str | None:
    """What is wrong with the files of the zarr `store` against the record in its attrs (`seal`;
    read from its root metadata unless given), in a few words naming the file; None when whole,
    absent or recording nothing. Costs one stat per file; a file changed since sealing is also
    read for its crc32c."""
    if attrs is None:
        attrs = _metadata(Path(store)) or {}
    sealed, root = attrs.get(SEALED_KEY, 0), os.fspath(store)
    for key, (size, crc) in (attrs.get(FILES_KEY) or {}).items():
        path = os.path.join(root, key)  # a str: no Path made per file, on every rerun
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"{key} is missing"
        if st.st_size != size:
            return f"{key} is {st.st_size} bytes, {size} when written"
        if max(st.st_mtime_ns, st.st_ctime_ns) > sealed and file_crc32c(Path(path)) != crc:
            return f"{key} fails its crc32c check (changed since written)"
    return None


def check_whole(store: Path, attrs: Mapping[str, Any], remedy: str) -> None:
    """StoreError naming `store`, its damaged file (`damage`) and `remedy` when it is damaged."""
    what = damage(store, attrs)
    if what:
        raise StoreError(f"{store}: damaged: {what}; {remedy} to recompute it")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


SETTLE = (40, 0.05)  # tries, s between them: how long an interrupted output may still be written


def _remove_settled(path: Path) -> None:
    """Remove `path` even while a write interrupted in the main thread (zarr's I/O thread finishes
    it) still adds files: retried until it stays gone for one pause, at most SETTLE."""
    tries, pause = SETTLE
    for _ in range(tries):
        with contextlib.suppress(OSError):  # a file appeared while removing
            _remove(path)
        time.sleep(pause)
        if not path.exists():
            return
    log.warning("%s: could not be removed; the next run removes it", path)


def remove_leftovers(folder: Path, output: str = "*") -> None:
    """Remove what a killed run left of `output` ("*": of every output) in `folder`: atomic_path's
    temporary and replaced copies (.<output>.tmp-*, .<output>.old-*)."""
    for path in [*Path(folder).glob(f".{output}.tmp-*"), *Path(folder).glob(f".{output}.old-*")]:
        log.info("removing %s, left by an interrupted run", path)
        _remove(path)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; it replaces `final` only if the block completes.

    On an exception (SIGTERM included: `pipeline.cli`) the temporary output is removed and
    `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        _remove_settled(tmp)
        raise
    trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    _remove(trash)


def _metadata(path: Path) -> dict[str, Any] | None:
    """A stage output's zarr group attrs (read from its root zarr.json: a thirtieth of the time
    zarr takes to open the group) or JSON document; None when absent or unreadable."""
    try:
        doc = json.loads((path / ROOT_METADATA if path.suffix == ".zarr" else path).read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if path.suffix == ".zarr":
        group = isinstance(doc, dict) and doc.get("zarr_format") == 3 and doc.get("node_type") == "group"
        doc = doc.get("attributes", {}) if group else None
    return doc if isinstance(doc, dict) else None


def _stamp(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The STAMP_KEYS of `meta`: flat in zarr attrs, under "stamp" in a JSON document."""
    stamp = meta if path.suffix == ".zarr" else meta.get("stamp") or {}
    return {k: stamp.get(k) for k in STAMP_KEYS}


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp of a stage output (zarr group attrs or a JSON file's "stamp"), None if absent."""
    path = Path(path)
    meta = _metadata(path)
    return None if meta is None else _stamp(path, meta)


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
    """True when `path` exists, was made from the same config and the same source bytes, is in
    the current format version of its file name (FORMAT_VERSIONS; none for other files) and is
    whole (`damage`). A damaged output is removed, with one warning naming the damaged file."""
    path = Path(path)
    meta = _metadata(path)
    if not (meta is not None
            and _stamp(path, meta) == {"config_hash": config_hash, "source_sha256": source_sha256}
            and meta.get(VERSION_KEY) == FORMAT_VERSIONS.get(path.name)):
        return False
    return path.suffix != ".zarr" or not discard_damaged(path, meta)


def discard_damaged(store: Path, attrs: Mapping[str, Any] | None = None) -> bool:
    """True when the zarr `store` is damaged (`damage`): it is then removed, with one warning
    naming it and its damaged file, so that its stage computes it again."""
    what = damage(store, attrs)
    if what:
        log.warning("%s: damaged: %s; removing it and computing it again", store, what)
        _remove(Path(store))
    return what is not None


def check_version(path: Path, meta: Mapping[str, Any], expected: int, remedy: str) -> None:
    """StoreError naming `path` and `remedy` (what to rerun) unless `meta` carries
    format_version `expected`."""
    found = meta.get(VERSION_KEY)
    if found != expected:
        raise StoreError(f"{path}: format version {found}, but this slideaudit reads version "
                         f"{expected}; {remedy} to rewrite it")

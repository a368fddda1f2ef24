"""What a rerun can know from stat() alone: a file's sha256, and which slides are already audited.

A file's signature is (size, mtime_ns, ctime_ns, inode) of its resolved path: ctime catches an
in-place edit whose size and mtime were put back (`os.utime` cannot set ctime). Under OUT/cache/:

    sha256/<key>.json   one per hashed file: {path, signature, sha256}; `cached_sha256` hashes a
                        file again only when its signature changed (one JSON per file, so worker
                        processes never overwrite each other's entries)
    models/<sha>/       what is computed once per model (class impressions), by the first 16
                        hex digits of its weights' sha256
    slides.json         the ledger: per slide, the signature of everything its audit was made from
                        (slide and annotation files, its manifest row, the run's config hash, the
                        model's files, slideaudit's version) and the signature of each output
                        when its chain last completed

The stages' own stamps (`tiling.store.is_current`) stay the authority; the ledger only lets a
rerun leave out, before Dask starts, the slides whose every input and output is as it was, the
files of their zarr stores checked against the record each store keeps (`tiling.store.damage`).
All files are written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tiling.archive import SlideRecord
from tiling.store import (
    AUDIT,
    CACHE,
    EXPLAIN,
    MAPS,
    PATCHES,
    REPORT,
    atomic_path,
    discard_damaged,
    file_sha256,
    slide_dir,
)

LEDGER = "slides.json"
OUTPUTS = (PATCHES, EXPLAIN, MAPS, AUDIT, REPORT)
STORES = (PATCHES, EXPLAIN, MAPS)  # the zarr outputs, whose folders' signatures miss a damaged file


def signature(path: Path) -> list[int] | None:
    """[size, mtime_ns, ctime_ns, inode] of `path` (following links), None when it does not exist. An atomic
    rewrite changes it (a new inode); leaving the file alone does not (`pipeline.stages` tells a
    computed output from a current one by it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, doc: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))


def cached_sha256(path: Path, out: Path) -> str:
    """sha256 of `path`'s bytes, read from OUT/cache/sha256/ while its signature is unchanged."""
    path = Path(path).resolve()
    entry_path = Path(out) / CACHE / "sha256" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    entry, sig = _read_json(entry_path), signature(path)
    if isinstance(entry, dict) and entry.get("path") == str(path) and entry.get("signature") == sig:
        return str(entry["sha256"])
    sha = file_sha256(path)
    _write_json(entry_path, {"path": str(path), "signature": sig, "sha256": sha})
    return sha


def model_cache(out: Path, model_sha256: str | None) -> Path:
    """OUT/cache/models/<sha256[:16]>/: the cache folder of one model's weights."""
    return Path(out) / CACHE / "models" / str(model_sha256)[:16]


def slide_inputs(record: SlideRecord, run_key: dict[str, Any]) -> dict[str, Any]:
    """What a slide's audit is made from, by signature: `run_key` (config hash, model files) and
    this slideaudit's version, its manifest row, its slide and annotation files."""
    return {"run": run_key, "slideaudit": version("slideaudit"), "record": repr(record),
            "files": [signature(p) for p in (record.path, *record.annotations)]}


def output_signatures(out: Path, slide_id: str) -> dict[str, list[int] | None]:
    """Signature of each stage output of the slide (OUTPUTS); None for a missing one."""
    folder = slide_dir(out, slide_id)
    return {name: signature(folder / name) for name in OUTPUTS}


class Ledger:
    """OUT/cache/slides.json: the slides whose chain completed, with their inputs and outputs."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out / CACHE / LEDGER
        doc = _read_json(self.path)
        self.slides: dict[str, Any] = doc if isinstance(doc, dict) else {}

    def is_current(self, record: SlideRecord, run_key: dict[str, Any]) -> bool:
        """True when the slide's inputs and outputs have the signatures recorded when it completed
        and its stores' files are whole: a damaged store is removed, saying so in one line
        (`tiling.store.discard_damaged`), and its stage computes it again."""
        entry = self.slides.get(record.slide_id)
        if not (entry is not None and entry.get("inputs") == slide_inputs(record, run_key)
                and entry.get("outputs") == output_signatures(self.out, record.slide_id)):
            return False
        damaged = [discard_damaged(slide_dir(self.out, record.slide_id) / name) for name in STORES]  # each one said
        return not any(damaged)

    def update(self, completed: Sequence[SlideRecord], failed: Sequence[str], run_key: dict[str, Any]) -> None:
        """Record the slides whose chain completed now, forget the failed ones; write (atomic)."""
        for record in completed:
            self.slides[record.slide_id] = {"inputs": slide_inputs(record, run_key),
                                            "outputs": output_signatures(self.out, record.slide_id)}
        for slide_id in failed:
            self.slides.pop(slide_id, None)
        _write_json(self.path, self.slides)

"""OUT/cache: a file's signature notices an in-place edit even when its size and mtime are put back."""
from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.cache import Ledger, cached_sha256, signature
from tiling.archive import SlideRecord
from tiling.store import file_sha256


def test_an_edit_in_place_with_size_and_mtime_restored_is_noticed(tmp_path: Path) -> None:
    slide, out = tmp_path / "slide.tiff", tmp_path / "out"
    slide.write_bytes(b"A" * 4096)
    record, run_key = SlideRecord("s", slide), {"config_hash": "c", "model_files": {}}
    first = cached_sha256(slide, out)
    ledger = Ledger(out)
    ledger.update([record], [], run_key)
    assert Ledger(out).is_current(record, run_key) and cached_sha256(slide, out) == first

    before = os.stat(slide)
    time.sleep(0.05)  # past the file system's timestamp granularity
    with open(slide, "r+b") as f:  # same inode, same size
        f.write(b"B")
    os.utime(slide, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(slide)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert signature(slide) != [before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino]
    assert not Ledger(out).is_current(record, run_key)  # the run audits it again
    assert cached_sha256(slide, out) == file_sha256(slide) != first

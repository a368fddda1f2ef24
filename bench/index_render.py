"""The archive index at scale: `render_index` over N audited slides (default 1,000) and N failed
ones in three reasons, cloned from the test archive (tests/fake_stores.py: real stitched and
audited slides, their audit.json and report thumbnail copied under new ids).

Prints the least wall and CPU seconds of 3 renders, the index's size and rows, and the same for
N/10 slides, so the growth is seen beside the absolute time (goal: < 2 s for 1,000 slides).

    python bench/index_render.py [--slides 1000] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import MiB, workdir

from fake_stores import build_archive, clone_archive

REASONS = ("file not found; check the manifest path", "not a slide format OpenSlide can read; convert it",
           "no tissue found; check the slide")


def timed_render(out: Path) -> tuple[float, float]:
    """(least wall s, least CPU s) of 3 renders of out's index."""
    from reports.html import render_index

    runs = []
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        render_index(out)
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with workdir(args.workdir, "index_render_") as root:
        archive = build_archive(root / "archive")
        for n in (args.slides // 10, args.slides):
            out = clone_archive(root / f"clones_{n}", archive, n, {r: n // len(REASONS) for r in REASONS})
            wall, cpu = timed_render(out)
            size = (out / "index.html").stat().st_size / MiB
            print(f"index of {n} audited + {n // len(REASONS) * len(REASONS)} failed slides: "
                  f"{wall:.2f} s wall, {cpu:.2f} s CPU, {size:.1f} MiB")


if __name__ == "__main__":
    main()

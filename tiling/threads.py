"""How many threads one stage may use on one slide."""
from __future__ import annotations

import os


def stage_threads() -> int:
    """OMP_NUM_THREADS where a launcher shares the cores out (the pipeline's LocalCluster sets
    cores // workers on each worker), else one per core. The tile stage reads with these threads,
    and stitch, audit and report work on the slide's maps with them (NumPy, OpenCV, OpenSlide,
    zarr's codecs and the JPEG decode release the GIL)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0]))
    except ValueError:
        return os.cpu_count() or 1

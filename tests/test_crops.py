"""Close-ups: map windows on level-0 boxes, and a report that says when the slide is gone."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

from reports.crops import window
from reports.html import render_slide_report
from tiling.store import PATCHES


def test_window_samples_the_map_pixel_under_each_view_pixel() -> None:
    m = np.arange(16, dtype=np.float64).reshape(4, 4)
    np.testing.assert_array_equal(window(m, 2.0, (0, 0, 8, 8), (4, 4)), m)
    # view centres at level-0 3 and 5 -> map pixel centres 1 and 2
    np.testing.assert_array_equal(window(m, 2.0, (2, 2, 6, 6), (2, 2)), [[5, 6], [9, 10]])
    np.testing.assert_allclose(window(m, 2.0, (1, 0, 3, 2), (1, 1), order=1), [[0.5]])  # x 2: col 1/2


def test_report_without_the_slide_says_why_there_are_no_close_ups(report_archive, tmp_path: Path) -> None:
    slide_dir = tmp_path / "slides" / "positive"
    shutil.copytree(report_archive["positive"], slide_dir)
    zarr.open_group(slide_dir / PATCHES, mode="r+").attrs["source_path"] = str(tmp_path / "moved.svs")
    html = render_slide_report(slide_dir).read_text()
    assert "No close-ups" in html and "moved.svs" in html
    assert 'class="stack crop-' not in html

"""Report details: close-ups on level-0 boxes (and a note when the slide is gone), maps with no
positive evidence, the glossary from the metric registry."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr
from markupsafe import escape  # as the report's templates escape

from reports.audit.config import AuditConfig
from reports.audit.registry import metric
from reports.crops import window
from reports.html import render_slide_report
from reports.table import metric_columns
from tiling.samples.tiff import write_pyramid_tiff
from tiling.store import MAPS, PATCHES, seal_store
from tiling.store.records import load_audit


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
    html = render_slide_report(slide_dir, force=True).read_text()
    assert "No close-ups" in html and "moved.svs" in html
    assert 'class="stack crop-' not in html
    other = tmp_path / "other.tiff"  # another slide now at the recorded path: refused by its size
    write_pyramid_tiff(other, np.full((768, 1024, 3), 230, np.uint8), mpp=0.5)
    zarr.open_group(slide_dir / PATCHES, mode="r+").attrs["source_path"] = str(other)
    html = render_slide_report(slide_dir, force=True).read_text()
    assert "is 1024 x 768 px, the audited slide" in html and 'class="stack crop-' not in html


def test_all_zero_map_reads_no_positive_evidence_and_glossary_comes_from_the_registry(
        report_archive, tmp_path: Path) -> None:
    slide_dir = tmp_path / "slides" / "positive"
    shutil.copytree(report_archive["positive"], slide_dir)
    group = zarr.open_group(slide_dir / MAPS, mode="r+")
    level0 = group[f"{group.attrs['images']['hirescam']}/0"]
    values = level0[...]
    level0[...] = np.where(np.isfinite(values), 0.0, np.nan)  # ReLU'd CAM with no evidence
    seal_store(slide_dir / MAPS)  # edited on purpose, not damaged
    html = render_slide_report(slide_dir, force=True).read_text()
    zero, attention = (html.split(f'data-method="{m}"')[1].split("</figure>")[0] for m in ("hirescam", "attention"))
    assert "no positive evidence" in zero and zero.count("<img") == 1  # the outline layer, no tint
    assert "no positive evidence" not in attention and attention.count("<img") == 2
    for name in metric_columns([load_audit(slide_dir)]):
        record = metric(name)
        assert record.meaning and record.good and escape(record.meaning) in html
    assert escape(metric("auroc").good.format(min_auroc=AuditConfig().min_auroc)) in html

"""Report pages stay small enough to mail and open from a share: under 2 MB each."""
from __future__ import annotations

from pathlib import Path

import pytest

from fake_stores import make_slide_case
from reports.audit.config import AuditConfig
from reports.audit.stage import audit_slide
from reports.html import render_slide_report
from tiling.config import StitchConfig
from tiling.stitch import stitch_slide

LIMIT = 2 * 2 ** 20


def test_archive_pages_are_under_2_mb(report_archive: dict[str, Path]) -> None:
    pages = [report_archive["index"], *(report_archive[f] / "report.html" for f in ("positive", "evil"))]
    sizes = {page.name: page.stat().st_size for page in pages}
    assert all(0 < size < LIMIT for size in sizes.values()), sizes


@pytest.mark.slow
def test_a_report_on_full_resolution_maps_is_under_2_mb(tmp_path: Path) -> None:
    # maps at D = 1 (2970 x 2220 px, as a 4096-px map of a large slide): every view is at least
    # 1024 px, the close-ups read from the slide; the page still fits
    slide_dir, annotations = make_slide_case(tmp_path, "full")
    stitch_slide(slide_dir, annotations, StitchConfig(downsample=1.0))
    audit_slide(slide_dir, 1, AuditConfig())
    html = render_slide_report(slide_dir).read_text()
    assert html.count('class="stack crop-') >= 2 * 4  # the lesion and three peaks, without and with
    assert 500_000 < len(html.encode()) < LIMIT

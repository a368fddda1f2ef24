"""The resolution record of audit.json and the report, and the `upsampled` flag."""
from __future__ import annotations

from pathlib import Path

import pytest

from reports.audit.config import AuditConfig
from reports.audit.flags import FLAGS
from reports.audit.stage import flags, resolution
from tiling.store.records import load_audit

SLIDE = {"slide_mpp": 4.0, "mpp_source": "manifest", "level": 0, "level_mpp": 4.0, "mpp": 4.0, "patch_size": 56}
MAPS = {"annotation_downsample": {"a.xml": 0.03125}, "annotation_scale_source": {"a.xml": "manifest"}}


def raised(scales: dict) -> dict[str, dict]:
    return {f["flag"]: f for f in flags(None, 0, {}, [], [], AuditConfig(), 0, resolution=scales)}


def test_resolution_records_source_level_and_scales() -> None:
    scales = resolution(SLIDE, MAPS, {"mpp": 0.5, "patch": 224})
    assert scales["mpp_source"] == "manifest" and scales["level"] == 0 and scales["level_mpp"] == 4.0
    assert scales["patch_to_model"] == pytest.approx(4.0) and scales["upsample"] == pytest.approx(8.0)
    assert scales["annotation_downsample"] == {"a.xml": 0.03125}
    assert resolution({}, {}, {})["upsample"] is None


def test_upsampled_flag_beyond_one_and_a_half() -> None:
    assert FLAGS["upsampled"].verdict == "review" and FLAGS["upsampled"].scope == "slide"
    flag = raised(resolution(SLIDE, MAPS, {"mpp": 0.5, "patch": 224}))["upsampled"]
    assert flag["message"] == ("the model reads 0.5 µm/px, the slide's pixels are 4 µm/px (level 0): "
                               "its input is upsampled 8.0x")
    assert "upsampled" not in raised(resolution(SLIDE, MAPS, {"mpp": 4.0 / 1.5, "patch": 84}))
    assert "upsampled" not in raised(resolution(SLIDE, MAPS, {}))


def test_audit_and_report_show_the_resolution(report_archive: dict[str, Path]) -> None:
    scales = load_audit(report_archive["positive"])["provenance"]["resolution"]
    assert scales["mpp_source"] == "file" and scales["level"] == 0  # a one-level slide
    assert scales["level_mpp"] == scales["slide_mpp"] and scales["patch_size"] == 32
    html = (report_archive["positive"] / "report.html").read_text()
    assert 'id="resolution"' in html and "(from the file); read at level" in html

"""Label and annotations agree: a positive label without a lesion on tissue (or a negative one
with a lesion) raises `label_annotation_mismatch`, and the report says which."""
from __future__ import annotations

import html
from pathlib import Path

import pytest

from fake_stores import make_slide_case
from reports.audit.config import AuditConfig
from reports.audit.flags import FLAGS
from reports.audit.stage import audit_slide, flags
from reports.html import render_slide_report
from tiling.config import StitchConfig
from tiling.stitch import stitch_slide
from tiling.store.records import load_audit

GOOD = {"attention": {"pointing_game": {"value": 1.0}, "auroc": {"value": 0.9}}}


def _raised(label: int | None, on_tissue: int) -> dict:
    return {f["flag"]: f for f in flags(label, label or 0, GOOD, [], [], AuditConfig(), on_tissue)}


def test_the_flag_is_declared_once_and_fires_both_ways() -> None:
    record = FLAGS["label_annotation_mismatch"]
    assert (record.verdict, record.scope) == ("review", "slide") and record.rule is not None
    positive = _raised(1, 0)["label_annotation_mismatch"]
    assert positive["message"] == "labelled positive (class 1), no lesion annotated on tissue"
    assert _raised(0, 2)["label_annotation_mismatch"]["message"] == "labelled negative, 2 lesion(s) annotated on tissue"
    assert "label_annotation_mismatch" not in _raised(1, 1) | _raised(0, 0) | _raised(None, 0) | _raised(None, 3)


@pytest.mark.parametrize(("label", "says"), [(1, "Labelled positive, no lesion annotated on tissue"),
                                        (None, "No lesion annotated on tissue (no label)"),
                                        (0, "Negative slide")])
def test_the_report_of_a_slide_without_lesion_says_what_its_label_means(
        tmp_path: Path, label: int | None, says: str) -> None:
    slide_dir, _ = make_slide_case(tmp_path, "cmu", lesion=False)
    stitch_slide(slide_dir, [], StitchConfig(max_side=512))
    audit_slide(slide_dir, label, AuditConfig())
    raised = [f["flag"] for f in load_audit(slide_dir / "audit.json")["flags"]]
    assert ("label_annotation_mismatch" in raised) == (label == 1)
    page = html.unescape(render_slide_report(slide_dir).read_text())
    assert f"{says}: lesion metrics are n/a." in page
    assert ("Negative slide" in page) == (label == 0)

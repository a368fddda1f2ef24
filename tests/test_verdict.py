"""Per-slide verdicts: the registry's rules, audit.json, the slide banner and the index."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from reports.audit.config import AuditConfig
from reports.audit.flags import FLAGS, Flag, FlagInputs, raise_flags, slide_verdict
from reports.errors import RegistryError
from tiling.store.records import load_audit


@pytest.fixture(scope="module")
def archive(report_archive: dict[str, Path]) -> dict[str, Path]:
    return report_archive


def inputs(label: int | None, prediction: int, spearman: float, lesions: int) -> FlagInputs:
    scores = {m: {"pointing_game": {"value": None}, "auroc": {"value": None}, "artefact_peak": {"value": 0.0},
                  "artefact_top_patches": {"value": 0.0}} for m in ("attention", "gradcam")}
    pairs = [{"a": "attention", "b": "gradcam", "spearman": spearman}]
    return FlagInputs(label, prediction, scores, pairs, [{"suite": "maps", "success": True}],
                      AuditConfig(), lesions)


def test_every_flag_has_a_verdict_and_the_worst_one_decides():
    assert {f.verdict for f in FLAGS.values()} <= {"fail", "review", "info"}
    assert FLAGS["prediction_wrong"].verdict == FLAGS["validation_failed"].verdict == "fail"
    assert FLAGS["focus_outside_lesion"].verdict == FLAGS["label_annotation_mismatch"].verdict == "review"
    assert slide_verdict([]) == ("PASS", "no flag calls for review")
    verdict, reason = slide_verdict(raise_flags(inputs(0, 1, 0.0, 1)))
    assert verdict == "FAIL" and reason.startswith("Prediction wrong: predicted class 1, label 0")
    with pytest.raises(RegistryError, match="verdict 'warning'"):
        Flag("odd", "Odd", "Odd.", "warning", "slide")


def test_methods_disagree_is_information_on_a_slide_without_lesions():
    negative = raise_flags(inputs(0, 0, 0.0, 0))
    assert [(f["flag"], f["verdict"], f["severity"]) for f in negative] == [("methods_disagree", "info", "info")]
    assert slide_verdict(negative) == ("PASS", "no flag calls for review")
    positive = raise_flags(inputs(1, 1, 0.0, 1))
    assert [(f["flag"], f["verdict"]) for f in positive] == [("methods_disagree", "review")]
    assert slide_verdict(positive)[0] == "REVIEW"


def test_audit_json_report_and_index_show_the_verdict(archive):
    positive, evil = load_audit(archive["positive"]), load_audit(archive["evil"])
    assert positive["verdict"] == "REVIEW" and positive["verdict_reason"].startswith("Focus outside lesion")
    assert evil["verdict"] in ("PASS", "FAIL")
    assert all(f["verdict"] == "info" for f in evil["flags"] if f["flag"] == "methods_disagree")
    banner = re.search(r'<p class="verdict warn" id="verdict"><strong>REVIEW</strong>',
                       (archive["positive"] / "report.html").read_text())
    assert banner is not None
    table = pd.read_csv(archive["csv"])
    assert set(table.loc[table["slide_id"] == "CMU-1 positive", "verdict"]) == {"REVIEW"}
    html = archive["index"].read_text()
    assert 'id="needs-review"' in html and 'data-col="verdict"' in html
    assert re.search(r"Pipeline errors: 1 slide could not be processed", html)
    assert re.search(r'id="verdict-counts">2 slides audited:', html)

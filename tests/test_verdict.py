"""Per-slide verdicts: the registry's rules, audit.json, the slide banner and the index."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline.demo import with_unknown_slide
from reports.audit.config import AuditConfig
from reports.audit.flags import FLAGS, Flag, FlagInputs, raise_flags, slide_verdict
from reports.audit.gate import check_fail_on, gate_reasons
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
    assert {f.verdict for f in FLAGS.values()} == {"fail", "review", "unchecked", "info"}
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


def test_a_slide_with_nothing_to_check_against_is_unchecked_never_pass():
    for prediction in (0, 1):
        raised = raise_flags(inputs(None, prediction, 1.0, 0))
        verdict, reason = slide_verdict(raised)
        assert verdict == "UNCHECKED" and reason.startswith("Not checked: no label and no lesion annotated")
    assert slide_verdict(raise_flags(inputs(None, 1, 1.0, 1)))[0] == "PASS"  # annotations: focus checked
    assert slide_verdict(raise_flags(inputs(1, 1, 1.0, 0)))[0] == "REVIEW"  # positive without annotation
    unchecked_and_disagreeing = raise_flags(inputs(None, 1, 0.0, 0))
    assert slide_verdict(unchecked_and_disagreeing)[0] == "UNCHECKED"  # methods_disagree is info there
    assert gate_reasons({"verdict": "UNCHECKED", "flags": []}, ("unchecked",)) == ["unchecked"]
    assert gate_reasons({"verdict": "UNCHECKED", "flags": []}, ("review", "fail")) == []
    assert check_fail_on(("Unchecked",)) == ("unchecked",)


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


def test_the_demo_audits_one_slide_of_unknown_diagnosis(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,path,label,annotation,annotation_xml,ink\n"
                        "a,a.tiff,1,a.geojson,a.xml,1\nb,b.tiff,0,b.geojson,b.xml,0\n")
    audited = with_unknown_slide(manifest)
    rows = pd.read_csv(audited, dtype=str, keep_default_na=False).to_dict("records")
    assert rows[0] == {"slide_id": "a", "path": "a.tiff", "label": "1", "annotation": "a.geojson",
                       "annotation_xml": "a.xml", "ink": "1"}
    assert rows[1] == {"slide_id": "b", "path": "b.tiff", "label": "", "annotation": "", "annotation_xml": "",
                       "ink": "0"}
    written = audited.stat().st_mtime_ns
    assert with_unknown_slide(manifest) == audited and audited.stat().st_mtime_ns == written

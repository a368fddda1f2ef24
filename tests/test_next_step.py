"""One line of next steps per verdict, derived from the flags the audit raised."""
from __future__ import annotations

from typing import Any

import pytest

from reports.audit.flags import FLAGS, flag, slide_verdict
from reports.next_step import NOTHING_TO_DO, next_step


def audited(*raised: tuple[str, list[str]], **extra: Any) -> dict[str, Any]:
    """An audit.json as the audit stage writes it for these (flag, methods) raised, verdict included."""
    flags = [{"flag": name, "verdict": flag(name).verdict, "methods": methods, "message": "..."}
             for name, methods in raised]
    verdict, reason = slide_verdict(flags)
    return {"slide_id": "s1", "folder": "s1", "flags": flags, "verdict": verdict, "verdict_reason": reason, **extra}


def test_review_on_pen_ink_says_how_to_re_audit_without_it() -> None:
    audit = audited(("focus_on_artefact", ["gradcam"]),
                    artefact_focus={"gradcam": {"peaks": {"pen ink": 2}, "top_patches": {"pen ink": 5}},
                                    "attention": {"peaks": {"tissue fold": 1}, "top_patches": {}}})
    assert audit["verdict"] == "REVIEW"
    assert next_step(audit) == "re-audit without pen ink: slideaudit run ... --drop-artefacts ink"


def test_fail_resting_on_artefacts_names_every_kind_it_rests_on() -> None:
    audit = audited(("methods_disagree", ["attention~gradcam"]), ("depends_on_artefact", []),
                    without_artefacts={"depends": ["tissue fold", "pen ink"]})
    assert audit["verdict"] == "FAIL"  # the FAIL flag's step, not the REVIEW one raised first
    assert next_step(audit) == ("re-audit without pen ink and tissue fold: "
                                "slideaudit run ... --drop-artefacts ink,fold")


def test_review_names_the_methods_off_the_lesion() -> None:
    step = next_step(audited(("focus_outside_lesion", ["hirescam"]), ("insensitive_to_model", ["gradcam"])))
    assert step.startswith("compare the HiResCAM map with the lesion outline")


def test_fail_on_a_wrong_prediction_and_on_a_failed_check_say_what_to_look_at() -> None:
    assert "label" in next_step(audited(("prediction_wrong", [])))
    assert "slideaudit serve --reports OUT" in next_step(audited(("prediction_wrong", [])))
    step = next_step(audited(("validation_failed", ["explain.attention"])))
    assert step == ("see the failed check under Validation in the report; remove OUT/slides/s1 and re-run: "
                    "slideaudit run ...")


def test_unchecked_asks_for_labels_or_annotations() -> None:
    audit = audited(("not_checked", []))
    assert audit["verdict"] == "UNCHECKED"
    assert next_step(audit).startswith("add a label (manifest column label) or lesion annotations")


def test_pass_has_nothing_to_do_even_with_an_info_flag() -> None:
    audit = audited(("insensitive_to_model", ["gradcam"]))
    assert audit["verdict"] == "PASS" and next_step(audit) == NOTHING_TO_DO


@pytest.mark.parametrize("name", [name for name, record in FLAGS.items() if record.verdict != "info"])
def test_every_flag_that_can_set_a_verdict_has_a_next_step(name) -> None:
    audit = audited((name, ["gradcam"] if flag(name).scope == "method" else []))
    step = next_step(audit)
    assert step and step != NOTHING_TO_DO and "{" not in step

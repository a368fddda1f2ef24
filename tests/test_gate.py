"""The CI gate: `run --fail-on` / run.fail_on, exit code 4, the summary and run.json."""
from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.commands.run import echo_result
from pipeline.config import load_config
from pipeline.errors import EXIT_SLIDES_FAILED, EXIT_THRESHOLDS
from pipeline.runner import RunResult, gated_slides
from pipeline.stages import SlideState
from reports.audit.gate import check_fail_on, gate_reasons
from tiling.archive import SlideRecord
from tiling.errors import ConfigError
from tiling.store import slide_dir
from tiling.store.records import write_audit

REVIEW = {"verdict": "REVIEW", "verdict_reason": "Focus outside lesion: gradcam",
          "flags": [{"flag": "focus_outside_lesion", "verdict": "review"}]}
FAIL = {"verdict": "FAIL", "verdict_reason": "Prediction wrong: predicted class 1, label 0",
        "flags": [{"flag": "prediction_wrong", "verdict": "fail"}]}


def test_criteria_are_verdicts_or_registered_flags():
    assert check_fail_on(("Review", " prediction_wrong")) == ("review", "prediction_wrong")
    with pytest.raises(ConfigError, match=r"unknown 'looks_odd'.*review, fail, unchecked or flag names"):
        check_fail_on(("looks_odd",))
    assert gate_reasons(REVIEW, ("review",)) == ["review"] and gate_reasons(REVIEW, ("fail",)) == []
    assert gate_reasons(FAIL, ("review", "fail", "prediction_wrong")) == ["review", "fail", "prediction_wrong"]
    assert gate_reasons({"verdict": "PASS", "flags": []}, ("review",)) == []


def test_fail_on_is_a_config_key_and_a_flag_and_not_part_of_the_hash():
    assert load_config(None, {"run.fail_on": "review,validation_failed"}).run.fail_on == ("review", "validation_failed")
    assert load_config(None, {"run.fail_on": "fail"}).hash() == load_config(None).hash()
    with pytest.raises(ConfigError, match="unknown 'sometimes'"):
        load_config(None, {"run.fail_on": "sometimes"})


def _state(out: Path, slide_id: str, audit: dict | None) -> SlideState:
    if audit is not None:
        write_audit(slide_dir(out, slide_id) / "audit.json", audit)
    return SlideState(SlideRecord(slide_id, out / f"{slide_id}.tiff"),
                      failure=None if audit else {"stage": "tile", "message": "not a slide"})


def test_gated_slides_exit_4_over_3_and_are_listed(tmp_path: Path):
    states = [_state(tmp_path, "a", REVIEW), _state(tmp_path, "b", FAIL), _state(tmp_path, "c", None)]
    assert gated_slides(tmp_path, states, ()) == []
    gated = gated_slides(tmp_path, states, ("fail",))
    assert gated == [{"slide_id": "b", "verdict": "FAIL", "verdict_reason": FAIL["verdict_reason"], "met": ["fail"]}]
    assert RunResult(tmp_path, states, [], []).exit_code == EXIT_SLIDES_FAILED
    result = RunResult(tmp_path, states, [], gated)
    assert result.exit_code == EXIT_THRESHOLDS

    @click.command()
    def show() -> None:
        echo_result(result)

    output = CliRunner().invoke(show)
    assert output.exit_code == EXIT_THRESHOLDS
    assert "FAILED 1 slide(s) at tile" in output.output and "not a slide [c]" in output.output
    assert "1 slide(s) meet --fail-on (exit 4)" in output.output
    assert "FAIL b (fail): Prediction wrong" in output.output

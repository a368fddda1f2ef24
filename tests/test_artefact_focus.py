"""Focus on artefacts: the registry's artefact metrics on hand-computed maps, named by kind."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from explainers.models.encoders import embedding_dim
from explainers.models.io import load_model
from reports.audit import metrics as M
from reports.audit.artefact_focus import focus_record, top_patches
from reports.audit.config import AuditConfig
from reports.audit.flags import FLAGS, FlagInputs, raise_flags, slide_verdict
from reports.audit.registry import MapView
from reports.audit.stage import score_map, without_artefacts
from tiling.artefacts import PATCH_SHARE, PEN_INK, TISSUE_FOLD


def test_artefact_metrics_by_hand() -> None:
    m = np.array([[4, 0, 1, 0],
                  [0, 0, 0, 0],
                  [-5, 0, 0, 2],
                  [0, 0, 0, 3]], np.float32)
    artefacts = np.zeros((4, 4), np.uint8)
    artefacts[0, 0] = PEN_INK                   # the top peak
    artefacts[2, :] = TISSUE_FOLD               # holds a negative value (clipped) and the 2
    artefacts[0, 2] = TISSUE_FOLD               # the third peak
    valid = np.ones((4, 4), bool)
    config = AuditConfig(n_peaks=3, top_patches=4)
    peaks = M.peaks(m, valid, 3, 1)
    top_kinds = np.array([PEN_INK, 0, PEN_INK, TISSUE_FOLD], np.uint8)
    view = MapView(m, np.zeros((4, 4), np.uint16), valid, peaks, 1.0, config, artefacts, top_kinds)
    scores = {k: v["value"] for k, v in score_map(view).items() if k.startswith("artefact")}
    # positive mass 4 + 1 + 2 + 3 = 10; on artefacts 4 (ink) + 1 + 2 (fold) = 7
    assert scores["artefact_mass"] == pytest.approx(0.7)
    assert scores["artefact_peak"] == 1.0
    # peaks 4 (ink), 3 (none), 1 (fold; the 2 is next to the 3, no maximum): 2 of 3 on artefacts
    assert scores["artefact_peaks"] == pytest.approx(2 / 3)
    assert scores["artefact_top_patches"] == pytest.approx(3 / 4)
    record = focus_record(view.peak_kinds, top_kinds)
    assert record["peaks"] == {"pen ink": 1, "tissue fold": 1}
    assert record["top_patches"] == {"pen ink": 2, "tissue fold": 1}
    assert record["summary"] == ("2 of 4 top patches on pen ink, 1 on tissue fold; "
                                 "1 of 3 peaks on pen ink, 1 on tissue fold")


def test_no_artefact_says_so_and_a_flat_map_is_na() -> None:
    record = focus_record(np.zeros(5, np.uint8), np.zeros(6, np.uint8))
    assert record["summary"] == "none of 6 top patches on an artefact; none of 5 peaks on an artefact"
    flat = np.ones((3, 3), np.float32)
    view = MapView(flat, np.zeros((3, 3), np.uint16), np.ones((3, 3), bool), np.zeros((0, 2), np.int64), 1.0,
                   AuditConfig(), np.zeros((3, 3), np.uint8), np.zeros(0, np.uint8))
    scores = score_map(view)
    assert scores["artefact_mass"]["value"] == 0.0 and scores["artefact_peak"]["value"] is None


def test_top_patches_put_nan_last() -> None:
    np.testing.assert_array_equal(top_patches(np.array([0.1, np.nan, 0.5, 0.5]), 3), [2, 3, 0])


def test_without_artefacts_pools_the_kept_embeddings_each_kind_in_turn(model_dir: Path) -> None:
    model, config = load_model(model_dir)
    torch.manual_seed(0)
    h = torch.randn(10, embedding_dim(model.encoder, config.patch)) * 3
    shares = np.zeros((10, 3), np.float32)
    shares[[0, 1], 0] = 0.5                                 # pen ink on patches 0, 1
    shares[[1, 2], 1] = 0.2                                 # a fold on 1 (under the ink too) and 2
    shares[3, 1] = PATCH_SHARE / 2                          # too little to count
    off = np.zeros(10, bool)
    record = without_artefacts(model, h, shares, off, "softmax", ["normal", "tumor"], max_change=1.0)

    def p_without(*dropped: int) -> float:
        kept = [i for i in range(10) if i not in dropped]
        with torch.no_grad():
            return float(torch.softmax(model.pool(h[kept])[0].double(), -1)[1])

    assert list(record["kinds"]) == ["pen ink", "tissue fold"]
    ink, fold = record["kinds"]["pen ink"], record["kinds"]["tissue fold"]
    assert (ink["dropped"], fold["dropped"], record["all"]["dropped"]) == (2, 2, 3)
    assert ink["after"]["probabilities"]["tumor"] == pytest.approx(p_without(0, 1), abs=1e-6)
    assert fold["after"]["probabilities"]["tumor"] == pytest.approx(p_without(1, 2), abs=1e-6)
    assert record["all"]["after"]["probabilities"]["tumor"] == pytest.approx(p_without(0, 1, 2), abs=1e-6)
    name = record["before"]["prediction_name"]
    assert ink["change"] == pytest.approx(ink["after"]["probabilities"][name] - record["before"]["probabilities"][name])
    assert ink["depends"] == ink["flipped"]                 # max_change 1: only a flip counts
    tiny = without_artefacts(model, h, shares, off, "softmax", ["normal", "tumor"], max_change=1e-9)
    assert tiny["depends"] == ["pen ink", "tissue fold"]    # any change is more than 1e-9, each kind alone
    nothing = without_artefacts(model, h, np.zeros((10, 3), np.float32), off, "softmax", ["normal", "tumor"],
                                max_change=0.2)
    assert nothing["kinds"] == {} and nothing["all"] is None and nothing["depends"] == []
    everywhere = without_artefacts(model, h, np.full((10, 3), 0.5, np.float32), off, "softmax", ["normal", "tumor"],
                                   max_change=0.2)
    assert everywhere["all"]["after"] is None and everywhere["depends"] == []
    on_lesion = np.arange(10) == 0                          # the first ink patch holds annotated lesion
    kept = without_artefacts(model, h, shares, on_lesion, "softmax", ["normal", "tumor"], 1.0)
    assert kept["kinds"]["pen ink"]["dropped"] == 1 and kept["kept_on_lesion"] == 1
    assert kept["kinds"]["pen ink"]["after"]["probabilities"]["tumor"] == pytest.approx(p_without(1), abs=1e-6)


def test_the_flag_names_the_kind_the_prediction_rests_on() -> None:
    before = {"prediction": 1, "prediction_name": "tumor", "probabilities": {"normal": 0.02, "tumor": 0.98}}
    after = {"prediction": 0, "prediction_name": "normal", "probabilities": {"normal": 0.9, "tumor": 0.1}}
    same = {"dropped": 5, "after": before, "change": 0.0, "flipped": False, "depends": False}
    flips = {"dropped": 12, "after": after, "change": -0.88, "flipped": True, "depends": True}
    record = {"before": before, "kinds": {"pen ink": flips, "tissue fold": same}, "all": flips, "max_change": 0.2,
              "depends": ["pen ink"], "kept_on_lesion": 0}
    inputs = FlagInputs(0, 1, {}, [], [], AuditConfig(), artefact=record)
    _, message = FLAGS["depends_on_artefact"].rule(inputs)
    assert message == "without its 12 pen ink patch(es), p(tumor) goes from 0.980 to 0.100: predicted normal instead"
    together = {**record, "kinds": {"pen ink": same, "tissue fold": same}, "depends": ["pen ink", "tissue fold"]}
    _, message = FLAGS["depends_on_artefact"].rule(FlagInputs(0, 1, {}, [], [], AuditConfig(), artefact=together))
    assert message.startswith("without its 5 pen ink and 5 tissue fold patch(es), p(tumor) goes from 0.980 to 0.100")



def artefact_record(before: float, after: float) -> dict:
    def prediction(p: float) -> dict:
        return {"prediction": int(p > 0.5), "prediction_name": "tumor" if p > 0.5 else "normal",
                "probabilities": {"normal": 1 - p, "tumor": p}}

    depends = (before > 0.5) != (after > 0.5) or abs(after - before) > 0.2
    ink = {"dropped": 3, "after": prediction(after), "change": after - before,
           "flipped": (before > 0.5) != (after > 0.5), "depends": depends}
    return {"before": prediction(before), "kinds": {"pen ink": ink}, "all": ink, "max_change": 0.2,
            "depends": ["pen ink"] if depends else [], "kept_on_lesion": 0}


def flag_inputs(prediction: int, artefact: dict | None, peak: float | None, top: float | None) -> FlagInputs:
    scores = {"attention": {"pointing_game": {"value": None}, "auroc": {"value": None},
                            "artefact_peak": {"value": peak}, "artefact_top_patches": {"value": top}}}
    return FlagInputs(0, prediction, scores, [], [], AuditConfig(), 0, [], {}, artefact)


def test_depends_on_artefact_fails_the_slide_and_focus_on_one_asks_for_review() -> None:
    shortcut = raise_flags(flag_inputs(1, artefact_record(0.98, 0.001), 1.0, 0.5))
    names = {f["flag"]: f for f in shortcut}
    assert names["depends_on_artefact"]["verdict"] == "fail"
    assert "p(tumor) goes from 0.980 to 0.001: predicted normal instead" in names["depends_on_artefact"]["message"]
    assert names["focus_on_artefact"]["methods"] == ["attention"]
    assert slide_verdict(shortcut)[0] == "FAIL"
    moved = {f["flag"] for f in raise_flags(flag_inputs(1, artefact_record(0.95, 0.7), 0.0, 0.5))}
    assert moved == {"depends_on_artefact", "focus_on_artefact", "prediction_wrong"}
    steady = {f["flag"] for f in raise_flags(flag_inputs(1, artefact_record(0.95, 0.9), 0.0, 0.2))}
    assert steady == {"prediction_wrong"}                   # label 0 in flag_inputs
    negative = {f["flag"] for f in raise_flags(flag_inputs(0, artefact_record(0.1, 0.05), 1.0, 1.0))}
    assert negative == set()                                 # focus on ink is no concern when negative

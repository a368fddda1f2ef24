"""Deletion faithfulness on kept embeddings: a hand-built head where the answer is known."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import manifest_rows
from explainers.config import ExplainConfig, FaithfulnessConfig
from explainers.explain import explain_store
from explainers.faithfulness import Faithfulness, area, faithfulness, patch_scores
from explainers.models.mil import AttentionMIL
from reports.audit.config import AuditConfig
from reports.audit.stage import audit_slide
from reports.html import render_slide_report
from tiling.config import StitchConfig
from tiling.errors import ConfigError
from tiling.stitch import stitch_slide
from tiling.store.records import load_audit


def lesion_model() -> AttentionMIL:
    """Attention score s_k ≈ 4·h_k0 and logit_1 - logit_0 = 8·M_0: patches with a high h_0 decide."""
    model = AttentionMIL(nn.Sequential(), dim=2, hidden=1, n_classes=2)
    with torch.no_grad():
        for layer in model.parameters():
            layer.zero_()
        model.attention.V.weight[0, 0] = 1.0
        model.attention.U.bias[0] = 10.0      # gate ≈ 1
        model.attention.w.weight[0, 0] = 4.0
        model.classifier.weight[1, 0], model.classifier.weight[0, 0] = 4.0, -4.0
    return model


def test_patch_scores_are_map_means():
    maps = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    assert patch_scores(maps).tolist() == [1.5, 5.5]


def test_area_is_the_normalised_trapezoid():
    assert area([1.0, 1.0, 1.0], (0.1, 0.5)) == 1.0
    assert area([0.8, 0.4, 0.0], (0.25, 0.5)) == 0.5  # p/p0 = 1, ½, 0: (0.25·¾ + 0.25·¼) / 0.5
    assert area([0.0, 0.0], (0.5,)) is None


def test_a_ranking_of_the_lesion_beats_random_and_its_reverse_does_not():
    torch.manual_seed(0)
    h = torch.zeros(100, 2)
    h[:10, 0] = 2.0                              # ten lesion patches
    model = lesion_model()
    truth = h[:, 0].numpy()
    result = faithfulness(model, h, 1, "softmax", {"good": truth, "reverse": -truth},
                          FaithfulnessConfig(n_random=3))
    assert result.curves["good"][0] > 0.99 and result.curves["good"][-1] < 0.6
    assert result.areas["good"] < result.random_area - 0.05
    assert result.unfaithful(0.05) == ["reverse"]
    again = faithfulness(model, h, 1, "softmax", {"good": truth}, FaithfulnessConfig(n_random=3))
    assert again.random_curve == result.random_curve  # seeded


def test_the_audit_records_each_methods_deletion_curve_and_the_report_shows_it(
        slide_dir: Path, model_dir: Path, sample_archive: Path) -> None:
    explain_store(slide_dir, model_dir, ExplainConfig(methods=("gradcam", "hirescam")))
    row = manifest_rows(sample_archive)[0]
    stitch_slide(slide_dir, [Path(row["annotation"])], StitchConfig(max_side=512))
    config = AuditConfig(faithfulness=FaithfulnessConfig(fractions=(0.1, 0.5), n_random=2))
    audit = load_audit(audit_slide(slide_dir, int(row["label"]), config, model_dir))
    record = audit["faithfulness"]
    assert set(record["curves"]) == {"attention", "gradcam", "hirescam"} and record["fractions"] == [0.1, 0.5]
    assert all(len(c) == 3 and min(c) >= 0 and max(c) <= 1 for c in record["curves"].values())
    assert record["random_area"] is not None and set(record["unfaithful"]) <= set(record["curves"])
    assert ("unfaithful" in {f["flag"] for f in audit["flags"]}) == bool(record["unfaithful"])
    html = render_slide_report(slide_dir).read_text()
    assert 'id="faithfulness"' in html and "deletion curves per method" in html
    with pytest.raises(ConfigError, match="fractions"):
        FaithfulnessConfig(fractions=(0.5, 0.1))


def test_a_prediction_resting_on_the_whole_bag_flags_no_method():
    """When no deletion lowers p (every area >= 1 - margin), no ranking can be unfaithful."""
    diffuse = Faithfulness((0.1, 0.5), areas={"attention": 1.0, "gradcam": 0.99}, random_area=1.0)
    assert diffuse.unfaithful(0.05) == []
    localised = Faithfulness((0.1, 0.5), areas={"attention": 0.2, "gradcam": 0.98}, random_area=0.9)
    assert localised.unfaithful(0.05) == ["gradcam"]

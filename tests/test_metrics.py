"""Map-vs-lesion metrics and agreement: hand-computed cases and properties."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from reports.audit import metrics as M
from reports.audit.agreement import agreement, rank_correlations, sample_mask
from reports.audit.config import AuditConfig
from reports.audit.registry import MapView, metrics_for
from reports.audit.stage import flags, nearest_lesion, peak_records, score_map, slide_prediction
from reports.errors import MetricError
from reports.html import GOOD_RGB, POOR_RGB, place, shade


def row(*values: float) -> np.ndarray:
    return np.array([values], dtype=np.float64)


def everywhere(a: np.ndarray) -> np.ndarray:
    return np.ones(np.shape(a), bool)


@pytest.fixture
def blob() -> tuple[np.ndarray, np.ndarray]:
    """A 20 x 30 map rising towards (5, 8) and a lesion disk of radius 3 there."""
    rr, cc = np.mgrid[:20, :30]
    dist = np.hypot(rr - 5, cc - 8)
    return (-dist).astype(np.float32), dist <= 3


def test_auroc_hand_computed() -> None:
    # lesion values {2, 4} vs other {1, 3}: 3 of 4 pairs ordered right -> 0.75
    m, lesion = row(1, 2, 3, 4), row(0, 1, 0, 1).astype(bool)
    assert M.pixel_auroc(m, lesion, everywhere(m)) == pytest.approx(0.75)
    # ties count one half: pairs (1,1)=.5 (1,2)=0 (2,1)=1 (2,2)=.5 -> 0.5
    assert M.pixel_auroc(row(1, 1, 2, 2), lesion, everywhere(m)) == pytest.approx(0.5)


def test_auroc_properties(blob) -> None:
    m, lesion = blob
    valid = everywhere(m)
    assert M.pixel_auroc(lesion.astype(float), lesion, valid) == pytest.approx(1.0)
    assert M.pixel_auroc(m, lesion, valid) == pytest.approx(1.0)
    assert M.pixel_auroc(-m, lesion, valid) == pytest.approx(0.0)
    assert M.pixel_auroc((~lesion).astype(float), lesion, valid) == pytest.approx(0.0)
    assert M.pixel_auroc(np.full(m.shape, 7.0), lesion, valid) == pytest.approx(0.5)
    assert M.pixel_auroc(m, np.zeros_like(lesion), valid) is None
    assert M.pixel_auroc(m, np.ones_like(lesion), valid) is None


def test_auroc_ignores_invalid_pixels() -> None:
    m = row(1, 2, 3, 100)
    lesion = row(0, 1, 1, 0).astype(bool)
    valid = row(1, 1, 1, 0).astype(bool)  # the 100 is off tissue
    assert M.pixel_auroc(m, lesion, valid) == pytest.approx(1.0)


def test_pointing_game_tolerance_and_ties() -> None:
    m = np.zeros((1, 12))
    m[0, 9] = 5.0
    lesion = np.zeros((1, 12), bool)
    lesion[0, 2:6] = True  # nearest lesion pixel to the max is 4 px away
    valid = everywhere(m)
    assert M.pointing_game(m, lesion, valid, 0.0) == 0.0
    assert M.pointing_game(m, lesion, valid, 3.9) == 0.0
    assert M.pointing_game(m, lesion, valid, 4.0) == 1.0
    m[0, 3] = 5.0  # a tie at the maximum inside the lesion is a hit
    assert M.pointing_game(m, lesion, valid, 0.0) == 1.0
    assert M.pointing_game(m, np.zeros_like(lesion), valid) is None


def test_a_maximum_on_an_artefact_is_no_hit_however_near() -> None:
    m = np.zeros((1, 12))
    m[0, 6] = 5.0
    lesion = np.zeros((1, 12), bool)
    lesion[0, 2:6] = True  # 1 px from the maximum
    ink = np.zeros((1, 12), bool)
    ink[0, 6:9] = True
    valid = everywhere(m)
    assert M.pointing_game(m, lesion, valid, 2.0) == 1.0
    assert M.pointing_game(m, lesion, valid, 2.0, off_limits=ink) == 0.0
    m[0, 4] = 5.0  # a tie at the maximum inside the lesion, off the ink: a hit
    assert M.pointing_game(m, lesion, valid, 2.0, off_limits=ink) == 1.0


def test_peak_records_say_where_each_peak_lies_and_whether_it_hits() -> None:
    labels = np.zeros((1, 12), np.uint16)
    labels[0, 2:4] = 1
    tissue = np.ones((1, 12), bool)
    artefacts = np.zeros((1, 12), np.uint8)
    artefacts[0, 7] = 1  # pen ink
    m = np.arange(12, dtype=float)[None]
    found = np.array([[0, 3], [0, 7], [0, 11]])
    nearest = nearest_lesion(labels, tissue, 10.0, found)
    near, inked, far = peak_records(m, found, nearest, artefacts, 4.0, ["Tumor 1"], tolerance_um=50.0)
    assert (near["lesion"], near["lesion_um"], near["hit"]) == ("Tumor 1", 0.0, True)
    assert (inked["artefact"], inked["lesion_um"], inked["hit"]) == ("pen ink", 40.0, False)
    assert (far["lesion_um"], far["hit"]) == (80.0, False)
    assert [place(p) for p in (near, inked, far)] == ["in Tumor 1", "on pen ink, 40 µm from Tumor 1",
                                                       "80 µm from Tumor 1"]
    assert nearest_lesion(np.zeros_like(labels), tissue, 10.0, found) is None


def test_nearest_lesion_at_the_peaks_equals_the_distance_transform() -> None:
    rng = np.random.default_rng(1)
    labels = np.zeros((60, 80), np.uint16)
    labels[5:15, 10:30], labels[40:55, 50:70] = 1, 2
    tissue = rng.random(labels.shape) < 0.9
    points = rng.integers(0, (60, 80), (40, 2))
    distance, nearest = ndimage.distance_transform_edt(~((labels > 0) & tissue), return_indices=True)
    found_um, found_label = nearest_lesion(labels, tissue, 2.5, points)
    rows, cols = points.T
    np.testing.assert_array_equal(found_um, distance[rows, cols] * 2.5)   # exact, not close
    np.testing.assert_array_equal(found_label, labels[nearest[0][rows, cols], nearest[1][rows, cols]])


def test_metric_colours_follow_the_direction_the_registry_declares() -> None:
    assert shade(1.0, "auroc") == shade(0.0, "artefact_peak") == "rgb({} {} {})".format(*GOOD_RGB)
    assert shade(0.0, "auroc") == shade(1.0, "artefact_peak") == "rgb({} {} {})".format(*POOR_RGB)
    assert shade(None, "auroc") == "transparent"


def test_pointing_game_tolerance_counts_lesion_on_tissue_only() -> None:
    m = np.zeros((1, 12))
    m[0, 9] = 5.0
    lesion = np.zeros((1, 12), bool)
    lesion[0, 2:8] = True  # 2 px from the maximum, but its pixels 6 and 7 lie off the tissue
    valid = everywhere(m)
    valid[0, 6:8] = False
    assert M.pointing_game(m, lesion, valid, 2.0) == 0.0  # lesion on tissue is 4 px away
    assert M.pointing_game(m, lesion, valid, 4.0) == 1.0
    assert M.pointing_game(m, lesion, everywhere(m), 2.0) == 1.0


def test_top_k_is_strict_when_ties_at_the_cut_overflow_it() -> None:
    valid = everywhere(row(*range(10)))
    sparse = row(5, 4, 0, 0, 0, 0, 0, 0, 0, 0)  # top 30 % = 3 px, but 8 pixels tie at 0
    assert M.top_k_mask(sparse, valid, 0.3).tolist() == [[True, True] + [False] * 8]
    assert M.top_k_mask(row(3, 2, 2, 1), valid[:, :4], 0.5).tolist() == [[True, False, False, False]]
    assert M.top_k_mask(row(3, 2, 1, 1), valid[:, :4], 0.5).tolist() == [[True, True, False, False]]
    assert M.top_k_mask(row(2, 2, 2, 1), valid[:, :4], 0.5) is None  # 3 tied at the top, k = 2
    # the old rule took all ten pixels: IoU 2/10 = 0.2 against a lesion of the two; strict: 1.0
    config = AuditConfig(top_k=(0.3,))
    lesion = (sparse > 0).astype(np.uint16)
    scores = score_map(MapView(sparse, lesion, valid, M.peaks(sparse, valid, 1, 1), 1.0, config,
                               np.zeros(sparse.shape, np.uint8), np.zeros(config.top_patches, np.uint8)))
    assert scores["iou_top30"]["value"] == pytest.approx(1.0)
    assert scores["dice_lesion_share"]["value"] == pytest.approx(1.0)
    assert "strict" in scores["iou_top30"]["preprocessing"]


@pytest.mark.parametrize("score", [
    lambda m, lesion, valid: M.pixel_auroc(m, lesion, valid),
    lambda m, lesion, valid: M.pointing_game(m, lesion, valid, 1.0),
    lambda m, lesion, valid: M.relevance_mass(m, lesion, valid),
    lambda m, lesion, valid: M.relevance_rank_accuracy(m, lesion, valid),
    lambda m, lesion, valid: M.top_k_mask(m, valid, 0.5),
    lambda m, lesion, valid: M.peaks(m, valid, 2, 1),
])
def test_nan_inside_the_valid_pixels_is_an_error_outside_it_ignored(score) -> None:
    m, lesion = row(1.0, np.nan, 3.0, np.inf), row(0, 0, 1, 1).astype(bool)
    with pytest.raises(MetricError, match="2 of 4 valid map pixels are NaN or infinite"):
        score(m, lesion, everywhere(m))
    score(m, lesion, np.isfinite(m))  # left out of the valid pixels: scored


def test_auroc_equals_scipys_mann_whitney_u(blob) -> None:
    from scipy.stats import mannwhitneyu

    m, lesion = blob
    noisy = np.round(m + np.random.default_rng(0).normal(0, 2, m.shape), 1)  # with ties
    valid = np.random.default_rng(1).random(m.shape) < 0.8
    pos, neg = noisy[valid & lesion], noisy[valid & ~lesion]
    expected = mannwhitneyu(pos, neg).statistic / (pos.size * neg.size)
    assert M.pixel_auroc(noisy, lesion, valid) == pytest.approx(expected, abs=1e-12)


def test_relevance_mass_hand_computed(blob) -> None:
    # clipped: [0, 2, 3, 5]; inside the lesion 0 + 2 of 10 -> 0.2
    m, lesion = row(-1, 2, 3, 5), row(1, 1, 0, 0).astype(bool)
    assert M.relevance_mass(m, lesion, everywhere(m)) == pytest.approx(0.2)
    assert M.relevance_mass(row(-1, -2, -3, -5), lesion, everywhere(m)) is None
    bm, bl = blob
    assert M.relevance_mass(bl.astype(float), bl, everywhere(bm)) == pytest.approx(1.0)


def test_rank_accuracy_hand_computed() -> None:
    lesion = row(1, 0, 1, 0).astype(bool)  # K = 2; top-2 = {4, 3}: one in the lesion
    assert M.relevance_rank_accuracy(row(4, 3, 2, 1), lesion, everywhere(lesion)) == 0.5
    assert M.relevance_rank_accuracy(row(4, 1, 3, 2), lesion, everywhere(lesion)) == 1.0
    # constant map: ties fill pro rata -> K / |valid| = 0.5
    assert M.relevance_rank_accuracy(row(1, 1, 1, 1), lesion, everywhere(lesion)) == 0.5
    # K = 2; 5 is in, then 3 places tie at 2 with 1 of 3 in the lesion: (1 + 1/3) / 2
    lesion5 = row(1, 1, 0, 0, 0).astype(bool)
    assert M.relevance_rank_accuracy(row(5, 2, 2, 2, 1), lesion5, everywhere(lesion5)) == \
        pytest.approx((1 + 1 / 3) / 2)


def test_top_k_mask_iou_dice() -> None:
    m = row(9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
    top = M.top_k_mask(m, everywhere(m), 0.2)
    assert top.tolist() == [[True, True] + [False] * 8]
    assert M.top_k_mask(row(1, 1, 1, 1), everywhere(row(1, 1, 1, 1)), 0.25) is None  # no top region
    a = row(1, 1, 1, 0).astype(bool)
    b = row(0, 1, 1, 1).astype(bool)
    assert M.iou(a, b) == pytest.approx(2 / 4)
    assert M.dice(a, b) == pytest.approx(4 / 6)
    assert M.iou(~a & a, ~a & a) is None


def test_lesion_hit_rate_two_lesions() -> None:
    labels = np.zeros((20, 40), np.uint16)
    labels[2:6, 2:6] = 1
    labels[12:18, 30:36] = 2
    m = np.zeros((20, 40))
    m[3, 3] = 10  # a peak in lesion 1
    m[10, 15] = 8  # a peak outside both
    valid = everywhere(m)
    assert M.peaks(m, valid, 2, 3).tolist() == [[3, 3], [10, 15]]
    assert M.lesion_hit_rate(M.peaks(m, valid, 2, 3), labels, valid) == 0.5
    m[15, 33] = 9
    assert M.lesion_hit_rate(M.peaks(m, valid, 2, 3), labels, valid) == 1.0
    assert M.lesion_hit_rate(M.peaks(m, valid, 1, 3), labels, valid) == 0.5
    assert M.lesion_hit_rate(M.peaks(m, valid, 2, 3), np.zeros_like(labels), valid) is None
    assert len(M.peaks(np.ones((5, 5)), everywhere(np.ones((5, 5))), 3, 1)) == 0


def test_spearman_hand_computed() -> None:
    # ranks [1,2,3,4] vs [1,3,2,4]: Σd² = 2 -> 1 - 6·2 / (4·15) = 0.8
    valid = everywhere(row(0, 0, 0, 0))
    rho = rank_correlations({"a": row(1, 2, 3, 4), "b": row(10, 30, 20, 40),
                             "c": row(4, 3, 2, 1)}, valid)
    assert rho[0, 1] == pytest.approx(0.8)
    assert rho[0, 2] == pytest.approx(-1.0)
    pairs = agreement({"a": row(1, 2, 3, 4), "b": row(2, 4, 6, 8), "k": row(1, 1, 1, 1)},
                      valid, 0.5)
    assert pairs[0] == {"a": "a", "b": "b", "spearman": pytest.approx(1.0), "top_iou": 1.0}
    assert pairs[1]["spearman"] is None  # a constant map has no rank correlation
    assert pairs[1]["top_iou"] is None  # nor a top region


def view(m: np.ndarray, labels: np.ndarray, n_peaks: int, config: AuditConfig) -> MapView:
    """The map against `labels`, without artefacts (no top patch on one)."""
    return MapView(m, labels, everywhere(m), M.peaks(m, everywhere(m), n_peaks, 3), 2.0, config,
                   np.zeros(m.shape, np.uint8), np.zeros(config.top_patches, np.uint8))


def test_score_map_negative_slide_is_na(blob) -> None:
    m, _ = blob
    scores = score_map(view(m, np.zeros(m.shape, np.uint16), 5, AuditConfig()))
    assert list(scores) == list(metrics_for(AuditConfig()))
    assert all(s["value"] is None for n, s in scores.items() if not n.startswith("artefact"))
    # artefact metrics hold on every slide; the map has no positive mass, so no mass share
    assert {n: s["value"] for n, s in scores.items() if n.startswith("artefact")} == {
        "artefact_mass": None, "artefact_peak": 0.0, "artefact_peaks": 0.0, "artefact_top_patches": 0.0}
    assert all(s["preprocessing"] for s in scores.values())


def test_score_map_positive_slide(blob) -> None:
    m, lesion = blob
    config = AuditConfig(top_k=(0.05,), n_peaks=1)
    scores = score_map(view(m, lesion.astype(np.uint16), 1, config))
    assert scores["auroc"]["value"] == pytest.approx(1.0)
    assert scores["pointing_game"]["value"] == 1.0
    assert scores["rank_accuracy"]["value"] == 1.0
    assert scores["iou_lesion_share"]["value"] == 1.0
    assert scores["lesion_hit_rate"]["value"] == 1.0
    assert "clipped" in scores["relevance_mass"]["preprocessing"]


def test_prediction_and_flags() -> None:
    soft = slide_prediction(np.array([0.0, np.log(3.0)]), "softmax", ["normal", "tumor"])
    assert soft["prediction"] == 1 and soft["probabilities"]["tumor"] == pytest.approx(0.75)
    sig = slide_prediction(np.array([-np.log(3.0)]), "sigmoid", ["normal", "tumor"])
    assert sig["prediction"] == 0 and sig["probabilities"]["tumor"] == pytest.approx(0.25)
    assert sig["logits"] == pytest.approx({"normal": np.log(3.0), "tumor": -np.log(3.0)})
    good = {"pointing_game": {"value": 1.0}, "auroc": {"value": 0.8}}
    bad = {"pointing_game": {"value": 0.0}, "auroc": {"value": 0.8}}
    weak = {"pointing_game": {"value": 1.0}, "auroc": {"value": 0.6}}
    pairs = [{"a": "attention", "b": "gradcam", "spearman": 0.1, "top_iou": 0.0}]
    suites = [{"suite": "maps", "success": False}]
    found = {f["flag"]: f for f in flags(0, 1, {"attention": good, "gradcam": bad, "cam": weak},
                                         pairs, suites, AuditConfig())}
    assert found["focus_outside_lesion"]["methods"] == ["gradcam", "cam"]
    assert found["methods_disagree"]["methods"] == ["attention~gradcam"]
    assert "prediction_wrong" in found and found["validation_failed"]["methods"] == ["maps"]
    assert flags(None, 1, {"attention": good}, [], [], AuditConfig(), lesions_on_tissue=1) == []
    assert [f["flag"] for f in flags(None, 1, {"attention": good}, [], [], AuditConfig())] == ["not_checked"]


def test_peak_on_a_plateau_moves_to_its_centre() -> None:
    m = np.zeros((20, 20))
    m[4:9, 10:17] = 3.0  # one patch's attention: a 5 x 7 plateau centred on (6, 13)
    m[15, 3] = 1.0
    found = M.peaks(m, everywhere(m), n_peaks=5, min_distance_px=2)
    assert found.tolist() == [[6, 13], [15, 3]]


def test_agreement_samples_large_maps_with_a_seed(blob) -> None:
    m, _ = blob
    valid = everywhere(m)
    assert sample_mask(valid, 10_000, 0) is valid
    picked = sample_mask(valid, 50, 3)
    assert picked.sum() == 50 and (picked == sample_mask(valid, 50, 3)).all()
    noisy = m + np.random.default_rng(1).normal(0, 2, m.shape)
    exact = agreement({"a": m, "b": noisy}, valid, 0.1)[0]
    sampled = agreement({"a": m, "b": noisy}, valid, 0.1, max_pixels=300, seed=0)[0]
    assert sampled["spearman"] == pytest.approx(exact["spearman"], abs=0.1)
    assert sampled["top_iou"] == exact["top_iou"]

"""Model-parameter randomisation check (Adebayo et al. 2018): layers, re-initialisation, ρ, the audit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL, manifest_rows
from explainers.config import ExplainConfig, SanityConfig
from explainers.explain import explain_store
from explainers.models.io import build_model, load_model
from explainers.sanity import bag_maps, layers, rank_correlation, reinitialise, sample_reader
from reports.audit.config import AuditConfig
from reports.audit.stage import audit_slide
from reports.html import render_slide_report
from tiling.config import StitchConfig
from tiling.errors import ConfigError
from tiling.stitch import stitch_slide
from tiling.store import open_patch_store
from tiling.store.explain import open_explain_store
from tiling.store.records import load_audit


def test_layers_go_top_down_head_first() -> None:
    model = build_model(SMALL)
    assert [name for name, _ in layers(model)] == ["head", "encoder.block4", "encoder.block3",
                                                   "encoder.block2", "encoder.block1"]
    assert layers(model)[0][1] == [model.attention, model.classifier]


def test_reinitialise_draws_new_seeded_weights_for_those_modules_only() -> None:
    a, b = build_model(SMALL), build_model(SMALL)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    reinitialise([a.encoder.block4], seed=3)
    reinitialise([b.encoder.block4], seed=3)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])                      # seeded
        assert torch.equal(value, before[key]) != key.startswith("encoder.block4"), key


def test_rank_correlation_hand_computed() -> None:
    # ranks [1,2,3,4] vs [1,3,2,4]: Σd² = 2 -> 1 - 6·2 / (4·15) = 0.8
    assert rank_correlation(np.array([1, 2, 3, 4.0]), np.array([[10, 30], [20, 40.0]])) == pytest.approx(0.8)
    assert rank_correlation(np.ones(4), np.arange(4.0)) is None
    with pytest.raises(ConfigError, match="max_rho"):
        SanityConfig(max_rho=2)


@pytest.mark.slow
def test_gradcam_follows_the_model_and_guided_backprop_is_flagged(
        slide_dir: Path, model_dir: Path, sample_archive: Path) -> None:
    explain_store(slide_dir, model_dir, ExplainConfig(methods=("gradcam", "guided_backprop")))
    row = manifest_rows(sample_archive)[0]
    stitch_slide(slide_dir, [Path(row["annotation"])], StitchConfig(max_side=256))
    config = AuditConfig(sanity=SanityConfig(enabled=True, max_patches=16, draws=3))
    plain = load_audit(audit_slide(slide_dir, int(row["label"]), config, model_dir))
    assert plain["sanity"] is None  # only the slides a run picks are checked
    audit = load_audit(audit_slide(slide_dir, int(row["label"]), config, model_dir, sanity=True))
    record = audit["sanity"]
    assert record["layers"][0] == "head" and record["patches"] == 16  # a seeded sample of the 19 patches
    rho = record["rho"]
    assert set(rho) == {"attention", "gradcam", "guided_backprop"}
    assert all(len(values) == len(record["layers"]) for values in rho.values())
    assert record["draws"] == 3 and all(len(step) == 3 for steps in record["rho_draws"].values() for step in steps)
    for name, steps in record["rho_draws"].items():          # the median and range of the draws
        for step, median, spread in zip(steps, rho[name], record["rho_range"][name], strict=True):
            known = [v for v in step if v is not None]
            assert median == pytest.approx(float(np.median(known))) and spread == [min(known), max(known)]
    assert len(set(record["rho_draws"]["gradcam"][0])) > 1   # each draw its own random weights
    assert rho["gradcam"][1] < 0.5                # Grad-CAM changes once the top block is random
    assert rho["guided_backprop"][1] > 0.5        # guided backprop barely does: it shows the input
    assert record["insensitive"] == ["guided_backprop"]
    flagged = {f["flag"]: f for f in audit["flags"]}["insensitive_to_model"]
    assert flagged["methods"] == ["guided_backprop"] and flagged["verdict"] == "info"
    html = render_slide_report(slide_dir).read_text()
    section = html[html.index('id="sanity"'):html.index('id="agreement"')]
    assert "insensitive to the model" in section and "+ encoder.block4" in section and "<img" in section
    assert "for 3 draws of random weights" in " ".join(section.split())


@pytest.mark.parametrize("target", ["slide", "instance"])
def test_the_check_starts_from_the_maps_the_explain_stage_wrote(slide_dir: Path, model_dir: Path,
                                                                 target: str) -> None:
    store = open_patch_store(slide_dir)
    explain = open_explain_store(explain_store(slide_dir, model_dir, ExplainConfig(target=target)), store)
    model, config = load_model(model_dir)
    read = sample_reader(store, config, torch.device("cpu"), np.arange(len(store)))
    maps = bag_maps(model, config.target_layer, ("gradcam",), read, len(store),
                    int(explain.attrs["target_class"]), 8, target)
    np.testing.assert_allclose(maps["gradcam"], explain["gradcam"][:], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps["attention"], explain["attention"][:], rtol=1e-5, atol=1e-7)


def test_a_run_checks_a_seeded_sample_of_the_archives_slides() -> None:
    from pipeline.runner import sanity_sample
    from tiling.archive import SlideRecord

    records = [SlideRecord(f"s{i}", Path(f"s{i}.tif")) for i in range(6)]
    assert sanity_sample(records, SanityConfig()) == frozenset()                 # off by default
    picked = sanity_sample(records, SanityConfig(enabled=True, slides=2))
    assert len(picked) == 2 and picked <= {r.slide_id for r in records}
    assert sanity_sample(records[::-1], SanityConfig(enabled=True, slides=2)) == picked   # order-free
    assert sanity_sample(records, SanityConfig(enabled=True, slides=9)) == {r.slide_id for r in records}


def test_the_audit_stage_runs_the_check_on_the_runs_device_and_batch_with_one_model_per_worker(
        slide_dir: Path, model_dir: Path, sample_archive: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from explainers.errors import ModelError
    from explainers.models.io import save_model
    from pipeline.config import PipelineConfig
    from pipeline.stages import Context, SlideState, run_stage
    from reports.audit import stage
    from tiling.archive import SlideRecord

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    explain_store(slide_dir, model, ExplainConfig(methods=("gradcam",)))
    row = manifest_rows(sample_archive)[0]
    stitch_slide(slide_dir, [Path(row["annotation"])], StitchConfig(max_side=256))
    loads, batches = [], []   # spies around the real functions: every call still runs
    monkeypatch.setattr(stage, "load_model", lambda d: loads.append(d) or load_model(d))
    real = stage.randomisation
    monkeypatch.setattr(stage, "randomisation", lambda m, *a: batches.append(
        (a[5], next(m.parameters()).device.type)) or real(m, *a))
    stage._cached_model.cache_clear()   # a fresh worker
    audit = AuditConfig(sanity=SanityConfig(enabled=True, max_patches=8, draws=1))
    config = PipelineConfig(explain=ExplainConfig(device="cpu", batch=3), audit=audit)
    record = SlideRecord("sample_000", Path(row["path"]), (int(row["label"]),))
    ctx = Context(slide_dir.parent.parent, model, config, sanity_slides=frozenset({"sample_000"}))
    state = run_stage("audit", SlideState(record), ctx)
    assert state.failure is None and load_audit(slide_dir)["sanity"]["patches"] == 8
    assert batches == [(3, "cpu")]        # the run's batch and device reached the check
    audit_slide(slide_dir, 0, audit, model, sanity=True, device="cpu")   # a second slide's audit
    assert len(loads) == 1                # deletion, counterfactual and check share one load
    assert batches[-1] == (64, "cpu")     # no batch given: the explain stage's CPU batch
    save_model(build_model(SMALL), SMALL, model)   # the model folder rewritten: loaded again
    audit_slide(slide_dir, 1, audit, model)
    assert len(loads) == 2
    if not torch.cuda.is_available():     # --device cuda is obeyed, never swapped for "auto"
        with pytest.raises(ModelError, match="no CUDA device"):
            audit_slide(slide_dir, 0, audit, model, sanity=True, device="cuda")

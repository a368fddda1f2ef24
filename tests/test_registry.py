"""The registries: a method, metric or flag is declared once and everything else follows."""
from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from conftest import manifest_rows
from explainers.config import ExplainConfig
from explainers.engine import BagExplainer
from explainers.errors import ModelError
from explainers.methods.cams import CAM
from explainers.methods.registry import (
    IMPLEMENTATIONS,
    METHODS,
    declare,
    default_methods,
    implementation,
    implements,
    method,
    method_names,
    parse_methods,
)
from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model
from explainers.single_image import RegionConfig
from pipeline.cli import main
from reports.audit.config import AuditConfig
from reports.audit.flags import ARTEFACT_FOCUS, FLAGS, VERDICTS, FlagInputs, flag
from reports.audit.registry import metric, metrics_for
from reports.audit.stage import audit_slide
from reports.errors import RegistryError
from reports.html import render_index, render_slide_report
from tiling.config import StitchConfig
from tiling.errors import ConfigError
from tiling.stitch import stitch_slide
from tiling.store.records import load_audit, write_audit


@pytest.fixture
def max_cam():
    """A CAM variant declared only here: α_c = max_ij G_cij."""
    declare("maxcam", "Max-CAM", kind="cam", needs=("activations", "gradients"),
            formula="α_c = max_ij G_cij", description="Where the steepest gradient of each channel is.")

    @implements("maxcam")
    class MaxCAM(CAM):
        def weights(self, acts, grads, linear):
            return grads.amax((2, 3), keepdim=True)

    yield MaxCAM
    del METHODS["maxcam"], IMPLEMENTATIONS["maxcam"]


def test_a_new_cam_method_reaches_every_output_without_touching_another_file(
        max_cam, tile_sample, sample_archive, tmp_path):
    config = ModelConfig(name="small", encoder_kwargs={"width": 4}, seed=1)
    model_dir = save_model(build_model(config), config, tmp_path / "model")
    out = tmp_path / "out"
    slide_dir = out / "slides" / "sample_000"
    shutil.copytree(tile_sample(0), slide_dir / "patches.zarr")

    assert "maxcam" in method_names() and "maxcam" in parse_methods("gradcam,maxcam")
    result = CliRunner().invoke(main, ["explain", str(slide_dir), "--model", str(model_dir),
                                       "--methods", "gradcam,maxcam"])
    assert result.exit_code == 0, result.output
    explained = zarr.open_group(slide_dir / "explain.zarr", mode="r")
    assert list(explained.attrs["methods"]) == ["gradcam", "maxcam"]
    maps = explained["maxcam"][:]
    assert maps.shape == explained["gradcam"].shape and np.isfinite(maps).all() and maps.max() > 0

    row = manifest_rows(sample_archive)[0]
    stitch_slide(slide_dir, [Path(row["annotation"])], StitchConfig(max_side=1024))
    audit_slide(slide_dir, int(row["label"]), AuditConfig())
    audit = load_audit(slide_dir)
    assert audit["methods"] == ["attention", "gradcam", "maxcam"]
    assert set(audit["metrics"]["maxcam"]) == set(metrics_for(AuditConfig()))
    assert "Max-CAM" in render_slide_report(slide_dir).read_text()
    index, table = render_index(out)
    assert "Max-CAM" in index.read_text()
    with open(table, newline="") as f:
        assert "maxcam" in {r["method"] for r in csv.DictReader(f)}


def test_unknown_method_is_a_config_error_that_lists_the_choices():
    with pytest.raises(ConfigError, match="gradcampp"):
        parse_methods("gradcam,lime")
    with pytest.raises(ConfigError, match="unknown method 'lime'"):
        method("lime")
    assert parse_methods(["gradcam", " gradcam", "cam"]) == ("gradcam", "cam")
    with pytest.raises(ConfigError, match="no methods"):
        parse_methods(" , ")


def test_every_method_declares_what_it_needs_and_its_texts():
    for name in method_names():
        record = method(name)
        assert record.title and record.formula and record.description and record.needs
        assert all(r in METHODS for r in record.requires)
        assert isinstance(implementation(name)(), implementation(name))


def test_the_registry_owns_the_default_methods(max_cam):
    assert default_methods("slides") == ExplainConfig().methods == ("gradcam",)
    assert default_methods("images") == RegionConfig().methods == (
        "gradcam", "gradcampp", "guided_backprop", "guided_gradcam")
    METHODS["maxcam"] = dataclasses.replace(METHODS["maxcam"], defaults=frozenset({"slides"}))
    assert ExplainConfig().methods == ("gradcam", "maxcam")
    help_text = CliRunner().invoke(main, ["explain", "--help"]).output
    assert "[default: gradcam,maxcam]" in " ".join(help_text.split())
    with pytest.raises(ValueError, match="defaults within"):
        declare("nocam", "No-CAM", kind="cam", needs=("activations",), formula="-", description="-",
                defaults=("archives",))
    with pytest.raises(ValueError, match="declare the method first"):
        implements("nocam")


def test_a_flag_threshold_is_its_metric_records(monkeypatch):
    config = AuditConfig()
    scores = {"gradcam": {"artefact_peak": {"value": 0.0}, "artefact_top_patches": {"value": 0.4}}}
    inputs = FlagInputs(label=1, prediction=1, scores=scores, pairs=[], suites=[], config=config)
    assert FLAGS["focus_on_artefact"].rule(inputs) is None
    monkeypatch.setitem(ARTEFACT_FOCUS, "artefact_top_patches", 0.4)
    assert FLAGS["focus_on_artefact"].rule(inputs)[0] == ["gradcam"]
    assert metric("artefact_top_patches").review_at == 0.5 and "50% of the top patches" in FLAGS[
        "focus_on_artefact"].meaning


def test_metric_and_flag_keys_are_checked():
    assert metric("iou_top10").title == "IoU top 10%" and metric("dice_top5").short == "Dice5"
    assert list(metrics_for(AuditConfig(top_k=(0.5,))))[-7:] == [
        "iou_top50", "dice_top50", "lesion_hit_rate",
        "artefact_mass", "artefact_peak", "artefact_peaks", "artefact_top_patches"]
    with pytest.raises(RegistryError, match="unknown metric 'dice_top0'"):
        metric("dice_top0")
    with pytest.raises(RegistryError, match="unknown flag"):
        flag("looks_odd")
    assert {f.verdict for f in FLAGS.values()} <= set(VERDICTS)
    assert all(f.meaning.endswith(".") for f in FLAGS.values())


def test_the_index_refuses_an_unregistered_metric(tmp_path):
    write_audit(tmp_path / "slides" / "s1" / "audit.json", {
        "slide_id": "s1", "methods": ["attention"], "flags": [], "metrics": {"attention": {"made_up": {"value": 0.5}}}})
    with pytest.raises(RegistryError, match="made_up"):
        render_index(tmp_path)


def test_cam_needs_no_gradients_and_checks_global_pooling():
    model = build_model(ModelConfig(encoder_kwargs={"width": 4}, patch=32))
    assert "gradients" not in method("cam").needs
    with pytest.raises(ModelError, match="global average pooling"):
        BagExplainer(model, "encoder.block3", ("cam",))
    assert list(BagExplainer(model, "encoder.block4", ("guided_gradcam",)).steps) == [
        "gradcam", "guided_backprop", "guided_gradcam"]

"""The explain stage on real patch stores with a small untrained model: the explain.zarr
contract, resume, batch invariance, bad input, and the `explain` / `train` commands."""
import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from conftest import SMALL, manifest_rows
from explainers.config import ExplainConfig
from explainers.errors import ModelError
from explainers.explain import explain_store, resolve_device
from explainers.methods.registry import method_names
from explainers.models.config import ModelConfig
from explainers.models.inputs import normalise, resize
from explainers.models.io import build_model, load_model, model_sha256, save_model
from explainers.train import TrainConfig, class_target, train
from pipeline.cli import main
from tiling.errors import ArchiveError, ConfigError, StoreError
from tiling.store import Artefacts, create_patch_store, open_patch_store, write_patch_records
from tiling.store.explain import FORMAT_VERSION


def mtime(slide_dir: Path) -> int:
    return (slide_dir / "explain.zarr" / "zarr.json").stat().st_mtime_ns


def test_explain_zarr_contract(slide_dir, model_dir):
    out = explain_store(slide_dir, model_dir, ExplainConfig(methods=method_names(), batch=16))
    group = zarr.open_group(out, mode="r")
    store = open_patch_store(slide_dir)
    n = len(store)
    assert n > 16
    attention, logits = group["attention"][:], group["slide_logits"][:]
    assert attention.shape == (n,) and logits.shape == (2,) and group["instance_logits"].shape == (n, 2)
    assert float(attention.sum()) == pytest.approx(1.0, abs=1e-5)
    expected_shapes = {"gradcam": (8, 8), "gradcampp": (8, 8), "hirescam": (8, 8), "cam": (8, 8),
                       "guided_backprop": (64, 64), "guided_gradcam": (64, 64), "occlusion": (8, 8)}
    for name, hw in expected_shapes.items():
        maps = group[name][:]
        assert maps.dtype == np.float32 and maps.shape == (n, *hw) and np.isfinite(maps).all()
    attrs = dict(group.attrs)
    assert attrs["classes"] == ["normal", "lesion"] and attrs["head"] == "softmax"
    assert attrs["target"] == "slide" and attrs["target_class"] == int(logits.argmax())
    assert attrs["methods"] == list(method_names())
    assert attrs["model"]["sha256"] == model_sha256(model_dir) and attrs["model"]["config"]["encoder"] == "small_cnn"
    assert attrs["source_sha256"] == open_patch_store(slide_dir).attrs["source_sha256"]
    model, config = load_model(model_dir)
    x = normalise(resize(store.patches[:], 64), config, torch.device("cpu"))
    with torch.no_grad():
        expected = model.classifier(model.encoder(x))
        slide, att = model(x)
    np.testing.assert_allclose(group["instance_logits"][:], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(logits, slide.numpy(), atol=1e-5)
    np.testing.assert_allclose(attention, att.numpy(), atol=1e-6)


def test_rerun_is_skipped_until_the_config_or_model_changes(slide_dir, model_dir, tmp_path):
    explain_store(slide_dir, model_dir, ExplainConfig())
    first = mtime(slide_dir)
    explain_store(slide_dir, model_dir, ExplainConfig(batch=7, device="cpu"))     # not in the stamp
    assert mtime(slide_dir) == first
    explain_store(slide_dir, model_dir, ExplainConfig(methods=("gradcam", "hirescam")))
    assert mtime(slide_dir) != first
    assert "hirescam" in zarr.open_group(slide_dir / "explain.zarr", mode="r")
    second = mtime(slide_dir)
    reseeded = dataclasses.replace(SMALL, seed=9)
    other = save_model(build_model(reseeded), reseeded, tmp_path / "other")
    explain_store(slide_dir, other, ExplainConfig(methods=("gradcam", "hirescam")))
    assert mtime(slide_dir) != second
    assert [p.name for p in slide_dir.iterdir() if p.name.startswith(".")] == []


def test_a_given_model_sha256_is_used_and_the_weights_are_not_hashed(slide_dir, model_dir, monkeypatch):
    sha = model_sha256(model_dir)

    def no_hashing(path, *args, **kwargs):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr("explainers.models.io.file_sha256", no_hashing)
    out = explain_store(slide_dir, model_dir, ExplainConfig(), model_sha256=sha)
    assert zarr.open_group(out, mode="r").attrs["model"]["sha256"] == sha
    first = mtime(slide_dir)
    explain_store(slide_dir, model_dir, ExplainConfig(), model_sha256=sha)
    assert mtime(slide_dir) == first
    monkeypatch.undo()
    explain_store(slide_dir, model_dir, ExplainConfig())  # the standalone command hashes it: same stamp
    assert mtime(slide_dir) == first


def test_an_explain_store_of_another_format_version_is_rewritten(slide_dir, model_dir):
    out = explain_store(slide_dir, model_dir, ExplainConfig())
    zarr.open_group(out, mode="r+").attrs["format_version"] = 0
    first = mtime(slide_dir)
    explain_store(slide_dir, model_dir, ExplainConfig())
    assert mtime(slide_dir) != first
    assert zarr.open_group(out, mode="r").attrs["format_version"] == FORMAT_VERSION


def test_batch_size_changes_no_value(slide_dir, model_dir, tmp_path):
    twin = tmp_path / "twin" / "slides" / "sample_000"
    shutil.copytree(slide_dir / "patches.zarr", twin / "patches.zarr")
    methods = ("gradcam", "gradcampp", "occlusion")
    a = zarr.open_group(explain_store(slide_dir, model_dir, ExplainConfig(methods=methods, batch=64)), mode="r")
    b = zarr.open_group(explain_store(twin, model_dir, ExplainConfig(methods=methods, batch=5)), mode="r")
    for name in ("attention", "slide_logits", "instance_logits", *methods):
        np.testing.assert_allclose(a[name][:], b[name][:], rtol=1e-4, atol=1e-6)


def test_instance_target_and_class(slide_dir, model_dir):
    out = explain_store(slide_dir, model_dir, ExplainConfig(methods=("gradcam", "cam"), target="instance",
                                                            target_class=0))
    group = zarr.open_group(out, mode="r")
    assert group.attrs["target"] == "instance" and group.attrs["target_class"] == 0
    assert float(group["cam"][:].max()) > 0


def nothing_written(slide_dir: Path) -> bool:
    return sorted(p.name for p in slide_dir.iterdir()) == ["patches.zarr"]


def test_a_store_with_no_patches_is_a_store_error(tmp_path, model_dir):
    slide_dir = tmp_path / "slides" / "empty"
    attrs = {"slide_id": "empty", "mpp": 1.0, "patch_size": 224, "footprint": 224.0, "dimensions": [896, 896],
             "config_hash": "c0", "source_sha256": "s0"}
    create_patch_store(slide_dir / "patches.zarr", 224, 64, 0)
    write_patch_records(slide_dir / "patches.zarr", np.zeros((0, 2)), np.zeros(0), attrs,
                        np.full((4, 4, 3), 255, np.uint8),
                        Artefacts(np.zeros((4, 4), np.uint8), np.zeros((0, 3), np.float32)))
    with pytest.raises(StoreError, match="0 patches"):
        explain_store(slide_dir, model_dir, ExplainConfig())
    assert nothing_written(slide_dir)
    with pytest.raises(StoreError, match="slideaudit tile"):
        explain_store(tmp_path / "slides" / "never-tiled", model_dir, ExplainConfig())


def broken_copy(model_dir: Path, dest: Path, change) -> Path:
    shutil.copytree(model_dir, dest)
    change(dest)
    return dest


def drop_weight(d: Path) -> None:
    state = load_file(str(d / "model.safetensors"))
    del state["encoder.block4.0.bias"]
    save_file(state, str(d / "model.safetensors"))


def reshape_weight(d: Path) -> None:
    state = load_file(str(d / "model.safetensors"))
    state["classifier.weight"] = torch.zeros(3, 16)
    save_file(state, str(d / "model.safetensors"))


def edit_config(**change):
    def edit(d: Path) -> None:
        raw = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(raw | change))
    return edit


@pytest.mark.parametrize(("change", "message"), [
    (drop_weight, re.escape("encoder.block4.0.bias")),
    (reshape_weight, r"classifier\.weight.*\(3, 16\)"),
    (edit_config(target_layer="encoder.block5"), "block5"),
    (edit_config(mpp=1.0), re.escape("re-tile the slide with `slideaudit tile --mpp 1 --patch 64`")),
])
def test_bad_models_are_model_errors_and_nothing_is_written(slide_dir, model_dir, tmp_path, change, message):
    broken = broken_copy(model_dir, tmp_path / "broken", change)
    with pytest.raises(ModelError, match=message):
        explain_store(slide_dir, broken, ExplainConfig())
    assert nothing_written(slide_dir)


def test_bad_explain_settings_are_refused(slide_dir, model_dir):
    with pytest.raises(ConfigError, match=r"explain.methods: unknown or no methods \['lime'\]"):
        explain_store(slide_dir, model_dir, ExplainConfig(methods=(" lime", "gradcam", "lime")))
    with pytest.raises(ConfigError, match="target = 'pixel': must be one of slide, instance"):
        ExplainConfig(target="pixel")
    with pytest.raises(ModelError, match="target class 5"):
        explain_store(slide_dir, model_dir, ExplainConfig(target_class=5))
    assert nothing_written(slide_dir)


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda" and resolve_device("cuda").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ModelError, match="no CUDA device"):
            resolve_device("cuda")


def test_explain_command(slide_dir, model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["explain", str(slide_dir), "--model", str(model_dir),
                                  "--methods", "gradcam,cam", "--batch", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "gradcam, cam" in result.output and str(slide_dir / "explain.zarr") in result.output
    assert zarr.open_group(slide_dir / "explain.zarr", mode="r").attrs["methods"] == ["gradcam", "cam"]
    broken = broken_copy(model_dir, tmp_path / "broken", drop_weight)
    result = runner.invoke(main, ["explain", str(slide_dir), "--model", str(broken)])
    assert result.exit_code == 2 and "Traceback" not in result.output  # a model that does not fit: a setting
    assert result.output.startswith("Error: ") and "encoder.block4.0.bias" in result.output
    result = runner.invoke(main, ["explain", str(slide_dir), "--model", str(model_dir), "--methods", "lime"])
    assert result.exit_code == 2 and "lime" in result.output


def test_train_command_and_manifest_errors(sample_archive, sample_stores, tmp_path):
    shutil.copytree(sample_stores, tmp_path / "stores")       # tiled already: training reads them
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(sample_archive), "--out", str(tmp_path / "model"),
                                  "--epochs", "1", "--seed", "3", "--stores", str(tmp_path / "stores")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["seed"] == 3 and config["metrics"]["epochs"] == 1 and config["metrics"]["slides"] == 4
    assert len(config["metrics"]["loss_per_epoch"]) == 1 and config["mean"] != SMALL.mean
    assert (tmp_path / "stores" / "slides" / "sample_000" / "patches.zarr").is_dir()
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,path\na,a.tiff\n")
    result = runner.invoke(main, ["train", str(bad), "--out", str(tmp_path / "m2")])
    assert result.exit_code == 2 and "label" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m2").exists()
    rows = manifest_rows(sample_archive)
    rows[0]["label"] = "tumour"
    write_rows(bad, rows)
    with pytest.raises(ArchiveError, match="line 2: label 'tumour' is neither a class"):
        train(bad, tmp_path / "m3", TrainConfig(epochs=1))
    with pytest.raises(ConfigError, match="epochs = 0: must be a whole number >= 1"):
        TrainConfig(epochs=0)


def write_rows(manifest: Path, rows: list[dict[str, str]]) -> None:
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_sigmoid_head_trains_on_named_labels_and_explains(sample_archive, sample_stores, tmp_path):
    shutil.copytree(sample_stores, tmp_path / "out")
    rows = manifest_rows(sample_archive)
    for row in rows:  # ';' alone: none of the classes
        row["label"] = "lesion;ink" if row["label"] == "1" else ";"
    manifest = tmp_path / "multi.csv"
    write_rows(manifest, rows)
    targets = [class_target(labels, 2, "sigmoid") for labels in ((0, 1), (), (1,))]
    assert [t.tolist() for t in targets] == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    config = TrainConfig(epochs=1, model=ModelConfig(head="sigmoid", classes=["lesion", "ink"]))
    model_dir = train(manifest, tmp_path / "model", config, stores=tmp_path / "out")
    out = explain_store(tmp_path / "out" / "slides" / "sample_000", model_dir, ExplainConfig(target_class=1))
    group = zarr.open_group(out, mode="r")
    assert group.attrs["head"] == "sigmoid" and group.attrs["classes"] == ["lesion", "ink"]
    assert group["slide_logits"].shape == (2,) and group.attrs["target_class"] == 1


def poison(key: str, value: float):
    def change(d: Path) -> None:
        state = load_file(str(d / "model.safetensors"))
        state[key] = torch.full_like(state[key], value)
        save_file(state, str(d / "model.safetensors"))
    return change


@pytest.mark.parametrize(("key", "value", "what"), [
    ("classifier.bias", float("inf"), "the slide logits"),
    ("attention.w.weight", float("nan"), "the attention"),
])
def test_a_model_whose_output_is_not_finite_fails_the_slide(slide_dir, model_dir, tmp_path, key, value, what):
    broken = broken_copy(model_dir, tmp_path / "nan", poison(key, value))
    with pytest.raises(ModelError, match=rf"sample_000: model output is not finite: \d+ of \d+ values of {what} "
                                         rf".*model {re.escape(str(broken))}"):
        explain_store(slide_dir, broken, ExplainConfig())
    assert nothing_written(slide_dir)

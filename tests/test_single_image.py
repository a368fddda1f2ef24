"""Single-image explanations: reading images, tiling, the top 5 against the model's own output,
the CAM maps against the explainers' own classes, and the `explain-image` command's page."""
from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from conftest import shared_file
from explainers.errors import ImageError, ImageTooLarge
from explainers.methods.cams import upsample
from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model
from explainers.single_image import RegionConfig, explain_region, read_image, tile_starts
from oracles import ImageExplainer
from pipeline.cli import main
from reports.html import percent
from tiling.errors import ConfigError
from tiling.slide import open_slide

CLASSES = [f"class {i}" for i in range(7)]


@pytest.fixture(scope="module")
def softmax_model() -> tuple[nn.Module, ModelConfig]:
    config = ModelConfig(classes=CLASSES, seed=1)
    return build_model(config).eval(), config


@pytest.fixture(scope="module")
def cmu_region() -> np.ndarray:
    """A real H&E region of CMU-1-Small-Region at the model's 3.5 µm/px: 150 x 100 px (3 x 2 tiles)."""
    with open_slide(shared_file("CMU-1-Small-Region.svs")) as slide:
        return slide.read_at_mpp((400, 600), (150, 100), 3.5)


def model_input(tiles: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """(N, P, P, 3) uint8 -> the model's normalised (N, 3, P, P) input, written out independently."""
    x = torch.from_numpy(np.array(tiles)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(config.mean).view(1, 3, 1, 1)) / torch.tensor(config.std).view(1, 3, 1, 1)


def test_tile_starts_cover_the_image_with_overlap_not_overhang():
    assert tile_starts(64, 64).tolist() == [0]
    assert tile_starts(40, 64).tolist() == [0]
    assert tile_starts(150, 64).tolist() == [0, 43, 86]
    assert tile_starts(128, 64).tolist() == [0, 64]


def test_one_patch_top5_and_probabilities_equal_the_models_output(softmax_model, cmu_region):
    model, config = softmax_model
    patch = cmu_region[:64, :64]
    result = explain_region(patch, 3.5, model, config, RegionConfig(methods=("gradcam",)))
    with torch.no_grad():
        logits, attention = model(model_input(patch[None], config))
    expected = torch.softmax(logits, 0).numpy()
    assert len(result.tiles) == 1 and float(attention[0]) == 1.0
    assert np.allclose(result.probabilities, expected, atol=1e-6)
    assert np.isclose(result.probabilities.sum(), 1.0)
    order = np.argsort(-expected)[:5]
    assert [name for name, _ in result.top(5)] == [CLASSES[i] for i in order]
    assert [p for _, p in result.top(5)] == pytest.approx(expected[order].tolist(), abs=1e-6)
    assert [t.name for t in result.targets] == [CLASSES[order[0]]] and result.targets[0].rank == 1


def test_larger_image_is_one_bag_of_overlapping_tiles(softmax_model, cmu_region):
    model, config = softmax_model
    result = explain_region(cmu_region, None, model, config, RegionConfig(methods=("gradcam",)))
    assert result.mpp_assumed and result.mpp == config.mpp
    starts = [(x, y) for y in (0, 36) for x in (0, 43, 86)]
    assert result.tiles.tolist() == [list(s) for s in starts]
    tiles = np.stack([cmu_region[y:y + 64, x:x + 64] for x, y in starts])
    with torch.no_grad():
        logits, _ = model(model_input(tiles, config))
    assert np.allclose(result.logits, logits.numpy(), atol=1e-5)
    assert np.allclose(result.probabilities, torch.softmax(logits, 0).numpy(), atol=1e-6)
    assert result.targets[0].maps["gradcam"].shape == cmu_region.shape[:2]
    assert result.activations.shape == (8, *cmu_region.shape[:2])


def test_image_at_another_resolution_is_resized_to_the_models(softmax_model):
    model, config = softmax_model
    with open_slide(shared_file("CMU-1-Small-Region.svs")) as slide:
        fine = slide.read_at_mpp((400, 600), (448, 448), 0.5)           # 224 µm at 0.5 µm/px
    result = explain_region(fine, 0.5, model, config, RegionConfig(methods=("gradcam",)))
    assert result.region.shape == (64, 64, 3) and len(result.tiles) == 1  # 224 µm at 3.5 µm/px


def test_multi_label_probabilities_are_independent_sigmoids(cmu_region):
    config = ModelConfig(classes=CLASSES, head="sigmoid", seed=2)
    model = build_model(config).eval()
    result = explain_region(cmu_region[:64, :64], None, model, config, RegionConfig(methods=("gradcam",)))
    with torch.no_grad():
        logits, _ = model(model_input(cmu_region[None, :64, :64], config))
    assert np.allclose(result.probabilities, torch.sigmoid(logits).numpy(), atol=1e-6)
    assert abs(result.probabilities.sum() - 1) > 0.5                   # 7 independent values, not a distribution


def instance_classifier(model: nn.Module) -> nn.Module:
    """images -> patch logits (B, C), with the A-MIL model's layer names."""
    return nn.Sequential(OrderedDict(encoder=model.encoder, classifier=model.classifier))


@pytest.mark.parametrize("name", ["gradcam", "gradcampp"])
def test_one_patch_maps_equal_the_per_image_reference(softmax_model, cmu_region, name):
    model, config = softmax_model
    patch = cmu_region[:64, :64]
    result = explain_region(patch, None, model, config, RegionConfig(targets=("class 3",), methods=(name,)))
    explainer = ImageExplainer(instance_classifier(model), name, config.target_layer)
    cam = explainer(model_input(patch[None], config), target=3)
    expected = upsample(cam.maps[0, 0], (64, 64)).numpy()
    assert np.allclose(result.targets[0].maps[name], expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_targets_top5_and_a_class_outside_it(softmax_model, cmu_region):
    model, config = softmax_model
    patch = cmu_region[:64, :64]
    probabilities = explain_region(patch, None, model, config, RegionConfig(methods=("gradcam",))).probabilities
    last = CLASSES[int(np.argmin(probabilities))]
    result = explain_region(patch, None, model, config, RegionConfig(targets=("top5", last), methods=("gradcam",)))
    assert [t.name for t in result.targets] == [name for name, _ in result.top(5)] + [last]
    assert [t.rank for t in result.targets] == [1, 2, 3, 4, 5, 7]
    assert not result.targets[-1].in_top5
    with pytest.raises(ImageError, match="not one of the model's classes"):
        explain_region(patch, None, model, config, RegionConfig(targets=("tumour",)))
    with pytest.raises(ConfigError, match="methods: unknown or no methods"):
        RegionConfig(methods=("lime",))


def test_read_image_converts_modes_and_reads_the_recorded_resolution(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :2, 3] = 255                                                # left opaque red, right transparent
    Image.fromarray(rgba).save(tmp_path / "a.png", dpi=(50800, 50800))   # 0.5 µm/px
    image, mpp = read_image(tmp_path / "a.png")
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [200, 0, 0] and image[0, 4].tolist() == [255, 255, 255]
    assert mpp == pytest.approx(0.5, rel=1e-3)
    Image.fromarray(np.full((3, 3), 90, np.uint8)).save(tmp_path / "grey.jpg", dpi=(72, 72))
    grey, screen = read_image((tmp_path / "grey.jpg").read_bytes(), "grey.jpg")
    assert grey.shape == (3, 3, 3) and screen is None                   # 72 dpi is a screen's, not a microscope's


def test_read_image_refuses_what_it_cannot_explain(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageError, match=r"notes\.png: not a PNG, JPEG or TIFF image"):
        read_image(tmp_path / "notes.png")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ImageError, match=r"deep\.png: unsupported image mode 'I;16'"):
        read_image(tmp_path / "deep.png")
    Image.new("CMYK", (8, 8)).save(tmp_path / "print.jpg")
    with pytest.raises(ImageError, match="unsupported image mode 'CMYK'"):
        read_image(tmp_path / "print.jpg")
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageTooLarge, match="crop the region"):
        read_image(tmp_path / "big.png", max_pixels=5000)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_too_many_tiles_is_refused_before_resizing(softmax_model):
    model, config = softmax_model
    with pytest.raises(ImageTooLarge, match="more than the limit 4"):
        explain_region(np.zeros((10, 10, 3), np.uint8), 100.0, model, config, RegionConfig(max_tiles=4))


@pytest.fixture(scope="module")
def model_dir(softmax_model, tmp_path_factory) -> Path:
    return save_model(*softmax_model, tmp_path_factory.mktemp("model") / "model")


def test_explain_image_command_writes_the_page_and_pngs(model_dir, tmp_path):
    with open_slide(shared_file("CMU-1-Small-Region.svs")) as slide:
        Image.fromarray(slide.read_at_mpp((400, 600), (224, 224), 1.0)).save(tmp_path / "patch.png", dpi=(25400, 25400))
    summary = json.loads((model_dir / "config.json").read_text())
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["explain-image", str(tmp_path / "patch.png"), "--model", str(model_dir), "--out", str(out),
            "--target", "top5", *[a for c in CLASSES for a in ("--target", c)], "--methods", "gradcam,guided_backprop"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    assert result["source_mpp"] == pytest.approx(1.0, rel=1e-3) and not result["mpp_assumed"]
    assert result["classes"] == summary["classes"] and len(result["top5"]) == 5
    outside = [t for t in result["targets"] if not t["in_top5"]]
    assert len(outside) == 7 - 5 and len(result["targets"]) == 7
    page = (out / "index.html").read_text()
    for t in outside:
        assert f"“{t['class']}” is not among the top 5 classes" in page
        assert f"{t['class']} is not in the top 5 (rank {t['rank']}" in res.output
    assert page.count('class="overlay"') == 7 * 2 and "data:image/png;base64," in page
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "00-class_0-gradcam.png" in pngs and "06-class_6-guided_backprop.png" in pngs
    assert "filters.png" in pngs and sum(p.startswith("activation-") for p in pngs) == 8
    assert Image.open(out / "00-class_0-gradcam.png").size == (224, 224)
    for row in result["top5"]:
        assert f"{row['class']}: {percent(row['probability'])}" in res.output
    mtime = (out / "index.html").stat().st_mtime_ns
    assert runner.invoke(main, args).exit_code == 0
    assert (out / "index.html").stat().st_mtime_ns == mtime                # current: skipped


def test_explain_image_command_errors_are_one_line(model_dir, tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    res = CliRunner().invoke(main, ["explain-image", str(tmp_path / "notes.png"), "--model", str(model_dir),
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "notes.png: not a PNG, JPEG or TIFF image" in res.output
    assert not (tmp_path / "out").exists()


def test_explain_image_checks_the_target_before_loading_the_model(model_dir, tmp_path):
    no_weights = tmp_path / "model"
    no_weights.mkdir()
    shutil.copy(model_dir / "config.json", no_weights / "config.json")     # a model that cannot be loaded
    Image.new("RGB", (64, 64), "white").save(tmp_path / "patch.png")
    res = CliRunner().invoke(main, ["explain-image", str(tmp_path / "patch.png"), "--model", str(no_weights),
                                    "--target", "nosuch", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "'nosuch' is not one of the model's classes" in res.output


def test_explain_image_warns_when_the_resolution_is_assumed(model_dir, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    res = CliRunner().invoke(main, ["explain-image", str(tmp_path / "p.png"), "--model", str(model_dir),
                                    "--methods", "gradcam", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "p.png records no resolution; assumed the model's" in res.output

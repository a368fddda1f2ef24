"""Class impressions and feature views on a small model fitted to three stain-like colour classes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from explainers.config import ImpressionConfig
from explainers.errors import ModelError
from explainers.feature_views import activation_views, filter_grid, first_conv
from explainers.impressions import INDEX, class_impression, patch_logits, render_impressions, total_variation
from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model

CLASSES = ["eosin", "haematoxylin", "ink"]
COLOURS = np.array([[0.93, 0.55, 0.75], [0.45, 0.25, 0.60], [0.20, 0.35, 0.85]], np.float32)
STEPS = 60


def toy_patches(rng: np.random.Generator, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n RGB patches in [0, 1] (n, 3, size, size): a class colour, darkened blobs and noise."""
    labels = rng.integers(len(CLASSES), size=n)
    base = COLOURS[labels][:, :, None, None] * np.ones((1, 1, size, size), np.float32)
    blobs = rng.random((n, 1, size // 8, size // 8)) < 0.2
    blobs = np.kron(blobs, np.ones((1, 1, 8, 8))) * rng.uniform(0.1, 0.3, (n, 1, 1, 1))
    x = np.clip(base * (1 - blobs) + rng.normal(0, 0.05, base.shape), 0, 1).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(labels)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster here, and the fitted model is the same on any machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fitted(one_thread) -> tuple[torch.nn.Module, ModelConfig]:
    """A small_cnn A-MIL model whose classifier separates the three colour classes (patch logits)."""
    config = ModelConfig(classes=CLASSES, patch=32, mpp=7.0, encoder_kwargs={"width": 8}, seed=0)
    model = build_model(config)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(STEPS):
        x, y = toy_patches(rng, 24, config.patch)
        loss = torch.nn.functional.cross_entropy(patch_logits(model, config, x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    model.eval()
    x, y = toy_patches(rng, 60, config.patch)
    with torch.no_grad():
        accuracy = (patch_logits(model, config, x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95, f"the toy model did not learn its classes (accuracy {accuracy:.2f})"
    return model, config


def tv(image: np.ndarray) -> float:
    return total_variation(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255).item()


@pytest.mark.parametrize("name", CLASSES)
def test_impression_raises_its_class_logit_above_start_and_other_classes(fitted, name):
    model, config = fitted
    imp = class_impression(model, config, name, ImpressionConfig(steps=100))
    c = CLASSES.index(name)
    assert imp.image.shape == (config.patch, config.patch, 3) and imp.image.dtype == np.uint8
    assert imp.logits_end[c] > imp.logits_start[c] + 2.0
    others = np.delete(imp.logits_end, c)
    assert imp.logits_end[c] > others.max() + 1.0
    # the returned logits are those of the returned image (up to uint8 rounding)
    with torch.no_grad():
        again = patch_logits(model, config, torch.from_numpy(imp.image).permute(2, 0, 1)[None].float() / 255)[0]
    assert int(again.argmax()) == c


def test_total_variation_prior_smooths_the_impression(fitted):
    model, config = fitted
    rough, default, strong = (
        class_impression(model, config, "haematoxylin", ImpressionConfig(steps=100, tv_weight=w, seed=3))
        for w in (0.0, ImpressionConfig().tv_weight, 30.0))
    assert tv(default.image) < tv(rough.image)
    assert tv(strong.image) < 0.5 * tv(rough.image)
    assert strong.logits_end.argmax() == CLASSES.index("haematoxylin")   # still the class, only smoother


def test_impressions_are_seeded_and_leave_the_model_as_it_was(fitted):
    model, config = fitted
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = class_impression(model, config, "ink", ImpressionConfig(steps=20, seed=5))
    b = class_impression(model, config, "ink", ImpressionConfig(steps=20, seed=5))
    c = class_impression(model, config, "ink", ImpressionConfig(steps=20, seed=6))
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)


def test_colours_stay_within_the_models_stain_statistics():
    config = ModelConfig(classes=CLASSES, mean=[0.8, 0.6, 0.75], std=[0.05, 0.1, 0.2], seed=0)
    model = build_model(config)
    image = class_impression(model, config, "ink", ImpressionConfig(steps=30, colour_range=2.0)).image / 255
    low, high = np.clip([0.7, 0.4, 0.35], 0, 1), np.clip([0.9, 0.8, 1.15], 0, 1)    # mean ± 2 std, in [0, 1]
    assert (image >= low - 1 / 255).all() and (image <= high + 1 / 255).all()


def test_unknown_class_is_a_model_error(fitted):
    with pytest.raises(ModelError, match="not one of the model's classes"):
        class_impression(*fitted, "tumour")


def test_render_impressions_writes_pngs_once(fitted, tmp_path):
    model, config = fitted
    model_dir = save_model(model, config, tmp_path / "model")
    cfg = ImpressionConfig(steps=10)
    paths = render_impressions(model_dir, tmp_path / "cache", cfg)
    assert list(paths) == CLASSES
    for path in paths.values():
        assert Image.open(path).size == (config.patch, config.patch)
    index = json.loads((tmp_path / "cache" / "impressions" / INDEX).read_text())
    assert index["settings"]["steps"] == 10 and set(index["classes"]) == set(CLASSES)
    stamps = {p: p.stat().st_mtime_ns for p in paths.values()}
    assert render_impressions(model_dir, tmp_path / "cache", cfg) == paths
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == stamps       # reused, not recomputed
    render_impressions(model_dir, tmp_path / "cache", ImpressionConfig(steps=11))
    assert json.loads((tmp_path / "cache" / "impressions" / INDEX).read_text())["settings"]["steps"] == 11


def test_activation_views_pick_the_most_active_channels():
    acts = np.zeros((2, 5, 3, 3), np.float32)
    acts[:, 3] = 2.0
    acts[0, 1, 0, 0] = 9.0          # mean 9 / 18 = 0.5
    acts[:, 4] = -1.0
    views = activation_views(acts, k=2)
    assert views.channels.tolist() == [3, 1]
    assert np.allclose(views.means, [2.0, 0.5])
    assert views.maps.shape == (2, 2, 3, 3) and np.array_equal(views.maps[:, 1], acts[:, 1])


def test_filter_grid_shows_each_first_layer_filter(fitted):
    model, _ = fitted
    conv = first_conv(model)
    weight = conv.weight.detach().numpy()
    grid = filter_grid(model, scale=4, gap=1)
    _, _, kh, kw = weight.shape                                     # 8 filters: 3 columns, 3 rows
    assert grid.shape == (3 * (4 * kh + 1) + 1, 3 * (4 * kw + 1) + 1, 3)
    peak = np.abs(weight).max()
    expected = np.round((0.5 + weight[4].transpose(1, 2, 0) / (2 * peak)) * 255)
    y, x = 1 + 1 * (4 * kh + 1), 1 + 1 * (4 * kw + 1)                # filter 4: row 1, column 1
    assert np.array_equal(grid[y:y + 4 * kh:4, x:x + 4 * kw:4], expected.astype(np.uint8))
    assert (grid[0] == 255).all()                                    # the white gap

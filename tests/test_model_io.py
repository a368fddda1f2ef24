"""Models on disk: round trip, the accepted weight formats, registered and MONAI encoders, bad input."""
import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from explainers.engine import BagExplainer, frozen, slide_target
from explainers.errors import ModelError
from explainers.models.config import ModelConfig
from explainers.models.encoders import ENCODERS, register_encoder
from explainers.models.io import build_model, load_model, model_sha256, save_model

CONFIG = ModelConfig(name="tiny", encoder_kwargs={"width": 4}, patch=32, seed=5, metrics={"train_loss": 0.1})


@pytest.fixture
def saved(tmp_path):
    model = build_model(CONFIG)
    return save_model(model, CONFIG, tmp_path / "model"), model


def outputs(model, seed=0):
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def test_round_trip(saved):
    model_dir, model = saved
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]      # no temporary left
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
    loaded, config = load_model(model_dir)
    assert config == CONFIG and not loaded.training
    raw = json.loads((model_dir / "config.json").read_text())
    assert raw["target_layer"] == "encoder.block4" and raw["mpp"] * raw["patch"] == pytest.approx(112)
    for got, expected in zip(outputs(loaded), outputs(model), strict=True):
        torch.testing.assert_close(got, expected)
    assert len(model_sha256(model_dir)) == 64


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a, b = build_model(CONFIG), build_model(CONFIG)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_state_dicts_are_accepted_and_torchscript_is_never_run(saved, tmp_path):
    model_dir, model = saved
    state = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "model.pt")
    for got, expected in zip(outputs(load_model(model_dir)[0]), outputs(model), strict=True):
        torch.testing.assert_close(got, expected)
    torch.save({"state_dict": state, "epoch": 3}, model_dir / "model.pt")      # a training checkpoint
    for got, expected in zip(outputs(load_model(model_dir)[0]), outputs(model), strict=True):
        torch.testing.assert_close(got, expected)
    (model_dir / "model.pt").unlink()
    torch.jit.script(nn.Linear(2, 2)).save(str(model_dir / "model.ts"))
    with pytest.raises(ModelError, match="no weights file"):
        load_model(model_dir)
    (model_dir / "model.ts").rename(model_dir / "model.pt")                  # TorchScript under a state dict's name
    with pytest.raises(ModelError, match="TorchScript archive, which is refused because loading it runs"):
        load_model(model_dir)


class Payload:
    """Unpickling this would create a file: the loader must never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_with_code_is_refused_unrun(saved, tmp_path):
    model_dir, _ = saved
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"payload": Payload(marker)}, model_dir / "model.pt")
    with pytest.raises(ModelError, match=r"model\.pt") as info:
        load_model(model_dir)
    assert not marker.exists()
    assert "weights_only" not in str(info.value)


def test_missing_weight_is_a_model_error(saved):
    model_dir, _ = saved
    state = load_file(str(model_dir / "model.safetensors"))
    del state["classifier.weight"]
    save_file(state, str(model_dir / "model.safetensors"))
    with pytest.raises(ModelError, match=r"classifier\.weight"):
        load_model(model_dir)


def test_wrongly_shaped_weight_is_a_model_error(saved):
    model_dir, _ = saved
    state = load_file(str(model_dir / "model.safetensors"))
    state["attention.V.weight"] = torch.zeros(3, 3)
    save_file(state, str(model_dir / "model.safetensors"))
    with pytest.raises(ModelError, match=r"attention.V.weight.*\(3, 3\)"):
        load_model(model_dir)


@pytest.mark.parametrize(("change", "message"), [
    ({"target_layer": "encoder.block7"}, "block7"),
    ({"encoder": "resnet999"}, "unknown encoder"),
    ({"head": "tanh"}, "head"),
    ({"surprise": 1}, "not a valid model config"),
])
def test_bad_configs_are_model_errors(saved, change, message):
    model_dir, _ = saved
    raw = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(raw | change))
    with pytest.raises(ModelError, match=message):
        load_model(model_dir)


def test_missing_files_are_model_errors(saved, tmp_path):
    model_dir, _ = saved
    with pytest.raises(ModelError, match="no such model folder"):
        load_model(tmp_path / "nowhere")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights file"):
        load_model(model_dir)
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a valid model config"):
        load_model(model_dir)
    (model_dir / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config\.json: not found"):
        load_model(model_dir)


def test_truncated_weights_are_a_model_error(saved):
    model_dir, _ = saved
    data = (model_dir / "model.safetensors").read_bytes()
    (model_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="unreadable weights"):
        load_model(model_dir)


def test_a_registered_encoder_round_trips(tmp_path):
    @register_encoder("test_tiny")
    def tiny(channels: int = 3) -> nn.Sequential:
        return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, channels, 3), act=nn.ReLU(),
                                         pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten()))
    try:
        config = ModelConfig(encoder="test_tiny", encoder_kwargs={"channels": 5}, target_layer="encoder.conv",
                             patch=16)
        model_dir = save_model(build_model(config), config, tmp_path / "m")
        model, loaded = load_model(model_dir)
        assert loaded.encoder == "test_tiny" and model.classifier.in_features == 5
    finally:
        del ENCODERS["test_tiny"]


@pytest.mark.parametrize(("encoder", "kwargs", "layer"), [
    ("monai_resnet", {"variant": "resnet10"}, "encoder.layer4"),
    ("monai_densenet", {"variant": "DenseNet", "init_features": 8, "growth_rate": 4, "block_config": (2, 2)},
     "encoder.features.norm5"),
])
def test_monai_encoders_explain_through_the_split(encoder, kwargs, layer):
    config = ModelConfig(encoder=encoder, encoder_kwargs=kwargs, target_layer=layer, patch=32)
    model = build_model(config).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    explainer = BagExplainer(model, layer, ("gradcam", "guided_backprop"))
    with frozen(model):
        fwd = explainer.forward([(0, 4, x)], 4)
        (_, _, maps), = explainer.maps(fwd, slide_target(model, fwd.h, 0), 4, lambda lo, hi: x[lo:hi])
        with torch.no_grad():
            torch.testing.assert_close(fwd.h, model.encoder(x))
    assert maps["gradcam"].shape[0] == 4 and maps["guided_backprop"].shape == (4, 32, 32)

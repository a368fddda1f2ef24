"""Embeddings kept in explain.zarr: a re-audit with another head on the same encoder, or with
attention only, does not run the encoder and gives what a fresh run gives; a changed encoder
does not reuse them; bf16 autocast stays within its stated tolerance of float32."""
import dataclasses
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import nn

from conftest import SMALL
from explainers.config import ExplainConfig
from explainers.explain import explain_store
from explainers.models.io import build_model, load_model, save_model
from tiling.store.explain import FORMAT_VERSION

ATTENTION_ONLY = ExplainConfig(methods=(), batch=16, device="cpu")


@contextmanager
def conv_calls() -> Iterator[list[int]]:
    """Counts the images through the encoder's first layer (a Conv2d on RGB) inside the block;
    loading a model adds 1 (`build_model` finds D from one blank image)."""
    count = [0]

    def hook(module: nn.Module, args, output) -> None:
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            count[0] += args[0].shape[0]

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def other_head(model_dir: Path, out: Path, encoder_from: Path | None = None) -> Path:
    """A model with a new head (seed 7) on the encoder of `encoder_from` (default: model_dir's)."""
    config = dataclasses.replace(load_model(model_dir)[1], name="other-head", seed=7)
    model = build_model(config)
    model.encoder.load_state_dict(load_model(encoder_from or model_dir)[0].encoder.state_dict())
    return save_model(model, config, out)


def read(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {name: group[name][:] for name in ("attention", "slide_logits", "instance_logits", "embeddings")}


def test_another_head_reuses_the_embeddings(slide_dir, model_dir, tmp_path):
    first = explain_store(slide_dir, model_dir, ExplainConfig(methods=("gradcam",), batch=16, device="cpu"))
    assert zarr.open_group(first, mode="r").attrs["format_version"] == FORMAT_VERSION
    head = other_head(model_dir, tmp_path / "other")
    with conv_calls() as calls:
        reused = read(explain_store(slide_dir, head, ATTENTION_ONLY))
    assert calls[0] == 1
    fresh_dir = tmp_path / "fresh" / slide_dir.name
    shutil.copytree(slide_dir / "patches.zarr", fresh_dir / "patches.zarr")
    with conv_calls() as calls:
        fresh = read(explain_store(fresh_dir, head, ATTENTION_ONLY))
    assert calls[0] == 1 + len(fresh["attention"])
    for name, values in fresh.items():
        np.testing.assert_allclose(reused[name], values, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_changed_encoder_or_a_cam_method_runs_the_encoder(slide_dir, model_dir, tmp_path):
    explain_store(slide_dir, model_dir, ATTENTION_ONLY)
    with conv_calls() as calls:       # gradcam needs the target layer's activations
        explain_store(slide_dir, model_dir, ExplainConfig(methods=("gradcam",), batch=16, device="cpu"))
    assert calls[0] > 1
    other_encoder = save_model(build_model(dataclasses.replace(SMALL, seed=5)), SMALL, tmp_path / "enc")
    with conv_calls() as calls:
        explain_store(slide_dir, other_head(model_dir, tmp_path / "other", other_encoder), ATTENTION_ONLY)
    assert calls[0] > 1


def test_bf16_autocast_within_tolerance_of_float32(slide_dir, model_dir, tmp_path):
    """The tolerance ExplainConfig states: maps within 3 % of their largest |value|, attention 1e-3."""
    methods = ("gradcam", "cam")
    fp32 = zarr.open_group(explain_store(slide_dir, model_dir, ExplainConfig(methods, batch=16, device="cpu")))
    bf16_dir = tmp_path / "bf16" / slide_dir.name
    shutil.copytree(slide_dir / "patches.zarr", bf16_dir / "patches.zarr")
    bf16 = zarr.open_group(explain_store(bf16_dir, model_dir, ExplainConfig(methods, batch=16, device="cpu",
                                                                           autocast=True)))
    assert bf16.attrs["config_hash"] != fp32.attrs["config_hash"]
    assert bf16.attrs["encoder_stamp"] != fp32.attrs["encoder_stamp"]
    np.testing.assert_allclose(bf16["attention"][:], fp32["attention"][:], atol=1e-3)
    for name in methods:
        reference = fp32[name][:]
        assert np.abs(bf16[name][:] - reference).max() <= 0.03 * np.abs(reference).max(), name

"""`slideaudit import-model`: a CLAM or ABMIL checkpoint on a ResNet-50-trunc encoder becomes a
model folder that gives the published forward, and `slideaudit run` audits with it end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from conftest import manifest_rows
from explainers.models.encoders import build_encoder
from explainers.models.io import load_model
from mil_checkpoints import abmil_checkpoint, clam_checkpoint, clam_reference
from pipeline.cli import main
from tiling.samples.archives import write_sample_archive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> Path:
    """Random resnet50_trunc weights in torchvision's layout (its fc and layer4 included, as a
    full torchvision checkpoint has them)."""
    torch.manual_seed(0)
    full = build_encoder("resnet50").state_dict()
    full |= {"fc.weight": torch.randn(1000, 2048) * 0.01, "fc.bias": torch.zeros(1000)}
    path = tmp_path_factory.mktemp("weights") / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    return path


def checkpoint(tmp_path: Path, state: dict, name: str = "s_0_checkpoint.pt") -> Path:
    """The head saved as CLAM's training code does: torch.save(model.state_dict()), here with
    the `module.` prefix of a DataParallel model."""
    path = tmp_path / name
    torch.save({f"module.{k}": v.float() for k, v in state.items()}, path)
    return path


def import_cli(*args: str) -> object:
    return CliRunner().invoke(main, ["import-model", *args])


def test_an_imported_clam_model_gives_the_published_forward(resnet_weights, tmp_path):
    state = clam_checkpoint(False, "small", True, classes=2, dim=1024)
    result = import_cli(str(checkpoint(tmp_path, state)), "--format", "clam_sb", "--encoder", "resnet50_trunc",
                        "--encoder-weights", str(resnet_weights), "--classes", "normal,tumor",
                        "--out", str(tmp_path / "model"))
    assert result.exit_code == 0, result.output
    model, config = load_model(tmp_path / "model")
    assert (config.mil, config.patch, config.mpp, config.target_layer) == ("clam_sb", 224, 0.5, "encoder.layer3")
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = model.encoder(x)
        logits, attention = model.pool(h)
    ref_logits, ref_attention = clam_reference({k: v.float() for k, v in state.items()}, h, False, True)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention, ref_attention[0], atol=1e-5, rtol=1e-5)


def test_a_wrong_key_or_class_count_is_named(resnet_weights, tmp_path):
    state = abmil_checkpoint(True, False, outputs=3)
    state["attention_w.weight"] = state["attention_w.weight"][:, :8]          # wrong shape
    result = import_cli(str(checkpoint(tmp_path, state)), "--format", "abmil", "--encoder", "resnet50_trunc",
                        "--encoder-weights", str(resnet_weights), "--classes", "a,b,c", "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "attention_w.weight" in result.output
    state = clam_checkpoint(True, "big", True, classes=3, dim=1024)
    result = import_cli(str(checkpoint(tmp_path, state)), "--format", "clam_mb", "--encoder", "resnet50_trunc",
                        "--encoder-weights", str(resnet_weights), "--classes", "a,b", "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "predicts 3 classes" in result.output
    renamed = {k.replace("attention_net.0", "fc.0"): v for k, v in clam_checkpoint(False, "small", True).items()}
    result = import_cli(str(checkpoint(tmp_path, renamed)), "--format", "clam_sb", "--encoder", "resnet50_trunc",
                        "--encoder-weights", str(resnet_weights), "--classes", "a,b,c", "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "attention_net.0.weight" in result.output
    assert not (tmp_path / "m").exists()


def test_run_audits_sample_slides_with_an_imported_clam_model(resnet_weights, shared_cluster, tmp_path):
    state = clam_checkpoint(False, "small", True, classes=2, dim=1024, seed=3)
    assert import_cli(str(checkpoint(tmp_path, state)), "--format", "clam_sb", "--encoder", "resnet50_trunc",
                      "--encoder-weights", str(resnet_weights), "--classes", "normal,lesion",
                      "--out", str(tmp_path / "clam")).exit_code == 0
    manifest = write_sample_archive(tmp_path / "slides", slides=2, seed=4, size=1024)   # 6 and 9 patches of 112 µm
    rows = manifest_rows(manifest)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(manifest), "--model", str(tmp_path / "clam"), "--out", str(out),
                                       "--scheduler", shared_cluster, "--methods", "gradcam,hirescam",
                                       "--set", "stitch.max_side=1024",  # tiles at the model's 224 px at 0.5 µm/px
                                       "--set", "impressions.steps=0"])
    assert result.exit_code == 0, result.output
    for row in rows:
        audit = json.loads((out / "slides" / row["slide_id"] / "audit.json").read_text())
        assert audit["methods"] == ["attention", "gradcam", "hirescam"] and audit["mil"] == "clam_sb"
        assert audit["provenance"]["model"]["config"]["encoder"] == "resnet50_trunc"
        assert "clam_sb-resnet50_trunc" in (out / "slides" / row["slide_id"] / "report.html").read_text()

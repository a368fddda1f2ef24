"""`slideaudit train --encoder`: a head trained on a frozen encoder's embeddings, computed once
per slide and reused on a rerun; a sigmoid multi-label model from the CLI."""
import json
from pathlib import Path

import torch
import zarr
from click.testing import CliRunner
from test_embeddings import conv_calls
from test_explain_store import SMALL, write_rows

from conftest import manifest_rows
from explainers.models.config import ModelConfig
from explainers.models.io import build_model, load_model
from explainers.train import TrainConfig
from explainers.train_head import train_head
from pipeline.cli import main
from tiling.store import EMBEDDINGS


def test_a_head_trains_on_cached_embeddings_of_a_frozen_encoder(sample_archive, tmp_path):
    config = TrainConfig(epochs=3, seed=2, model=SMALL)
    stores = tmp_path / "stores"
    model_dir = train_head(sample_archive, tmp_path / "model", config, "small_cnn", stores=stores)
    model, saved = load_model(model_dir)
    assert saved.metrics["frozen_encoder"] and saved.metrics["slides"] == 4 and saved.encoder_kwargs == {"width": 4}
    untouched = build_model(ModelConfig(**{**SMALL.__dict__, "seed": 2})).encoder.state_dict()
    for key, tensor in model.encoder.state_dict().items():
        torch.testing.assert_close(tensor, untouched[key], rtol=0, atol=0)
    kept = sorted(stores.glob(f"slides/*/{EMBEDDINGS}"))
    assert len(kept) == 4 and zarr.open_group(kept[0], mode="r")["embeddings"].shape[1] == 16
    with conv_calls() as calls:   # a rerun reads the kept embeddings: only build_model's probe image
        again = train_head(sample_archive, tmp_path / "model2", config, "small_cnn", stores=stores)
    assert calls[0] == 1
    assert load_model(again)[1].metrics["loss_per_epoch"] == saved.metrics["loss_per_epoch"]


def test_a_sigmoid_multi_label_head_trains_from_the_cli(sample_archive, tmp_path):
    rows = manifest_rows(sample_archive)
    for row in rows:
        row["label"] = "lesion;ink" if row["label"] == "1" else "ink"
    manifest = tmp_path / "multi.csv"
    write_rows(manifest, rows)
    result = CliRunner().invoke(main, ["train", str(manifest), "--out", str(tmp_path / "model"), "--epochs", "2",
                                       "--encoder", "small_cnn", "--head", "sigmoid", "--classes", "lesion,ink",
                                       "--stores", str(tmp_path / "stores"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    config = json.loads((Path(tmp_path / "model") / "config.json").read_text())
    assert config["head"] == "sigmoid" and config["classes"] == ["lesion", "ink"]
    assert config["metrics"]["frozen_encoder"] and config["metrics"]["slides"] == 4
    result = CliRunner().invoke(main, ["train", str(manifest), "--out", str(tmp_path / "m2"),
                                       "--encoder-weights", str(manifest)])
    assert result.exit_code == 2 and "--encoder" in result.output

"""`slideaudit import-model`: a CLAM or ABMIL head with its encoder -> a model folder."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline import options


@click.command("import-model")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "mil", required=True, type=click.Choice(["clam_sb", "clam_mb", "abmil"]),
              help="The head's training code: CLAM single- or multi-branch, or ABMIL (gated or plain).")
@options.encoder(True, "The frozen encoder the head was trained on, e.g. resnet50_trunc (CLAM's), "
                       "vit_small_patch16, vit_base_patch16, vit_large_patch16.")
@options.encoder_weights(True)
@click.option("--classes", required=True, metavar="A,B",
              help="Class names in the order the head was trained with.")
@click.option("--out", "model_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model folder to write: model.safetensors + config.json.")
@click.option("--name", default=None, help="Model name shown in reports [default: FORMAT-ENCODER].")
def import_model(checkpoint: Path, mil: str, encoder: str, encoder_weights: Path, classes: str,
                 model_dir: Path, name: str | None) -> None:
    """Import CHECKPOINT (a CLAM or ABMIL head's state dict) on its encoder into a model folder
    that every command then uses (`--model`). Nothing is downloaded or unpickled."""
    from explainers.models.checkpoints import import_model as write_model
    from explainers.models.config import read_config

    names = [c.strip() for c in classes.split(",") if c.strip()]
    path = write_model(mil, checkpoint, encoder, encoder_weights, names, model_dir, name)
    config = read_config(path)
    click.echo(f"{config.name}: {mil} head on {encoder} ({config.patch} px at {config.mpp:g} µm/px, "
               f"target layer {config.target_layer}), classes {', '.join(config.classes)} -> {path}")

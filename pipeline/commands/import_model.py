"""`slideaudit import-model`: a CLAM or ABMIL head with its encoder -> a model folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pipeline import options


def _rgb(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    """R,G,B -> three floats (a usage error otherwise; std must be > 0)."""
    if value is None:
        return None
    try:
        rgb = [float(v) for v in value.split(",")]
    except ValueError:
        rgb = []
    if len(rgb) != 3 or (param.name == "std" and min(rgb) <= 0):
        raise click.BadParameter(f"{value!r}: give three numbers R,G,B" + (", each > 0" if param.name == "std" else ""))
    return rgb


def _options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs -> {KEY: VALUE as JSON (a number, true, null, ...) or else the string}."""
    parsed: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: write KEY=VALUE, e.g. img_size=256")
        try:
            parsed[key.strip()] = json.loads(raw)
        except ValueError:
            parsed[key.strip()] = raw
    return parsed


@click.command("import-model")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "mil", required=True, type=click.Choice(["clam_sb", "clam_mb", "abmil"]),
              help="The head's training code: CLAM single- or multi-branch, or ABMIL (gated or plain).")
@options.encoder(True, "The frozen encoder the head was trained on, as its record names it (its architecture, "
                       "pooling, input and normalisation come from the record).")
@options.encoder_weights(True)
@click.option("--encoder-option", "encoder_kwargs", multiple=True, metavar="KEY=VALUE", callback=_options,
              help="An argument of the encoder's builder that differs from its record (repeatable; VALUE as "
                   "JSON), e.g. img_size=256 for a ViT fine-tuned at 256 px.")
@click.option("--mean", default=None, metavar="R,G,B", callback=_rgb,
              help="Per-channel mean of the encoder's normalisation, for inputs in [0, 1] [default: its record's].")
@click.option("--std", default=None, metavar="R,G,B", callback=_rgb,
              help="Per-channel standard deviation of the encoder's normalisation [default: its record's].")
@click.option("--classes", required=True, metavar="A,B",
              help="Class names in the order the head was trained with.")
@click.option("--out", "model_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model folder to write: model.safetensors + config.json.")
@click.option("--name", default=None, help="Model name shown in reports [default: FORMAT-ENCODER].")
def import_model(checkpoint: Path, mil: str, encoder: str, encoder_weights: Path, encoder_kwargs: dict[str, Any],
                 mean: list[float] | None, std: list[float] | None, classes: str, model_dir: Path,
                 name: str | None) -> None:
    """Import CHECKPOINT (a CLAM or ABMIL head's state dict) on its encoder into a model folder
    that every command then uses (`--model`). Nothing is downloaded or unpickled."""
    from explainers.models.checkpoints import import_model as write_model
    from explainers.models.config import read_config

    names = [c.strip() for c in classes.split(",") if c.strip()]
    path = write_model(mil, checkpoint, encoder, encoder_weights, names, model_dir, name,
                       encoder_kwargs=encoder_kwargs, mean=mean, std=std)
    config = read_config(path)
    click.echo(f"{config.name}: {mil} head on {encoder} ({config.patch} px at {config.mpp:g} µm/px, "
               f"target layer {config.target_layer}), classes {', '.join(config.classes)} -> {path}")

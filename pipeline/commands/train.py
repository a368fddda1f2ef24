"""`slideaudit train`: train an attention-MIL model from a manifest of labelled slides."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline import options


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "model_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model folder to write: model.safetensors + config.json.")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Passes over the slides (default: TrainConfig's).")
@options.seed
@click.option("--stores", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Store folder whose OUT/slides/<slide_id>/patches.zarr are used, and written where "
                   "missing (default: a temporary folder).")
@options.device
def train(manifest: Path, model_dir: Path, epochs: int | None, seed: int, stores: Path | None, device: str) -> None:
    """Train on the labelled slides of MANIFEST (CSV: slide_id, path, label: a class name or index of
    the model; slides with an empty label are left out) from slide-level labels."""
    from explainers.model_io import read_config
    from explainers.train import TrainConfig
    from explainers.train import train as train_model

    config = TrainConfig(seed=seed, device=device, epochs=TrainConfig.epochs if epochs is None else epochs)
    path = train_model(manifest, model_dir, config, stores)
    metrics = read_config(path).metrics
    click.echo(f"trained on {metrics['slides']} slides ({metrics['patches']} patches), {metrics['epochs']} epochs: "
               f"training slide accuracy {metrics['train_slide_accuracy']:.3f} -> {path}")

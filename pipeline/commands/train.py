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
              help="Store folder whose OUT/slides/<slide_id>/patches.zarr (and, with --encoder, "
                   "embeddings.zarr) are used, and written where missing (default: a temporary folder).")
@options.encoder(False, "Train only a gated-attention head on this frozen encoder's embeddings (computed "
                        "once per slide), e.g. resnet50_trunc; default: the small CNN trained end to end.")
@options.encoder_weights(False, "; without them it keeps its random initialisation")
@click.option("--head", default="softmax", show_default=True, type=click.Choice(["softmax", "sigmoid"]),
              help="softmax: one class per slide; sigmoid: multi-label (labels ';'-separated in the manifest).")
@click.option("--classes", default=None, metavar="A,B",
              help="Class names in order (default: normal,lesion).")
@options.drop_artefacts
@options.device
def train(manifest: Path, model_dir: Path, epochs: int | None, seed: int, stores: Path | None,
          encoder: str | None, encoder_weights: Path | None, head: str, classes: str | None,
          drop_artefacts: tuple[str, ...] | None, device: str) -> None:
    """Train on the labelled slides of MANIFEST (CSV: slide_id, path, label: a class name or index of
    the model; slides with an empty label are left out) from slide-level labels."""
    from explainers.models.config import ModelConfig, read_config
    from explainers.train import TrainConfig
    from explainers.train import train as train_model
    from explainers.train_head import train_head
    from tiling.config import TileConfig

    if encoder_weights is not None and encoder is None:
        raise click.UsageError("--encoder-weights needs --encoder NAME (the encoder they belong to)")
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else ModelConfig().classes
    config = TrainConfig(seed=seed, device=device, model=ModelConfig(classes=names, head=head),
                         epochs=TrainConfig.epochs if epochs is None else epochs,
                         tile=TileConfig(drop_artefacts=drop_artefacts or ()))
    path = (train_model(manifest, model_dir, config, stores) if encoder is None
            else train_head(manifest, model_dir, config, encoder, encoder_weights, stores))
    metrics = read_config(path).metrics
    click.echo(f"trained on {metrics['slides']} slides ({metrics['patches']} patches), {metrics['epochs']} epochs: "
               f"training slide accuracy {metrics['train_slide_accuracy']:.3f} -> {path}")

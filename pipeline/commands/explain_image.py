"""`slideaudit explain-image`: what the model says about one image region, and where it looks."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline import options


@click.command("explain-image")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@options.model_dir
@click.option("--target", "targets", multiple=True, metavar="CLASS|top5",
              help="Class to explain (repeatable), or top5 for the five most probable [default: the predicted class].")
@options.methods("images", "Methods, comma-separated.")
@click.option("--mpp", default=None, type=float,
              help="The image's µm/px [default: recorded in the file, else the model's].")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: ./<image name>-explained].")
@click.option("--max-tiles", default=256, show_default=True, type=click.IntRange(min=1),
              help="Refuse images that need more model tiles than this.")
@options.device
def explain_image(image: Path, model_dir: Path, targets: tuple[str, ...], methods: tuple[str, ...] | None,
                  mpp: float | None, out: Path | None, max_tiles: int, device: str) -> None:
    """Explain IMAGE (PNG, JPEG or TIFF; tiled at the model's patch size and µm/px when larger):
    OUT/index.html with the top-5 classes and, per target class, the methods' overlays, plus the
    figures as PNG files and OUT/result.json."""
    import json

    from explainers.errors import ImageError
    from explainers.methods.registry import default_methods
    from explainers.models.config import read_config
    from explainers.single_image import RegionConfig, check_targets
    from reports.html import percent
    from reports.image_page import RESULT, write_image_report

    out = out or Path(f"{image.stem}-explained")
    config = RegionConfig(targets=targets, methods=methods or default_methods("images"), max_tiles=max_tiles,
                          device=device)
    try:
        check_targets(targets, read_config(model_dir).classes)          # before the model is loaded
    except ImageError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from exc
    page = write_image_report(image, model_dir, out, config, mpp)
    summary = json.loads((out / RESULT).read_text())
    if summary["mpp_assumed"]:
        click.echo(f"warning: {image} records no resolution; assumed the model's {summary['source_mpp']:g} µm/px. "
                   "Pass --mpp if that is wrong.", err=True)
    probability = "probability" if summary["head"] == "softmax" else "sigmoid probability (multi-label)"
    click.echo(f"top {len(summary['top5'])} ({probability}):")
    for i, row in enumerate(summary["top5"], 1):
        click.echo(f"  {i}. {row['class']}: {percent(row['probability'])}")
    for t in summary["targets"]:
        if not t["in_top5"]:
            click.echo(f"note: {t['class']} is not in the top 5 "
                       f"(rank {t['rank']}, probability {percent(t['probability'])})")
    click.echo(f"page: {page}")

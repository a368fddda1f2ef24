"""`slideaudit explain`: attention, logits and CAM maps of one tiled slide -> explain.zarr."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline import options


@click.command()
@click.argument("slide_dir", type=click.Path(file_okay=False, path_type=Path))
@options.model_dir
@options.methods("slides", "Explanation methods, comma-separated.")
@click.option("--target", default="slide", show_default=True, type=click.Choice(["slide", "instance"]),
              help="Explain the slide logit (through attention pooling) or each patch's own logit.")
@click.option("--target-class", default=None, type=click.IntRange(min=0),
              help="Class index to explain (default: the slide's predicted class).")
@options.device
@click.option("--batch", default=None, type=click.IntRange(min=1),
              help="Patches per forward pass (bounds memory; values do not change) "
                   "[default: 64 on the CPU, sized to the free memory on a GPU].")
def explain(slide_dir: Path, model_dir: Path, methods: tuple[str, ...] | None, target: str, target_class: int | None,
            device: str, batch: int | None) -> None:
    """Explain the tiled slide in SLIDE_DIR (OUT/slides/<slide_id>) with the model in --model."""
    import zarr

    from explainers.config import ExplainConfig
    from explainers.explain import explain_store
    from explainers.methods.registry import default_methods
    from tiling.store import EXPLAIN, remove_leftovers

    if slide_dir.is_dir():
        remove_leftovers(slide_dir, EXPLAIN)  # of a killed earlier run
    methods = methods or default_methods("slides")
    out = explain_store(slide_dir, model_dir, ExplainConfig(methods, target, target_class, device, batch))
    group = zarr.open_group(out, mode="r")
    classes, cls = group.attrs["classes"], group.attrs["target_class"]
    predicted = classes[int(group["slide_logits"][:].argmax())]
    click.echo(f"{group['attention'].shape[0]} patches, predicted {predicted}; {target} target "
               f"{classes[cls]}: {', '.join(methods)} -> {out}")

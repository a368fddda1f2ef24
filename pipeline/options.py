"""Click options shared by several commands, defined once."""
from __future__ import annotations

from pathlib import Path

import click

out_dir = click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                       help="Output folder (the store): OUT/slides/<slide_id>/...")
seed = click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
mpp = click.option("--mpp", default=1.0, show_default=True, type=float,
                   help="Target resolution of the patches, micrometres per pixel.")
patch = click.option("--patch", default=224, show_default=True, type=int,
                     help="Patch side in pixels at the target mpp.")
stride = click.option("--stride", default=None, type=int,
                      help="Step between patches in pixels at the target mpp (default: --patch).")
min_tissue = click.option("--min-tissue", default=0.5, show_default=True, type=float,
                          help="Keep patches whose tissue fraction is at least this.")
slide_mpp = click.option("--slide-mpp", default=None, type=float,
                         help="Level-0 mpp for slides whose file does not record it.")
device = click.option("--device", default="auto", show_default=True,
                      type=click.Choice(["auto", "cpu", "cuda"]), help="Where models run.")
workers = click.option("--workers", default=None, type=click.IntRange(min=1),
                       help="Local Dask worker processes (default: run.workers of the config, 2).")
model_dir = click.option("--model", "model_dir", required=True,
                         type=click.Path(exists=True, file_okay=False, path_type=Path),
                         help="Model folder (model.safetensors + config.json), e.g. from `slideaudit train`.")

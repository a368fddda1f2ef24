"""`slideaudit sample`: write a sample archive of generated slides with lesion annotations."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline import options


@click.command()
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--slides", default=None, type=click.IntRange(min=1),
              help="Number of slides; even indices are positive (with lesions), odd negative. "
                   "Default 8, or 1 with --large.")
@options.seed
@click.option("--size", default=None, type=click.IntRange(min=512),
              help="Level-0 width of each slide in px (0.5 µm/px); default ~150-200 tissue patches "
                   "at --mpp 1.0 --patch 224; with --large 80,000 (0.25 µm/px).")
@click.option("--large", is_flag=True,
              help="40x-size slides (0.25 µm/px, ~30% tissue, repeated textures) written tile by "
                   "tile in seconds: about 400 MB each at the default size.")
@click.option("--ink-correlated", is_flag=True,
              help="Put pen ink on positive slides only (a shortcut a model can learn).")
@click.option("--lesion-contrast", default=1.0, show_default=True,
              type=click.FloatRange(0, 1, min_open=True),
              help="How far lesions stand out from the tissue, in (0, 1]: lower makes them paler and "
                   "smaller (1 keeps the conspicuous default).")
def sample(outdir: Path, slides: int | None, seed: int, size: int | None, ink_correlated: bool,
           large: bool, lesion_contrast: float) -> None:
    """Write OUTDIR/manifest.csv, pyramidal TIFF slides and their GeoJSON + ASAP XML annotations."""
    from tiling.samples.archives import DEFAULT_SIZE, LARGE_SIZE, write_large_archive, write_sample_archive

    if large and (ink_correlated or lesion_contrast != 1.0):
        raise click.UsageError("--large slides carry no pen ink and conspicuous lesions; drop "
                               "--ink-correlated and --lesion-contrast")
    count = slides or (1 if large else 8)
    if large:
        manifest = write_large_archive(outdir, count, seed, size or LARGE_SIZE)
    else:
        manifest = write_sample_archive(outdir, count, seed, size or DEFAULT_SIZE, ink_correlated,
                                        lesion_contrast=lesion_contrast)
    click.echo(f"{count} sample slide(s) -> {manifest}")

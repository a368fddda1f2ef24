"""`slideaudit tile`: tile one slide into OUT/slides/<slide_id>/patches.zarr."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline import options


@click.command()
@click.argument("slide", type=click.Path(dir_okay=False, path_type=Path))
@options.out_dir
@options.mpp
@options.patch
@options.stride
@options.min_tissue
@options.slide_mpp
@options.drop_artefacts
@click.option("--chunk", default=64, show_default=True, type=click.IntRange(min=1),
              help="Patches per zarr chunk and per Dask block.")
@click.option("--slide-id", default=None, help="Name of the slide in the store, a folder name (default: file stem).")
def tile(slide: Path, out: Path, mpp: float, patch: int, stride: int | None, min_tissue: float,
         slide_mpp: float | None, drop_artefacts: tuple[str, ...] | None, chunk: int, slide_id: str | None) -> None:
    """Tile SLIDE into patches at --mpp, keeping those with enough tissue."""
    from tiling.archive import check_slide_id
    from tiling.config import TileConfig
    from tiling.store import PATCHES, open_patch_store, remove_leftovers, slide_dir
    from tiling.tile import tile_slide

    config = TileConfig(mpp=mpp, patch=patch, stride=stride, min_tissue=min_tissue, slide_mpp=slide_mpp,
                        drop_artefacts=drop_artefacts or (), chunk=chunk)
    slide_id = check_slide_id(slide_id or slide.stem, "--slide-id" if slide_id else f"{slide} (its stem)")
    remove_leftovers(slide_dir(out, slide_id), PATCHES)  # of a killed earlier run
    store = open_patch_store(tile_slide(slide, out, config, slide_id))
    click.echo(f"{len(store)} patches of {patch} px at {mpp} µm/px (level {store.attrs['level']}) "
               f"-> {store.path}")
    dropped = {name: n for name, n in store.attrs["artefacts_dropped"].items() if n}
    if dropped:
        click.echo("left out as artefacts: " + ", ".join(f"{n} patch(es) on {name}" for name, n in dropped.items()))

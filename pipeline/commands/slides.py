"""`slideaudit slides`: list the slide ids of an archive, as `run` reads it (for the Airflow DAG)."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("archive", type=click.Path(exists=True, path_type=Path))
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="The audit store; with --new, list only the slides `run --only-new` would audit.")
@click.option("--new", "only_new", is_flag=True,
              help="Only slides without OUT/slides/<id>/audit.json (never audited, or failed last time).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list instead of one id a line.")
def slides(archive: Path, out: Path | None, only_new: bool, as_json: bool) -> None:
    """List the slide ids of ARCHIVE (a manifest CSV or a folder of slides) in archive order,
    checked by the same rules as `run` (labels are not read: they need the model)."""
    from pipeline.runner import select
    from tiling.archive import read_archive

    if only_new and out is None:
        raise click.UsageError("--new needs --out: the store whose audited slides are left out")
    records = read_archive(archive)
    chosen = select(records, out, True)[0] if only_new and out is not None else records
    ids = [r.slide_id for r in chosen]
    click.echo(json.dumps(ids) if as_json else "\n".join(ids))

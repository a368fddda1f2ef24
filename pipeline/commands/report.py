"""`slideaudit report OUT`: rebuild the archive index (and optionally every slide's report)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--slides", "slides", is_flag=True,
              help="Also re-render report.html of every audited slide.")
def report(out: Path, slides: bool) -> None:
    """Rebuild OUT/index.html and OUT/audit.csv from OUT/slides/*/audit.json and failure.json."""
    from reports.html import render_index, render_slide_report
    from tiling.store import AUDIT

    if slides:
        folders = sorted(p.parent for p in (out / "slides").glob(f"*/{AUDIT}"))
        for folder in folders:
            render_slide_report(folder, force=True)
        click.echo(f"re-rendered {len(folders)} slide report(s)")
    index, table = render_index(out)
    click.echo(f"wrote {index} and {table}")

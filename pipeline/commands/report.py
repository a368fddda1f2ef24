"""`slideaudit report OUT`: rebuild the archive index (and optionally every slide's report)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--slides", "slides", is_flag=True,
              help="Also re-render report.html of every audited slide.")
@click.option("--group-by", default=None, metavar="COL[,COL]",
              help="Manifest columns whose values split the subgroup rates in the index and OUT/subgroups.csv, "
                   "read from the archive of the last run (default: that run's --group-by; '' for none).")
def report(out: Path, slides: bool, group_by: str | None) -> None:
    """Rebuild OUT/index.html and OUT/audit.csv from OUT/slides/*/audit.json and failure.json."""
    from pipeline.runner import last_run_groups
    from reports.html import render_index, render_slide_report
    from tiling.store import AUDIT

    columns, groups = last_run_groups(out, None if group_by is None else
                                      tuple(c.strip() for c in group_by.split(",") if c.strip()))
    if slides:
        folders = sorted(p.parent for p in (out / "slides").glob(f"*/{AUDIT}"))
        for folder in folders:
            render_slide_report(folder, force=True)
        click.echo(f"re-rendered {len(folders)} slide report(s)")
    index, table = render_index(out, columns, groups)
    click.echo(f"wrote {index} and {table}" + (f" (subgroups by {', '.join(columns)})" if columns else ""))

"""`slideaudit demo`: sample slides, train a small model, audit a held-out archive."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.commands.run import EXIT_CODES, build_config, config_options, echo_result


@click.command(epilog=EXIT_CODES)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@config_options
def demo(out: Path, config_file: Path | None, assignments: tuple[str, ...], workers: int | None,
         methods: tuple[str, ...] | None, device: str | None) -> None:
    """Write 16 sample slides (seed 1) and train a model on them, write 8 held-out sample
    slides (seed 2) and audit them into OUT/audit; print the path of OUT/audit/index.html.
    The demo's own defaults (before --config): maps of at most 2048 px a side. A rerun keeps
    what is done (delete OUT/model to train again)."""
    from pipeline.demo import DEMO_DEFAULTS, run_demo

    config = build_config(config_file, assignments, {
        "run.workers": workers, "explain.methods": methods, "explain.device": device}, DEMO_DEFAULTS)
    echo_result(run_demo(out, config))

"""`slideaudit run`: audit an archive of slides on Dask."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline import options

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.runner import RunResult

EXIT_CODES = """
\b
Exit codes:
  0  every slide was audited
  1  a crash (an unexpected error; -v shows the traceback)
  2  usage: the command line, the config, the archive, the model or OUT (permission,
     read-only) must be fixed; nothing ran
  3  completed with failures: some slides failed (OUT/slides/<id>/failure.json,
     listed in the index); the other slides and the index are complete
  4  completed, audit thresholds met: a slide of this run meets --fail-on (listed in
     the summary and OUT/run.json); 4 wins over 3 when both apply
"""


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that set the run's config: --config, --set, --workers, --methods, --device."""
    for option in reversed([
        click.option("--config", "config_file", default=None,
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="YAML or TOML file with sections tile, explain, stitch, audit, run."),
        click.option("--set", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one setting, e.g. --set stitch.max_side=2048 (repeatable)."),
        options.workers,
        options.methods(None, "Explanation methods, comma-separated (default: explain.methods of the config)."),
        click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="Where the model runs (default: explain.device of the config, auto)."),
    ]):
        command = option(command)
    return command


def build_config(config_file: Path | None, assignments: tuple[str, ...], flags: dict[str, Any],
                 defaults: dict[str, Any] | None = None) -> PipelineConfig:
    """`defaults`, then --config, then --set, then `flags` ({dotted key: value}, None = not given)."""
    from pipeline.config import load_config, parse_assignment

    overrides = dict(parse_assignment(a) for a in assignments)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(config_file, overrides, defaults)


def echo_result(result: RunResult, as_json: bool = False) -> None:
    """The run's summary (`pipeline.summary`) on stdout, as lines or as JSON; then exit with its code."""
    from pipeline.summary import summarize, summary_lines

    summary = summarize(result)
    click.echo(json.dumps(summary, indent=2) if as_json else "\n".join(summary_lines(summary)))
    click.get_current_context().exit(result.exit_code)


@click.command(epilog=EXIT_CODES)
@click.argument("archive", type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Model folder (model.safetensors + config.json), e.g. from `slideaudit train`.")
@options.out_dir
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask scheduler, e.g. tcp://127.0.0.1:8786 (no local cluster).")
@options.slide_mpp
@options.drop_artefacts
@options.lesion_classes
@options.exclude_classes
@click.option("--only-new", is_flag=True,
              help="Audit only slides without an audit.json in OUT; rebuild the index over all.")
@click.option("--fail-on", default=None, metavar="review|fail|unchecked|FLAG[,FLAG]",
              help="CI gate: exit 4 when a slide of this run has verdict REVIEW or worse (review), "
                   "FAIL (fail), UNCHECKED (unchecked: nothing to check it against) or raises one of "
                   "the named flags (default: run.fail_on, none).")
@click.option("--group-by", default=None, metavar="COL[,COL]",
              help="Manifest columns (e.g. ink,scanner,site) whose values split accuracy, false-positive and "
                   "false-negative rates in the index and OUT/subgroups.csv (default: run.group_by, none).")
@click.option("--sanity", is_flag=True, default=None,
              help="Model-randomisation check (Adebayo et al. 2018) on a seeded sample of slides: re-initialise the "
                   "model top-down, compare each method's maps by Spearman rho (default: audit.sanity.enabled).")
@click.option("--sanity-slides", default=None, type=click.IntRange(min=1), metavar="N",
              help="How many slides --sanity checks (default: audit.sanity.slides, 2).")
@click.option("--wait", is_flag=True, help="When another run holds OUT, wait for it (default: exit 2).")
@click.option("--progress", default="auto", show_default=True, type=click.Choice(["auto", "bar", "plain", "none"]),
              help="On stderr: a bar counted in slides, one plain line per stage (for logs), or nothing; "
                   "auto: a bar on a terminal, else plain.")
@click.option("--json", "as_json", is_flag=True, help="Print the end-of-run summary as JSON on stdout.")
@config_options
def run(archive: Path, model_dir: Path, out: Path, scheduler: str | None, slide_mpp: float | None,
        drop_artefacts: tuple[str, ...] | None, lesion_classes: str | None, exclude_classes: str | None, only_new: bool,
        fail_on: str | None, group_by: str | None, sanity: bool | None, sanity_slides: int | None,
        wait: bool, progress: str, as_json: bool, config_file: Path | None, assignments: tuple[str, ...],
        workers: int | None, methods: tuple[str, ...] | None, device: str | None) -> None:
    """Audit every slide of ARCHIVE (a manifest CSV, or a folder of slides with annotations
    beside them): tile -> explain -> stitch -> audit -> report per slide on Dask, then
    OUT/index.html, OUT/audit.csv and the run manifest OUT/run.json. Settings: defaults, then
    --config, then --set, then the other flags. Outputs that are current are kept (resume).
    """
    from pipeline.progress import say

    if progress != "none":  # before the imports below, which take seconds
        say(f"auditing {archive} into {out}")
    from pipeline.runner import run_archive

    config = build_config(config_file, assignments, {
        "run.workers": workers, "run.scheduler": scheduler, "explain.methods": methods,
        "explain.device": device, "tile.slide_mpp": slide_mpp,
        "tile.drop_artefacts": drop_artefacts, "run.fail_on": fail_on,
        "run.group_by": group_by, "audit.sanity.enabled": sanity, "audit.sanity.slides": sanity_slides,
        "stitch.lesion_classes": lesion_classes, "stitch.exclude_classes": exclude_classes})
    echo_result(run_archive(archive, model_dir, out, config, only_new, wait, progress), as_json)

"""The `slideaudit` command line. Commands load lazily, so `slideaudit --help` is instant."""
from __future__ import annotations

import importlib
import logging

import click

# command name -> "module:function" of a click command
COMMANDS = {
    "sample": "pipeline.commands.sample:sample",
    "tile": "pipeline.commands.tile:tile",
    "explain-image": "pipeline.commands.explain_image:explain_image",
    "serve": "pipeline.commands.serve:serve",
    "run": "pipeline.commands.run:run",
    "demo": "pipeline.commands.demo:demo",
    "report": "pipeline.commands.report:report",
    "train": "pipeline.commands.train:train",
    "explain": "pipeline.commands.explain:explain",
    "import-model": "pipeline.commands.import_model:import_model",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """slideaudit: where does the slide classifier look, and is that where the lesion is?"""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

"""The `slideaudit` command line. Commands load lazily, so `slideaudit --help` is instant.

Exit codes come from one table, `pipeline.errors` (`exit_code`): 0 ok; 1 a crash (an unexpected
exception; traceback with -v); 2 usage: a malformed command line, a setting, the archive, the
model or an OUT that cannot be written (permission, read-only) must be fixed; 3 a slide could not
be processed, or a full disk, or `run` completing with failed slides; 4 audit thresholds met; 143
stopped by SIGTERM, which is turned into SystemExit so that every half-written output is removed
on the way out (`tiling.store.atomic_path`), as on Ctrl-C.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import re
import signal
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import click

from pipeline.errors import EXIT_CRASH, EXIT_TERMINATED, exit_code, os_error, os_error_message
from tiling.errors import AuditError

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
    "slides": "pipeline.commands.slides:slides",
}


class CommandFailed(click.ClickException):
    """An error of a command, shown as "Error: message" and exiting with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


def first_sentence(text: str) -> str:
    """The first sentence of a help text, on one line (click would cut it at 45 characters)."""
    flat = " ".join(text.split())
    end = re.search(r"\.(\s|$)", flat)
    return flat[:end.start() + 1] if end else flat


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind the main thread like an exception, cleaning up as it goes."""
    raise SystemExit(EXIT_TERMINATED)


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(EXIT_TERMINATED) in the main thread; the
    previous handler is restored after (nothing changes off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class LazyGroup(click.Group):
    """Loads commands on demand and turns their exceptions into exit codes (`exit_code`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        if command.short_help is None and command.help:  # the listing shows whole sentences
            command.short_help = first_sentence(command.help)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with terminate_as_exit():
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            code, found = exit_code(exc), os_error(exc)
            if found is not None and not isinstance(exc, AuditError):
                raise CommandFailed(os_error_message(found), code) from exc
            if code != EXIT_CRASH:
                raise CommandFailed(str(exc), code) from exc
            if ctx.params.get("verbose"):
                click.echo(traceback.format_exc(), err=True, nl=False)
            raise CommandFailed(f"unexpected {type(exc).__name__}: {exc} (a bug or the environment; "
                                "rerun with -v for the traceback)", code) from exc


@click.group(cls=LazyGroup, context_settings={"max_content_width": 100})
@click.version_option(package_name="slideaudit", prog_name="slideaudit")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages; show the traceback of a crash.")
def main(verbose: bool) -> None:
    """slideaudit: where does the slide classifier look, and is that where the lesion is?"""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main(prog_name="slideaudit")

"""The command line's one mapping of errors to exit codes, and the shared --methods option."""
from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import tiling.samples.archives
from pipeline.cli import COMMANDS, main
from pipeline.errors import EXIT_CRASH, EXIT_SLIDES_FAILED, EXIT_USAGE
from tiling.errors import ArchiveError, ConfigError, SlideError


@pytest.mark.parametrize(("exc", "code"), [
    (ConfigError("tile.mpp = 0: must be positive"), EXIT_USAGE),
    (ArchiveError("m.csv line 2: bad label"), EXIT_USAGE),
    (SlideError("a.svs: cannot read it"), EXIT_SLIDES_FAILED),
    (ValueError("a bug"), EXIT_CRASH),
    (OSError(errno.ENOSPC, "No space left on device"), EXIT_SLIDES_FAILED),  # one message, no traceback
])
def test_errors_map_to_exit_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exc: Exception,
                                  code: int) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(tiling.samples.archives, "write_sample_archive", fail)
    result = CliRunner().invoke(main, ["sample", str(tmp_path)])
    assert result.exit_code == code and (exc.strerror if isinstance(exc, OSError) else str(exc)) in result.output
    assert "Traceback" not in result.output
    if code == EXIT_CRASH:
        assert "unexpected ValueError" in result.output and "-v" in result.output
        verbose = CliRunner().invoke(main, ["-v", "sample", str(tmp_path)])
        assert verbose.exit_code == EXIT_CRASH and "Traceback" in verbose.output


def test_usage_errors_exit_2_for_every_command(tmp_path: Path) -> None:
    for command in COMMANDS:
        result = CliRunner().invoke(main, [command, "--no-such-option"])
        assert result.exit_code == EXIT_USAGE, command


@pytest.mark.parametrize("command", ["explain", "run", "demo", "explain-image"])
def test_every_methods_option_checks_against_the_registry(tmp_path: Path, command: str) -> None:
    args = {"explain": [str(tmp_path), "--model", str(tmp_path)],
            "run": [str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path / "o")],
            "demo": [str(tmp_path / "o")],
            "explain-image": [str(Path(__file__)), "--model", str(tmp_path)]}[command]
    result = CliRunner().invoke(main, [command, *args, "--methods", "gradcam,lime"])
    assert result.exit_code == EXIT_USAGE and "--methods" in result.output and "'lime'" in result.output
    assert not (tmp_path / "o").exists()


def test_version_and_whole_sentences_in_the_command_list() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and version("slideaudit") in result.output
    listing = CliRunner().invoke(main, ["--help"], terminal_width=100).output.split("Commands:")[1]
    assert "..." not in listing
    for command in COMMANDS:
        assert f"  {command} " in listing
    assert "with enough tissue." in listing  # tile's first sentence, whole


HELP_PROBE = """
import sys
from pipeline.cli import main
try:
    main([sys.argv[1], "--help"])
except SystemExit as done:
    assert done.code == 0, done.code
heavy = sorted(m for m in ("torch", "distributed", "openslide", "great_expectations") if m in sys.modules)
print("heavy:", ",".join(heavy))
"""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_answers_at_once_without_torch(command: str) -> None:
    """Measured in a fresh interpreter (3 s: generous for a loaded CI machine; ~0.2 s here)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", HELP_PROBE, command], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert "Usage: " in done.stdout and done.stdout.rstrip().endswith("heavy:"), done.stdout[-300:]
    assert seconds < 3, f"{command} --help took {seconds:.1f} s"

"""Errors of the pipeline package and the exit codes of `slideaudit` (mapped in `pipeline.cli`)."""
import errno

from tiling.errors import AuditError, ConfigError

EXIT_OK = 0
EXIT_CRASH = 1          # an unexpected exception: a bug or the environment
EXIT_USAGE = 2          # the command line, a config or an archive must be fixed before anything runs
EXIT_SLIDES_FAILED = 3  # a slide could not be processed (`run`: completed with failed slides)
EXIT_THRESHOLDS = 4     # audit thresholds met (`run --fail-on`)
EXIT_TERMINATED = 143   # 128 + SIGTERM: stopped by SIGTERM, temporary outputs removed


class ValidationFailed(AuditError):
    """A great-expectations suite of the slide's audit failed (the report shows which)."""


class OutLocked(ConfigError):
    """Another run holds the lock on OUT (exit 2: wait for it or pass --wait)."""


class DiskFull(AuditError):
    """The disk of OUT is full (ENOSPC): the run stops, its half-written outputs removed; a rerun
    after freeing space resumes where it stopped."""


def disk_full(exc: BaseException | None) -> bool:
    """True when `exc`, or an exception it was raised from, is OSError ENOSPC (no space left)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class UploadTooLarge(Exception):
    """The request body passed the configured limit (HTTP 413)."""


class FormProblem(Exception):
    """A form value is missing or invalid (HTTP 400)."""

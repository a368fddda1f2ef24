"""Errors of the pipeline package and the exit codes of `slideaudit`: one table (`EXIT_CODES`,
`ERRNO_CODES`) read by `exit_code`, which `pipeline.cli` applies to whatever a command raises.

`run` itself ends with 0, 3 or 4 from its slides (`pipeline.runner.RunResult.exit_code`): a slide's
failure is recorded and the run goes on.
"""
from __future__ import annotations

import errno

from explainers.errors import ImageError, ImageTooLarge, ModelError
from reports.errors import MetricError, RegistryError
from tiling.errors import AnnotationError, ArchiveError, AuditError, ConfigError, SlideError, StoreError

EXIT_OK = 0
EXIT_CRASH = 1          # an unexpected exception: a bug or the environment
EXIT_USAGE = 2          # the command line, a config, an archive, a model or OUT must be fixed first
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
    found = os_error(exc)
    return found is not None and found.errno == errno.ENOSPC


class UploadTooLarge(Exception):
    """The request body passed the configured limit (HTTP 413)."""


class FormProblem(Exception):
    """A form value is missing or invalid (HTTP 400)."""


class StageTimeout(AuditError):
    """A stage ran past run.stage_timeout on one slide (`pipeline.limits`): that slide fails."""


# error class -> exit code; an exception takes the code of the first class of its MRO found here
EXIT_CODES: dict[type[BaseException], int] = {
    OutLocked: EXIT_USAGE,            # another run writes OUT: wait for it (--wait) or choose another
    ConfigError: EXIT_USAGE,          # a flag or config key (an implausible --slide-mpp too)
    ArchiveError: EXIT_USAGE,         # the manifest or folder (an implausible `mpp` cell too)
    ModelError: EXIT_USAGE,           # the model folder: the same from `explain` and `run`
    ImageTooLarge: EXIT_USAGE,        # an image over the pixel limit: a smaller one or a higher limit
    ImageError: EXIT_USAGE,           # the image given to explain-image
    SlideError: EXIT_SLIDES_FAILED,   # a slide unreadable, or without a resolution
    AnnotationError: EXIT_SLIDES_FAILED,
    StoreError: EXIT_SLIDES_FAILED,
    RegistryError: EXIT_SLIDES_FAILED,
    MetricError: EXIT_SLIDES_FAILED,
    ValidationFailed: EXIT_SLIDES_FAILED,
    StageTimeout: EXIT_SLIDES_FAILED,
    DiskFull: EXIT_SLIDES_FAILED,     # free space and rerun: finished outputs are kept
    AuditError: EXIT_SLIDES_FAILED,
}
# OSError errno (on the exception or one it was raised from) -> exit code, before EXIT_CODES
ERRNO_CODES = {
    errno.EACCES: EXIT_USAGE,          # permission denied: OUT or an input to fix
    errno.EPERM: EXIT_USAGE,
    errno.EROFS: EXIT_USAGE,           # a read-only OUT
    errno.ENOSPC: EXIT_SLIDES_FAILED,  # a full disk
}
# what to do, by errno, after the path and the system's words
ERRNO_ADVICE = {
    errno.EACCES: "fix its permissions or choose another --out",
    errno.EPERM: "fix its permissions or choose another --out",
    errno.EROFS: "choose another --out, on a disk that can be written",
    errno.ENOSPC: "free space and run again: finished outputs are kept",
}


def os_error(exc: BaseException | None) -> OSError | None:
    """The first OSError with an errno in ERRNO_CODES among `exc` and the exceptions it was raised from."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in ERRNO_CODES:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def exit_code(exc: BaseException) -> int:
    """The exit code of an exception a command raised: by ERRNO_CODES, then EXIT_CODES, else 1."""
    found = os_error(exc)
    if found is not None and found.errno is not None and not isinstance(exc, AuditError):
        return ERRNO_CODES[found.errno]
    return next((EXIT_CODES[k] for k in type(exc).__mro__ if k in EXIT_CODES), EXIT_CRASH)


def os_error_message(exc: OSError) -> str:
    """One line naming the path, the system's words and what to do (ERRNO_ADVICE)."""
    where = exc.filename if exc.filename is not None else "OUT"
    return f"{where}: {exc.strerror or exc}; {ERRNO_ADVICE.get(exc.errno or 0, 'check the path')}"

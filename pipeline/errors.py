"""Errors of the pipeline package and the exit codes of `slideaudit` (mapped in `pipeline.cli`)."""
from tiling.errors import AuditError

EXIT_OK = 0
EXIT_CRASH = 1          # an unexpected exception: a bug or the environment
EXIT_USAGE = 2          # the command line, a config or an archive must be fixed before anything runs
EXIT_SLIDES_FAILED = 3  # a slide could not be processed (`run`: completed with failed slides)
EXIT_THRESHOLDS = 4     # audit thresholds met (`run --fail-on`)
EXIT_TERMINATED = 143   # 128 + SIGTERM: stopped by SIGTERM, temporary outputs removed


class ValidationFailed(AuditError):
    """A great-expectations suite of the slide's audit failed (the report shows which)."""


class UploadTooLarge(Exception):
    """The request body passed the configured limit (HTTP 413)."""


class FormProblem(Exception):
    """A form value is missing or invalid (HTTP 400)."""

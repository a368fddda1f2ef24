"""Errors a user can act on. Each message names the file and what to do about it."""


class AuditError(Exception):
    """Base class: a failure that stops one slide, not the archive."""


class SlideError(AuditError):
    """A slide cannot be read or lacks what the audit needs (e.g. its resolution)."""


class AnnotationError(AuditError):
    """An annotation file is malformed or cannot be read."""


class StoreError(AuditError):
    """A stage's output in the store is missing, incomplete or inconsistent."""


class ConfigError(AuditError):
    """A setting (config file, flag, stage config) is invalid: nothing can run until it is fixed.
    The message names the key and the allowed values."""


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """ConfigError "key = value: must be <allowed>" unless `ok` (for a config's __post_init__)."""
    if not ok:
        raise ConfigError(f"{key} = {value!r}: must be {allowed}")


class ArchiveError(AuditError):
    """An archive (manifest CSV or folder of slides) or a slide id cannot be used: nothing runs
    until it is fixed. The message names the file, the line and what to do."""

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

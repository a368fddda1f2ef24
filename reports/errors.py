"""Errors of the reports package. Each message names the file or key and what to do."""
from tiling.errors import AuditError


class RegistryError(AuditError):
    """A metric or flag key is not registered (e.g. an audit.json written by another version)."""


class MetricError(AuditError):
    """A map handed to a metric holds NaN or ±Inf inside the pixels it is scored on."""

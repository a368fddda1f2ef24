"""Errors of the explainers package. Each message names the file and what to do."""
from tiling.errors import AuditError


class ModelError(AuditError):
    """A model folder, its config or its weights are missing, malformed or do not fit the data."""


class ManifestError(AuditError):
    """A training manifest is missing, malformed or names unusable labels."""

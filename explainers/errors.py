"""Errors of the explainers package. Each message names the file and what to do."""
from tiling.errors import AuditError


class ModelError(AuditError):
    """A model folder, its config or its weights are missing, malformed or do not fit the data."""


class ImageError(AuditError):
    """An uploaded or given image cannot be explained: not an image, wrong mode, bad settings."""


class ImageTooLarge(ImageError):
    """An image has more pixels, or needs more model tiles, than the configured limit."""

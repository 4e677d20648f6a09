"""The exception hierarchy: flows retry ``TransientError`` and fail fast on ``InputError``.

Every message names the offending object, its value, and the argument (or action) that fixes it.
"""

__all__ = [
    "S2PipeError", "InputError", "NoScenesError", "OutputConflictError", "StoreLockedError", "TransientError",
    "CatalogUnreachableError", "AssetError",
]


class S2PipeError(Exception):
    """Base of every error s2pipe raises on purpose."""


class InputError(S2PipeError, ValueError):
    """Bad user input (bbox, dates, band, collection, config): retrying cannot help."""


class NoScenesError(InputError):
    """The search matched no scenes: widen the region, the dates or the cloud-cover limit."""


class OutputConflictError(InputError):
    """The output path holds data from a different grid or different inputs."""


class StoreLockedError(S2PipeError):
    """Another live run is writing the same output store: wait for it (retrying soon rarely helps)."""


class TransientError(S2PipeError):
    """A failure that may pass (HTTP 5xx, time-out, connection reset): worth retrying."""


class CatalogUnreachableError(TransientError):
    """The STAC API could not be reached after the configured retries."""


class AssetError(S2PipeError):
    """An asset could not be read after retries (strict mode): fix or remove it, or run without strict."""

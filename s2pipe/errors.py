"""The exception hierarchy: flows retry ``TransientError`` and fail fast on ``InputError``.

Every message names the offending object, its value, and the argument (or action) that fixes it.
"""

import math
import reprlib
from typing import Any

__all__ = [
    "S2PipeError", "InputError", "NoScenesError", "OutputConflictError", "StoreLockedError", "TransientError",
    "CatalogUnreachableError", "SigningError", "AssetError", "AssetReadError",
]

# How bad values appear in error messages (not errors: outside __all__, imported by name where needed).

REPR_CHARS = 80
"""The most characters of a bad value that an error message repeats."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4


def clip_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (ending with "..." when cut)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: Any) -> str:
    """A repr of ``value`` of at most ``REPR_CHARS`` characters, cheap for any size or depth of input (the form
    in which an error message repeats a bad value)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of about {int(value.bit_length() * math.log10(2)) + 1:,} digits>"
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails (a hostile object): name its type only
        text = f"<{type(value).__name__}>"
    return clip_text(text, REPR_CHARS)


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


class SigningError(TransientError):
    """No token to sign asset hrefs with: the token service could not be reached after the retries."""


class AssetError(S2PipeError):
    """An asset could not be read after retries (strict mode): fix or remove it, or run without strict."""


class AssetReadError(AssetError):
    """Pixels of an asset could not be read after the retries. ``href`` is the href as the item gives it (for
    the flow to leave its scene out); the message names it without its query string."""

    def __init__(self, message: str, href: str = ""):
        super().__init__(message)
        self.href = href

    def __reduce__(self):  # survives pickling from a Dask worker with its href
        return (type(self), (str(self), self.href))

"""s2pipe: a region and a time window in, analysis-ready Sentinel-2 datacubes out.

Each pipeline stage is its own module exposing a pure function (xarray in, xarray out):
``search`` -> ``cube`` -> ``cloudmask`` -> ``gapfill`` -> ``normalize`` -> ``store``.
Prefect flows in ``s2pipe.flows`` orchestrate them; nothing outside ``s2pipe.flows`` imports Prefect.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("s2pipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from s2pipe.errors import (  # noqa: E402
    CatalogUnreachableError,
    InputError,
    NoScenesError,
    OutputConflictError,
    S2PipeError,
    TransientError,
)

__all__ = [
    "__version__",
    "S2PipeError",
    "InputError",
    "NoScenesError",
    "OutputConflictError",
    "TransientError",
    "CatalogUnreachableError",
]

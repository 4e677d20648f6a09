"""s2pipe: a region and a time window in, analysis-ready Sentinel-2 datacubes out.

Each pipeline stage is its own module exposing a pure function (xarray in, xarray out)::

    search_items -> build_cube -> mask_clouds -> cressman -> normalize -> write_cube
    (s2pipe.search) (s2pipe.cube) (s2pipe.cloudmask) (s2pipe.gapfill) (s2pipe.normalize) (s2pipe.store)

and the models run on the cubes: ``fit_dynamics`` (``s2pipe.forecast``) and ``train_mapper``
(``s2pipe.mapping``). Prefect flows in ``s2pipe.flows`` orchestrate them; nothing outside ``s2pipe.flows``
imports Prefect. The entry points below are imported on first use, so ``import s2pipe`` loads neither torch
nor Dask. (``normalize`` is not among them: ``s2pipe.normalize`` is the stage's module.)
"""
from __future__ import annotations

# ruff: noqa: F401  (the TYPE_CHECKING imports at the end are the public names, for type checkers)
import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("s2pipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from s2pipe.errors import (  # noqa: E402
    AssetError,
    AssetReadError,
    CatalogUnreachableError,
    InputError,
    NoScenesError,
    OutputConflictError,
    S2PipeError,
    SigningError,
    StoreLockedError,
    TransientError,
)

_LAZY: dict[str, str] = {
    # configuration and catalogs
    "RunConfig": "s2pipe.config",
    "load_config": "s2pipe.config",
    "load_profile": "s2pipe.stac.catalog",
    "list_profiles": "s2pipe.stac.catalog",
    # the stages
    "search_items": "s2pipe.search",
    "build_cube": "s2pipe.cube",
    "grid_of": "s2pipe.grid",
    "mask_clouds": "s2pipe.cloudmask",
    "observed_mask": "s2pipe.cloudmask",
    "cressman": "s2pipe.gapfill",
    "compute_scale": "s2pipe.normalize",
    "invert": "s2pipe.normalize",
    "write_cube": "s2pipe.store.zarr",
    "append_cube": "s2pipe.store.zarr",
    "open_cube": "s2pipe.store.zarr",
    # models
    "fit_dynamics": "s2pipe.forecast",
    "load_dynamics": "s2pipe.forecast",
    "train_mapper": "s2pipe.mapping",
    "load_mapper": "s2pipe.mapping",
    "rasterize_labels": "s2pipe.ml.labels",
    "score_map": "s2pipe.ml.metrics",
    # products
    "write_class_map": "s2pipe.products.maps",
    "detect_change": "s2pipe.products.maps",
    "write_change": "s2pipe.products.maps",
    "export_cube": "s2pipe.products.export",
    # the demo region
    "DemoConfig": "s2pipe.synthetic.demo",
    "generate_demo": "s2pipe.synthetic.demo",
    "demo_server": "s2pipe.synthetic.demo",
}
"""Public name -> the module that defines it (imported by ``__getattr__`` on first access)."""

__all__ = [
    "__version__",
    "S2PipeError", "InputError", "NoScenesError", "OutputConflictError", "StoreLockedError", "TransientError",
    "CatalogUnreachableError", "SigningError", "AssetError", "AssetReadError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 's2pipe' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time ``__getattr__`` imports these on first use
    from s2pipe.cloudmask import mask_clouds, observed_mask
    from s2pipe.config import RunConfig, load_config
    from s2pipe.cube import build_cube
    from s2pipe.forecast import fit_dynamics, load_dynamics
    from s2pipe.gapfill import cressman
    from s2pipe.grid import grid_of
    from s2pipe.mapping import load_mapper, train_mapper
    from s2pipe.ml.labels import rasterize_labels
    from s2pipe.ml.metrics import score_map
    from s2pipe.normalize import compute_scale, invert
    from s2pipe.products.maps import detect_change, write_change, write_class_map
    from s2pipe.search import search_items
    from s2pipe.stac.catalog import list_profiles, load_profile
    from s2pipe.store.zarr import append_cube, open_cube, write_cube
    from s2pipe.synthetic.demo import DemoConfig, demo_server, generate_demo

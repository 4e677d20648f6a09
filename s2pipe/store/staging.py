"""Normalise after the write: each COG pixel read once for a cube larger than the cluster's memory.

A max-based normalisation needs the maximum of the whole cube before the first normalized value can be
written. A cube held in memory reads its scenes once and then takes both passes from memory. A larger cube
would read its scenes twice: once for the statistics, once for the write. Instead, it is written in two
phases:

1. **stage**: region by region, the gap-filled but not yet normalized Dataset goes to a staging store beside
   the output (``<output>.staging``). With it goes ``reflectance_max``, each pixel's largest clear reflectance
   over time (dims ``(band, y, x)``, 1/T of the cube). It comes from the same read blocks, so each COG pixel
   is read once.
2. **finish**: the factors come from ``reflectance_max`` (``normalize.scale_from_max``: the same maxima, and
   so the same factors bit for bit, as the statistics pass). The output is then written region by region
   from the staging store (a Zarr read, not a COG read), and the staging store is removed.

Both phases use ``store.write_cube``, so both resume region by region after a crash. The staging store has
its own signature and lock, and the output's is the one a one-pass run would give.
"""
from __future__ import annotations

from typing import Any

import xarray as xr

from s2pipe.errors import OutputConflictError
from s2pipe.runtime.objectstore import ObjectPath, location, rmtree
from s2pipe.store.zarr import is_complete, open_cube, write_cube

__all__ = ["SUFFIX", "staging_path", "is_complete", "stage", "band_max", "remove"]

SUFFIX = ".staging"
"""Appended to the output's name to give its staging store's."""


def staging_path(output: Any, *, storage: Any = None):
    """The staging store of ``output`` (a path, or an object-store URL with ``storage``): ``<output>.staging``."""
    path = location(output, storage)
    return path.with_name(path.name + SUFFIX)


def stage(ds: xr.Dataset, reflectance: xr.DataArray, output: Any, *, overwrite: bool = False,
          region_size: int | None = None, progress=None, storage: Any = None) -> xr.Dataset:
    """Phase 1: write ``ds`` (not normalized) and the per-pixel maxima of ``reflectance`` to the staging store.

    Parameters
    ----------
    ds : xr.Dataset
        What the output will hold before normalisation: ``reflectance`` (time, band, y, x), float32, plus
        the other spatial variables (weight, observed flag), lazy.
    reflectance : xr.DataArray
        The cloud-masked reflectance (time_in, band, y, x), NaN where not clear: its maximum over time is
        staged as ``reflectance_max`` (band, y, x), float32. Built from the same Dask graph as ``ds``, so
        one region's scenes are read once for both.
    output : path or URL
        The final output; the staging store is ``staging_path(output)``.
    overwrite, region_size, progress, storage
        As in ``store.write_cube``. A staging store left by a run with other inputs is replaced; one left by
        an interrupted run with the same inputs is resumed.

    Returns
    -------
    xr.Dataset
        The staging store opened lazily, encodings dropped (it feeds the output write like an in-memory cube).
    """
    path = staging_path(output, storage=storage)
    peak = reflectance.max("time", skipna=True).astype("float32")
    peak.attrs = {"long_name": "largest clear reflectance of each pixel over the input dates", "units": "1"}
    staged = ds.assign(reflectance_max=peak.reset_coords(drop=True).transpose("band", "y", "x"))
    try:
        write_cube(staged, path, overwrite=overwrite, region_size=region_size, progress=progress, storage=storage,
                   overviews=False)
    except OutputConflictError:
        # left by an abandoned run with other inputs: it holds nothing of the user's, so it is replaced
        # (a live run's staging store is locked, and refused with StoreLockedError instead)
        write_cube(staged, path, overwrite=True, region_size=region_size, progress=progress, storage=storage,
                   overviews=False)
    return open_cube(path, storage=storage).drop_encoding()


def band_max(staged: xr.Dataset) -> xr.DataArray:
    """Per-band maximum of the staged ``reflectance_max`` (computes it): float64, dims ("band",), NaN for a band
    without any clear value; what ``cloudmask.clear_band_max`` gives for the raw cube (same maxima)."""
    m = staged["reflectance_max"].max(["y", "x"], skipna=True).compute()
    return m.astype("float64").reset_coords(drop=True).rename("band_max")


def remove(output: Any, *, storage: Any = None) -> None:
    """Delete the staging store of ``output``, if any (after the output is complete)."""
    path = staging_path(output, storage=storage)
    if isinstance(path, ObjectPath) or path.exists():
        rmtree(path)

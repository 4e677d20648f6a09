"""The layout of the output store: the Dataset that ``write_cube`` writes for a regional cube.

Variables (time, band, y, x) ``reflectance`` float32, (time, y, x) ``weight`` float32 and ``observed`` uint8,
with CF attributes, and the provenance attributes of the Dataset (grid, software, catalog, STAC items, the run's
parameters, the scenes the asset check left out)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xarray as xr

from s2pipe import __version__

__all__ = ["output_dataset"]


def output_dataset(normalized: xr.DataArray, weight: xr.DataArray, observed: xr.DataArray, *, cube: xr.DataArray,
                   parameters: Mapping[str, Any]) -> xr.Dataset:
    """The Dataset written to Zarr: reflectance, Cressman weight, observed flag, provenance attributes.

    Parameters
    ----------
    normalized
        Gap-filled (and normalised, or still unnormalised while staging) reflectance (time, band, y, x).
    weight
        Summed Cressman weight (time, band, y, x) or (time, y, x); the first band is kept.
    observed
        Bool (time, y, x) on the acquisition dates (``cloudmask.observed_mask``); dates of ``normalized``
        without an acquisition are 0.
    cube
        The raw cube, whose attributes give the grid and the provenance.
    parameters
        The run's parameters (``RunConfig.parameters()``), stored as the ``parameters`` attribute.
    """
    observed = observed.reindex(time=normalized.time, fill_value=False).astype("uint8")
    observed.attrs = {"long_name": "value is a clear observation (1) or interpolated (0)", "flag_values": [0, 1]}
    w = weight.isel(band=0, drop=True) if "band" in weight.dims else weight
    w = w.astype("float32")
    w.attrs = {"long_name": "summed Cressman weight of the clear observations", "units": "1"}
    normalized = normalized.astype("float32")
    # only the variable's own attributes: dataset-level provenance lives on the Dataset
    normalized.attrs = {
        "long_name": "normalized surface reflectance (invert with s2pipe.normalize.invert)",
        "units": "1",
        **{k: v for k, v in normalized.attrs.items() if k.startswith("normalize_")},
    }
    ds = xr.Dataset({"reflectance": normalized, "weight": w, "observed": observed})
    for coord in ("scale", "offset"):
        if coord in ds.coords:
            ds = ds.drop_vars(coord)
    ds.attrs = {
        "title": "s2pipe Sentinel-2 L2A datacube (cloud-masked, Cressman gap-filled, normalized)",
        "Conventions": "CF-1.9",
        "crs": cube.attrs.get("crs"),
        "transform": list(cube.attrs.get("transform", [])),
        "resolution": cube.attrs.get("resolution"),
        "software": f"s2pipe {__version__}",
        "catalog": cube.attrs.get("catalog"),
        "catalog_url": cube.attrs.get("catalog_url"),
        "stac_items": list(cube.attrs.get("stac_items", [])),
        "parameters": dict(parameters),
        "source": "contains modified Copernicus Sentinel data",
    }
    if cube.attrs.get("dropped_items"):  # only then: a store written before the asset check resumes unchanged
        ds.attrs.update(dropped_items=list(cube.attrs["dropped_items"]), dropped_assets=cube.attrs["dropped_assets"])
    return ds

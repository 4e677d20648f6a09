"""What one GDAL build sees in a list of rasters and Zarr stores; run by the reader tests in another interpreter.

Usage: ``python gdal_probe.py REQUEST.json`` prints a JSON report on stdout. It imports only rasterio and numpy
(and geozarr-toolkit when the request asks for GeoZarr validation), never s2pipe: it runs in side venvs that
hold another GDAL (rasterio 1.5.2 / GDAL 3.12 on Python 3.12).

Request: ``{"rasters": [uri, ...], "geozarr": [store path, ...]}``. Report: ``{"gdal": version, "rasters":
{uri: {...}}, "geozarr": {path: {...}}}``; per raster ``crs`` (EPSG code), ``transform`` (6 floats, rasterio
order), ``shape``, ``count``, ``descriptions``, ``tags1`` (band 1's metadata), ``tags`` (the dataset's),
``overviews`` (band 1's factors), ``nodata`` (as text), ``band1`` (band 1's values, NaN as null) or ``error``;
per store, the validator's errors of the root group (``root``), of each overview level group (``levels``) and
of the multiscales layout's references (``structure``).
"""
from __future__ import annotations

import json
import math
import sys


def probe_raster(uri: str) -> dict:
    import rasterio

    try:
        with rasterio.open(uri) as src:
            band1 = src.read(1).astype("float64")
            return {
                "crs": src.crs.to_epsg() if src.crs else None,
                "transform": [float(v) for v in list(src.transform)[:6]],
                "shape": [src.height, src.width],
                "count": src.count,
                "descriptions": list(src.descriptions),
                "tags1": src.tags(1),
                "tags": src.tags(),
                "overviews": src.overviews(1),
                "nodata": str(src.nodata),
                "band1": [[None if math.isnan(v) else v for v in row] for row in band1.tolist()],
            }
    except Exception as exc:  # the report says what this GDAL cannot open
        return {"error": f"{type(exc).__name__}: {exc}"}


def probe_geozarr(path: str) -> dict:
    import zarr
    from geozarr_toolkit.helpers.validation import (
        validate_group,
        validate_multiscales_structure,
    )

    root = zarr.open_group(path, mode="r")
    levels = {}
    if "overviews" in root:
        for name in sorted(root["overviews"].group_keys(), key=int):
            levels[name] = validate_group(root[f"overviews/{name}"])
    ok, structure = validate_multiscales_structure(root)
    return {"root": validate_group(root), "levels": levels, "structure": structure, "structure_ok": ok}


def main() -> None:
    import rasterio

    with open(sys.argv[1]) as f:
        request = json.load(f)
    report = {"gdal": rasterio.__gdal_version__, "rasterio": rasterio.__version__,
              "rasters": {uri: probe_raster(uri) for uri in request.get("rasters", [])},
              "geozarr": {p: probe_geozarr(p) for p in request.get("geozarr", [])}}
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()

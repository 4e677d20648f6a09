"""Build STAC items in the form Earth Search v1 serves them (used by the demo region and test fixtures)."""
from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from pyproj import Transformer

from s2pipe.bands import BANDS

__all__ = ["EARTH_SEARCH_KEYS", "BASELINE_CHANGE", "footprint_lonlat", "earth_search_item"]

EARTH_SEARCH_KEYS: dict[str, str] = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
    "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
    "SCL": "scl",
}
"""Canonical band name -> Earth Search v1 asset key."""

BASELINE_CHANGE = dt.datetime(2022, 1, 25, tzinfo=dt.timezone.utc)
"""Processing baseline 04.00 (DN offset +1000) applies from this date on."""


def footprint_lonlat(epsg: int, bounds: tuple[float, float, float, float], n: int = 8) -> dict[str, Any]:
    """GeoJSON polygon (lon/lat) of projected ``bounds`` (xmin, ymin, xmax, ymax), densified with n points per side."""
    xmin, ymin, xmax, ymax = bounds
    t = Transformer.from_crs(epsg, 4326, always_xy=True)
    xs = np.concatenate([np.linspace(xmin, xmax, n), np.full(n, xmax), np.linspace(xmax, xmin, n), np.full(n, xmin)])
    ys = np.concatenate([np.full(n, ymin), np.linspace(ymin, ymax, n), np.full(n, ymax), np.linspace(ymax, ymin, n)])
    lon, lat = t.transform(xs, ys)
    ring = [[float(a), float(b)] for a, b in zip(lon, lat)]
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def earth_search_item(
    item_id: str,
    *,
    datetime: dt.datetime,
    epsg: int,
    bounds: tuple[float, float, float, float],
    assets: dict[str, str],
    shapes: dict[int, tuple[int, int]],
    cloud_cover: float,
    collection: str = "sentinel-2-l2a",
    mgrs_tile: str = "17RNJ",
    platform: str = "sentinel-2a",
    extra_properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Sentinel-2 L2A item as Earth Search v1 writes it, as a plain dict.

    ``assets`` maps canonical band names (B02, SCL, ...) to hrefs; ``shapes`` maps a resolution in metres
    to the (rows, cols) of assets at that resolution; ``bounds`` are the projected tile bounds. Scenes on or
    after 2022-01-25 get processing baseline 04.00 and ``raster:bands`` offset -0.1 (pixels hold DN + 1000),
    earlier ones baseline 02.14 and offset 0.
    """
    if datetime.tzinfo is None:
        datetime = datetime.replace(tzinfo=dt.timezone.utc)
    new_baseline = datetime >= BASELINE_CHANGE
    xmin, ymin, xmax, ymax = bounds
    geometry = footprint_lonlat(epsg, bounds)
    lons = [c[0] for c in geometry["coordinates"][0]]
    lats = [c[1] for c in geometry["coordinates"][0]]
    out_assets: dict[str, Any] = {}
    for band, href in assets.items():
        info = BANDS[band]
        res = info.resolution
        rows, cols = shapes[res]
        asset: dict[str, Any] = {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": f"{band}",
            "proj:shape": [rows, cols],
            "proj:transform": [float(res), 0.0, float(xmin), 0.0, -float(res), float(ymax)],
            "roles": ["data"],
        }
        if band == "SCL":
            asset["raster:bands"] = [{"nodata": 0, "data_type": "uint8", "spatial_resolution": res}]
        else:
            asset["eo:bands"] = [{"name": EARTH_SEARCH_KEYS[band], "common_name": info.common_name,
                                  "center_wavelength": info.wavelength}]
            asset["gsd"] = res
            asset["raster:bands"] = [{
                "nodata": 0, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": res,
                "scale": 0.0001, "offset": -0.1 if new_baseline else 0.0,
            }]
            asset["roles"] = ["data", "reflectance"]
        out_assets[EARTH_SEARCH_KEYS[band]] = asset
    properties: dict[str, Any] = {
        "datetime": datetime.isoformat().replace("+00:00", "Z"),
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": float(round(cloud_cover, 4)),
        "proj:epsg": int(epsg),
        "grid:code": f"MGRS-{mgrs_tile}",
        "s2:processing_baseline": "04.00" if new_baseline else "02.14",
        "s2:product_type": "S2MSI2A",
        "earthsearch:boa_offset_applied": False,
    }
    if extra_properties:
        properties.update(extra_properties)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "id": item_id,
        "collection": collection,
        "geometry": geometry,
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": properties,
        "assets": out_assets,
        "links": [],
    }

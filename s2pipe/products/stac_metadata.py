"""STAC metadata of an output store: a Collection and an Item describing a cube store written by ``write_cube``.

Files, beside the store (the same naming as its quick-look ``<stem>.png`` and run summary ``<stem>.run.json``)::

    out/cube.zarr               the store (asset ``data``)
    out/cube.png                its quick-look, when present (asset ``overview``)
    out/cube.collection.json    STAC Collection ``cube``: datacube fields, extent, the same assets, link to the Item
    out/cube.item.json          STAC Item ``cube``: datacube and projection fields, the assets, provenance links

Every href between these files is relative (``./cube.zarr``): the four move together, and writing again gives
the same bytes. Object-store stores (``s3://b/cube.zarr``) get the same two objects beside them (one PUT each).

Extensions: datacube v2.2.0 (``cube:dimensions``, ``cube:variables``) on both, projection v2.0.0 on the Item
(``proj:code`` and, for readers that know only the older field, ``proj:epsg``; pystac's projection migration
drops ``proj:epsg`` when it *reads* the Item: the file keeps it, ``proj:code`` says the same).

* ``cube:dimensions``: ``x`` / ``y`` (type ``spatial``, ``extent`` = the outer pixel *edges* in CRS units, i.e.
  the grid's bounds and ``proj:bbox``, ``step`` = the pixel size, ``reference_system`` = the EPSG code; the
  store's ``x``/``y`` coordinates are the pixel centres, ``y`` running north to south); ``time`` (type
  ``temporal``, ``extent`` in ISO 8601, ``step`` an ISO 8601 duration such as ``"P5D"`` when the dates are
  evenly spaced, else ``values``, the dates); ``band`` (type ``bands``, ``values`` = the band names).
* ``cube:variables``: each data variable (``reflectance`` (time, band, y, x), ``weight`` and ``observed``
  (time, y, x)) with its ``dimensions``, ``type`` ``"data"``, ``description`` (its ``long_name``), ``unit`` (its
  ``units``), and the datacube v2.3.0 field names ``data_type`` (``float32``, ``uint8``) and ``nodata``
  (``"nan"``) where they apply; ``values`` for flag variables (``flag_values``).
* Provenance: ``s2pipe:input_items`` (the STAC item ids the cube was built from, the store's ``stac_items``),
  ``s2pipe:catalog`` and ``s2pipe:catalog_url`` (redacted) and, when the catalog is an http(s) STAC API and the
  input collection is known, one ``derived_from`` link per input item:
  ``{catalog_url}/collections/{collection}/items/{id}``.

``bbox`` and ``geometry`` are in lon/lat (EPSG:4326), from the grid's outline densified to ``DENSIFY`` points a
side; a grid across the antimeridian is not split (its bbox would span the globe the wrong way).
"""
from __future__ import annotations

import json
import math
import os
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac

from s2pipe.errors import InputError
from s2pipe.grid import Grid, grid_of
from s2pipe.runtime.files import write_if_changed
from s2pipe.runtime.objectstore import ObjectPath, location
from s2pipe.stac.assets import redact_href
from s2pipe.stac.catalog import list_profiles, load_profile
from s2pipe.store.zarr import open_cube, store_state

__all__ = [
    "DATACUBE_SCHEMA",
    "DENSIFY",
    "PROJECTION_SCHEMA",
    "ZARR_MEDIA_TYPE",
    "cube_stac",
    "stac_paths",
    "write_cube_stac",
]

ZARR_MEDIA_TYPE = "application/vnd+zarr"
"""Media type of the store asset (``pystac.MediaType.ZARR``, the one STAC catalogs commonly use for Zarr)."""
DATACUBE_SCHEMA = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
"""The datacube extension's schema URI, in ``stac_extensions`` of both objects."""
PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
"""The projection extension's schema URI, in ``stac_extensions`` of the Item."""
DENSIFY = 21
"""Points per side of the grid outline transformed to lon/lat for ``bbox`` and ``geometry`` (corners included)."""

_SPATIAL = ("x", "y")


def stac_paths(store: str | os.PathLike | ObjectPath, *, storage: Any = None) -> dict[str, Path | ObjectPath]:
    """Where ``write_cube_stac`` writes the STAC of ``store``: ``<stem>.collection.json`` and ``<stem>.item.json``.

    Parameters
    ----------
    store : str, os.PathLike or ObjectPath
        The store (``out/cube.zarr``, or an object-store URL).
    storage : StorageConfig or mapping, optional
        Non-secret settings of an object-store URL (as in ``write_cube``).

    Returns
    -------
    dict
        ``{"collection": out/cube.collection.json, "item": out/cube.item.json}`` (``ObjectPath`` for URLs).
    """
    path = location(store, storage)
    return {"collection": path.with_name(f"{path.stem}.collection.json"),
            "item": path.with_name(f"{path.stem}.item.json")}


def cube_stac(store: str | os.PathLike | ObjectPath, *, storage: Any = None,
              input_collection: str | None = None) -> tuple[pystac.Collection, pystac.Item]:
    """The STAC Collection and Item describing the finished cube store ``store`` (nothing is written).

    Parameters
    ----------
    store : str, os.PathLike or ObjectPath
        A complete store written by ``write_cube`` / ``append_cube`` (local path or object-store URL).
    storage : StorageConfig or mapping, optional
        Non-secret settings of an object-store URL.
    input_collection : str, optional
        The collection id of the input items in their catalog (``CatalogProfile.collection``), for the
        ``derived_from`` links. Default: the collection of the built-in profile named by the store's ``catalog``
        attribute; when neither is known, only ``s2pipe:input_items`` records the inputs.

    Returns
    -------
    (pystac.Collection, pystac.Item)
        Their self hrefs are the files ``write_cube_stac`` writes (``stac_paths``), and they are linked to each
        other in memory (``item.get_collection()`` is the collection, read from no file). The files hold the same
        fields with every href between them relative (pystac's ``to_dict`` adds link titles). See the module
        docstring for the fields.

    Raises
    ------
    InputError
        No store at ``store``, an unfinished one, or one without a ``time`` axis or a CRS.
    """
    path = location(store, storage)
    collection_dict, item_dict = _stac_dicts(path, input_collection=input_collection)
    paths = stac_paths(path)
    # migrate=False: as written (pystac's projection migration would drop proj:epsg)
    collection = pystac.Collection.from_dict(collection_dict, href=str(paths["collection"]), migrate=False)
    item = pystac.Item.from_dict(item_dict, href=str(paths["item"]), migrate=False)
    # linked in memory, so that nothing is read from the files (which may not be written yet)
    collection.catalog_type = pystac.CatalogType.SELF_CONTAINED
    for link in collection.links:
        if link.rel == "root":
            link.target = collection
        elif link.rel == "item":
            link.target = item
    for link in item.links:
        if link.rel in ("root", "parent", "collection"):
            link.target = collection
    return collection, item


def write_cube_stac(store: str | os.PathLike | ObjectPath, *, storage: Any = None,
                    input_collection: str | None = None) -> dict[str, Path | str]:
    """Write the STAC Collection and Item of ``store`` beside it; return their paths.

    Local files are written with ``s2pipe.runtime.files.atomic_path`` (a reader never sees half a file), and
    only when their content changes (writing again is a no-op, the bytes are the same); object-store files with
    one PUT each, which replaces an object atomically.

    Parameters
    ----------
    store : str, os.PathLike or ObjectPath
        A complete store written by ``write_cube`` / ``append_cube``.
    storage : StorageConfig or mapping, optional
        Non-secret settings of an object-store URL.
    input_collection : str, optional
        Collection id of the input items (see ``cube_stac``).

    Returns
    -------
    dict
        ``{"collection": <stem>.collection.json, "item": <stem>.item.json}``: ``Path`` objects, URL strings for
        object stores.

    Raises
    ------
    InputError
        As ``cube_stac``.
    """
    path = location(store, storage)
    dicts = dict(zip(("collection", "item"), _stac_dicts(path, input_collection=input_collection)))
    out: dict[str, Path | str] = {}
    for key, target in stac_paths(path).items():
        content = (json.dumps(dicts[key], indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode()
        if isinstance(target, ObjectPath):
            if not (target.exists() and target.read_bytes() == content):
                target.write_bytes(content)
            out[key] = target.url
            continue
        write_if_changed(target, content)
        out[key] = target
    return out


# ---------------------------------------------------------------------------------------------- building


def _stac_dicts(path: Path | ObjectPath, *, input_collection: str | None) -> tuple[dict, dict]:
    """The Collection and Item of the store ``path`` as STAC JSON dicts (hrefs relative to the store's folder)."""
    ds = open_cube(path)
    if "time" not in ds.dims or ds.sizes["time"] == 0:
        raise InputError(f"the store {path} has no dates (dims {dict(ds.sizes)}); STAC metadata describes a cube "
                         "with a time axis: pass a store written by write_cube (argument: store)")
    grid = grid_of(ds)
    stem, names = path.stem, stac_paths(path)
    attrs = ds.attrs
    times = pd.DatetimeIndex(ds["time"].values)
    start, end = _iso(times[0]), _iso(times[-1])
    geometry, bbox = _footprint(grid)
    dimensions = _dimensions(ds, grid, times)
    variables = _variables(ds)
    title = str(attrs.get("title") or f"s2pipe datacube {stem}")

    assets = {"data": {
        "href": f"./{path.name}", "type": ZARR_MEDIA_TYPE, "roles": ["data"],
        "title": f"Zarr store ({', '.join(variables)})",
        "description": "Zarr v2, consolidated metadata; open with xarray.open_zarr or s2pipe.store.zarr.open_cube",
    }}
    png = path.with_suffix(".png")
    if png.exists():
        assets["overview"] = {"href": f"./{png.name}", "type": "image/png", "roles": ["overview"],
                              "title": "quick-look"}

    inputs = [str(i) for i in attrs.get("stac_items", []) or []]
    catalog = str(attrs.get("catalog") or "")
    catalog_url = redact_href(str(attrs.get("catalog_url") or ""))
    provenance: dict[str, Any] = {"s2pipe:input_items": inputs}
    if catalog:
        provenance["s2pipe:catalog"] = catalog
    if catalog_url:
        provenance["s2pipe:catalog_url"] = catalog_url
    if attrs.get("dropped_items"):
        provenance["s2pipe:dropped_items"] = [str(i) for i in attrs["dropped_items"]]
    if attrs.get("s2pipe_version"):
        provenance["s2pipe:version"] = str(attrs["s2pipe_version"])

    collection_href, item_href = f"./{names['collection'].name}", f"./{names['item'].name}"
    item_links = [
        {"rel": "collection", "href": collection_href, "type": "application/json"},
        {"rel": "parent", "href": collection_href, "type": "application/json"},
        {"rel": "root", "href": collection_href, "type": "application/json"},
        *_derived_from(inputs, catalog_url, input_collection or _profile_collection(catalog)),
    ]
    properties: dict[str, Any] = {
        "title": title,
        "datetime": None, "start_datetime": start, "end_datetime": end,
        **_projection(grid),
        "cube:dimensions": dimensions, "cube:variables": variables,
        **provenance,
    }
    state = store_state(path)
    if state and state.get("created"):
        properties["created"] = _iso(pd.Timestamp(state["created"]))
    item = {
        "type": "Feature", "stac_version": pystac.get_stac_version(),
        "stac_extensions": [DATACUBE_SCHEMA, PROJECTION_SCHEMA],
        "id": stem, "geometry": geometry, "bbox": bbox, "properties": properties,
        "links": item_links, "assets": assets, "collection": stem,
    }
    description = title
    if attrs.get("source"):
        description += f"; {attrs['source']}"
    collection = {
        "type": "Collection", "stac_version": pystac.get_stac_version(), "stac_extensions": [DATACUBE_SCHEMA],
        "id": stem, "title": title, "description": description, "license": "other",
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[start, end]]}},
        "cube:dimensions": dimensions, "cube:variables": variables,
        "links": [
            {"rel": "root", "href": collection_href, "type": "application/json"},
            {"rel": "item", "href": item_href, "type": "application/geo+json"},
        ],
        "assets": assets,
    }
    return collection, item


def _iso(t: pd.Timestamp) -> str:
    """A UTC instant as ISO 8601 with ``Z`` (tz-naive times are UTC, as the store's)."""
    t = pd.Timestamp(t)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: int) -> str:
    """ISO 8601 duration of a whole number of seconds (``432000`` -> ``"P5D"``)."""
    if seconds % 86400 == 0:
        return f"P{seconds // 86400}D"
    for unit, size in (("H", 3600), ("M", 60)):
        if seconds % size == 0:
            return f"PT{seconds // size}{unit}"
    return f"PT{seconds}S"


def _dimensions(ds, grid: Grid, times: pd.DatetimeIndex) -> dict[str, dict[str, Any]]:
    """``cube:dimensions`` of the store: x/y from the grid, time from the dates, the others from their coords."""
    xmin, ymin, xmax, ymax = (float(v) for v in grid.bounds)
    ref: Any = int(grid.epsg) if grid.epsg is not None else _projjson(grid.crs)
    step = float(grid.resolution)
    dims: dict[str, dict[str, Any]] = {
        "x": {"type": "spatial", "axis": "x", "extent": [xmin, xmax], "step": step, "reference_system": ref,
              "description": f"easting: {grid.shape[1]} pixels; extent = pixel edges, coordinates = centres"},
        "y": {"type": "spatial", "axis": "y", "extent": [ymin, ymax], "step": step, "reference_system": ref,
              "description": f"northing: {grid.shape[0]} pixels, north to south; extent = pixel edges, "
                             "coordinates = centres"},
    }
    temporal: dict[str, Any] = {"type": "temporal", "extent": [_iso(times[0]), _iso(times[-1])]}
    gaps = {int(s) for s in np.diff(times.values).astype("timedelta64[s]").astype(np.int64)}
    if len(gaps) == 1 and min(gaps) > 0:
        temporal["step"] = _duration(gaps.pop())
    else:
        temporal["step"] = None
        temporal["values"] = [_iso(t) for t in times]
    temporal["description"] = f"{len(times)} dates (solar day at 00:00 UTC)"
    dims["time"] = temporal
    for name in ds.dims:
        if name in dims:
            continue
        coord = ds[name].values if name in ds.coords else np.arange(ds.sizes[name])
        values = [v.item() if hasattr(v, "item") else v for v in coord]
        dims[name] = {"type": "bands" if name == "band" else str(name), "values": [
            str(v) if not isinstance(v, (int, float)) else v for v in values]}
        if name == "band":
            dims[name]["description"] = "Sentinel-2 band (s2pipe canonical names)"
    order = [d for d in ("x", "y", "time") if d in dims] + [d for d in dims if d not in ("x", "y", "time")]
    return {d: dims[d] for d in order}


def _variables(ds) -> dict[str, dict[str, Any]]:
    """``cube:variables``: each data variable's dims, description, unit, data type, nodata and flag values."""
    out: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        entry: dict[str, Any] = {"dimensions": [str(d) for d in var.dims], "type": "data"}
        text = var.attrs.get("long_name") or var.attrs.get("description")
        if text:
            entry["description"] = str(text)
        if var.attrs.get("units") is not None:
            entry["unit"] = str(var.attrs["units"])
        entry["data_type"] = np.dtype(var.dtype).name
        fill = var.encoding.get("_FillValue", var.attrs.get("_FillValue"))
        if fill is not None:
            fill = float(fill) if np.issubdtype(np.asarray(fill).dtype, np.floating) else int(fill)
            entry["nodata"] = "nan" if isinstance(fill, float) and math.isnan(fill) else fill
        if var.attrs.get("flag_values") is not None:
            entry["values"] = [v.item() if hasattr(v, "item") else v for v in np.atleast_1d(var.attrs["flag_values"])]
        out[str(name)] = entry
    return out


def _projection(grid: Grid) -> dict[str, Any]:
    """Projection extension fields of the grid: code (and EPSG int), shape, transform, bbox in CRS units."""
    out: dict[str, Any] = {}
    if grid.epsg is not None:
        out["proj:code"] = f"EPSG:{grid.epsg}"
        out["proj:epsg"] = int(grid.epsg)
    else:
        from pyproj import CRS

        out["proj:code"] = None
        out["proj:wkt2"] = CRS.from_user_input(grid.crs).to_wkt()
    out["proj:shape"] = [int(grid.shape[0]), int(grid.shape[1])]
    out["proj:transform"] = [float(v) for v in list(grid.transform)[:6]]
    out["proj:bbox"] = [float(v) for v in grid.bounds]
    return out


def _projjson(crs: str) -> dict[str, Any]:
    from pyproj import CRS

    return CRS.from_user_input(crs).to_json_dict()


def _footprint(grid: Grid) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON polygon (lon/lat) of the grid's outline, ``DENSIFY`` points a side, and its bbox (rounded out to
    1e-7 degrees, so the polygon lies inside it)."""
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = grid.bounds
    s = np.linspace(0.0, 1.0, DENSIFY)[:-1]
    xs = np.concatenate([xmin + s * (xmax - xmin), np.full_like(s, xmax), xmax - s * (xmax - xmin), np.full_like(s, xmin)])
    ys = np.concatenate([np.full_like(s, ymax), ymax - s * (ymax - ymin), np.full_like(s, ymin), ymin + s * (ymax - ymin)])
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise InputError(f"the grid {grid.crs} with bounds {tuple(grid.bounds)} does not transform to lon/lat "
                         "(points outside the projection's area of use); check the store's crs and transform")
    ring = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lon, lat)]
    ring.append(ring[0])
    bbox = [math.floor(lon.min() * 1e7) / 1e7, math.floor(lat.min() * 1e7) / 1e7,
            math.ceil(lon.max() * 1e7) / 1e7, math.ceil(lat.max() * 1e7) / 1e7]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _profile_collection(catalog: str) -> str | None:
    """The collection searched by the built-in profile named ``catalog``; None when there is no such profile."""
    if not catalog or catalog not in list_profiles():
        return None
    try:
        return load_profile(catalog).collection
    except InputError:
        return None


def _derived_from(ids: list[str], catalog_url: str, collection: str | None) -> list[dict[str, Any]]:
    """One ``derived_from`` link per input item of an http(s) STAC API (none when it or the collection is unknown)."""
    base = redact_href(catalog_url).rstrip("/")
    if not collection or urllib.parse.urlsplit(base).scheme.lower() not in ("http", "https"):
        return []
    root = f"{base}/collections/{urllib.parse.quote(collection, safe='')}/items"
    return [{"rel": "derived_from", "href": f"{root}/{urllib.parse.quote(i, safe='')}",
             "type": "application/geo+json", "title": i} for i in ids]

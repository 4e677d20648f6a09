"""STAC metadata of every output: a Collection and an Item beside each cube store, forecast store, map product
folder and change map.

Files, beside the output (the same naming as a store's quick-look ``<stem>.png`` and run summary
``<stem>.run.json``; ``stac_paths``)::

    out/cube.zarr                 a cube store (``write_cube_stac``): asset ``data``, its quick-look ``overview``
    out/cube.collection.json      STAC Collection ``cube``: the Item's assets and extent, link to the Item
    out/cube.item.json            STAC Item ``cube``: datacube and projection fields, the assets, provenance links
    out/forecast.zarr             a forecast store (``write_cube_stac`` too): as a cube, derived from the cube
    out/forecast.{collection,item}.json
    out/map/                      a map product folder of ``s2pipe map predict`` (``write_map_stac``)
    out/map.{collection,item}.json  assets ``class_map`` (COG, classification), its ``.aux.xml``/``.qml``,
                                  ``probability`` (Zarr, datacube fields), ``entropy``/``margin`` (COGs), ...
    out/change.tif                a change map of ``s2pipe map change`` (``write_change_stac``), its
    out/change.{collection,item}.json  ``.gpkg`` polygons, ``.aux.xml``/``.qml`` and ``.png`` beside it

Every href between these files is relative (``./cube.zarr``, ``./map/class_map.tif``, ``../cube.item.json``):
an output and its two files move together, and writing again gives the same bytes. Object-store cube and
forecast stores (``s3://b/cube.zarr``) get the same two objects beside them (one PUT each).
``s2pipe.stac.server.serve_folder`` (``s2pipe serve DIR``) serves them all with a STAC API.

Extensions: datacube v2.2.0 (``cube:dimensions``, ``cube:variables``: in the properties of a store's Item and
in its Collection, on the ``probability`` asset of a map), projection v2.0.0 on each Item (``proj:code`` and,
for readers that know only the older field, ``proj:epsg``; pystac's projection migration drops ``proj:epsg``
when it *reads* the Item: the file keeps it, ``proj:code`` says the same), classification v2.0.0 on the COG
assets of class and change maps.

* ``cube:dimensions``: ``x`` / ``y`` (type ``spatial``, ``extent`` = the outer pixel *edges* in CRS units, i.e.
  the grid's bounds and ``proj:bbox``, ``step`` = the pixel size, ``reference_system`` = the EPSG code; the
  store's ``x``/``y`` coordinates are the pixel centres, ``y`` running north to south); ``time`` (type
  ``temporal``, ``extent`` in ISO 8601, ``step`` an ISO 8601 duration such as ``"P5D"`` when the dates are
  evenly spaced, else ``values``, the dates); ``band`` (type ``bands``, ``values`` = the band names); any other
  dimension (a map's ``class``) with its coordinate as ``values``.
* ``cube:variables``: each data variable (``reflectance`` (time, band, y, x), ``weight`` and ``observed``
  (time, y, x); ``forecast``; ``probability``, ``entropy``, ``margin``) with its ``dimensions``, ``type``
  ``"data"``, ``description`` (its ``long_name``), ``unit`` (its ``units``), and the datacube v2.3.0 field names
  ``data_type`` (``float32``, ``uint8``) and ``nodata`` (``"nan"``) where they apply; ``values`` for flag
  variables (``flag_values``).
* ``classification:classes`` (class and change COGs): one entry per named class of the file (its ``CLASSES``
  tag): ``value``, ``name`` (the class name with every run of characters other than letters, digits, ``-``
  and ``_`` replaced by ``-``, as the extension requires), ``title`` (the name as given) and ``color_hint``
  (``RRGGBB`` of the file's colour table; none for a class drawn transparent, such as "no change"), then the
  nodata value (``nodata: true``).
* Provenance of a cube: ``s2pipe:input_items`` (the STAC item ids it was built from, the store's
  ``stac_items``), ``s2pipe:catalog`` and ``s2pipe:catalog_url`` (redacted) and, when the catalog is an http(s)
  STAC API and the input collection is known, one ``derived_from`` link per input item:
  ``{catalog_url}/collections/{collection}/items/{id}``. Of a forecast or a map: a ``derived_from`` link to the
  cube's Item (relative) when the cube at the store's ``source_cube`` has its ``<stem>.item.json``, and
  ``s2pipe:model`` (the model's file name); of a change map: ``derived_from`` links to the Items of the two
  maps.

``bbox`` and ``geometry`` are in lon/lat (EPSG:4326), from the grid's outline densified to ``DENSIFY`` points a
side; a grid across the antimeridian is not split (its bbox would span the globe the wrong way).
"""
from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
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
    "CLASSIFICATION_SCHEMA",
    "COG_MEDIA_TYPE",
    "DATACUBE_SCHEMA",
    "DENSIFY",
    "GEOPACKAGE_MEDIA_TYPE",
    "MAP_FILES",
    "PROJECTION_SCHEMA",
    "ZARR_MEDIA_TYPE",
    "cube_stac",
    "stac_paths",
    "write_change_stac",
    "write_cube_stac",
    "write_map_stac",
]

ZARR_MEDIA_TYPE = "application/vnd+zarr"
"""Media type of a Zarr store asset (``pystac.MediaType.ZARR``, the one STAC catalogs commonly use for Zarr)."""
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
"""Media type of a Cloud-Optimized GeoTIFF asset (``pystac.MediaType.COG``)."""
GEOPACKAGE_MEDIA_TYPE = "application/geopackage+sqlite3"
"""Media type of a GeoPackage asset (``pystac.MediaType.GEOPACKAGE``)."""
XML_MEDIA_TYPE = "application/xml"
"""Media type of the legend sidecars (GDAL ``.aux.xml``, QGIS ``.qml``: both XML)."""
DATACUBE_SCHEMA = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
"""The datacube extension's schema URI, in ``stac_extensions`` of the objects that use it."""
PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
"""The projection extension's schema URI, in ``stac_extensions`` of each Item."""
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
"""The classification extension's schema URI, in ``stac_extensions`` of the map and change objects."""
DENSIFY = 21
"""Points per side of the grid outline transformed to lon/lat for ``bbox`` and ``geometry`` (corners included)."""
MAP_FILES = {"class_map": "class_map.tif", "probability": "probability.zarr", "entropy": "entropy.tif",
             "margin": "margin.tif", "overview": "map.png", "summary": "summary.json"}
"""The files of a map product folder (``s2pipe.flows.mapping.map_predict``), by asset key; only ``class_map``
is required."""

_SPATIAL = ("x", "y")
_STRUCTURE = ("collection", "parent", "root")


def stac_paths(output: str | os.PathLike | ObjectPath, *, storage: Any = None) -> dict[str, Path | ObjectPath]:
    """Where the STAC of ``output`` is written: ``<stem>.collection.json`` and ``<stem>.item.json`` beside it.

    Parameters
    ----------
    output : str, os.PathLike or ObjectPath
        The output: a store (``out/cube.zarr``, or an object-store URL), a map product folder (``out/map``) or a
        change COG (``out/change.tif``).
    storage : StorageConfig or mapping, optional
        Non-secret settings of an object-store URL (as in ``write_cube``).

    Returns
    -------
    dict
        ``{"collection": out/cube.collection.json, "item": out/cube.item.json}`` (``ObjectPath`` for URLs).
    """
    path = location(output, storage)
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
    collection_dict, item_dict = _store_dicts(path, input_collection=input_collection)
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
    """Write the STAC Collection and Item of the store ``store`` (a cube, or a forecast) beside it; return their
    paths.

    A forecast store (``s2pipe forecast predict``: its ``source_cube`` and ``model`` attributes) gets the same
    fields as a cube (datacube fields of ``forecast`` and its interval variables), a ``derived_from`` link to the
    cube's Item (when written), ``s2pipe:model`` (the model's file name), ``s2pipe:forecast_from`` and
    ``s2pipe:steps``.

    Local files are written with ``s2pipe.runtime.files.write_if_changed`` (atomically, and only when their
    content changes: writing again is a no-op, the bytes are the same); object-store files with one PUT each,
    which replaces an object atomically.

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
    return _write(path, _store_dicts(path, input_collection=input_collection))


def write_map_stac(folder: str | os.PathLike, *, date: str | None = None) -> dict[str, Path]:
    """Write the STAC Collection and Item of the map product folder ``folder`` beside it; return their paths.

    The Item ``<folder name>`` (``stac_paths(folder)``: ``out/map`` -> ``out/map.item.json``) has one asset per
    file of ``MAP_FILES`` present: ``class_map`` (COG, ``classification:classes`` from the file's class names
    and colour table), its legend sidecars ``class_map_aux`` (``.aux.xml``) and ``class_map_style`` (``.qml``,
    role ``metadata``), ``probability`` (Zarr, with the datacube fields of ``probability``, ``entropy`` and
    ``margin``), ``entropy`` and ``margin`` (COGs), ``overview`` (``map.png``) and ``summary``
    (``summary.json``); the projection fields of the class map's grid; ``datetime`` = the last date mapped and,
    when the cube is at hand, ``start_datetime``/``end_datetime`` = the dates the mapper read; provenance from
    the probability store's attributes: a ``derived_from`` link to the cube's Item (when written),
    ``s2pipe:model`` (the mapper's file name), ``s2pipe:model_kind``, ``s2pipe:mapping_mode``,
    ``s2pipe:mapping_dates`` and ``s2pipe:smoothing``. Written as ``write_cube_stac`` writes (same bytes again).

    Parameters
    ----------
    folder : str or os.PathLike
        A folder written by ``s2pipe map predict`` / ``map_predict``, holding at least ``class_map.tif``.
    date : str, optional
        The map's date (YYYY-MM-DD), when neither ``probability.zarr`` nor ``summary.json`` records it.

    Returns
    -------
    dict
        ``{"collection": <folder>.collection.json, "item": <folder>.item.json}``.

    Raises
    ------
    InputError
        No ``class_map.tif`` in ``folder``, an unfinished ``probability.zarr``, or no date known.
    """
    path = Path(folder)
    return _write(path, _map_dicts(path, date=date))


def write_change_stac(change: str | os.PathLike, *, earlier: str | os.PathLike | None = None,
                      later: str | os.PathLike | None = None, start: str | None = None, end: str | None = None,
                      properties: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write the STAC Collection and Item of the change COG ``change`` beside it; return their paths.

    The Item ``<stem>`` (``out/change.tif`` -> ``out/change.item.json``) has the assets ``change`` (the COG, with
    ``classification:classes``: no change, appeared, disappeared), ``change_aux``/``change_style`` (its legend
    sidecars), ``polygons`` (``<stem>.gpkg``) and ``overview`` (``<stem>.png``) where present; the projection
    fields; ``start_datetime``/``end_datetime`` = the dates of the two maps (``datetime`` the later one);
    ``s2pipe:change_target`` (the target class ids of the file) and ``derived_from`` links to the Items of the
    two maps where written. Written as ``write_cube_stac`` writes (same bytes again).

    Parameters
    ----------
    change : str or os.PathLike
        The change COG written by ``write_change`` / ``s2pipe map change``.
    earlier, later : str or os.PathLike, optional
        The two class maps compared: the ``class_map.tif`` of a map product folder gives its date and the
        folder's Item to link (a class map of another name has neither).
    start, end : str, optional
        The dates of the earlier and the later map (YYYY-MM-DD), when their folders do not record them.
    properties : mapping, optional
        More Item properties, e.g. ``{"s2pipe:change_kind": "appeared"}`` (JSON values).

    Returns
    -------
    dict
        ``{"collection": <stem>.collection.json, "item": <stem>.item.json}``.

    Raises
    ------
    InputError
        ``change`` is not a readable georeferenced COG, or a date is not known (pass ``start``/``end``).
    """
    path = Path(change)
    return _write(path, _change_dicts(path, earlier=earlier, later=later, start=start, end=end,
                                      properties=properties))


# ---------------------------------------------------------------------------------------------- writing


def _write(output: Path | ObjectPath, dicts: tuple[dict, dict]) -> dict[str, Path | str]:
    """Write the (Collection, Item) dicts of ``output`` to ``stac_paths(output)``: the one writer of STAC JSON."""
    out: dict[str, Path | str] = {}
    for (key, target), obj in zip(stac_paths(output).items(), dicts):
        content = (json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode()
        if isinstance(target, ObjectPath):
            if not (target.exists() and target.read_bytes() == content):
                target.write_bytes(content)
            out[key] = target.url
            continue
        write_if_changed(target, content)
        out[key] = target
    return out


# ---------------------------------------------------------------------------------------------- building


def _item_dict(output: Path | ObjectPath, *, grid: Grid, properties: dict[str, Any], assets: dict[str, Any],
               links: list[dict[str, Any]], extensions: list[str]) -> dict[str, Any]:
    """The Item of ``output``: footprint of ``grid``, the links to its Collection (relative) and ``links``."""
    geometry, bbox = _footprint(grid)
    collection_href = f"./{stac_paths(output)['collection'].name}"
    structure = [{"rel": rel, "href": collection_href, "type": "application/json"} for rel in _STRUCTURE]
    return {
        "type": "Feature", "stac_version": pystac.get_stac_version(), "stac_extensions": extensions,
        "id": output.stem, "geometry": geometry, "bbox": bbox, "properties": properties,
        "links": [*structure, *links], "assets": assets, "collection": output.stem,
    }


def _collection_dict(output: Path | ObjectPath, item: dict[str, Any], *, description: str, extensions: list[str],
                     fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Collection of ``output`` around its one ``item``: its extent, ``fields``, its assets, a link to it."""
    names = stac_paths(output)
    props = item["properties"]
    start, end = props.get("start_datetime") or props["datetime"], props.get("end_datetime") or props["datetime"]
    return {
        "type": "Collection", "stac_version": pystac.get_stac_version(), "stac_extensions": extensions,
        "id": item["id"], "title": props["title"], "description": description, "license": "other",
        "extent": {"spatial": {"bbox": [item["bbox"]]}, "temporal": {"interval": [[start, end]]}},
        **(fields or {}),
        "links": [
            {"rel": "root", "href": f"./{names['collection'].name}", "type": "application/json"},
            {"rel": "item", "href": f"./{names['item'].name}", "type": "application/geo+json"},
        ],
        "assets": item["assets"],
    }


def _store_dicts(path: Path | ObjectPath, *, input_collection: str | None) -> tuple[dict, dict]:
    """The Collection and Item of the store ``path`` (a cube or a forecast) as STAC JSON dicts."""
    ds = open_cube(path)
    if "time" not in ds.dims or ds.sizes["time"] == 0:
        raise InputError(f"the store {path} has no dates (dims {dict(ds.sizes)}); STAC metadata describes a cube "
                         "with a time axis: pass a store written by write_cube (argument: store)")
    grid = grid_of(ds)
    stem = path.stem
    attrs = ds.attrs
    times = pd.DatetimeIndex(ds["time"].values)
    start, end = _iso(times[0]), _iso(times[-1])
    dimensions = _dimensions(ds, grid, times)
    variables = _variables(ds)
    title = str(attrs.get("title") or f"s2pipe datacube {stem}")

    assets = {"data": _zarr_asset(f"./{path.name}", variables)}
    png = path.with_suffix(".png")
    if png.exists():
        assets["overview"] = {"href": f"./{png.name}", "type": "image/png", "roles": ["overview"],
                              "title": "quick-look"}

    provenance: dict[str, Any] = {}
    links: list[dict[str, Any]] = []
    catalog = str(attrs.get("catalog") or "")
    catalog_url = redact_href(str(attrs.get("catalog_url") or ""))
    if "stac_items" in attrs or not attrs.get("source_cube"):
        inputs = [str(i) for i in attrs.get("stac_items", []) or []]
        provenance["s2pipe:input_items"] = inputs
        links += _derived_from(inputs, catalog_url, input_collection or _profile_collection(catalog))
    if catalog:
        provenance["s2pipe:catalog"] = catalog
    if catalog_url:
        provenance["s2pipe:catalog_url"] = catalog_url
    if attrs.get("dropped_items"):
        provenance["s2pipe:dropped_items"] = [str(i) for i in attrs["dropped_items"]]
    provenance.update(_derived_attrs(attrs))
    links += _derived_from_outputs(path, [attrs.get("source_cube")])
    if attrs.get("s2pipe_version"):
        provenance["s2pipe:version"] = str(attrs["s2pipe_version"])

    properties: dict[str, Any] = {
        "title": title,
        "datetime": None, "start_datetime": start, "end_datetime": end,
        **_projection(grid),
        "cube:dimensions": dimensions, "cube:variables": variables,
        **provenance,
    }
    properties.update(_created(path))
    item = _item_dict(path, grid=grid, properties=properties, assets=assets, links=links,
                      extensions=[DATACUBE_SCHEMA, PROJECTION_SCHEMA])
    description = title
    if attrs.get("source"):
        description += f"; {attrs['source']}"
    collection = _collection_dict(path, item, description=description, extensions=[DATACUBE_SCHEMA],
                                  fields={"cube:dimensions": dimensions, "cube:variables": variables})
    return collection, item


def _map_dicts(folder: Path, *, date: str | None) -> tuple[dict, dict]:
    """The Collection and Item of the map product folder ``folder``."""
    tif = folder / MAP_FILES["class_map"]
    if not tif.is_file():
        raise InputError(f"{folder} holds no {MAP_FILES['class_map']}; pass a folder written by `s2pipe map "
                         "predict` (argument: folder)")
    grid, classes, _ = _cog_classes(tif)
    store = folder / MAP_FILES["probability"]
    ds = open_cube(store) if store.exists() else None
    attrs: Mapping[str, Any] = ds.attrs if ds is not None else {}
    summary = _json_file(folder / MAP_FILES["summary"])
    last = date or attrs.get("mapping_last_date") or summary.get("last_date")
    if not last:
        raise InputError(f"the date of the map in {folder} is not recorded (no {MAP_FILES['probability']} or "
                         f"{MAP_FILES['summary']} naming it); pass date='YYYY-MM-DD'")
    last_t = _day(last, what="date")
    window = _window(attrs.get("source_cube"), last_t, attrs.get("mapping_dates"))

    assets: dict[str, Any] = {"class_map": _cog_asset(_href(folder, tif), "most probable class", classes)}
    assets.update(_legend_assets("class_map", folder, tif))
    extensions = [CLASSIFICATION_SCHEMA]
    if ds is not None:
        variables = _variables(ds)
        assets["probability"] = {**_zarr_asset(_href(folder, store), variables),
                                 "cube:dimensions": _dimensions(ds, grid), "cube:variables": variables}
        extensions.append(DATACUBE_SCHEMA)
    from s2pipe.products.maps import UNCERTAINTY_ATTRS

    for name in ("entropy", "margin"):
        layer = folder / MAP_FILES[name]
        if layer.is_file():
            assets[name] = _cog_asset(_href(folder, layer), UNCERTAINTY_ATTRS[name]["long_name"], None,
                                      description=UNCERTAINTY_ATTRS[name]["description"])
    png, summary_file = folder / MAP_FILES["overview"], folder / MAP_FILES["summary"]
    if png.is_file():
        assets["overview"] = {"href": _href(folder, png), "type": "image/png", "roles": ["overview"],
                              "title": "image | labels | prediction"}
    if summary_file.is_file():
        assets["summary"] = {"href": _href(folder, summary_file), "type": "application/json", "roles": ["metadata"],
                             "title": "map summary (dates, pixels per class, scores)"}

    title = f"s2pipe land-cover map {folder.name}"
    properties: dict[str, Any] = {"title": title, "datetime": _iso(last_t)}
    if window is not None:
        properties.update(start_datetime=_iso(window[0]), end_datetime=_iso(window[-1]))
    properties.update(_projection(grid))
    properties.update(_derived_attrs(attrs))
    kind = attrs.get("mapping_model") or summary.get("model_kind")
    for key, value in (("s2pipe:model_kind", kind), ("s2pipe:mapping_mode", attrs.get("mapping_mode")),
                       ("s2pipe:mapping_dates", attrs.get("mapping_dates")),
                       ("s2pipe:smoothing", attrs.get("smoothing"))):
        if value is not None:
            properties[key] = _plain(value)
    if attrs.get("s2pipe_version"):
        properties["s2pipe:version"] = str(attrs["s2pipe_version"])
    if ds is not None:
        properties.update(_created(store))
    links = _derived_from_outputs(folder, [attrs.get("source_cube")])
    item = _item_dict(folder, grid=grid, properties=properties, assets=assets, links=links,
                      extensions=[*extensions, PROJECTION_SCHEMA])
    what = ", ".join(text for key, text in (("class_map", "class map"), ("probability", "probabilities"),
                                            ("entropy", "uncertainty")) if key in assets)
    collection = _collection_dict(folder, item, description=f"{title}: {what} (s2pipe map predict)",
                                  extensions=extensions)
    return collection, item


def _change_dicts(tif: Path, *, earlier, later, start: str | None, end: str | None,
                  properties: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """The Collection and Item of the change COG ``tif``."""
    grid, classes, tags = _cog_classes(tif)
    # the map product folders of the two maps (a class map elsewhere has no folder that records it)
    folders = [Path(p).parent if p is not None and Path(p).name == MAP_FILES["class_map"] else None
               for p in (earlier, later)]
    times = [start, end]
    for i, f in enumerate(folders):
        if times[i] is None and f is not None:
            times[i] = _map_date(f)
    if None in times:
        which = " and ".join(f"{n}='YYYY-MM-DD'" for n, t in zip(("start", "end"), times) if t is None)
        raise InputError(f"the dates of the maps compared in {tif} are not known (earlier={earlier}, later={later}: "
                         f"no map product folders recording them); pass {which}")
    t0, t1 = (_day(t, what=n) for t, n in zip(times, ("start", "end")))
    assets: dict[str, Any] = {"change": _cog_asset(_href(tif, tif), "change (0 no change, 1 appeared, 2 disappeared)",
                                                   classes)}
    assets.update(_legend_assets("change", tif, tif))
    gpkg, png = tif.with_suffix(".gpkg"), tif.with_suffix(".png")
    if gpkg.is_file():
        assets["polygons"] = {"href": _href(tif, gpkg), "type": GEOPACKAGE_MEDIA_TYPE, "roles": ["data"],
                              "title": "change regions (MultiPolygon, GeoPackage 1.2)"}
    if png.is_file():
        assets["overview"] = {"href": _href(tif, png), "type": "image/png", "roles": ["overview"],
                              "title": "earlier | later | change"}
    title = f"s2pipe change map {tif.stem}"
    props: dict[str, Any] = {"title": title, "datetime": _iso(t1), "start_datetime": _iso(t0),
                             "end_datetime": _iso(t1), **_projection(grid)}
    target = tags.get("CHANGE_TARGET")
    if target:
        try:
            props["s2pipe:change_target"] = json.loads(target)
        except ValueError:
            pass
    props.update({str(k): _plain(v) for k, v in (properties or {}).items()})
    links = _derived_from_outputs(tif, [str(f) for f in folders if f is not None])
    item = _item_dict(tif, grid=grid, properties=props, assets=assets, links=links,
                      extensions=[CLASSIFICATION_SCHEMA, PROJECTION_SCHEMA])
    collection = _collection_dict(tif, item, description=f"{title}: change raster and polygons (s2pipe map change)",
                                  extensions=[CLASSIFICATION_SCHEMA])
    return collection, item


# ---------------------------------------------------------------------------------------------- assets


def _zarr_asset(href: str, variables: Mapping[str, Any]) -> dict[str, Any]:
    return {"href": href, "type": ZARR_MEDIA_TYPE, "roles": ["data"], "title": f"Zarr store ({', '.join(variables)})",
            "description": "Zarr v2, consolidated metadata; open with xarray.open_zarr or s2pipe.store.zarr.open_cube"}


def _cog_asset(href: str, title: str, classes: list[dict[str, Any]] | None, *,
               description: str | None = None) -> dict[str, Any]:
    asset: dict[str, Any] = {"href": href, "type": COG_MEDIA_TYPE, "roles": ["data"], "title": title}
    if description:
        asset["description"] = description
    if classes is not None:
        asset["classification:classes"] = classes
    return asset


def _legend_assets(key: str, output: Path, tif: Path) -> dict[str, Any]:
    """The legend sidecars of ``tif`` that exist, as metadata assets ``<key>_aux`` and ``<key>_style``."""
    from s2pipe.products.maps import legend_paths

    aux, qml = legend_paths(tif)
    out: dict[str, Any] = {}
    if aux.is_file():
        out[f"{key}_aux"] = {"href": _href(output, aux), "type": XML_MEDIA_TYPE, "roles": ["metadata"],
                             "title": "GDAL PAM: class names, raster attribute table, colour table"}
    if qml.is_file():
        out[f"{key}_style"] = {"href": _href(output, qml), "type": XML_MEDIA_TYPE, "roles": ["metadata"],
                               "title": "QGIS style (.qml): the legend of the classes present"}
    return out


def _href(output: Path, target: Path) -> str:
    """``target`` relative to the folder of the STAC files of ``output`` (``./map/class_map.tif``)."""
    return _relative(target, stac_paths(output)["item"].parent)


def _relative(target: Path, start: Path) -> str:
    rel = Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()
    return rel if rel.startswith("../") else f"./{rel}"


def _cog_classes(tif: Path) -> tuple[Grid, list[dict[str, Any]], dict[str, str]]:
    """The grid of the class or change COG ``tif``, its ``classification:classes`` and its dataset tags (no pixel
    is read)."""
    import rasterio
    from affine import Affine

    try:
        # GDAL reads the colour table's alpha from the .aux.xml only where it may list the folder
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="FALSE"), rasterio.open(tif) as src:
            if src.count != 1 or src.crs is None:
                raise InputError(f"{tif} has {src.count} bands and CRS {src.crs}; a class or change map is one "
                                 "georeferenced band written by write_class_map / write_change")
            crs, transform, shape, nodata = src.crs, src.transform, (src.height, src.width), src.nodata
            tags = src.tags()
            try:
                cmap = src.colormap(1)
            except ValueError:  # no colour table
                cmap = {}
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read the map {tif}: {exc}; pass a COG written by `s2pipe map predict|change`") from None
    epsg = crs.to_epsg()
    grid = Grid(epsg, f"EPSG:{epsg}" if epsg else crs.to_wkt(), Affine(*list(transform)[:6]), shape,
                abs(transform.a))
    try:
        names = {int(k): str(v) for k, v in json.loads(tags.get("CLASSES") or "{}").items()}
    except (ValueError, AttributeError):
        names = {}
    classes = []
    for value, name in sorted(names.items()):
        if nodata is not None and value == int(nodata):
            continue
        entry: dict[str, Any] = {"value": value, "name": _class_name(name, value), "title": name}
        rgba = cmap.get(value)
        if rgba is not None and (len(rgba) < 4 or rgba[3] > 0):
            entry["color_hint"] = "".join(f"{int(c):02X}" for c in rgba[:3])
        classes.append(entry)
    if nodata is not None:
        classes.append({"value": int(nodata), "name": "nodata", "title": "nodata", "nodata": True})
    return grid, classes, dict(tags)


def _class_name(name: str, value: int) -> str:
    """The classification ``name`` of a class: letters, digits, ``-`` and ``_`` only (``bare soil`` -> ``bare-soil``)."""
    return re.sub(r"[^0-9A-Za-z_-]+", "-", name).strip("-") or f"class-{value}"


# ---------------------------------------------------------------------------------------------- provenance


def _derived_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance properties of a derived store (forecast, probabilities): model file name, forecast fields."""
    out: dict[str, Any] = {}
    if attrs.get("model"):
        out["s2pipe:model"] = Path(str(attrs["model"])).name
    for key in ("forecast_from", "steps", "interval_level"):
        if attrs.get(key) is not None:
            out[f"s2pipe:{key}"] = _plain(attrs[key])
    return out


def _derived_from_outputs(output: Path | ObjectPath, sources: list[Any]) -> list[dict[str, Any]]:
    """``derived_from`` links (relative) to the Items of the local outputs ``sources`` that have one written."""
    if isinstance(output, ObjectPath):
        return []
    links = []
    for source in sources:
        if not source or "://" in str(source):
            continue
        item = stac_paths(Path(str(source)))["item"]
        if item.is_file():
            links.append({"rel": "derived_from", "href": _relative(item, stac_paths(output)["item"].parent),
                          "type": "application/geo+json", "title": Path(str(source)).stem})
    return links


def _map_date(folder: Path) -> str | None:
    """The last date mapped in the map product folder ``folder`` (its probability store, else its summary)."""
    store = folder / MAP_FILES["probability"]
    if store.exists():
        try:
            last = open_cube(store).attrs.get("mapping_last_date")
        except InputError:
            last = None
        if last:
            return str(last)
    return _json_file(folder / MAP_FILES["summary"]).get("last_date")


def _window(cube: Any, last: pd.Timestamp, n: Any) -> pd.DatetimeIndex | None:
    """The ``n`` dates of the cube up to ``last`` that a map was made from (None when the cube is not at hand)."""
    if not cube or n is None or "://" in str(cube):
        return None
    try:
        times = pd.DatetimeIndex(open_cube(str(cube))["time"].values)
    except (InputError, KeyError, OSError, ValueError):
        return None
    times = times[times.normalize() <= last][-int(n):]
    return times if len(times) else None


def _created(store: Path | ObjectPath) -> dict[str, str]:
    state = store_state(store)
    return {"created": _iso(pd.Timestamp(state["created"]))} if state and state.get("created") else {}


def _json_file(path: Path) -> dict[str, Any]:
    """A small JSON object file written by s2pipe ({} when absent or not an object)."""
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text())
    except (ValueError, OSError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _day(value: Any, *, what: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(str(value)).normalize()
    except ValueError:
        raise InputError(f"{what}={value!r} is not a date; pass YYYY-MM-DD") from None


def _plain(value: Any) -> Any:
    """A JSON value of an attribute (numpy scalars and arrays as Python ones)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- fields


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


def _dimensions(ds, grid: Grid, times: pd.DatetimeIndex | None = None) -> dict[str, dict[str, Any]]:
    """``cube:dimensions`` of the store: x/y from the grid, time from the dates (``times``; a store without a
    time axis has none), the others from their coords (a ``class`` axis described by the ``classes`` names)."""
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
    if times is not None:
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
        if name in dims or name == "time":
            continue
        coord = ds[name].values if name in ds.coords else np.arange(ds.sizes[name])
        values = [v.item() if hasattr(v, "item") else v for v in coord]
        dims[name] = {"type": "bands" if name == "band" else str(name), "values": [
            str(v) if not isinstance(v, (int, float)) else v for v in values]}
        if name == "band":
            dims[name]["description"] = "Sentinel-2 band (s2pipe canonical names)"
        elif name == "class" and isinstance(ds.attrs.get("classes"), Mapping):
            names = {str(k): str(v) for k, v in ds.attrs["classes"].items()}
            dims[name]["description"] = "class id: " + ", ".join(f"{v} {names.get(str(v), '?')}" for v in values)
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

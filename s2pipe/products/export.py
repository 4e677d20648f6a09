"""Export dates and bands of a cube store to GIS-native files: one multi-band COG per date, a STAC
ItemCollection and a GDAL VRT stack that open the dates as one time series.

Layout of the output folder (``export_cube``)::

    <folder>/<YYYY-MM-DD>.tif   one Cloud-Optimized GeoTIFF per date: float32, one band per exported band
                                (description = band name), NaN nodata, DEFLATE + floating-point predictor,
                                tiled, internal overviews (average); the date in the metadata
    <folder>/items.json         STAC ItemCollection (GeoJSON FeatureCollection): one Item per date, its COG
                                as asset "data"
    <folder>/stack.vrt          GDAL VRT of all the COGs: band (i * n_bands + j + 1) = date i, band j

The store is read one date, and within it one window aligned to its Zarr chunks (at most ``TILE_BYTES``), at a
time: memory stays bounded by that window whatever the size of the cube. Each COG is first written tile by
tile to an uncompressed staging GeoTIFF beside it, then copied by GDAL's COG driver (which computes the
overviews) under a temporary name and renamed (``s2pipe.runtime.files.atomic_path``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from affine import Affine

from s2pipe import __version__
from s2pipe.errors import InputError, OutputConflictError, short_repr
from s2pipe.grid import Grid, grid_of
from s2pipe.normalize import invert
from s2pipe.products.cog import cog_blocksize
from s2pipe.runtime.files import atomic_path, write_if_changed
from s2pipe.runtime.objectstore import is_url
from s2pipe.search import parse_day, parse_region
from s2pipe.store.zarr import open_cube

__all__ = ["export_cube", "ExportValues", "TILE_BYTES", "NODATA", "COG_MEDIA_TYPE", "ITEMS_NAME", "VRT_NAME"]

ExportValues = Literal["normalized", "reflectance"]
"""What the exported pixel values are: the store's normalized values, or reflectance (normalisation undone)."""

TILE_BYTES = 64 * 2**20
"""Largest window of one date read from the store at once (bytes of float32 values of the exported bands);
windows are whole Zarr chunks, so a window is never smaller than one chunk."""
NODATA = float("nan")
"""Nodata of the exported COGs and the VRT: NaN (no observation within the gap-filling radius, or outside
the clip geometry)."""
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
"""Media type of the COG assets in the STAC items."""
ITEMS_NAME = "items.json"
"""File name of the STAC ItemCollection in the output folder."""
VRT_NAME = "stack.vrt"
"""File name of the VRT stack in the output folder."""

_EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
_RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
_SIGNATURE_TAG = "s2pipe_export"


def export_cube(
    store: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    dates: Sequence[Any] | None = None,
    bands: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    geometry: Mapping[str, Any] | Any = None,
    denormalize: bool = False,
    overwrite: bool = False,
    storage: Any = None,
    blocksize: int | None = None,
) -> dict[str, Any]:
    """Write dates and bands of a cube store as one multi-band COG per date, with a STAC and a VRT index.

    Parameters
    ----------
    store : str or os.PathLike
        A Zarr store written by ``s2pipe.store.zarr.write_cube`` (``s2pipe run``), with ``reflectance``
        (time, band, y, x) float32; a local path or an object-store URL (``s3://...``, see ``storage``).
    folder : str or os.PathLike
        Local output folder (created). Files: ``<YYYY-MM-DD>.tif`` per date, ``items.json``, ``stack.vrt``.
    dates : sequence of str, datetime.date or datetime64, optional
        Days to export (``"YYYY-MM-DD"``), each one of the store's dates; default: every date of the store.
    bands : sequence of str, optional
        Band names to export, in the order given (e.g. ``["B04", "B08"]``); default: every band of the store.
    bbox : sequence of 4 float, optional
        (west, south, east, north) in degrees lon/lat: the COGs cover the store pixels that intersect its
        outline projected to the store's CRS (the window is cut, no pixel is masked).
    geometry : GeoJSON mapping or shapely geometry, optional
        A Polygon/MultiPolygon, a Feature holding one, or a FeatureCollection of them (their union), in degrees
        lon/lat, instead of ``bbox``: the window is cut to its bounds and pixels whose centre lies outside it are
        set to nodata (NaN).
    denormalize : bool, default False
        True: write reflectance (the store's values times the normalisation factor of each band,
        ``s2pipe.normalize.invert``); False: the store's normalized values (reflectance / factor). The COG
        metadata tag ``values`` says which (``"reflectance"`` / ``"normalized"``).
    overwrite : bool, default False
        Rewrite COGs that already exist. Without it, a COG written before by the same export (same date,
        bands, window, values and factors, recorded in its ``s2pipe_export`` tag) is kept as it is, and any
        other file at a COG's path raises ``OutputConflictError`` before anything is written.
    storage : StorageConfig or mapping, optional
        Non-secret settings of an object-store ``store`` (as for ``open_cube``).
    blocksize : int, optional
        COG tile side in pixels, a multiple of 16; default 512, halved down to 128 so that a small export still
        has an overview.

    Returns
    -------
    dict
        ``folder`` (str); ``files`` ({date: COG path}, in date order); ``written`` and ``skipped`` (the dates
        written now / kept from a previous run); ``items`` and ``vrt`` (paths of the indexes); ``dates``,
        ``bands``; ``shape`` ([rows, cols] of every COG, pixels); ``crs``; ``transform`` (6 floats, affine of
        the top-left corner, rasterio order, CRS units); ``values`` (``"normalized"``/``"reflectance"``);
        ``nodata`` (``"nan"``); ``seconds``.

    Raises
    ------
    InputError
        The store is missing or incomplete; a band or a date is not in the store (the message lists those it
        has); ``bbox``/``geometry`` is invalid, both are given, or it does not overlap the store; ``denormalize``
        on a store without normalisation factors; ``folder`` is a URL or a file; ``blocksize`` is invalid.
        Raised before anything is written.
    OutputConflictError
        A COG path holds a file from a different export (other bands, window, values) and ``overwrite`` is False.

    Notes
    -----
    Index: the STAC ItemCollection (``items.json``) lists one Item per exported date: ``datetime`` (the day at
    00:00 UTC), ``bbox``/``geometry`` (footprint of the exported window, lon/lat), ``proj:epsg``/``proj:code``,
    ``proj:transform`` (6 floats) and ``proj:shape`` ([rows, cols]), ``s2pipe:values``, and one asset
    ``data`` (the COG's absolute path, so that stackstac, odc-stac or QGIS resolve it from anywhere: a rerun in
    a moved folder rewrites the index; media type ``COG_MEDIA_TYPE``, ``eo:bands`` names and ``raster:bands``
    nodata/data type). The projection extension's schema URI is not listed in
    ``stac_extensions``, as for the items of ``s2pipe.stac.items``: pystac's migration would otherwise turn
    ``proj:epsg`` into ``proj:code`` on reading, and stackstac 0.5 reads only ``proj:epsg``.
    The VRT (``stack.vrt``, sources relative to it) stacks every band of every date on the COGs' grid, date by
    date: band ``i * len(bands) + j + 1`` is band ``bands[j]`` of ``dates[i]`` (description
    ``"<YYYY-MM-DD> <band>"``, metadata ``date`` and ``band``; NaN nodata; an ``OverviewList`` of the COGs'
    overview factors, served from their overviews). Both indexes describe the dates of this call;
    they are rewritten only when their content changes.

    Each COG carries the dataset tags ``date`` (``YYYY-MM-DD``), ``datetime`` (ISO 8601, UTC),
    ``TIFFTAG_DATETIME`` (``YYYY:MM:DD HH:MM:SS``), ``values``, ``units`` (``"1"``), ``bands``,
    ``normalize_scale`` (JSON list, per band: reflectance = normalized value * factor), ``software``,
    ``source`` (the store's name) and ``s2pipe_export`` (what the file holds, for reruns); each band the tags
    ``band``, ``date`` and ``normalize_scale``.
    """
    started = time.perf_counter()
    folder = _check_folder(folder)
    size = _check_blocksize(blocksize)
    ds = open_cube(store, storage=storage)
    try:
        if "reflectance" not in ds.data_vars or ds["reflectance"].dims != ("time", "band", "y", "x"):
            raise InputError(f"the store {store} has no reflectance (time, band, y, x) variable (variables: "
                             f"{list(ds.data_vars)}); pass a cube store written by `s2pipe run` (argument: store)")
        refl = ds["reflectance"]
        grid = grid_of(ds)
        band_names = _select_bands(refl, bands, store)
        times = _select_dates(refl, dates, store)
        scale = _band_scale(refl, band_names, store, required=denormalize)
        rows, cols, shape_mask = _window(grid, bbox=bbox, geometry=geometry)
        values: ExportValues = "reflectance" if denormalize else "normalized"
        window_grid = _window_grid(grid, rows, cols)
        if size is None:
            size = cog_blocksize(window_grid.shape)
        days = [_day(t) for t in times]
        signature = {
            "bands": band_names, "crs": window_grid.crs, "transform": list(window_grid.transform)[:6],
            "shape": list(window_grid.shape), "values": values, "normalize_scale": scale,
            "geometry": _geometry_digest(shape_mask),
        }
        paths = {day: folder / f"{day}.tif" for day in days}
        todo = _plan(paths, signature, overwrite=overwrite)
        folder.mkdir(parents=True, exist_ok=True)  # every input checked: now write

        source = _store_name(store)
        written = []
        for t, day in zip(times, days):
            if day not in todo:
                continue
            _write_date(refl.sel(time=t), paths[day], day=day, bands=band_names, rows=rows, cols=cols,
                        grid=window_grid, mask_geometry=shape_mask, denormalize=denormalize, scale=scale,
                        signature={**signature, "date": day}, blocksize=size, source=source)
            written.append(day)
    finally:
        ds.close()

    items_path = folder / ITEMS_NAME
    write_if_changed(items_path, json.dumps(
        _item_collection(days, paths, grid=window_grid, bands=band_names, values=values, source=source),
        indent=1).encode())
    vrt_path = folder / VRT_NAME
    write_if_changed(vrt_path, _vrt(days, paths, grid=window_grid, bands=band_names, values=values))
    return {
        "folder": str(folder),
        "files": {day: str(paths[day]) for day in days},
        "written": written,
        "skipped": [d for d in days if d not in todo],
        "items": str(items_path),
        "vrt": str(vrt_path),
        "dates": days,
        "bands": band_names,
        "shape": list(window_grid.shape),
        "crs": window_grid.crs,
        "transform": list(window_grid.transform)[:6],
        "values": values,
        "nodata": "nan",
        "seconds": round(time.perf_counter() - started, 2),
    }


# ---------------------------------------------------------------------------------------------- checks


def _check_folder(folder: str | os.PathLike) -> Path:
    text = os.fspath(folder)
    if is_url(text):
        raise InputError(f"export folder {text!r} is a URL; export to a local folder and copy it "
                         "(argument: folder)")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise InputError(f"export folder {path} is a file; pass a folder (argument: folder)")
    return path


def _check_blocksize(blocksize: Any) -> int | None:
    if blocksize is None:
        return None
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) or blocksize < 16 or blocksize % 16:
        raise InputError(f"blocksize={short_repr(blocksize)} must be a multiple of 16 pixels; pass e.g. "
                         "blocksize=512 (argument: blocksize)")
    return int(blocksize)


def _select_bands(refl: xr.DataArray, bands: Sequence[str] | None, store) -> list[str]:
    have = [str(b) for b in refl["band"].values]
    if bands is None:
        return have
    if isinstance(bands, str):
        bands = [bands]
    wanted = list(dict.fromkeys(str(b) for b in bands))
    if not wanted:
        raise InputError(f"bands is empty; pass band names of the store {store} ({', '.join(have)}) or leave "
                         "it out for all (argument: bands)")
    unknown = [b for b in wanted if b not in have]
    if unknown:
        raise InputError(f"band(s) {', '.join(unknown)} not in the store {store}; it has {', '.join(have)} "
                         "(argument: bands)")
    return wanted


def _day(t: Any) -> str:
    return pd.Timestamp(t).date().isoformat()


def _select_dates(refl: xr.DataArray, dates: Sequence[Any] | None, store) -> list[np.datetime64]:
    times = list(refl["time"].values)
    if dates is None:
        return times
    if isinstance(dates, (str, dt.date)):
        dates = [dates]
    by_day = {_day(t): t for t in times}
    wanted = []
    for value in dates:
        if isinstance(value, (np.datetime64, pd.Timestamp)):
            value = pd.Timestamp(value).to_pydatetime()
        day = parse_day(value, argument="dates").isoformat()
        if day not in wanted:
            wanted.append(day)
    if not wanted:
        raise InputError(f"dates is empty; pass days of the store {store} or leave it out for all (argument: dates)")
    unknown = [d for d in wanted if d not in by_day]
    if unknown:
        listed = ", ".join(list(by_day)[:8]) + (f", ... ({len(by_day)} dates)" if len(by_day) > 8 else "")
        raise InputError(f"date(s) {', '.join(unknown)} not in the store {store}; it has {listed} "
                         "(argument: dates)")
    return [by_day[d] for d in sorted(wanted)]


def _band_scale(refl: xr.DataArray, bands: list[str], store, *, required: bool) -> list[float] | None:
    """The normalisation factor of each band (None when the store has none and ``required`` is False)."""
    attrs = refl.attrs
    if "normalize_scale" not in attrs or "normalize_bands" not in attrs:
        if required:
            raise InputError(f"the store {store} has no normalisation factors (reflectance attrs normalize_scale, "
                             "normalize_bands): its values cannot be denormalized; pass denormalize=False "
                             "(argument: denormalize)")
        return None
    rec = dict(zip([str(b) for b in np.atleast_1d(attrs["normalize_bands"])],
                   np.atleast_1d(np.asarray(attrs["normalize_scale"], dtype=np.float64)).tolist()))
    missing = [b for b in bands if b not in rec]
    if missing and required:
        raise InputError(f"the store {store} records no normalisation factor for band(s) {missing}; pass "
                         "denormalize=False or leave those bands out (arguments: denormalize, bands)")
    return [rec.get(b) for b in bands]


def _window(grid: Grid, *, bbox, geometry) -> tuple[slice, slice, Any]:
    """(rows, cols) of the store pixels to export and the geometry (store CRS) masking them, or None."""
    ny, nx = grid.shape
    if bbox is None and geometry is None:
        return slice(0, ny), slice(0, nx), None
    region = _region(bbox, geometry)
    argument = "bbox" if bbox is not None else "geometry"
    local = _to_crs(region, grid.crs)
    xmin, ymin, xmax, ymax = local.bounds
    t = grid.transform
    eps = 1e-9
    # north-up grids only (every s2pipe store): a > 0, e < 0, no rotation
    c0, c1 = (xmin - t.c) / t.a, (xmax - t.c) / t.a
    r0, r1 = (t.f - ymax) / -t.e, (t.f - ymin) / -t.e
    finite = all(math.isfinite(v) for v in (c0, c1, r0, r1))  # a region far outside the CRS's zone may not project
    if finite:
        col0, col1 = max(0, math.floor(c0 + eps)), min(nx, math.ceil(c1 - eps))
        row0, row1 = max(0, math.floor(r0 + eps)), min(ny, math.ceil(r1 - eps))
    if not finite or col1 <= col0 or row1 <= row0:
        w, s, e, n = _lonlat_bounds(grid)
        raise InputError(
            f"{argument} with bounds ({', '.join(f'{v:g}' for v in region.bounds)}) does not overlap the store, "
            f"which covers ({w:.6g}, {s:.6g}, {e:.6g}, {n:.6g}) in lon/lat; pass a {argument} that overlaps it "
            f"(argument: {argument})")
    rows, cols = slice(row0, row1), slice(col0, col1)
    if geometry is None:
        return rows, cols, None
    window = _window_grid(grid, rows, cols).transform
    strip = 1024  # rows per mask: the check stays bounded on a whole tile
    if not any(_inside(local, window @ Affine.translation(0, r), (min(strip, row1 - row0 - r), col1 - col0)).any()
               for r in range(0, row1 - row0, strip)):
        raise InputError(f"geometry with bounds ({', '.join(f'{v:g}' for v in region.bounds)}) contains no pixel "
                         f"centre of the store ({grid.resolution:g} CRS units per pixel); pass a larger geometry, "
                         "or a bbox (argument: geometry)")
    return rows, cols, local


def _region(bbox, geometry):
    """The lon/lat region of ``bbox`` or ``geometry`` (a FeatureCollection: the union of its features), validated
    by ``s2pipe.search.parse_region``."""
    if bbox is None and isinstance(geometry, Mapping) and geometry.get("type") == "FeatureCollection":
        import shapely

        features = geometry.get("features")
        if not isinstance(features, list) or not features:
            raise InputError("geometry is a FeatureCollection without features; give a Polygon/MultiPolygon in "
                             "degrees lon/lat (argument: geometry)")
        return shapely.unary_union([parse_region(geometry=f) for f in features])
    return parse_region(bbox=bbox, geometry=geometry)


def _to_crs(shape, crs: str):
    """A lon/lat shapely geometry in ``crs``, its edges densified first (GeoJSON edges are straight in lon/lat)."""
    import shapely
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    dense = shapely.segmentize(shape, 0.01)
    return shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _lonlat_bounds(grid: Grid) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    return transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21)


def _window_grid(grid: Grid, rows: slice, cols: slice) -> Grid:
    t = grid.transform @ Affine.translation(cols.start, rows.start)
    return Grid(grid.epsg, grid.crs, t, (rows.stop - rows.start, cols.stop - cols.start), grid.resolution)


def _inside(shape, transform: Affine, out_shape: tuple[int, int]) -> np.ndarray:
    """Bool (rows, cols): pixel centre inside ``shape`` (store CRS)."""
    from rasterio.features import geometry_mask

    return geometry_mask([shape.__geo_interface__], out_shape=out_shape, transform=transform, invert=True)


def _geometry_digest(shape) -> str | None:
    if shape is None:
        return None
    return hashlib.sha256(shape.wkb).hexdigest()[:16]


def _store_name(store) -> str:
    text = os.fspath(store).rstrip("/")
    return text.rsplit("/", 1)[-1].split("?", 1)[0] or text


def _plan(paths: Mapping[str, Path], signature: Mapping[str, Any], *, overwrite: bool) -> set[str]:
    """The dates to write; raises OutputConflictError for a file of another export (before anything is written)."""
    if overwrite:
        return set(paths)
    todo = set()
    for day, path in paths.items():
        if not path.exists():
            todo.add(day)
            continue
        found = _recorded_signature(path)
        if found != {**signature, "date": day}:
            what = "is not an s2pipe export" if found is None else "holds another export (" + ", ".join(
                f"{k} {found.get(k)!r}" for k in ("bands", "shape", "values", "geometry")
                if found.get(k) != signature.get(k)) + ")"
            raise OutputConflictError(f"{path} {what}; pass overwrite=True (--overwrite) to replace it, or "
                                      "export to another folder (argument: folder)")
    return todo


def _recorded_signature(path: Path) -> dict | None:
    import rasterio

    try:
        with rasterio.open(path) as src:
            text = src.tags().get(_SIGNATURE_TAG)
        return json.loads(text) if text else None
    except (rasterio.errors.RasterioIOError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- writing


def _tiles(rows: slice, cols: slice, chunks: tuple[int, int], nbands: int) -> list[tuple[slice, slice]]:
    """Windows (store rows, cols) covering the export window, each whole Zarr chunks of at most TILE_BYTES."""
    cy, cx = chunks
    per_chunk = cy * cx * nbands * 4
    k = max(1, TILE_BYTES // per_chunk)
    mx = min(k, math.ceil((cols.stop - cols.start) / cx) + 1)
    my = max(1, k // mx)
    ty, tx = cy * my, cx * mx
    out = []
    for y0 in range((rows.start // ty) * ty, rows.stop, ty):
        for x0 in range((cols.start // tx) * tx, cols.stop, tx):
            out.append((slice(max(y0, rows.start), min(y0 + ty, rows.stop)),
                        slice(max(x0, cols.start), min(x0 + tx, cols.stop))))
    return out


def _chunks(da: xr.DataArray) -> tuple[int, int]:
    sizes = da.chunksizes
    if sizes:
        return int(sizes["y"][0]), int(sizes["x"][0])
    return int(da.sizes["y"]), int(da.sizes["x"])


def _write_date(refl: xr.DataArray, path: Path, *, day: str, bands: list[str], rows: slice, cols: slice,
                grid: Grid, mask_geometry, denormalize: bool, scale: list[float] | None,
                signature: Mapping[str, Any], blocksize: int, source: str) -> None:
    """Write one date (band, y, x) of ``refl`` as the COG ``path``, window by window through a staging GeoTIFF."""
    import rasterio
    import rasterio.shutil

    sel = refl.sel(band=bands)
    height, width = grid.shape
    profile = dict(driver="GTiff", width=width, height=height, count=len(bands), dtype="float32", crs=grid.crs,
                   transform=grid.transform, nodata=NODATA, tiled=True, blockxsize=256, blockysize=256,
                   interleave="pixel", BIGTIFF="IF_SAFER")
    values = "reflectance" if denormalize else "normalized"
    when = dt.datetime.fromisoformat(day)
    tags = {
        "date": day,
        "datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "TIFFTAG_DATETIME": when.strftime("%Y:%m:%d %H:%M:%S"),
        "values": values,
        "description": ("surface reflectance (normalisation undone)" if denormalize else
                        "normalized surface reflectance: multiply each band by its normalize_scale for reflectance"),
        "units": "1",
        "bands": ",".join(bands),
        "normalize_scale": json.dumps(scale),
        "software": f"s2pipe {__version__}",
        "source": source,
        _SIGNATURE_TAG: json.dumps(signature, sort_keys=True),
    }
    stage = path.with_name(f".{path.stem}.stage-{uuid.uuid4().hex[:8]}.tif")
    try:
        with rasterio.Env(GDAL_NUM_THREADS="1"):
            with rasterio.open(stage, "w", **profile) as dst:
                for ys, xs in _tiles(rows, cols, _chunks(sel), len(bands)):
                    tile = sel.isel(y=ys, x=xs)
                    if denormalize:
                        tile = invert(tile)
                    block = np.asarray(tile.data.compute(scheduler="synchronous") if hasattr(tile.data, "compute")
                                       else tile.values, dtype=np.float32)
                    out_rows, out_cols = slice(ys.start - rows.start, ys.stop - rows.start), \
                        slice(xs.start - cols.start, xs.stop - cols.start)
                    if mask_geometry is not None:
                        tile_transform = grid.transform @ Affine.translation(out_cols.start, out_rows.start)
                        block[:, ~_inside(mask_geometry, tile_transform, block.shape[1:])] = NODATA
                    dst.write(block, window=((out_rows.start, out_rows.stop), (out_cols.start, out_cols.stop)))
                for i, band in enumerate(bands, 1):
                    dst.set_band_description(i, band)
                    dst.update_tags(i, band=band, date=day,
                                    normalize_scale="" if scale is None or scale[i - 1] is None else repr(scale[i - 1]))
                dst.update_tags(**tags)
            with atomic_path(path) as tmp:
                rasterio.shutil.copy(stage, tmp, driver="COG", compress="DEFLATE", predictor=3,
                                     blocksize=blocksize, overviews="AUTO", overview_resampling="AVERAGE",
                                     BIGTIFF="IF_SAFER")
    finally:
        stage.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- indexes


def _footprint(grid: Grid) -> tuple[dict, list[float]]:
    """GeoJSON polygon and bbox (lon/lat) of ``grid``'s outline, its edges densified."""
    import shapely
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = grid.bounds
    tr = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    box = shapely.segmentize(shapely.box(xmin, ymin, xmax, ymax), max(xmax - xmin, ymax - ymin) / 20)
    ll = shapely.transform(box, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    ring = [[round(x, 7), round(y, 7)] for x, y in shapely.get_coordinates(ll.exterior)]
    west, south, east, north = ll.bounds
    return {"type": "Polygon", "coordinates": [ring]}, [round(v, 7) for v in (west, south, east, north)]


def _item_collection(days: list[str], paths: Mapping[str, Path], *, grid: Grid, bands: list[str],
                     values: str, source: str) -> dict:
    geometry, bbox = _footprint(grid)
    stem = source.removesuffix(".zarr")
    features = []
    for day in days:
        properties = {
            "datetime": f"{day}T00:00:00Z",
            "s2pipe:values": values,
            "s2pipe:source": source,
            "proj:shape": list(grid.shape),
            "proj:transform": [float(v) for v in list(grid.transform)[:6]],
        }
        if grid.epsg is not None:
            properties["proj:epsg"] = int(grid.epsg)
            properties["proj:code"] = f"EPSG:{grid.epsg}"
        else:
            properties["proj:wkt2"] = _wkt(grid.crs)
        features.append({
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": [_EO, _RASTER],
            "id": f"{stem}-{day}",
            "geometry": geometry,
            "bbox": bbox,
            "properties": properties,
            "links": [],
            "assets": {"data": {
                "href": str(paths[day].resolve()),
                "type": COG_MEDIA_TYPE,
                "title": f"{', '.join(bands)} {values} on {day}",
                "roles": ["data"],
                "eo:bands": [{"name": b} for b in bands],
                "raster:bands": [{"nodata": "nan", "data_type": "float32"} for _ in bands],
            }},
        })
    return {"type": "FeatureCollection", "features": features}


def _wkt(crs: str) -> str:
    from pyproj import CRS

    return CRS.from_user_input(crs).to_wkt()


def _overview_factors(path: Path) -> list[int]:
    import rasterio

    with rasterio.open(path) as src:
        return list(src.overviews(1))


def _vrt(days: list[str], paths: Mapping[str, Path], *, grid: Grid, bands: list[str], values: str) -> bytes:
    height, width = grid.shape
    t = grid.transform
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = _wkt(grid.crs)
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    factors = _overview_factors(paths[days[0]])
    if factors:  # virtual overviews, read from the COGs' own: GDAL exposes none for a VRT without this
        ET.SubElement(root, "OverviewList", resampling="average").text = " ".join(map(str, factors))
    meta = ET.SubElement(root, "Metadata")
    for key, text in (("layout", "band i*n_bands+j+1 = band j of date i"), ("dates", ",".join(days)),
                      ("bands", ",".join(bands)), ("values", values)):
        ET.SubElement(meta, "MDI", key=key).text = text
    k = 0
    for day in days:
        for j, band in enumerate(bands, 1):
            k += 1
            rb = ET.SubElement(root, "VRTRasterBand", dataType="Float32", band=str(k))
            ET.SubElement(rb, "Description").text = f"{day} {band}"
            md = ET.SubElement(rb, "Metadata")
            ET.SubElement(md, "MDI", key="date").text = day
            ET.SubElement(md, "MDI", key="band").text = band
            ET.SubElement(rb, "NoDataValue").text = "nan"
            src = ET.SubElement(rb, "SimpleSource")
            ET.SubElement(src, "SourceFilename", relativeToVRT="1").text = paths[day].name
            ET.SubElement(src, "SourceBand").text = str(j)
            rect = {"xOff": "0", "yOff": "0", "xSize": str(width), "ySize": str(height)}
            ET.SubElement(src, "SrcRect", **rect)
            ET.SubElement(src, "DstRect", **rect)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"

"""Map products for GIS analysts: class maps, probability stores, change maps (raster and polygons).

* ``class_map``: class probabilities (class, y, x) -> uint8 class ids (y, x), ``nodata`` where unknown;
* ``write_class_map``: a Cloud-Optimized GeoTIFF with an embedded colour table, class names in the metadata
  (``CLASS_<id>`` band tags and a JSON ``CLASSES`` dataset tag) and internal overviews, and its legend
  sidecars (``legend_paths``): a GDAL ``.aux.xml`` (category names, a raster attribute table, the colour table
  with transparency) and a QGIS ``.qml`` style (a paletted renderer of the classes present);
* ``write_probabilities``: the probabilities as a GIS-readable Zarr store (``s2pipe.store.zarr.write_cube``;
  GDAL: ``ZARR:"path":/probability``, one band per class), with the uncertainty layers ``entropy`` and
  ``margin`` beside them;
* ``uncertainty``: per-pixel entropy (normalised to 0..1 by log K) and margin (top-1 minus top-2 probability)
  of the class probabilities; ``write_uncertainty``: both as float32 COGs (``entropy.tif``, ``margin.tif``);
* ``smooth_probabilities``: optional spatial smoothing of the probabilities (Bayesian smoothing of the
  logits over a window, as ``sits_smooth``, or a Gaussian filter), NaN-aware, chunk by chunk with a halo;
* ``detect_change``: pixels where a target class appeared (1) or disappeared (2) between two class maps,
  small groups removed;
* ``write_change``: the change map as a COG (with the same legend sidecars; "no change" transparent) and its
  regions as polygons in a GeoPackage (version 1.2, which GDAL >= 2.2 and QGIS 3 read without a warning).

Every file is written under a temporary name in the destination folder and renamed when complete.
"""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from scipy import ndimage

from s2pipe.errors import InputError
from s2pipe.grid import Grid, grid_of
from s2pipe.products.cog import cog_blocksize
from s2pipe.runtime.files import atomic_path

__all__ = [
    "class_map", "class_names", "class_colormap", "write_class_map", "read_class_map", "legend_paths",
    "write_probabilities", "uncertainty", "write_uncertainty", "smooth_probabilities", "detect_change",
    "write_change", "change_polygons", "ChangeFiles", "GPKG_VERSION", "NODATA", "NO_CHANGE", "APPEARED",
    "DISAPPEARED", "CLASS_COLORS",
]

NODATA = 255
"""Default nodata value of uint8 class and change maps."""
GPKG_VERSION = "1.2"
"""GeoPackage version of the change polygons: read without a warning by GDAL >= 2.2 (GDAL 3.6 warns that the
1.4 files of newer GDAL "may only be partially supported")."""
NO_CHANGE, APPEARED, DISAPPEARED = 0, 1, 2
CHANGE_NAMES = {NO_CHANGE: "no change", APPEARED: "appeared", DISAPPEARED: "disappeared"}
CHANGE_COLORS = {NO_CHANGE: (0, 0, 0, 0), APPEARED: (228, 26, 28, 255), DISAPPEARED: (55, 126, 184, 255)}

CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "background": (200, 200, 200), "other": (200, 200, 200), "water": (31, 120, 180), "mangrove": (27, 120, 55),
    "mangroves": (27, 120, 55), "forest": (77, 175, 74), "grassland": (184, 225, 134), "bare soil": (191, 129, 45),
    "bare": (191, 129, 45), "urban": (227, 26, 28), "road": (60, 60, 60), "roads": (60, 60, 60),
    "cropland": (255, 237, 111), "cloud": (255, 255, 255),
}
"""Default colours (RGB) of common class names; other classes take colours of a qualitative palette."""
_PALETTE = [(166, 206, 227), (31, 120, 180), (178, 223, 138), (51, 160, 44), (251, 154, 153), (227, 26, 28),
            (253, 191, 111), (255, 127, 0), (202, 178, 214), (106, 61, 154), (255, 255, 153), (177, 89, 40)]

ChangeKind = Literal["appeared", "disappeared", "both"]
Resampling = Literal["nearest", "mode"]


class ChangeFiles(NamedTuple):
    """What ``write_change`` wrote."""

    raster: Path
    """The change COG (0 no change, 1 appeared, 2 disappeared, nodata)."""
    vectors: Path | None
    """The GeoPackage of change polygons (None when not asked for)."""
    n_polygons: int
    """Polygons in the GeoPackage layer (0 when no GeoPackage was written)."""


# ---------------------------------------------------------------------------------------------- class maps


def class_map(proba: xr.DataArray, *, nodata: int = NODATA) -> xr.DataArray:
    """Most probable class ``"class_map"`` (y, x) uint8 from probabilities (class, y, x).

    The argmax over ``class`` is mapped to the ids of the ``class`` coordinate (0..K-1 without one); pixels with
    a NaN probability get ``nodata``. Lazy (Dask) input stays lazy. Keeps x/y/spatial_ref coordinates and the
    ``crs``/``transform``/``classes`` attributes.
    """
    if not isinstance(proba, xr.DataArray) or "class" not in proba.dims or not {"y", "x"} <= set(proba.dims):
        raise InputError(f"proba must be an xarray.DataArray with dims (class, y, x), got {type(proba).__name__} "
                         f"{getattr(proba, 'dims', '')}")
    if set(proba.dims) != {"class", "y", "x"}:
        raise InputError(f"proba has dims {proba.dims}; select one time/member first so dims are (class, y, x)")
    _check_nodata(nodata)
    ids = np.asarray(proba["class"].values) if "class" in proba.coords else np.arange(proba.sizes["class"])
    if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() > 254:
        raise InputError(f"the class coordinate holds {ids.tolist()[:10]}; class_map needs integer class ids in "
                         "0..254 (uint8 with a nodata value): assign them with proba.assign_coords({'class': [...]})")
    if nodata in ids.tolist():
        raise InputError(f"nodata={nodata} is also a class id {ids.tolist()}; pass another nodata value")
    lookup = ids.astype(np.uint8)
    proba = proba.transpose("class", "y", "x")
    out = xr.apply_ufunc(
        _argmax_ids, proba, input_core_dims=[["class"]], dask="parallelized", output_dtypes=[np.uint8],
        kwargs={"lookup": lookup, "nodata": np.uint8(nodata)},
    )
    out = out.drop_vars([c for c in out.coords if c not in ("y", "x", "spatial_ref")])
    attrs = {k: v for k, v in proba.attrs.items() if k in ("crs", "transform", "classes", "resolution")}
    try:
        grid = grid_of(proba)
        attrs.update(crs=grid.crs, transform=[float(v) for v in list(grid.transform)[:6]])
    except InputError:
        pass  # no CRS: a plain array; write_class_map will say what is missing
    attrs.update(nodata=int(nodata), long_name="most probable class")
    out.attrs = attrs
    out.name = "class_map"
    return out


def write_class_map(
    class_map: xr.DataArray,
    path: str | os.PathLike,
    *,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, Any] | None = None,
    overviews: bool = True,
    nodata: int | None = None,
    blocksize: int | None = None,
    resampling: Resampling = "nearest",
) -> Path:
    """Write a (y, x) class map as a Cloud-Optimized GeoTIFF; return the path.

    Tiled (``blocksize`` px), DEFLATE, internal overviews, the ``nodata`` value, an embedded colour table and the
    class names (``CLASS_<id>`` band tags and a JSON ``CLASSES`` dataset tag). Beside it, the legend sidecars
    (``legend_paths``): ``<path>.aux.xml`` (GDAL category names and raster attribute table, the colour table
    with nodata transparent) and ``<stem>.qml`` (the QGIS style: the classes present, by name). Each file is
    written under a temporary name and renamed when complete. A Dask-backed map is computed.

    Parameters
    ----------
    class_map : xarray.DataArray
        (y, x) integer class ids in 0..255 with a CRS (``grid_of``), e.g. from ``class_map``.
    path : str or os.PathLike
        Destination of the COG.
    names : mapping of int to str, optional
        {id: name} (default: the ``classes`` attribute).
    colors : mapping of int to colour, optional
        {id: (r, g, b[, a]) or "#rrggbb"} (default: ``CLASS_COLORS`` by name, else a qualitative palette;
        nodata is transparent). A class given alpha 0 is not drawn (left out of the QGIS style).
    overviews : bool, default True
        Write internal overviews.
    nodata : int, optional
        Nodata value in 0..255 (default: the map's ``nodata`` attribute, else its ``_FillValue``, else 255).
    blocksize : int, optional
        Tile side in pixels (multiple of 16); None: 512, smaller for small maps so that they still get overviews.
    resampling : {"nearest", "mode"}, default "nearest"
        Resampling of the overviews.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    InputError
        ``class_map`` is not a (y, x) integer DataArray with a CRS or holds values outside 0..255; or ``nodata``,
        ``names``, a colour, ``blocksize`` or ``resampling`` is invalid.
    """
    values, grid = _raster_of(class_map, "class_map")
    blocksize = cog_blocksize(values.shape) if blocksize is None else blocksize
    nodata = _nodata_of(class_map, nodata)
    names = class_names(class_map, names)
    present = {int(v) for v in np.unique(values) if int(v) != nodata}
    cmap = class_colormap(sorted(set(names) | present), names, colors, nodata)
    tags = {"CLASSES": json.dumps({str(k): v for k, v in sorted(names.items())})}
    band_tags = {f"CLASS_{k}": v for k, v in sorted(names.items())}
    return _write_cog_uint8(values, path, grid=grid, nodata=nodata, colormap=cmap, names=names,
                            description="class", tags=tags, band_tags=band_tags, overviews=overviews,
                            blocksize=blocksize, resampling=resampling)


def read_class_map(path: str | os.PathLike) -> xr.DataArray:
    """Read a class map (or change map) COG written by ``write_class_map``/``write_change``.

    Returns ``"class_map"`` (y, x) with its integer dtype, pixel-centre x/y coordinates, ``spatial_ref`` and the
    attributes ``crs``, ``transform``, ``nodata`` and ``classes`` ({id: name} from the file's ``CLASSES`` tag),
    ready for ``detect_change``/``write_class_map``.
    """
    import rasterio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"class map {path} does not exist; write one with `s2pipe map predict` or write_class_map")
    try:
        with rasterio.open(path) as src:
            if src.count != 1 or src.crs is None:
                raise InputError(f"{path} has {src.count} bands and CRS {src.crs}; a class map is one georeferenced band")
            values = src.read(1)
            transform, crs, nodata = src.transform, src.crs, src.nodata
            tags = src.tags()
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read class map {path}: {exc}") from None
    if values.dtype.kind not in "iu":
        raise InputError(f"{path} holds {values.dtype} values; a class map holds integer class ids")
    try:
        classes = {str(k): str(v) for k, v in json.loads(tags.get("CLASSES", "{}")).items()}
    except (ValueError, AttributeError):
        classes = {}
    ny, nx = values.shape
    xs = transform.c + transform.a * (np.arange(nx) + 0.5)
    ys = transform.f + transform.e * (np.arange(ny) + 0.5)
    epsg = crs.to_epsg()
    attrs = {"crs": f"EPSG:{epsg}" if epsg else crs.to_wkt(), "transform": [float(v) for v in list(transform)[:6]],
             "classes": classes, "source": str(path)}
    if nodata is not None:
        attrs["nodata"] = int(nodata)
    return xr.DataArray(values, dims=("y", "x"), coords={"y": ys, "x": xs}, name="class_map", attrs=attrs)


def write_probabilities(proba: xr.DataArray, path: str | os.PathLike, *, overwrite: bool = False,
                        uncertainty_layers: bool = True) -> Path:
    """Write probabilities (class, y, x) as the variable ``probability`` of a GIS-readable Zarr store, with the
    uncertainty layers ``entropy`` and ``margin`` (y, x) beside it (``uncertainty``; ``uncertainty_layers=False``:
    the probabilities only).

    Through ``s2pipe.store.zarr.write_cube`` (CF grid mapping + GDAL ``_CRS``; resumable, ``OutputConflictError`` on
    a different existing store unless ``overwrite``). GDAL/QGIS: ``ZARR:"<path>":/probability``, one band per class
    in the order of the ``class`` coordinate (stored as a coordinate, and as ``classes`` names when known);
    ``ZARR:"<path>":/entropy`` and ``ZARR:"<path>":/margin``, one band each.
    """
    from s2pipe.store.zarr import write_cube

    proba = _check_proba(proba)
    if "class" not in proba.coords:
        proba = proba.assign_coords({"class": np.arange(proba.sizes["class"])})
    ds = proba.to_dataset(name="probability", promote_attrs=True)
    ds["probability"].attrs = {"long_name": "class probability", "units": "1"}
    if uncertainty_layers:
        unc = uncertainty(proba)
        for name in ("entropy", "margin"):
            ds[name] = unc[name]
    return write_cube(ds, path, overwrite=overwrite)


def _check_proba(proba) -> xr.DataArray:
    if not isinstance(proba, xr.DataArray) or set(proba.dims) != {"class", "y", "x"}:
        raise InputError(f"proba must be an xarray.DataArray with dims (class, y, x), got {type(proba).__name__} "
                         f"{getattr(proba, 'dims', '')}")
    if proba.dtype.kind != "f":
        raise InputError(f"proba has dtype {proba.dtype}; probabilities are floats (e.g. .astype('float32'))")
    return proba.transpose("class", "y", "x")


# ---------------------------------------------------------------------------------------------- uncertainty

UNCERTAINTY_ATTRS = {
    "entropy": {"long_name": "normalised entropy of the class probabilities", "units": "1",
                "description": "-sum_k p_k ln p_k / ln K: 0 = one class certain, 1 = all K classes equally likely"},
    "margin": {"long_name": "margin of the class probabilities", "units": "1",
               "description": "top-1 minus top-2 class probability: 0 = a tie, 1 = one class certain"},
}


def uncertainty(proba: xr.DataArray) -> xr.Dataset:
    """Per-pixel uncertainty of class probabilities (class, y, x): a Dataset of two (y, x) float32 layers.

    * ``entropy``: Shannon entropy of the probabilities divided by its maximum ``ln K`` (K = the classes), so
      that it lies in 0..1 for any K: 0 where one class has probability 1, 1 where all are equal (1/K);
    * ``margin``: the largest probability minus the second largest, 0..1: 0 at a tie between the two most
      probable classes, 1 where one class is certain. (1 − margin is the "margin uncertainty".)

    Probabilities are renormalised to sum 1 first; pixels with a NaN probability are NaN in both layers.
    Lazy (Dask) input stays lazy, chunk by chunk. Keeps the x/y/spatial_ref coordinates and the ``crs`` /
    ``transform`` attributes.
    """
    proba = _check_proba(proba)
    K = proba.sizes["class"]
    if K < 2:
        raise InputError(f"proba has {K} class; uncertainty needs at least 2 classes")
    ent, mar = xr.apply_ufunc(_uncertainty_kernel, proba, input_core_dims=[["class"]], output_core_dims=[[], []],
                              dask="parallelized", output_dtypes=[np.float32, np.float32])
    keep = [c for c in ent.coords if c not in ("y", "x", "spatial_ref")]
    attrs = {k: v for k, v in proba.attrs.items() if k in ("crs", "transform")}
    ds = xr.Dataset({"entropy": ent.drop_vars(keep), "margin": mar.drop_vars(keep)}, attrs=attrs)
    for name, a in UNCERTAINTY_ATTRS.items():
        ds[name].attrs = dict(a)
    return ds


def _uncertainty_kernel(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., K) probabilities -> (normalised entropy, margin), float32, NaN where any probability is NaN."""
    p = np.asarray(p, dtype=np.float64)
    K = p.shape[-1]
    bad = np.isnan(p).any(axis=-1)
    q = np.clip(np.where(np.isnan(p), 0.0, p), 0.0, None)
    total = q.sum(axis=-1, keepdims=True)
    q = q / np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    ent = np.clip(-terms.sum(axis=-1) / math.log(K), 0.0, 1.0)
    top2 = np.sort(q, axis=-1)[..., -2:]
    mar = top2[..., 1] - top2[..., 0]
    ent[bad] = np.nan
    mar[bad] = np.nan
    return ent.astype(np.float32), mar.astype(np.float32)


def write_uncertainty(unc: xr.Dataset | xr.DataArray, folder: str | os.PathLike, *,
                      blocksize: int | None = None) -> dict[str, Path]:
    """Write the layers of ``uncertainty(proba)`` as float32 COGs ``<folder>/entropy.tif`` and
    ``<folder>/margin.tif`` (NaN nodata, DEFLATE with the floating-point predictor, internal overviews by
    averaging, band description and ``long_name``/``description`` metadata); ``unc`` may also be the
    probabilities (class, y, x), whose uncertainty is then computed. Returns {layer: path}."""
    from s2pipe.products.cog import write_cog

    if isinstance(unc, xr.DataArray):
        unc = uncertainty(unc)
    if not isinstance(unc, xr.Dataset) or not {"entropy", "margin"} <= set(unc.data_vars):
        raise InputError(f"unc must be the Dataset of uncertainty(proba) (variables entropy, margin), got "
                         f"{type(unc).__name__}; pass uncertainty(proba)")
    out = {}
    for name in ("entropy", "margin"):
        layer = unc[name]
        if set(layer.dims) != {"y", "x"}:
            raise InputError(f"unc[{name!r}] has dims {layer.dims}; select one date so it is (y, x)")
        if "crs" not in layer.attrs and "crs" in unc.attrs:
            layer = layer.assign_attrs(crs=unc.attrs["crs"], transform=unc.attrs.get("transform"))
        grid = grid_of(layer)
        values = np.asarray(layer.transpose("y", "x").values, dtype=np.float32)
        size = cog_blocksize(values.shape) if blocksize is None else blocksize
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16 or size % 16:
            raise InputError(f"blocksize={blocksize!r} must be a multiple of 16 pixels; pass e.g. blocksize=512")
        a = UNCERTAINTY_ATTRS[name]
        out[name] = write_cog(Path(folder) / f"{name}.tif", values, transform=Affine(*list(grid.transform)[:6]),
                              crs=f"EPSG:{grid.epsg}" if grid.epsg else grid.crs, nodata=float("nan"),
                              blocksize=int(size), overviews=True, overview_resampling="average",
                              description=name, tags={"LONG_NAME": a["long_name"], "DESCRIPTION": a["description"]})
    return out


# ---------------------------------------------------------------------------------------------- smoothing

SmoothMethod = Literal["bayes", "gaussian"]


def smooth_probabilities(proba: xr.DataArray, *, window: int = 7, method: SmoothMethod = "bayes",
                         smoothness: float = 10.0, sigma: float | None = None) -> xr.DataArray:
    """Spatially smoothed class probabilities (class, y, x), an optional post-processing of a map.

    ``method="bayes"`` (as ``sits_smooth``, Camara et al. 2023): with the logits ``x = ln(p / (1 − p))`` of
    each class (p clipped to 1e-4..1 − 1e-4) and their mean ``m`` and variance ``s²`` over the ``window`` ×
    ``window`` neighbourhood (the pixel included), the smoothed logit is the posterior mean
    ``(s² · x + smoothness · m) / (s² + smoothness)``: ``smoothness`` (logit², the prior variance of the
    classifier's noise) large → the neighbourhood mean wins; where the neighbourhood varies a lot (class
    borders) the pixel keeps its own value. Back to probabilities by the logistic function, renormalised over
    the classes. ``method="gaussian"``: a Gaussian filter of the probabilities (``sigma`` px, default
    ``window / 4``; the kernel is cut at the window), renormalised.

    NaN pixels (nodata) are left out of every neighbourhood and stay NaN; the image border is handled the same
    way (no padding values). Dask input stays lazy (``map_overlap`` with a halo of ``window // 2``, equal to
    the in-memory result). Coordinates and attributes are kept; ``attrs["smoothing"]`` records the method.
    Opt-in: it changes held-out scores by a measured amount (README, land-cover section), not always for the
    better.
    """
    proba = _check_proba(proba)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 3 or window % 2 == 0:
        raise InputError(f"window={window!r} must be an odd number of pixels >= 3; pass e.g. window=7")
    if method not in ("bayes", "gaussian"):
        raise InputError(f"method={method!r} must be 'bayes' or 'gaussian'")
    if not (isinstance(smoothness, (int, float, np.floating)) and smoothness > 0):
        raise InputError(f"smoothness={smoothness!r} must be a positive number (logit variance); pass e.g. 10")
    sigma = window / 4 if sigma is None else sigma
    if not (isinstance(sigma, (int, float, np.floating)) and sigma > 0):
        raise InputError(f"sigma={sigma!r} must be a positive number of pixels")
    r = int(window) // 2
    kernel = np.ones(window) if method == "bayes" else np.exp(-0.5 * (np.arange(-r, r + 1) / float(sigma)) ** 2)
    kwargs = {"kernel": kernel, "method": method, "smoothness": float(smoothness)}
    arr = proba.data
    if isinstance(arr, da.Array):
        arr = arr.rechunk({0: -1})
        depth = {0: 0, 1: r if len(arr.chunks[1]) > 1 else 0, 2: r if len(arr.chunks[2]) > 1 else 0}
        data = da.map_overlap(_smooth_kernel, arr, depth=depth, boundary="none", dtype=np.float32,
                              meta=np.empty((0, 0, 0), dtype=np.float32), **kwargs)
    else:
        data = _smooth_kernel(np.asarray(arr), **kwargs)
    out = proba.copy(data=data)
    out.attrs = {**proba.attrs, "smoothing": {"method": method, "window": int(window),
                                              **({"smoothness": float(smoothness)} if method == "bayes"
                                                 else {"sigma": float(sigma)})}}
    return out


_EPS = 1e-4


def _smooth_kernel(p: np.ndarray, *, kernel: np.ndarray, method: str, smoothness: float) -> np.ndarray:
    """(K, y, x) probabilities -> smoothed (K, y, x) float32; NaN pixels excluded and kept NaN."""
    p = np.asarray(p, dtype=np.float64)
    bad = np.isnan(p).any(axis=0)
    valid = (~bad).astype(np.float64)

    def filt(a: np.ndarray) -> np.ndarray:  # separable correlation, zero outside: an exact sum per pixel
        a = ndimage.correlate1d(a, kernel, axis=-2, mode="constant", cval=0.0)
        return ndimage.correlate1d(a, kernel, axis=-1, mode="constant", cval=0.0)

    w = filt(valid)
    w = np.where(w > 0, w, 1.0)
    if method == "gaussian":
        q = np.where(bad, 0.0, p)
        out = filt(q) / w
    else:
        q = np.clip(np.where(bad, 0.5, p), _EPS, 1 - _EPS)
        x = np.log(q / (1 - q)) * valid
        m = filt(x) / w
        s2 = np.clip(filt(x * x) / w - m * m, 0.0, None)
        post = (s2 * x + smoothness * m) / (s2 + smoothness)
        out = 1.0 / (1.0 + np.exp(-post))
    total = out.sum(axis=0, keepdims=True)
    out = out / np.where(total > 0, total, 1.0)
    out[:, bad] = np.nan
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------- change


def detect_change(
    earlier: xr.DataArray,
    later: xr.DataArray,
    *,
    target: int | Sequence[int],
    kind: ChangeKind = "appeared",
    min_pixels: int = 4,
    nodata: int = NODATA,
    connectivity: Literal[4, 8] = 8,
) -> xr.DataArray:
    """Change map ``"change"`` (y, x) uint8 of the ``target`` class(es) between two class maps on one grid.

    1 = appeared (target in ``later``, not in ``earlier``; with ``kind="appeared"`` or ``"both"``), 2 = disappeared
    (the reverse; only with ``kind="disappeared"`` or ``"both"``), 0 = no change, ``nodata`` where either map is
    ``nodata``. Connected groups (``connectivity`` 4 or 8 neighbours) of fewer than ``min_pixels`` changed pixels
    of one kind are removed (set to 0). Dask-backed maps are computed.

    Parameters
    ----------
    earlier, later : xarray.DataArray
        (y, x) integer class maps with a CRS, on the same grid (e.g. from ``class_map`` or ``read_class_map``).
    target : int or sequence of int
        A class id, or several ids treated as one class (e.g. urban + road).
    kind : {"appeared", "disappeared", "both"}, default "appeared"
        The changes marked.
    min_pixels : int, default 4
        Smallest connected group of changed pixels kept (>= 1; 1 keeps every changed pixel).
    nodata : int, default 255
        Nodata value of both input maps and of the output, in 0..255.
    connectivity : {4, 8}, default 8
        Neighbours that connect changed pixels into a group.

    Returns
    -------
    xarray.DataArray
        ``"change"`` (y, x) uint8 with the ``x``/``y``/``spatial_ref`` coordinates of ``later``. Attributes:
        ``crs``, ``transform``, ``nodata``, ``classes`` (change value -> name), ``target``, ``target_names``,
        ``kind``, ``min_pixels``, ``connectivity``, ``changed_pixels`` (pixels per change kind), ``long_name``.

    Raises
    ------
    InputError
        ``kind``, ``connectivity``, ``min_pixels``, ``nodata`` or ``target`` is invalid (or ``target`` includes
        ``nodata``); or the maps are not (y, x) integer DataArrays with a CRS on one grid.
    """
    if kind not in ("appeared", "disappeared", "both"):
        raise InputError(f"kind={kind!r} must be 'appeared', 'disappeared' or 'both'")
    if connectivity not in (4, 8):
        raise InputError(f"connectivity={connectivity!r} must be 4 or 8 (neighbours)")
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, (int, np.integer)) or min_pixels < 1:
        raise InputError(f"min_pixels={min_pixels!r} must be an integer >= 1 (1 keeps every changed pixel)")
    _check_nodata(nodata)
    targets = [target] if isinstance(target, (int, np.integer)) and not isinstance(target, bool) else list(target)
    if not targets or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) for t in targets):
        raise InputError(f"target={target!r} must be a class id or a list of class ids, e.g. target=7")
    if nodata in targets:
        raise InputError(f"target={target!r} includes the nodata value {nodata}; pass the class id(s) to follow")
    a, grid = _raster_of(earlier, "earlier")
    b, grid_b = _raster_of(later, "later")
    if not _same_grid(grid, grid_b):
        raise InputError(
            f"earlier and later are on different grids: {grid.crs} {list(grid.transform)[:6]} {grid.shape} vs "
            f"{grid_b.crs} {list(grid_b.transform)[:6]} {grid_b.shape}; resample one onto the other's grid "
            "(e.g. s2pipe.ml.pixels.align_mask(later, earlier))"
        )
    invalid = (a == nodata) | (b == nodata)
    in_a, in_b = np.isin(a, targets) & ~invalid, np.isin(b, targets) & ~invalid
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    out = np.zeros(a.shape, dtype=np.uint8)
    wanted = {"appeared": [(APPEARED, in_b & ~in_a)], "disappeared": [(DISAPPEARED, in_a & ~in_b)],
              "both": [(APPEARED, in_b & ~in_a), (DISAPPEARED, in_a & ~in_b)]}[kind]
    counts: dict[str, int] = {}
    for value, mask in wanted:
        if min_pixels > 1 and mask.any():
            lab, n = ndimage.label(mask, structure=structure)
            sizes = np.bincount(lab.ravel())
            keep = sizes >= min_pixels
            keep[0] = False
            mask = keep[lab]
        out[mask] = value
        counts[CHANGE_NAMES[value]] = int(mask.sum())
    out[invalid] = nodata
    ref = later if isinstance(later, xr.DataArray) else earlier
    coords = {c: ref.coords[c] for c in ("y", "x", "spatial_ref") if c in ref.coords}
    names = class_names(earlier, None) | class_names(later, None)
    attrs = {
        "crs": grid.crs, "transform": [float(v) for v in list(grid.transform)[:6]], "nodata": int(nodata),
        "classes": {str(k): v for k, v in CHANGE_NAMES.items()}, "target": [int(t) for t in targets],
        "target_names": [names.get(int(t), f"class {t}") for t in targets], "kind": kind,
        "min_pixels": int(min_pixels), "connectivity": int(connectivity), "changed_pixels": counts,
        "long_name": f"change of class {'+'.join(str(t) for t in targets)} (1 appeared, 2 disappeared)",
    }
    return xr.DataArray(out, dims=("y", "x"), coords=coords, name="change", attrs=attrs)


def write_change(
    change: xr.DataArray,
    path_tif: str | os.PathLike,
    path_gpkg: str | os.PathLike | None = None,
    *,
    layer: str = "change",
    blocksize: int | None = None,
) -> ChangeFiles:
    """Write a ``detect_change`` map as a COG and, optionally, its change regions as polygons in a GeoPackage.

    The COG (``path_tif``) has internal overviews (nearest), a colour table (0 transparent, 1 appeared red,
    2 disappeared blue), the change names (``CLASS_<id>`` band tags, a JSON ``CLASSES`` tag) and the target
    (``CHANGE_TARGET`` tag), with the legend sidecars of ``write_class_map`` beside it (``legend_paths``; the
    TIFF colour table cannot hold transparency, so "no change" is transparent through the ``.aux.xml`` colour
    table and left out of the ``.qml`` style). With ``path_gpkg``, the change regions are written as polygons
    in a GeoPackage (version 1.2, ``GPKG_VERSION``) layer ``layer`` in the grid's CRS: one polygon per connected
    region (the map's ``connectivity`` attribute, default 8; a region whose pixels touch only at corners is a
    valid MultiPolygon, so every feature is a MultiPolygon)
    with the attributes ``change`` ("appeared"/"disappeared"), ``class_id`` (the target class; -1 when the target
    is several classes), ``target`` (the target id(s), e.g. "6+7"), ``area_m2`` (square metres, measured in an
    estimated UTM CRS when the grid's CRS is not in metres) and ``pixels``. Each file is written under a temporary
    name and renamed when complete.

    Parameters
    ----------
    change : xarray.DataArray
        (y, x) change map with a CRS, as ``detect_change`` returns it; nodata from its ``nodata`` attribute (else
        ``_FillValue``, else 255).
    path_tif : str or os.PathLike
        Destination of the change COG.
    path_gpkg : str or os.PathLike, optional
        Destination of the GeoPackage; None writes no polygons.
    layer : str, default "change"
        Name of the GeoPackage layer.
    blocksize : int, optional
        COG tile side in pixels (multiple of 16); None: 512, smaller for small maps.

    Returns
    -------
    ChangeFiles
        ``raster`` (the COG path), ``vectors`` (the GeoPackage path, None without ``path_gpkg``) and
        ``n_polygons`` (0 without a GeoPackage).

    Raises
    ------
    InputError
        ``change`` is not a (y, x) integer DataArray with a CRS, holds values outside 0..255 or has a nodata value
        outside 0..255; or ``blocksize`` is invalid.
    """
    values, grid = _raster_of(change, "change")
    nodata = _nodata_of(change, None)
    blocksize = cog_blocksize(values.shape) if blocksize is None else blocksize
    tif = _write_cog_uint8(
        values, path_tif, grid=grid, nodata=nodata, colormap=class_colormap([0, 1, 2], CHANGE_NAMES, CHANGE_COLORS, nodata),
        names=CHANGE_NAMES, description="change",
        tags={"CLASSES": json.dumps({str(k): v for k, v in CHANGE_NAMES.items()}),
              "CHANGE_TARGET": json.dumps(change.attrs.get("target"))},
        band_tags={f"CLASS_{k}": v for k, v in CHANGE_NAMES.items()}, overviews=True, blocksize=blocksize,
        resampling="nearest",
    )
    if path_gpkg is None:
        return ChangeFiles(tif, None, 0)
    gdf = change_polygons(change)
    gpkg = Path(path_gpkg)
    with atomic_path(gpkg, companions=("-wal", "-shm")) as tmp:
        gdf.to_file(tmp, driver="GPKG", layer=layer, engine="pyogrio", geometry_type="MultiPolygon",
                    dataset_options={"VERSION": GPKG_VERSION})
    return ChangeFiles(tif, gpkg, len(gdf))


def change_polygons(change: xr.DataArray):
    """The change regions of a ``detect_change`` map as a GeoDataFrame (see ``write_change``)."""
    import geopandas as gpd
    import pandas as pd
    import shapely
    from rasterio.features import shapes
    from shapely.geometry import MultiPolygon, shape

    values, grid = _raster_of(change, "change")
    connectivity = int(change.attrs.get("connectivity", 8)) if isinstance(change, xr.DataArray) else 8
    targets = [int(t) for t in (change.attrs.get("target") or [])] if isinstance(change, xr.DataArray) else []
    mask = (values == APPEARED) | (values == DISAPPEARED)
    pixel_area = abs(grid.transform.a * grid.transform.e - grid.transform.b * grid.transform.d)
    metric = _metric_crs(grid.crs)
    records, geoms = [], []
    for geom, value in shapes(values, mask=mask, connectivity=connectivity, transform=grid.transform):
        poly = shape(geom)
        if not poly.is_valid:
            poly = shapely.make_valid(poly)
        parts = [g for g in getattr(poly, "geoms", [poly]) if g.geom_type == "Polygon" and not g.is_empty]
        multi = MultiPolygon(parts)
        pixels = int(round(multi.area / pixel_area))
        records.append({
            "change": CHANGE_NAMES[int(value)],
            "class_id": targets[0] if len(targets) == 1 else -1,
            "target": "+".join(str(t) for t in targets),
            "area_m2": float(multi.area) if metric else float("nan"),
            "pixels": pixels,
        })
        geoms.append(multi)
    columns = ["change", "class_id", "target", "area_m2", "pixels"]
    frame = pd.DataFrame.from_records(records, columns=columns).astype(
        {"change": str, "class_id": "int32", "target": str, "area_m2": "float64", "pixels": "int64"})
    gdf = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geoms, crs=grid.crs), crs=grid.crs)
    if not metric and len(gdf):
        gdf["area_m2"] = gdf.to_crs(gdf.estimate_utm_crs()).area.to_numpy()
    return gdf


# ---------------------------------------------------------------------------------------------- helpers


def _argmax_ids(p: np.ndarray, *, lookup: np.ndarray, nodata: np.uint8) -> np.ndarray:
    """(..., K) probabilities -> (...) uint8 class ids; nodata where any probability is NaN."""
    bad = np.isnan(p).any(axis=-1)
    idx = np.argmax(np.where(np.isnan(p), -np.inf, p), axis=-1)
    out = lookup[idx]
    out[bad] = nodata
    return out


def _check_nodata(nodata) -> None:
    if isinstance(nodata, bool) or not isinstance(nodata, (int, np.integer)) or not 0 <= nodata <= 255:
        raise InputError(f"nodata={nodata!r} must be an integer in 0..255 (uint8 maps); pass e.g. nodata=255")


def _raster_of(obj, what: str) -> tuple[np.ndarray, Grid]:
    """(y, x) values and grid of a georeferenced 2-D DataArray."""
    if not isinstance(obj, xr.DataArray) or set(obj.dims) != {"y", "x"}:
        raise InputError(f"{what} must be a (y, x) xarray.DataArray with a CRS, got {type(obj).__name__} "
                         f"{getattr(obj, 'dims', '')}")
    grid = grid_of(obj)
    values = np.asarray(obj.transpose("y", "x").values)
    if values.dtype.kind not in "iub":
        raise InputError(f"{what} has dtype {values.dtype}; pass integer class ids (e.g. from class_map)")
    return values, grid


def _nodata_of(obj: xr.DataArray, nodata: int | None) -> int:
    if nodata is None:
        nodata = obj.attrs.get("nodata", obj.attrs.get("_FillValue", NODATA))
    nodata = int(nodata)
    _check_nodata(nodata)
    return nodata


def class_names(obj, names: Mapping[int, str] | None) -> dict[int, str]:
    """{class id: name} given as ``names``, else from the ``classes`` attribute of a class map (ids as ints)."""
    if names is None:
        names = obj.attrs.get("classes") if isinstance(obj, xr.DataArray) else None
        if not isinstance(names, Mapping):
            return {}
    try:
        return {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError, AttributeError):
        raise InputError(f"names={names!r} must map class ids to names, e.g. {{1: 'water', 7: 'road'}}") from None


def _color(value: Any, cid: int) -> tuple[int, int, int, int]:
    if isinstance(value, str):
        s = value.lstrip("#")
        if len(s) in (6, 8):
            try:
                rgba = tuple(int(s[i:i + 2], 16) for i in range(0, len(s), 2))
                return rgba if len(rgba) == 4 else (*rgba, 255)
            except ValueError:
                pass
    elif isinstance(value, Sequence) and len(value) in (3, 4) and all(0 <= int(v) <= 255 for v in value):
        rgba = tuple(int(v) for v in value)
        return rgba if len(rgba) == 4 else (*rgba, 255)
    raise InputError(f"colors[{cid}]={value!r} is not a colour; pass (r, g, b), (r, g, b, a) in 0..255 or '#rrggbb'")


def class_colormap(ids: Sequence[int], names: Mapping[int, str], colors: Mapping[int, Any] | None,
              nodata: int) -> dict[int, tuple[int, int, int, int]]:
    """A full 256-entry colour table: given colours, then colours by name, then the palette; nodata transparent."""
    given = {int(k): _color(v, int(k)) for k, v in (colors or {}).items()}
    cmap = {i: (0, 0, 0, 0) for i in range(256)}
    free = iter(c for c in _PALETTE * 22)
    for cid in ids:
        if not 0 <= cid <= 255:
            raise InputError(f"class id {cid} does not fit a uint8 map; class ids must be in 0..255")
        if cid in given:
            cmap[cid] = given[cid]
        elif names.get(cid, "").lower() in CLASS_COLORS:
            cmap[cid] = (*CLASS_COLORS[names[cid].lower()], 255)
        else:
            cmap[cid] = (*next(free), 255)
    cmap[nodata] = (0, 0, 0, 0)
    return cmap


def _write_cog_uint8(values: np.ndarray, path: str | os.PathLike, *, grid: Grid, nodata: int,
                     colormap: Mapping[int, tuple[int, ...]], names: Mapping[int, str], description: str,
                     tags: Mapping[str, str], band_tags: Mapping[str, str], overviews: bool, blocksize: int,
                     resampling: str) -> Path:
    """A uint8 COG with colour table and metadata (``s2pipe.products.cog.write_cog``: temporary name, then renamed)
    and its legend sidecars (``_write_legend``)."""
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) or blocksize < 16 or blocksize % 16:
        raise InputError(f"blocksize={blocksize!r} must be a multiple of 16 pixels; pass e.g. blocksize=512")
    if resampling not in ("nearest", "mode"):
        raise InputError(f"resampling={resampling!r} must be 'nearest' or 'mode' (class maps are categorical)")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise InputError(f"values span {values.min()}..{values.max()}; a class map COG holds uint8 ids in 0..255")
    from s2pipe.products.cog import write_cog

    values = values.astype(np.uint8, copy=False)
    tif = write_cog(path, values, transform=Affine(*list(grid.transform)[:6]),
                    crs=f"EPSG:{grid.epsg}" if grid.epsg else grid.crs, nodata=nodata, blocksize=int(blocksize),
                    overviews=overviews, overview_resampling=resampling, colormap=colormap,
                    description=description, tags=tags, band_tags=band_tags)
    _write_legend(tif, values=values, names=names, colormap=colormap, nodata=nodata)
    return tif


# ---------------------------------------------------------------------------------------------- legends

_QGIS_VERSION = "3.28.0-Firenze"
"""QGIS version named in the ``.qml`` styles (the paletted renderer reads the same in QGIS 3.4 and later)."""
_RAT_COLUMNS = (("Value", 0, 5), ("Class", 2, 2), ("Count", 0, 1), ("Red", 0, 6), ("Green", 0, 7),
                ("Blue", 0, 8), ("Alpha", 0, 9))
"""Raster attribute table columns (name, GDALRATFieldType: 0 integer 2 string, GDALRATFieldUsage: 5 MinMax
2 Name 1 PixelCount 6..9 Red Green Blue Alpha)."""


def legend_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The legend sidecars of a class or change COG ``path``: ``(<path>.aux.xml, <stem>.qml)``.

    GDAL reads ``<name>.tif.aux.xml`` (its PAM file: category names, raster attribute table, colour table with
    transparency) whenever it opens ``<name>.tif``; QGIS loads ``<name>.qml`` as the default style of the layer
    ``<name>.tif``. Both are written by ``write_class_map`` and ``write_change``.

    Parameters
    ----------
    path : str or os.PathLike
        The COG.

    Returns
    -------
    tuple of pathlib.Path
        The GDAL PAM file and the QGIS style file.
    """
    path = Path(path)
    return path.with_name(path.name + ".aux.xml"), path.with_suffix(".qml")


def _write_legend(tif: Path, *, values: np.ndarray, names: Mapping[int, str],
                  colormap: Mapping[int, tuple[int, ...]], nodata: int) -> tuple[Path, Path]:
    """Write the legend sidecars of the uint8 COG ``tif`` holding ``values`` (see ``legend_paths``).

    * ``<tif>.aux.xml`` (GDAL PAM): ``CategoryNames`` indexed by pixel value up to the largest named or present
      class (empty for other values and nodata; a present value without a name is "class <id>"); the full
      ``colormap`` as ``ColorTable`` with its alpha (a TIFF colour table has none, GDAL then reads this one); a
      thematic raster attribute table of the present values (Value, Class, Count, Red, Green, Blue, Alpha);
    * ``<stem>.qml`` (QGIS style): a paletted renderer of the present values drawn (alpha > 0), labelled by
      name; nodata and transparent values (e.g. "no change") are not listed, so QGIS does not draw them.

    Each file is written under a temporary name and renamed when complete.
    """
    rows = max(1, (1 << 22) // max(1, values.shape[1]))  # ~4 Mpx at a time: bincount makes an int64 copy
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, values.shape[0], rows):
        counts += np.bincount(values[start:start + rows].ravel(), minlength=256)
    present = [int(v) for v in np.flatnonzero(counts) if int(v) != nodata]
    labels = {**{int(k): str(v) for k, v in names.items() if int(k) != nodata},
              **{v: names.get(v, f"class {v}") for v in present}}
    rgba = {v: tuple(int(c) for c in (*colormap.get(v, (0, 0, 0, 0)), 255)[:4]) for v in range(256)}

    pam = ET.Element("PAMDataset")
    band = ET.SubElement(pam, "PAMRasterBand", band="1")
    categories = ET.SubElement(band, "CategoryNames")
    for v in range(max(labels, default=-1) + 1):
        ET.SubElement(categories, "Category").text = labels.get(v, "")
    table = ET.SubElement(band, "ColorTable")
    for v in range(256):
        ET.SubElement(table, "Entry", {f"c{i + 1}": str(c) for i, c in enumerate(rgba[v])})
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for i, (name, kind, usage) in enumerate(_RAT_COLUMNS):
        field = ET.SubElement(rat, "FieldDefn", index=str(i))
        for tag, text in (("Name", name), ("Type", kind), ("Usage", usage)):
            ET.SubElement(field, tag).text = str(text)
    for row, v in enumerate(present):
        entry = ET.SubElement(rat, "Row", index=str(row))
        for text in (v, labels[v], int(counts[v]), *rgba[v]):
            ET.SubElement(entry, "F").text = str(text)

    qgis = ET.Element("qgis", version=_QGIS_VERSION, styleCategories="AllStyleCategories",
                      hasScaleBasedVisibilityFlag="0", minScale="1e+08", maxScale="0")
    pipe = ET.SubElement(qgis, "pipe")
    ET.SubElement(ET.SubElement(pipe, "provider"), "resampling", enabled="false", maxOversampling="2",
                  zoomedInResamplingMethod="nearestNeighbour", zoomedOutResamplingMethod="nearestNeighbour")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1",
                             nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for v in present:
        r, g, b, a = rgba[v]
        if a > 0:
            ET.SubElement(palette, "paletteEntry", value=str(v), color=f"#{r:02x}{g:02x}{b:02x}", alpha=str(a),
                          label=labels[v])
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0", colorizeRed="255",
                  colorizeGreen="128", colorizeBlue="128", colorizeStrength="100")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(qgis, "blendMode").text = "0"

    aux, qml = legend_paths(tif)
    doctype = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
    for path, root, head in ((aux, pam, ""), (qml, qgis, doctype)):
        ET.indent(root)
        with atomic_path(path) as tmp:  # UTF-8 without an XML declaration, as GDAL and QGIS write them
            tmp.write_text(head + ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")
    return aux, qml


def _same_grid(a: Grid, b: Grid) -> bool:
    from pyproj import CRS

    same_crs = a.crs == b.crs or CRS.from_user_input(a.crs) == CRS.from_user_input(b.crs)
    return same_crs and a.shape == b.shape and all(
        math.isclose(x, y, rel_tol=0, abs_tol=1e-6 * max(1.0, a.resolution))
        for x, y in zip(list(a.transform)[:6], list(b.transform)[:6])
    )


def _metric_crs(crs: str) -> bool:
    """Whether ``crs`` is projected with metre units (polygon areas are then m²)."""
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    return bool(c.is_projected) and c.axis_info[0].unit_name in ("metre", "meter")

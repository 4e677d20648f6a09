"""Label rasters from vector data (roads, mangrove polygons, ...) on the exact grid of a cube, and spatial splits.

``rasterize_labels`` burns each ``LabelSource`` into an int16 (y, x) raster on the grid of ``like``:

* polygons are burned as polygons (pixel centre inside, or every touched pixel with ``all_touched=True``);
* lines are burned as 1-px centre lines, then widened by a morphological dilation with a disk whose diameter is
  the source's ``line_width`` in metres (as in the paper): a line comes out ``round(line_width / resolution)``
  pixels wide (at least 1);
* points are burned into the pixel that holds them, then dilated with the same disk.

Sources are burned in order: **a later source wins** where sources overlap (list the class that must stay on
top last, e.g. roads after mangroves). Pixels no source covers get ``background`` (0: an "other" class, or
-1: unlabelled, ignored by losses and metrics).

``spatial_split`` holds out a spatially separate part of a label raster for evaluation (not random pixels:
neighbouring pixels are strongly correlated), with a ``gap``-pixel unlabelled band between the parts so that
patch context does not leak from the test part into training.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from scipy import ndimage

from s2pipe.errors import InputError
from s2pipe.grid import Grid, grid_of

__all__ = ["LabelSource", "label_sources", "rasterize_labels", "spatial_split", "IGNORE", "line_footprint"]

log = logging.getLogger(__name__)

IGNORE = -1
"""Label value of unlabelled pixels (ignored by losses and by ``s2pipe.ml.metrics``)."""

SplitMode = Literal["half", "blocks"]
_MAX_CLASS = int(np.iinfo(np.int16).max)
_POLYGONAL = ("Polygon", "MultiPolygon")
_LINEAR = ("LineString", "MultiLineString", "LinearRing")
_PUNCTUAL = ("Point", "MultiPoint")


@dataclass(frozen=True)
class LabelSource:
    """One vector layer burned with one class id (see ``rasterize_labels``)."""

    data: Any
    """A path (GeoPackage, GeoJSON, Shapefile: anything GDAL/pyogrio reads) or a ``geopandas.GeoDataFrame``."""
    class_id: int
    """Label value burned for this source: an integer in 0..32767."""
    line_width: float = 20.0
    """Width in metres of lines and points after dilation (diameter of the disk); ignored for polygons."""
    layer: str | int | None = None
    """Layer of a multi-layer file (GeoPackage); None: the first layer."""
    where: str | None = None
    """Attribute filter, a ``pandas.DataFrame.query`` expression (e.g. ``"highway == 'primary'"``); None: all."""
    width_column: str | None = None
    """Optional attribute holding each line's width in metres (e.g. the demo's ``width_m``); where it is missing
    or not a positive number, ``line_width`` applies."""
    name: str | None = None
    """Class name for the ``classes`` attribute of the raster; None: the file name stem or ``class <id>``."""

    def __post_init__(self) -> None:
        cid = self.class_id
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) or not 0 <= int(cid) <= _MAX_CLASS:
            raise InputError(
                f"LabelSource class_id={cid!r} must be an integer in 0..{_MAX_CLASS} (int16 labels; -1 means "
                "unlabelled); pass another class_id"
            )
        w = self.line_width
        if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not math.isfinite(w) or w <= 0:
            raise InputError(f"LabelSource line_width={w!r} must be a positive number of metres; pass e.g. line_width=20")
        if self.data is None:
            raise InputError("LabelSource data=None; pass a vector file path or a GeoDataFrame")

    @property
    def label(self) -> str:
        """Human-readable name of the source (for messages and the ``classes`` attribute)."""
        if self.name:
            return self.name
        if isinstance(self.data, (str, os.PathLike)):
            return Path(self.data).stem
        return f"class {int(self.class_id)}"


_LABEL_KEYS = {f.name for f in LabelSource.__dataclass_fields__.values()}


def label_sources(specs: Sequence[Mapping[str, Any] | LabelSource]) -> list[LabelSource]:
    """``LabelSource`` s from flow parameters: dicts with the ``LabelSource`` fields (``data``: a vector file path,
    ``class_id``, optional ``name``, ``line_width``, ``width_column``, ``where``, ``layer``)."""
    if isinstance(specs, (Mapping, LabelSource)):
        specs = [specs]
    if not specs:
        raise InputError("no label sources given; pass labels=[{'data': 'roads.gpkg', 'class_id': 2}, ...] "
                         "(CLI: --label roads.gpkg:2:road)")
    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, LabelSource):
            out.append(spec)
            continue
        unknown = set(spec) - _LABEL_KEYS
        if unknown or "data" not in spec or "class_id" not in spec:
            raise InputError(f"label source {i} {dict(spec)!r}: needs 'data' and 'class_id'"
                             + (f", unknown keys {sorted(unknown)}" if unknown else "")
                             + f"; allowed keys {sorted(_LABEL_KEYS)}")
        data = spec["data"]
        if isinstance(data, (str, os.PathLike)) and not Path(data).exists():
            raise InputError(f"label source {i}: vector file {data} does not exist; pass an existing "
                             "GeoPackage/GeoJSON/Shapefile")
        out.append(LabelSource(**dict(spec)))
    return out


def rasterize_labels(
    sources: Sequence[LabelSource],
    like: xr.DataArray | xr.Dataset,
    *,
    background: int = 0,
    all_touched: bool = False,
) -> xr.DataArray:
    """Label raster ``"labels"`` (y, x) int16 on the grid of ``like``; later sources win where they overlap.

    Polygons burn the pixels whose centre is inside (or every touched pixel with ``all_touched``). Lines burn
    1-px centre lines and points the pixel that holds them, then both are widened by a disk to
    ``round(width / resolution)`` pixels (at least 1), ``width`` in metres being the feature's ``width_column``
    value or the source's ``line_width``. A source that burns no pixel is logged as a warning.

    Parameters
    ----------
    sources : sequence of LabelSource
        ``LabelSource`` s in burning order (any CRS: reprojected to the grid's CRS); a single ``LabelSource`` is
        also accepted.
    like : xarray.DataArray or xarray.Dataset
        A cube, Dataset or DataArray with ``x``/``y`` pixel-centre coordinates and a CRS (``grid_of``).
    background : int, default 0
        Value of pixels no source covers (0 = an "other" class, -1 = unlabelled): -1 or a class id in 0..32767.
    all_touched : bool, default False
        Burn every pixel a polygon or centre line touches (default: polygons burn the pixels whose centre is
        inside).

    Returns
    -------
    xarray.DataArray
        ``"labels"`` (y, x) int16 with the ``x``/``y`` (and ``spatial_ref``) coordinates of ``like``. Attributes:
        ``crs``, ``transform``, ``classes`` ({"id": name}; ``background`` as "background" when it is >= 0),
        ``background``, ``ignore_value`` (-1), ``sources`` (per source: class_id, name, features, pixels and the
        data path), ``long_name``.

    Raises
    ------
    InputError
        No sources, an entry that is not a ``LabelSource``, ``background`` out of range, or ``like`` without x/y
        coordinates or a CRS; a source that cannot be read, is empty (also after its ``where`` filter), has no
        CRS, cannot be reprojected, does not overlap the grid, holds geometries other than polygons, lines and
        points, or names a missing ``width_column``.
    """
    if isinstance(sources, LabelSource):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise InputError("rasterize_labels got no sources; pass sources=[LabelSource(path, class_id), ...]")
    for i, s in enumerate(sources):
        if not isinstance(s, LabelSource):
            raise InputError(f"sources[{i}] is a {type(s).__name__}; wrap it as LabelSource(data, class_id=...)")
    if isinstance(background, bool) or not isinstance(background, (int, np.integer)) or not -1 <= background <= _MAX_CLASS:
        raise InputError(f"background={background!r} must be -1 (unlabelled) or a class id in 0..{_MAX_CLASS}")
    if not isinstance(like, (xr.DataArray, xr.Dataset)) or "x" not in like.coords or "y" not in like.coords:
        raise InputError(
            f"like must be an xarray DataArray/Dataset with x/y coordinates (e.g. the cube), got {type(like).__name__}"
        )
    grid = grid_of(like)
    out = np.full(grid.shape, background, dtype=np.int16)
    described: list[dict[str, Any]] = []
    for i, src in enumerate(sources):
        mask, n_features = _burn(src, grid, all_touched=all_touched, index=i)
        out[mask] = src.class_id
        n_px = int(mask.sum())
        if n_px == 0:
            log.warning("labels: source %d (%s, class %d) burned no pixel: its %d features are smaller than a pixel "
                        "or lie outside the grid", i, src.label, src.class_id, n_features)
        described.append({"class_id": int(src.class_id), "name": src.label, "features": n_features, "pixels": n_px,
                          **({"data": str(src.data)} if isinstance(src.data, (str, os.PathLike)) else {})})

    classes: dict[str, str] = {}
    if background >= 0:
        classes[str(int(background))] = "background"
    for src in sources:
        key = str(int(src.class_id))
        if key not in classes or classes[key] == "background":
            classes[key] = src.label
    coords: dict[str, Any] = {"y": like["y"].values, "x": like["x"].values}
    if "spatial_ref" in like.coords:
        coords["spatial_ref"] = like.coords["spatial_ref"]
    attrs = {
        "crs": grid.crs,
        "transform": [float(v) for v in list(grid.transform)[:6]],
        "classes": classes,
        "background": int(background),
        "ignore_value": IGNORE,
        "sources": described,
        "long_name": "class labels rasterized from vector data (later sources win)",
    }
    return xr.DataArray(out, dims=("y", "x"), coords=coords, name="labels", attrs=attrs)


def line_footprint(width_m: float, resolution: float) -> np.ndarray:
    """Disk structuring element (bool, k x k) for widening 1-px lines to ``width_m`` metres: ``k`` =
    ``round(width_m / resolution)`` (at least 1) and the pixels whose centres lie within k/2 pixels of the
    element's centre. Dilating a 1-px straight line with it gives a line ``k`` pixels wide."""
    k = max(1, int(round(float(width_m) / float(resolution))))
    c = (k - 1) / 2.0
    yy, xx = np.mgrid[0:k, 0:k]
    return (yy - c) ** 2 + (xx - c) ** 2 <= (k / 2.0) ** 2 + 1e-9


def spatial_split(
    labels: xr.DataArray,
    *,
    test_fraction: float = 0.3,
    axis: Literal["x", "y"] = "x",
    gap: int = 16,
    mode: SplitMode = "half",
    block: int = 64,
    seed: int = 0,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Split a label raster (y, x) into spatially separate ``(train, test)`` rasters of the same shape.

    Each output keeps its own part of ``labels`` and is -1 elsewhere; a band of ``gap`` pixels between the parts
    (half on each side of the boundary) is -1 in both, so patches of up to ``gap`` pixels of context drawn in
    one part never see the other part's labels.

    ``mode="half"``: one straight cut across ``axis``; the test part is the far end (east for ``"x"``, south
    for ``"y"``), placed so that about ``test_fraction`` of the labelled pixels (!= -1) fall in it.
    ``mode="blocks"``: the grid is tiled with ``block`` x ``block`` pixel blocks and a random ``test_fraction``
    of them (``seed``; at least one, and at least one left for training) form the test part.
    """
    if not isinstance(labels, xr.DataArray) or set(labels.dims) != {"y", "x"}:
        raise InputError(f"labels must be a (y, x) xarray.DataArray (from rasterize_labels), got "
                         f"{type(labels).__name__} {getattr(labels, 'dims', '')}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"test_fraction={test_fraction!r} must be between 0 and 1 (exclusive); pass e.g. 0.3")
    if axis not in ("x", "y"):
        raise InputError(f"axis={axis!r} must be 'x' (west/east split) or 'y' (north/south split)")
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise InputError(f"gap={gap!r} must be a number of pixels >= 0; pass e.g. gap=16 (the patch size)")
    if mode not in ("half", "blocks"):
        raise InputError(f"mode={mode!r} must be 'half' (one cut) or 'blocks' (random blocks)")
    labels = labels.transpose("y", "x")
    values = np.asarray(labels.values)
    if values.dtype.kind not in "iu":
        raise InputError(f"labels has dtype {values.dtype}; pass an integer label raster (from rasterize_labels)")
    ny, nx = values.shape
    if mode == "half":
        test_region = _half_region(values, test_fraction, axis)
    else:
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
            raise InputError(f"block={block!r} must be a positive number of pixels; pass e.g. block=64")
        test_region = _block_region((ny, nx), test_fraction, int(block), seed)
    g_train, g_test = gap // 2, gap - gap // 2
    keep_train, keep_test = ~test_region, test_region.copy()
    if gap > 0 and test_region.any() and (~test_region).any():
        # chessboard distance (pixels) of each pixel to the nearest pixel of the other part
        keep_train &= ndimage.distance_transform_cdt(~test_region, metric="chessboard") > g_train
        keep_test &= ndimage.distance_transform_cdt(test_region, metric="chessboard") > g_test
    parts = []
    for name, keep in (("train", keep_train), ("test", keep_test)):
        arr = np.where(keep, values, IGNORE).astype(values.dtype if values.dtype.kind == "i" else np.int16)
        attrs = dict(labels.attrs)
        attrs.update(split=name, split_mode=mode, split_gap=int(gap), split_test_fraction=float(test_fraction))
        if mode == "half":
            attrs["split_axis"] = axis
        else:
            attrs.update(split_block=int(block), split_seed=int(seed))
        parts.append(labels.copy(data=arr).assign_attrs(attrs))
    return parts[0], parts[1]


# ---------------------------------------------------------------------------------------------- helpers


def _burn(src: LabelSource, grid: Grid, *, all_touched: bool, index: int) -> tuple[np.ndarray, int]:
    """(bool (y, x) mask of the pixels this source covers, number of features)."""
    from rasterio.features import rasterize

    gdf = _read_source(src, index)
    what = f"sources[{index}] ({src.label})"
    try:
        gdf = gdf.to_crs(grid.crs)
    except Exception as e:  # noqa: BLE001 - pyproj errors vary
        raise InputError(f"{what}: cannot reproject from {gdf.crs} to the grid's {grid.crs}: {e}") from None
    gxmin, gymin, gxmax, gymax = _grid_bounds(grid)
    vxmin, vymin, vxmax, vymax = (float(v) for v in gdf.total_bounds)
    if not (vxmin <= gxmax and vxmax >= gxmin and vymin <= gymax and vymax >= gymin):
        raise InputError(
            f"{what} does not overlap the grid: its features cover {_fmt((vxmin, vymin, vxmax, vymax))} and the grid "
            f"{_fmt((gxmin, gymin, gxmax, gymax))} ({grid.crs}, xmin, ymin, xmax, ymax); pass vectors of this "
            "region, or a like= cube that covers them"
        )
    shape, transform = grid.shape, grid.transform
    gdf = gdf.explode(index_parts=False)
    kinds = gdf.geometry.geom_type
    polys = gdf.geometry[kinds.isin(_POLYGONAL)]
    lines = gdf[kinds.isin(_LINEAR + _PUNCTUAL)]
    other = sorted(set(kinds) - set(_POLYGONAL + _LINEAR + _PUNCTUAL))
    if other:
        raise InputError(f"{what} holds {other} geometries; keep polygons, lines and points (argument: sources)")
    mask = np.zeros(shape, dtype=bool)
    if len(polys):
        mask |= rasterize(((g, 1) for g in polys), out_shape=shape, transform=transform, fill=0,
                          all_touched=all_touched, dtype="uint8").astype(bool)
    if len(lines):
        widths = np.full(len(lines), float(src.line_width))
        if src.width_column is not None:
            if src.width_column not in lines.columns:
                raise InputError(f"{what}: width_column={src.width_column!r} is not an attribute; it has "
                                 f"{[c for c in lines.columns if c != lines.geometry.name]}")
            col = np.asarray(_to_numeric(lines[src.width_column]), dtype=float)
            ok = np.isfinite(col) & (col > 0)
            widths[ok] = col[ok]
        pixels = np.maximum(1, np.round(widths / grid.resolution)).astype(int)
        for k in np.unique(pixels):
            geoms = lines.geometry[pixels == k]
            centre = rasterize(((g, 1) for g in geoms), out_shape=shape, transform=transform, fill=0,
                               all_touched=all_touched, dtype="uint8").astype(bool)
            if k > 1:
                centre = ndimage.binary_dilation(centre, structure=line_footprint(k * grid.resolution, grid.resolution))
            mask |= centre
    return mask, int(len(gdf))


def _to_numeric(series):
    """Numbers of a pandas column (non-numbers become NaN)."""
    import pandas as pd

    return pd.to_numeric(series, errors="coerce")


def _read_source(src: LabelSource, index: int):
    """The source's features as a GeoDataFrame with a CRS, filtered, without empty geometries."""
    import geopandas as gpd

    what = f"sources[{index}] ({src.label})"
    if isinstance(src.data, gpd.GeoDataFrame):
        gdf = src.data
    elif isinstance(src.data, (str, os.PathLike)):
        path = Path(src.data)
        if not path.exists():
            raise InputError(f"{what}: vector file {path} does not exist; pass an existing GeoPackage/GeoJSON/"
                             "Shapefile (LabelSource data=)")
        try:
            gdf = gpd.read_file(path, layer=src.layer) if src.layer is not None else gpd.read_file(path)
        except Exception as e:  # noqa: BLE001 - pyogrio raises DataSourceError, DataLayerError, ...
            hint = ""
            if src.layer is not None:
                try:
                    import pyogrio

                    hint = f" (layers: {[str(n) for n in pyogrio.list_layers(path)[:, 0]]})"
                except Exception:  # noqa: BLE001
                    pass
            raise InputError(f"{what}: cannot read {path} layer={src.layer!r}{hint}: {e}") from None
    else:
        raise InputError(f"{what}: data is a {type(src.data).__name__}; pass a file path or a GeoDataFrame")
    if len(gdf) == 0:
        where = "the GeoDataFrame" if not isinstance(src.data, (str, os.PathLike)) else \
            f"layer {src.layer!r} of {src.data}" if src.layer is not None else f"{src.data}"
        raise InputError(f"{what}: {where} is empty (no features); pass data with features (LabelSource data=/layer=)")
    if gdf.crs is None:
        raise InputError(f"{what} has no CRS; set it (gdf.set_crs('EPSG:4326') or write the file with a .prj / "
                         "CRS) so it can be placed on the grid")
    if src.where is not None:
        try:
            gdf = gdf.query(src.where)
        except Exception as e:  # noqa: BLE001 - pandas raises many types
            cols = [c for c in gdf.columns if c != gdf.geometry.name]
            raise InputError(f"{what}: where={src.where!r} failed ({e}); attributes: {cols}") from None
        if len(gdf) == 0:
            raise InputError(f"{what}: where={src.where!r} selects no feature; loosen the filter (LabelSource where=)")
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if len(gdf) == 0:
        raise InputError(f"{what}: every geometry is empty; pass a layer with geometries")
    return gdf


def _grid_bounds(grid: Grid) -> tuple[float, float, float, float]:
    t, (h, w) = grid.transform, grid.shape
    xs, ys = (t.c, t.c + t.a * w), (t.f, t.f + t.e * h)
    return min(xs), min(ys), max(xs), max(ys)


def _fmt(b: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" if abs(v) < 1000 else f"{v:.1f}" for v in b) + ")"


def _half_region(values: np.ndarray, test_fraction: float, axis: str) -> np.ndarray:
    """Bool (y, x): the far end of the grid along ``axis`` holding ~test_fraction of the labelled pixels."""
    ax = 1 if axis == "x" else 0
    n = values.shape[ax]
    if n < 2:
        raise InputError(f"labels has {n} pixel along {axis!r}: cannot split it; pass axis='{'y' if axis == 'x' else 'x'}'")
    counts = (values != IGNORE).sum(axis=1 - ax).astype(float)
    if counts.sum() == 0:
        counts = np.ones(n)
    cum = np.cumsum(counts) / counts.sum()  # share of labelled pixels at or before each index
    cut = int(np.searchsorted(cum, 1.0 - test_fraction, side="left")) + 1  # first test index
    cut = min(max(cut, 1), n - 1)
    idx = np.arange(n) >= cut
    return np.broadcast_to(idx[None, :] if ax == 1 else idx[:, None], values.shape).copy()


def _block_region(shape: tuple[int, int], test_fraction: float, block: int, seed: int) -> np.ndarray:
    """Bool (y, x): a random ``test_fraction`` of ``block``-pixel blocks."""
    by, bx = math.ceil(shape[0] / block), math.ceil(shape[1] / block)
    nb = by * bx
    if nb < 2:
        raise InputError(f"block={block} covers the whole {shape[0]}x{shape[1]} grid in one block; pass a smaller block")
    n_test = min(max(1, int(round(test_fraction * nb))), nb - 1)
    chosen = np.zeros(nb, dtype=bool)
    chosen[np.random.default_rng(seed).choice(nb, size=n_test, replace=False)] = True
    blocks = chosen.reshape(by, bx)
    return np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)[: shape[0], : shape[1]]

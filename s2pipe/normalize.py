"""Normalisation of reflectance cubes by a per-band divisor, recorded in attrs so ``invert`` can undo it.

The paper's choice (``"global_max_by_resolution"``) divides by the maximum over all pixels, dates and
bands, taken separately for the 10 m and 20 m band groups. Percentiles come from a fixed-bin histogram
reduction (bounded memory under Dask, no sort), refined until the bins are narrower than 5e-5.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Literal

import numpy as np
import xarray as xr

from s2pipe.bands import BANDS, resolution_group
from s2pipe.errors import InputError

__all__ = ["METHODS", "compute_scale", "scale_from_max", "cube_scale", "normalize", "invert", "band_percentile"]

Method = Literal["global_max_by_resolution", "global_max", "per_band_max", "per_band_percentile"]
METHODS: tuple[str, ...] = ("global_max_by_resolution", "global_max", "per_band_max", "per_band_percentile")
ATTRS = ("normalize_method", "normalize_scale", "normalize_bands")

_NBINS = 65536
_FIRST_RANGE = (-0.5, 2.0)
"""First histogram range (reflectance): one pass suffices when the percentile falls inside it."""
_TOL = 5e-5
"""Histogram bin width at which a percentile is final (absolute, data units): error < _TOL."""
_MAX_PASSES = 8
_SLICE = 1 << 22
"""Values per histogram step inside one band of one block (bounds the float64 temporaries to ~100 MB)."""
MAX_GRAPH_TASKS = 100_000
"""Most Dask tasks per statistics graph: a larger lazy cube (a tile-year read from its COGs is ~500,000 tasks)
is reduced strip by strip, one graph per strip of whole chunks, and the strips' statistics are merged exactly."""


def _pieces(da: xr.DataArray, max_tasks: int, *, reductions: int = 1) -> list[xr.DataArray]:
    """``da``, or strips of whole chunks along its most-chunked non-band dim whose graphs each hold at most
    about ``max_tasks`` tasks (estimate: the input graph plus two tasks per chunk for each of ``reductions``)."""
    import dask

    if not dask.is_dask_collection(da.data):
        return [da]
    estimate = len(da.data.__dask_graph__()) + 2 * reductions * da.data.npartitions
    dims = [d for d in da.dims if d != "band" and len(da.chunksizes.get(d, ())) > 1]
    if estimate <= max_tasks or not dims:
        return [da]
    dim = max(dims, key=lambda d: len(da.chunksizes[d]))
    chunks = da.chunksizes[dim]
    per = max(1, len(chunks) // math.ceil(estimate / max_tasks))  # each strip <= 1/k of the graph
    edges = np.cumsum((0,) + tuple(chunks))
    return [da.isel({dim: slice(int(edges[i]), int(edges[min(i + per, len(chunks))]))})
            for i in range(0, len(chunks), per)]


@contextlib.contextmanager
def _quiet():
    """Silence numpy's all-NaN RuntimeWarnings (an all-NaN band is reported as NaN, then as an error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ------------------------------------------------------------------------------------------ checks
def _check_da(da, fn: str) -> list[str]:
    if not isinstance(da, xr.DataArray):
        raise InputError(f"{fn} expects an xarray.DataArray, got {type(da).__name__}; pass the reflectance cube")
    if "band" not in da.dims:
        raise InputError(f"{fn}: DataArray {da.name!r} has dims {da.dims} but no 'band' dim; pass a (time, band, y, x) cube")
    return [str(b) for b in da["band"].values]


def _check_method(method) -> str:
    if method not in METHODS:
        raise InputError(f"unknown normalisation method {method!r}; pass method= one of {', '.join(map(repr, METHODS))}")
    return method


def _check_percentile(percentile) -> float:
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) or not 0 <= percentile <= 100:
        raise InputError(f"percentile={percentile!r} must be a number in [0, 100]; pass e.g. percentile=99.0")
    return float(percentile)


def _band_first(da: xr.DataArray):
    """(B, N) view for NumPy data, (B, ...) Dask array otherwise."""
    data = da.transpose("band", ...).data
    if isinstance(data, np.ndarray) or not hasattr(data, "chunks"):
        return np.asarray(data).reshape(data.shape[0], -1), False
    return data, True


# ------------------------------------------------------------------------------------------ histogram kernel
def _hist_block(x: np.ndarray, lo: np.ndarray, width: np.ndarray, band0: int = 0) -> np.ndarray:
    """NumPy kernel: for each band row of ``x`` (B_blk, ...) and each of K ranges, the counts of finite
    values in ``nbins`` bins ``[lo + j·width, lo + (j+1)·width)``, plus the count below ``lo`` in the last
    column: int64 (B_blk, K, nbins + 1). ``lo``/``width`` are (B_total, K); ``band0`` is the block's first band.
    """
    nb = _NBINS
    k = lo.shape[1]
    out = np.zeros((x.shape[0], k, nb + 1), dtype=np.int64)
    for i in range(x.shape[0]):
        row = x[i].reshape(-1)
        for s0 in range(0, row.size, _SLICE):  # bounded temporaries even for one big NumPy band
            v = np.asarray(row[s0 : s0 + _SLICE], dtype=np.float64)
            v = v[np.isfinite(v)]
            for j in range(k):
                a, w = lo[band0 + i, j], width[band0 + i, j]
                if j and a == lo[band0 + i, 0] and w == width[band0 + i, 0]:
                    continue  # same range as target 0: copied below
                if not np.isfinite(a) or not w > 0:
                    continue
                pos = np.floor((v - a) / w)
                inside = (pos >= 0) & (pos < nb)
                out[i, j, :nb] += np.bincount(pos[inside].astype(np.intp), minlength=nb)
                out[i, j, nb] += np.count_nonzero(v < a)
        for j in range(1, k):
            if lo[band0 + i, j] == lo[band0 + i, 0] and width[band0 + i, j] == width[band0 + i, 0]:
                out[i, j] = out[i, 0]
    return out


def _hist(data, is_dask: bool, lo: np.ndarray, width: np.ndarray):
    """(B, K, nbins + 1) counts (lazy for Dask) over the whole (B, ...) array."""
    if not is_dask:
        return _hist_block(data, lo, width)
    import dask.array as dsa

    nd = data.ndim

    def block(x, block_info=None):
        band0 = block_info[0]["array-location"][0][0]
        h = _hist_block(x, lo, width, band0)
        return h.reshape((h.shape[0],) + (1,) * (nd - 1) + h.shape[1:])

    k = lo.shape[1]
    h = dsa.map_blocks(
        block,
        data,
        new_axis=[nd, nd + 1],
        chunks=(data.chunks[0],) + tuple((1,) * len(c) for c in data.chunks[1:]) + ((k,), (_NBINS + 1,)),
        dtype=np.int64,
        meta=np.empty((0,) * (nd + 2), dtype=np.int64),
    )
    return h.sum(axis=tuple(range(1, nd)), dtype=np.int64) if nd > 1 else h


def band_percentile(da: xr.DataArray, percentile: float, *, max_graph_tasks: int = MAX_GRAPH_TASKS) -> np.ndarray:
    """Per-band percentile of the finite values (numpy 'linear' definition), float64 (B,), NaN if none.

    Fixed-bin histogram passes (65536 bins; the first on [-0.5, 2) plus min/max/count, then refined
    around the target ranks), so the error is below 5e-5 data units and memory stays bounded. A Dask cube
    whose graph exceeds ``max_graph_tasks`` is counted strip by strip (the histograms add up exactly).
    """
    _check_da(da, "band_percentile")
    p = _check_percentile(percentile)
    pieces = [_band_first(piece)[0] for piece in _pieces(da, max_graph_tasks, reductions=4)]  # min, max, count, hist
    data, is_dask = _band_first(da)
    nb_bands = data.shape[0]
    nb = _NBINS
    lo = np.full((nb_bands, 2), _FIRST_RANGE[0])
    width = np.full((nb_bands, 2), (_FIRST_RANGE[1] - _FIRST_RANGE[0]) / nb)

    # pass 1: min, max, count and the first histogram, in one traversal of the data
    if is_dask:
        import dask
        import dask.array as dsa

        axes = tuple(range(1, data.ndim))
        parts = []
        for piece in pieces:
            fin = dsa.where(dsa.isfinite(piece), piece, np.nan)
            with _quiet():
                parts.append(dask.compute(dsa.nanmin(fin, axis=axes), dsa.nanmax(fin, axis=axes),
                                          dsa.isfinite(piece).sum(axis=axes), _hist(piece, True, lo, width)))
        vmin = np.fmin.reduce([np.asarray(q[0], np.float64) for q in parts])
        vmax = np.fmax.reduce([np.asarray(q[1], np.float64) for q in parts])
        count = sum(np.asarray(q[2], np.int64) for q in parts)
        hist = sum(np.asarray(q[3], np.int64) for q in parts)
    else:
        fin = np.where(np.isfinite(data), data, np.nan)
        with np.errstate(all="ignore"), _quiet():
            vmin, vmax = np.nanmin(fin, axis=1), np.nanmax(fin, axis=1)
        count = np.isfinite(data).sum(axis=1)
        hist = _hist(data, False, lo, width)
    vmin, vmax = np.asarray(vmin, np.float64), np.asarray(vmax, np.float64)
    count = np.asarray(count, dtype=np.int64)

    rank = p / 100.0 * np.maximum(count - 1, 0)
    k_lo = np.floor(rank).astype(np.int64)
    ranks = np.stack([k_lo, np.minimum(k_lo + 1, np.maximum(count - 1, 0))], axis=1)  # (B, 2)
    frac = rank - k_lo
    value = np.full((nb_bands, 2), np.nan)
    done = np.zeros((nb_bands, 2), dtype=bool)
    done[count == 0] = True
    const = (count > 0) & (vmin == vmax)
    value[const] = vmin[const, None]
    done[const] = True
    for j in range(2):  # the extreme ranks are the exact min / max
        first = (count > 0) & (ranks[:, j] == 0)
        last = (count > 0) & (ranks[:, j] == count - 1)
        value[first, j], value[last, j] = vmin[first], vmax[last]
        done[first | last, j] = True

    for _ in range(_MAX_PASSES):
        nxt_lo, nxt_w = lo.copy(), width.copy()
        for b in range(nb_bands):
            for j in range(2):
                if done[b, j]:
                    continue
                counts, below = hist[b, j, :nb], hist[b, j, nb]
                k = ranks[b, j]
                cum = below + np.cumsum(counts)
                if below <= k < cum[-1]:
                    jb = int(np.searchsorted(cum, k, side="right"))
                    before = cum[jb] - counts[jb]
                    if width[b, j] <= _TOL:
                        value[b, j] = lo[b, j] + width[b, j] * (jb + (k - before + 0.5) / counts[jb])
                        done[b, j] = True
                    else:  # zoom into that bin and its neighbours (absorbs rounding at bin edges)
                        nxt_lo[b, j] = lo[b, j] + (jb - 1) * width[b, j]
                        nxt_w[b, j] = 3 * width[b, j] / nb
                else:  # outside the current range: restart on [min, max]
                    nxt_lo[b, j] = vmin[b]
                    nxt_w[b, j] = (vmax[b] - vmin[b]) / nb * (1 + 1e-9) + np.finfo(np.float64).tiny
        if done.all():
            break
        lo, width = nxt_lo, nxt_w
        if is_dask:
            hist = sum(np.asarray(_hist(piece, True, lo, width).compute(), np.int64) for piece in pieces)
        else:
            hist = np.asarray(_hist(data, False, lo, width))
    else:  # pragma: no cover - ranges shrink ~20000x per pass
        raise RuntimeError("band_percentile did not converge")
    return value[:, 0] + frac * (value[:, 1] - value[:, 0])


# ------------------------------------------------------------------------------------------ public API
def _band_max(da: xr.DataArray, *, max_graph_tasks: int = MAX_GRAPH_TASKS) -> np.ndarray:
    other = [d for d in da.dims if d != "band"]
    if not other:
        return np.asarray(da.transpose("band").values, dtype=np.float64)
    with _quiet():
        return np.fmax.reduce([_finite_max(piece, other) for piece in _pieces(da, max_graph_tasks)])


def _finite_max(da: xr.DataArray, dims: list[str]) -> np.ndarray:
    # fast path: one NaN-skipping reduction; ±inf (rare) then needs the masked pass
    m = np.asarray(da.max(dim=dims, skipna=True).transpose("band").values, dtype=np.float64)
    if np.isinf(m).any():
        m = np.asarray(da.where(np.isfinite(da)).max(dim=dims, skipna=True).transpose("band").values, dtype=np.float64)
    return m


def compute_scale(
    da: xr.DataArray, *, method: Method = "global_max_by_resolution", percentile: float = 99.0,
    max_graph_tasks: int = MAX_GRAPH_TASKS,
) -> xr.DataArray:
    """Per-band divisor, float64 DataArray with dims ("band",) (computes Dask input; NaN ignored).

    Parameters
    ----------
    da : xarray.DataArray
        Reflectance with a ``band`` dim, e.g. (time, band, y, x), NumPy or Dask; non-finite values are ignored.
    method : {"global_max_by_resolution", "global_max", "per_band_max", "per_band_percentile"}
        "global_max_by_resolution" (the default: max over all pixels, dates and bands of each resolution group,
        10 m and 20 m separately (B01/B09: 60 m); needs Sentinel-2 band names), "global_max" (one max),
        "per_band_max", "per_band_percentile" (``percentile`` of each band, error < 5e-5).
    percentile : float, default 99.0
        "per_band_percentile" only: the percentile, in [0, 100].
    max_graph_tasks : int, default ``MAX_GRAPH_TASKS``
        A Dask cube with a larger graph is reduced in strips of whole chunks, one graph each (same result).

    Returns
    -------
    xarray.DataArray
        ``"scale"`` float64 (band,), NaN where the band (or its group) has no finite value; attributes
        ``normalize_method`` and, for "per_band_percentile", ``percentile``.

    Raises
    ------
    InputError
        ``da`` is not a DataArray with a ``band`` dim, ``method`` is unknown, ``percentile`` is outside [0, 100],
        or "global_max_by_resolution" meets a band name that is not a Sentinel-2 band.
    """
    bands = _check_da(da, "compute_scale")
    _check_method(method)
    if method == "per_band_percentile":
        p = _check_percentile(percentile)
        values = band_percentile(da, p, max_graph_tasks=max_graph_tasks)
        out = _scale_array(values, da["band"].values, method)
        out.attrs["percentile"] = float(percentile)
        return out
    _check_band_names(bands, method)
    bmax = _band_max(da, max_graph_tasks=max_graph_tasks)
    return scale_from_max(xr.DataArray(bmax, dims=("band",), coords={"band": da["band"].values}), method=method)


def scale_from_max(band_max: xr.DataArray, *, method: Method = "global_max_by_resolution") -> xr.DataArray:
    """The divisors of a max-based ``method`` from per-band maxima (what ``compute_scale`` returns).

    Parameters
    ----------
    band_max : xarray.DataArray
        float, dims ("band",), NaN for a band without data (for example ``s2pipe.cloudmask.clear_band_max`` of the
        raw cube: the statistics without the float32 cube).
    method : {"global_max_by_resolution", "global_max", "per_band_max"}, default "global_max_by_resolution"
        How the maxima become divisors, as in ``compute_scale``.

    Returns
    -------
    xarray.DataArray
        ``"scale"`` float64 (band,) with the attribute ``normalize_method``; NaN where the band (or its whole
        group) has no maximum.

    Raises
    ------
    InputError
        ``method`` is unknown or "per_band_percentile", ``band_max`` is not a DataArray with dims ("band",), or
        "global_max_by_resolution" meets a band name that is not a Sentinel-2 band.
    """
    _check_method(method)
    if method == "per_band_percentile":
        raise InputError("scale_from_max cannot give method='per_band_percentile' (it needs every value); "
                         "call compute_scale on the reflectance instead")
    if not isinstance(band_max, xr.DataArray) or band_max.dims != ("band",):
        raise InputError(f"band_max must be a DataArray with dims ('band',), got {type(band_max).__name__} "
                         f"{getattr(band_max, 'dims', '')}; pass e.g. clear_band_max(cube)")
    bands = [str(b) for b in band_max["band"].values]
    _check_band_names(bands, method)
    bmax = np.asarray(band_max.values, dtype=np.float64)
    if method == "per_band_max":
        values = bmax
    elif method == "global_max":
        values = np.full(len(bands), np.nan if np.all(np.isnan(bmax)) else np.nanmax(bmax))
    else:
        groups = [resolution_group(b.upper()) for b in bands]
        values = np.empty(len(bands))
        for g in set(groups):
            sel = np.array([gg == g for gg in groups])
            gm = bmax[sel]
            values[sel] = np.nan if np.all(np.isnan(gm)) else np.nanmax(gm)
    return _scale_array(values, band_max["band"].values, method)


def cube_scale(
    cube: xr.DataArray,
    reflectance: xr.DataArray,
    *,
    method: Method = "global_max_by_resolution",
    percentile: float = 99.0,
    clear_classes=None,
    band_max: xr.DataArray | None = None,
) -> xr.DataArray:
    """The divisors of a regional cube, from one reduction over its clear observations.

    The max-based methods reduce the raw DN of ``cube`` (``cloudmask.clear_band_max``: no float32 cube is built
    for the statistics), or take the per-pixel maxima ``band_max`` already reduced by a staging pass;
    ``per_band_percentile`` reduces ``reflectance``. Cressman values are convex combinations of clear
    observations, so the maximum over the observations is the maximum of the gap-filled cube whenever the output
    keeps the acquisition dates, and an upper bound otherwise.

    Parameters
    ----------
    cube
        Raw cube ``"dn"`` (time, band, y, x) uint16 with its SCL band.
    reflectance
        The cloud-masked reflectance of ``cube`` (time, band, y, x) float32, NaN = missing.
    method, percentile
        As in ``compute_scale``.
    clear_classes
        SCL codes counted as clear (default: ``cloudmask.DEFAULT_CLEAR_CLASSES``).
    band_max
        Maxima (band, ...) of the clear reflectance, e.g. ``store.staging.band_max``; skips the reduction.

    Returns
    -------
    xr.DataArray
        (band,) float64 divisors, as ``compute_scale`` returns them.
    """
    from s2pipe.cloudmask import DEFAULT_CLEAR_CLASSES, clear_band_max

    method = _check_method(method)
    if method == "per_band_percentile":
        return compute_scale(reflectance, method=method, percentile=percentile)
    if band_max is None:
        band_max = clear_band_max(cube, clear_classes=DEFAULT_CLEAR_CLASSES if clear_classes is None else clear_classes)
    return scale_from_max(band_max, method=method)


def _check_band_names(bands: list[str], method: str) -> None:
    if method == "global_max_by_resolution":
        unknown = [b for b in bands if b.upper() not in BANDS]
        if unknown:
            raise InputError(
                f"method='global_max_by_resolution' needs Sentinel-2 band names, got {unknown}; "
                "rename the bands or pass method='global_max' / 'per_band_max'"
            )


def _scale_array(values, bands, method: str) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, dtype=np.float64), dims=("band",), coords={"band": bands}, name="scale",
                        attrs={"normalize_method": method})


def _scale_vector(scale, bands: list[str]) -> np.ndarray:
    if isinstance(scale, xr.DataArray):
        if scale.ndim == 0:
            return np.full(len(bands), float(scale))
        if scale.dims != ("band",):
            raise InputError(f"scale has dims {scale.dims}; pass scale= a DataArray with dims ('band',)")
        have = {str(b): float(v) for b, v in zip(scale["band"].values, scale.values)}
    elif isinstance(scale, Mapping):
        have = {str(b): float(v) for b, v in scale.items()}
    elif isinstance(scale, numbers.Real) and not isinstance(scale, bool):
        return np.full(len(bands), float(scale))
    else:
        vals = np.asarray(scale, dtype=np.float64).ravel()
        if vals.size != len(bands):
            raise InputError(f"scale has {vals.size} values but the cube has {len(bands)} bands {bands}; pass one per band")
        return vals
    missing = [b for b in bands if b not in have]
    if missing:
        raise InputError(f"scale has no value for bands {missing} (it has {list(have)}); pass scale= covering every band")
    return np.array([have[b] for b in bands], dtype=np.float64)


def normalize(
    da: xr.DataArray,
    *,
    method: Method = "global_max_by_resolution",
    percentile: float = 99.0,
    scale=None,
) -> xr.DataArray:
    """Divide each band by its scale. Lazy with Dask once the scale is known.

    Parameters
    ----------
    da : xarray.DataArray
        Reflectance with a ``band`` dim, e.g. (time, band, y, x); not already normalized.
    method : {"global_max_by_resolution", "global_max", "per_band_max", "per_band_percentile"}
        Method of ``compute_scale`` when ``scale`` is None (default "global_max_by_resolution"); only validated
        otherwise.
    percentile : float, default 99.0
        Percentile of ``compute_scale`` (method "per_band_percentile") when ``scale`` is None.
    scale : xarray.DataArray, mapping, sequence or float, optional
        The divisors: a DataArray (band,), a {band: value} mapping, a sequence in band order, or one number;
        each positive and finite. None: ``compute_scale(da, method=method, percentile=percentile)``.

    Returns
    -------
    xarray.DataArray
        ``da`` divided by the scale, with the dims, name and attrs of ``da``, dtype
        ``np.result_type(da.dtype, float32)``. attrs added: ``normalize_method`` (``method``; for a given ``scale``
        its ``normalize_method`` attribute, else "given"), ``normalize_scale`` (floats in band order),
        ``normalize_bands``.

    Raises
    ------
    InputError
        ``da`` is not a DataArray with a ``band`` dim or is already normalized (attrs ``normalize_scale``);
        ``method`` or ``percentile`` is invalid; ``scale`` misses a band, has the wrong length or dims, or holds a
        value that is not positive and finite.
    """
    bands = _check_da(da, "normalize")
    if "normalize_scale" in da.attrs:
        raise InputError(f"DataArray {da.name!r} is already normalized (attrs normalize_scale); call invert(da) first")
    if scale is None:
        scale = compute_scale(da, method=method, percentile=percentile)
        label = method
    else:
        _check_method(method)
        label = scale.attrs.get("normalize_method", "given") if isinstance(scale, xr.DataArray) else "given"
    values = _scale_vector(scale, bands)
    bad = [(b, v) for b, v in zip(bands, values) if not (np.isfinite(v) and v > 0)]
    if bad:
        raise InputError(
            f"normalisation scale must be positive and finite, got {bad} for DataArray {da.name!r} "
            "(a band without valid values?); pass scale= explicitly"
        )
    dtype = np.result_type(da.dtype, np.float32)
    s = xr.DataArray(values.astype(dtype), dims=("band",), coords={"band": da["band"].values})
    out = (da.astype(dtype, copy=False) / s).transpose(*da.dims)
    out.name = da.name
    out.attrs = {
        **da.attrs,
        "normalize_method": label,
        "normalize_scale": [float(v) for v in values],
        "normalize_bands": list(bands),
    }
    return out


def invert(da: xr.DataArray) -> xr.DataArray:
    """Undo ``normalize``: multiply each band by the scale recorded in the attrs (which are removed).

    Parameters
    ----------
    da : xarray.DataArray
        A ``normalize`` output (or a band selection of it) with the attrs ``normalize_scale`` and
        ``normalize_bands``.

    Returns
    -------
    xarray.DataArray
        ``da`` times the recorded scale of each band (matched by band name), with the dims and name of ``da``;
        a float dtype is kept, other dtypes give float64. ``normalize_method``, ``normalize_scale`` and
        ``normalize_bands`` are removed from the attrs, the others kept.

    Raises
    ------
    InputError
        ``da`` is not a DataArray with a ``band`` dim, lacks the normalisation attrs, or has bands that
        ``normalize_bands`` does not list.
    """
    bands = _check_da(da, "invert")
    missing = [a for a in ("normalize_scale", "normalize_bands") if a not in da.attrs]
    if missing:
        raise InputError(
            f"DataArray {da.name!r} has no normalisation attrs {missing}; it was not produced by normalize(), "
            "or its attrs were lost (keep_attrs=True)"
        )
    rec = dict(zip([str(b) for b in np.atleast_1d(da.attrs["normalize_bands"])],
                   np.atleast_1d(np.asarray(da.attrs["normalize_scale"], dtype=np.float64))))
    absent = [b for b in bands if b not in rec]
    if absent:
        raise InputError(
            f"DataArray {da.name!r} has bands {absent} that normalize_bands {list(rec)} does not list; "
            "select the normalized bands"
        )
    dtype = da.dtype if np.issubdtype(da.dtype, np.floating) else np.float64
    s = xr.DataArray(np.array([rec[b] for b in bands], dtype=dtype), dims=("band",), coords={"band": da["band"].values})
    out = (da * s).transpose(*da.dims)
    out.name = da.name
    out.attrs = {k: v for k, v in da.attrs.items() if k not in ATTRS}
    return out

"""Cressman temporal gap filling: a weighted mean of the valid observations near each output date.

The weights depend only on the dates, so the whole stage is one small matrix product per pixel block:
``num = W @ where(valid, x, 0)``, ``den = W @ valid``, ``out = num / den`` with ``W`` of shape
(T_out, T_in). Output dates that coincide with a valid observation keep that observation.
"""
from __future__ import annotations

import datetime as _dt
import numbers
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from s2pipe.errors import InputError

__all__ = ["cressman", "cressman_weights", "cressman_array"]

Kernel = Literal["gaussian", "cressman"]
KERNELS: tuple[str, ...] = ("gaussian", "cressman")

_NS_PER_DAY = 86_400 * 10**9
_BLOCK_ELEMENTS = 146 * 8192
"""Work-buffer size (dates × pixels) of the inner pixel blocks: 8192 pixels for 146 dates (≈ 4.8 MB in
float32), measured fastest here; fewer pixels per block for longer series."""


# --------------------------------------------------------------------------------------------- checks
def _radius_days(radius) -> float:
    """Radius in days from "10D", a pd.Timedelta / timedelta / np.timedelta64, or a number of days."""
    try:
        if isinstance(radius, bool):
            raise TypeError
        if isinstance(radius, (str, pd.Timedelta, _dt.timedelta, np.timedelta64)):  # before Real: td64 is one
            days = pd.Timedelta(radius) / pd.Timedelta(days=1)
        elif isinstance(radius, numbers.Real):
            days = float(radius)
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise InputError(
            f"cressman radius {radius!r} is not a duration; pass radius as a string like '10D', "
            "a pd.Timedelta, or a number of days"
        ) from None
    if not np.isfinite(days) or days <= 0:
        raise InputError(f"cressman radius {radius!r} must be a positive, finite duration; pass e.g. radius='10D'")
    return days


def _check_kernel(kernel) -> str:
    if kernel not in KERNELS:
        raise InputError(f"unknown Cressman kernel {kernel!r}; pass kernel= one of {', '.join(map(repr, KERNELS))}")
    return kernel


def _as_datetimes(values, *, what: str, argument: str) -> np.ndarray:
    """datetime64[ns] (tz-naive UTC) array that is strictly increasing, without NaT."""
    try:
        idx = pd.DatetimeIndex(np.atleast_1d(np.asarray(values)) if not isinstance(values, pd.Index) else values)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} {values!r} are not dates ({e}); fix {argument}") from None
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    if len(idx) == 0:
        raise InputError(f"{what} are empty; fix {argument}")
    if idx.hasnans:
        raise InputError(f"{what} contain NaT: {list(idx[idx.isna()])[:3]}; fix {argument}")
    arr = idx.values.astype("datetime64[ns]")
    steps = np.diff(arr.astype(np.int64))
    if np.any(steps <= 0):
        k = int(np.argmax(steps <= 0))
        kind = "duplicate" if steps[k] == 0 else "out of order"
        raise InputError(
            f"{what} must be strictly increasing, but {kind} at position {k + 1}: "
            f"{arr[k]} then {arr[k + 1]}; fix {argument} (e.g. sortby('time') / drop duplicates)"
        )
    return arr


def _output_times(times, t_in: np.ndarray) -> np.ndarray:
    if times is None:
        return t_in
    if isinstance(times, str):
        try:
            grid = pd.date_range(t_in[0], t_in[-1], freq=times)
        except (TypeError, ValueError) as e:
            raise InputError(f"times={times!r} is not a pandas frequency ({e}); pass e.g. times='5D'") from None
        return _as_datetimes(grid, what=f"output dates of times={times!r}", argument="times")
    if isinstance(times, xr.DataArray):
        times = times.values
    return _as_datetimes(times, what="output dates given in times", argument="times")


# --------------------------------------------------------------------------------------------- kernel
def cressman_weights(
    t_out, *, t_in, radius="10D", kernel: Kernel = "gaussian", dtype=np.float64
) -> np.ndarray:
    """The (T_out, T_in) weight matrix between two datetime64 axes (dimensionless, in [0, 1]).

    gaussian ``w = exp(-d²/(2R²))`` for ``d <= 3R``; cressman ``w = (R²-d²)/(R²+d²)`` for ``d < R``;
    zero beyond, with d and R in days. Values that would be subnormal in ``dtype`` are set to zero.
    """
    r = _radius_days(radius)
    _check_kernel(kernel)
    t_out = np.asarray(t_out, dtype="datetime64[ns]").astype(np.int64)
    t_in = np.asarray(t_in, dtype="datetime64[ns]").astype(np.int64)
    d = np.abs((t_out[:, None] - t_in[None, :]).astype(np.float64)) / _NS_PER_DAY
    if kernel == "gaussian":
        w = np.where(d <= 3.0 * r, np.exp(-(d * d) / (2.0 * r * r)), 0.0)
    else:
        w = np.where(d < r, (r * r - d * d) / (r * r + d * d), 0.0)
    w = w.astype(dtype)
    w[np.abs(w) < np.finfo(dtype).tiny] = 0  # subnormals slow the matmul ~6x
    return w


def _exact_matches(t_out: np.ndarray, t_in: np.ndarray) -> np.ndarray:
    """(M, 2) int array of (output index, input index) pairs whose timestamps are exactly equal."""
    pos = np.searchsorted(t_in, t_out)
    ok = pos < len(t_in)
    ok[ok] = t_in[pos[ok]] == t_out[ok]
    k = np.flatnonzero(ok)
    return np.stack([k, pos[k]], axis=1).astype(np.int64)


def _runs(matches: np.ndarray) -> list[tuple[int, int, int]]:
    """Group (k, i) match pairs into runs (k0, i0, length) where both indices advance by one."""
    runs: list[list[int]] = []
    for k, i in matches.tolist():
        if runs and runs[-1][0] + runs[-1][2] == k and runs[-1][1] + runs[-1][2] == i:
            runs[-1][2] += 1
        else:
            runs.append([k, i, 1])
    return [tuple(r) for r in runs]


def _float_dtype(dtype) -> np.dtype:
    """float32 for float32 (and small ints / float16), float64 for float64 (and wide ints)."""
    return np.result_type(np.dtype(dtype), np.float32)


def _fill_block(
    x: np.ndarray,
    w: np.ndarray,
    matches: np.ndarray,
    *,
    with_weight: bool,
) -> np.ndarray:
    """NumPy kernel on a time-first block ``x`` (T_in, ...) -> (T_out, ...) or, with_weight, (2·T_out, ...).

    Works in pixel sub-blocks with reused buffers, so memory beyond the output stays ~5 (T, P) buffers.
    """
    t_in = x.shape[0]
    t_out = w.shape[0]
    rest = x.shape[1:]
    n = int(np.prod(rest, dtype=np.int64))
    dtype = w.dtype
    x2 = x.reshape(t_in, n)
    out = np.empty((2 * t_out if with_weight else t_out, n), dtype=dtype)
    filled = out[:t_out]
    weight = out[t_out:] if with_weight else None

    p = min(max(256, _BLOCK_ELEMENTS // max(t_in, t_out, 1)), max(n, 1))
    bits = np.uint32 if dtype == np.float32 else np.uint64
    xz = np.empty((t_in, p), dtype=dtype)  # observations with NaN -> 0
    vm = np.empty((t_in, p), dtype=dtype)  # validity as 0/1
    nan = np.empty((t_in, p), dtype=bool)
    keep = np.empty((t_in, p), dtype=bits)  # validity as an all-ones / all-zeros bit mask
    num = np.empty((t_out, p), dtype=dtype)
    den = np.empty((t_out, p), dtype=dtype)
    runs = _runs(matches)
    is_float = np.issubdtype(x.dtype, np.floating)
    native = x.dtype == dtype
    with np.errstate(invalid="ignore", divide="ignore"):
        for j0 in range(0, n, p):
            j1 = min(j0 + p, n)
            m = j1 - j0
            if m != p:  # last, shorter block: views on the same buffers
                xz, vm, nan, keep = xz[:, :m], vm[:, :m], nan[:, :m], keep[:, :m]
                num, den = num[:, :m], den[:, :m]
            xs = x2[:, j0:j1]
            if is_float:
                np.isnan(xs, out=nan)
                np.logical_not(nan, out=vm, casting="unsafe")
                if not native:
                    np.copyto(xz, xs, casting="unsafe")
                    xs = xz
                # NaN -> 0 as a bitwise AND with the validity mask (masked copies are ~5x slower)
                np.logical_not(nan, out=keep, casting="unsafe")
                np.negative(keep, out=keep)
                np.bitwise_and(xs.view(bits), keep, out=xz.view(bits))
            else:
                np.copyto(xz, xs, casting="unsafe")
                nan[...] = False
                vm[...] = 1
            np.matmul(w, xz, out=num)
            np.matmul(w, vm, out=den)
            fill = filled[:, j0:j1]
            np.divide(num, den, out=fill)  # 0/0 -> NaN where no observation has weight
            for k0, i0, length in runs:
                # keep valid observations at exactly matching dates: x + out·0 where valid, 0 + out·1 elsewhere
                # (out is finite where x is valid, since den >= w(0) = 1 there)
                rows = fill[k0 : k0 + length]
                np.multiply(rows, nan[i0 : i0 + length], out=rows)
                np.add(rows, xz[i0 : i0 + length], out=rows)
            if weight is not None:
                weight[:, j0:j1] = den
    return out.reshape((out.shape[0],) + rest)


def cressman_array(
    x: np.ndarray,
    *,
    t_in,
    t_out=None,
    radius="10D",
    kernel: Kernel = "gaussian",
    return_weight: bool = False,
):
    """Cressman fill of a NumPy array with time on axis 0: (T_in, ...) -> (T_out, ...).

    ``t_in`` / ``t_out`` are datetime64 arrays (``t_out=None`` keeps ``t_in``). Returns the filled array
    (float32 for float32 input, float64 for float64) or ``(filled, weight)`` with ``return_weight``.
    """
    t_in = _as_datetimes(t_in, what="input dates", argument="t_in")
    t_out = t_in if t_out is None else _as_datetimes(t_out, what="output dates", argument="t_out")
    x = np.asarray(x)
    if x.shape[0] != len(t_in):
        raise InputError(f"array has {x.shape[0]} dates on axis 0 but t_in has {len(t_in)}; fix t_in")
    w = cressman_weights(t_out, t_in=t_in, radius=radius, kernel=kernel, dtype=_float_dtype(x.dtype))
    out = _fill_block(x, w, _exact_matches(t_out, t_in), with_weight=return_weight)
    if return_weight:
        return out[: len(t_out)], out[len(t_out):]
    return out


# --------------------------------------------------------------------------------------------- xarray
def cressman(
    da: xr.DataArray,
    *,
    radius="10D",
    kernel: Kernel = "gaussian",
    times=None,
    return_weight: bool = False,
):
    """Gap-fill ``da`` along ``time`` by Cressman interpolation (NaN = missing).

    Parameters
    ----------
    da : DataArray with a datetime64 ``time`` dim (any other dims, e.g. (time, band, y, x)), NumPy or Dask.
    radius : "10D", a pd.Timedelta, or a number of days (R).
    kernel : "gaussian" (``exp(-d²/2R²)``, d <= 3R) or "cressman" (``(R²-d²)/(R²+d²)``, d < R); d in days.
    times : None (the input dates), a pandas frequency such as "5D" (regular grid from the first to the
        last input date), or an array of dates.
    return_weight : also return the summed weight of the valid observations at each output value.

    Returns
    -------
    DataArray with the same dims/coords/attrs and ``time`` = the output dates (float32 for float32 input,
    float64 for float64), or ``(filled, weight)``. Valid observations at an output date are kept
    exactly; values with zero summed weight stay NaN. Non-index coords along ``time`` are kept only when
    ``times`` is None. With Dask the result is lazy; time is rechunked to one chunk, other dims keep theirs.
    """
    if not isinstance(da, xr.DataArray):
        raise InputError(f"cressman expects an xarray.DataArray, got {type(da).__name__}; pass da=cube")
    if "time" not in da.dims:
        raise InputError(f"DataArray {da.name!r} has dims {da.dims} but no 'time' dim; rename the date dim to 'time'")
    _check_kernel(kernel)
    _radius_days(radius)
    if "time" not in da.coords or not np.issubdtype(da["time"].dtype, np.datetime64):
        got = da["time"].dtype if "time" in da.coords else "no coordinate"
        raise InputError(
            f"DataArray {da.name!r} time coordinate must be datetime64 (got {got}); "
            "assign da.coords['time'] = pd.to_datetime(...)"
        )
    t_in = _as_datetimes(da["time"].values, what=f"time coordinate of {da.name!r}", argument="da (sort it by time)")
    t_out = _output_times(times, t_in)
    dtype = _float_dtype(da.dtype)
    w = cressman_weights(t_out, t_in=t_in, radius=radius, kernel=kernel, dtype=dtype)
    matches = _exact_matches(t_out, t_in)
    n_out = len(t_out)

    dims = da.dims
    tf = da.transpose("time", ...)
    data = tf.data
    if isinstance(data, np.ndarray) or not hasattr(data, "chunks"):
        res = _fill_block(np.asarray(data), w, matches, with_weight=return_weight)
    else:
        import dask.array as dsa

        data = data.rechunk({0: -1})
        res = dsa.map_blocks(
            _fill_block,
            data,
            w,
            matches,
            with_weight=return_weight,
            chunks=((2 * n_out if return_weight else n_out),) + data.chunks[1:],
            dtype=dtype,
            meta=np.empty((0,) * data.ndim, dtype=dtype),
        )

    keep_time_coords = times is None
    coords = {
        name: c
        for name, c in tf.coords.items()
        if name != "time" and ("time" not in c.dims or keep_time_coords)
    }
    coords["time"] = ("time", t_out, tf["time"].attrs)

    def wrap(arr, name, attrs):
        return xr.DataArray(arr, dims=tf.dims, coords=coords, name=name, attrs=attrs).transpose(*dims)

    filled = wrap(res[:n_out] if return_weight else res, da.name, dict(da.attrs))
    if not return_weight:
        return filled
    weight = wrap(
        res[n_out:],
        "cressman_weight" if da.name is None else f"{da.name}_weight",
        {
            "long_name": "summed Cressman weight of the valid observations",
            "units": "1",
            "cressman_kernel": kernel,
            "cressman_radius_days": _radius_days(radius),
        },
    )
    return filled, weight

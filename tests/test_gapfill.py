"""Cressman gap filling against an independent brute-force loop, both kernels, NumPy and Dask paths."""
from __future__ import annotations

import math

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import (
    brute_force,  # the loop written from the contract (also used by the reference chain)
)

from s2pipe.errors import InputError
from s2pipe.gapfill import cressman, cressman_array, cressman_weights

DAY = pd.Timedelta(days=1)


# ------------------------------------------------------------------------------------------ reference
def irregular_dates(n, seed=0, start="2020-01-03"):
    """Irregular acquisition dates (2..14 days apart), like a real cloudy series."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(2, 15, n - 1)
    return pd.DatetimeIndex(pd.Timestamp(start) + pd.to_timedelta(np.concatenate([[0], np.cumsum(steps)]), "D"))


def make_cube(nt=24, shape=(2, 3, 4), nan_frac=0.45, dtype=np.float32, seed=0):
    """(time, band, y, x) with ~nan_frac NaN, one all-NaN pixel, a long cloudy gap in another pixel."""
    rng = np.random.default_rng(seed)
    t = irregular_dates(nt, seed)
    x = (0.1 + 0.3 * rng.random((nt,) + shape)).astype(dtype)
    x[rng.random(x.shape) < nan_frac] = np.nan
    x[:, 0, 0, 0] = np.nan  # never observed
    x[3:-3, 1, 2, 3] = np.nan  # long gap: only the ends observed
    return xr.DataArray(
        x,
        dims=("time", "band", "y", "x"),
        coords={
            "time": t,
            "band": ["B02", "B03"][: shape[0]],
            "y": 100.0 - 10 * np.arange(shape[1]),
            "x": 10.0 * np.arange(shape[2]),
            "spatial_ref": 0,
            "sun_elevation": ("time", np.linspace(20, 60, nt)),
        },
        name="reflectance",
        attrs={"crs": "EPSG:32633", "transform": [10.0, 0.0, 0.0, 0.0, -10.0, 105.0]},
    )


def maybe_chunk(da, dask_):
    return da.chunk({"time": 7, "y": 2, "x": 3}) if dask_ else da


def flat(da):
    return da.transpose("time", ...).values.reshape(da.sizes["time"], -1).astype(np.float64)


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("dask_", [False, True])
@pytest.mark.parametrize("kernel", ["gaussian", "cressman"])
@pytest.mark.parametrize("times_mode", ["none", "5D", "array"])
def test_matches_brute_force(kernel, times_mode, dask_):
    da = make_cube()
    t_in = da.indexes["time"]
    times = {
        "none": None,
        "5D": "5D",
        # off-grid hours, a date before the first and after the last input, and some input dates
        "array": pd.DatetimeIndex(
            [t_in[0] - 20 * DAY, t_in[0], t_in[1] + pd.Timedelta(hours=7), t_in[5], t_in[5] + 3 * DAY,
             t_in[-1], t_in[-1] + 25 * DAY]
        ),
    }[times_mode]
    filled, weight = cressman(maybe_chunk(da, dask_), radius="8D", kernel=kernel, times=times, return_weight=True)
    if times_mode == "none":
        t_out = t_in
    elif times_mode == "5D":
        t_out = pd.date_range(t_in[0], t_in[-1], freq="5D")
    else:
        t_out = times
    np.testing.assert_array_equal(filled.indexes["time"], t_out)
    ref_f, ref_w = brute_force(flat(da), t_in, t_out, 8, kernel)
    assert filled.dtype == np.float32 and weight.dtype == np.float32
    assert filled.shape == weight.shape == (len(t_out),) + da.shape[1:]
    np.testing.assert_array_equal(np.isnan(flat(filled)), np.isnan(ref_f))
    np.testing.assert_allclose(flat(filled), ref_f, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(flat(weight), ref_w, rtol=2e-6, atol=1e-7)
    # the test is not vacuous: some values are filled, some kept, some left NaN
    obs = flat(da)
    assert np.isnan(ref_f).any() and np.isfinite(ref_f).sum() > obs.shape[1]


@pytest.mark.parametrize("dask_", [False, True])
@pytest.mark.parametrize("kernel", ["gaussian", "cressman"])
def test_float64_precision(kernel, dask_):
    da = make_cube(dtype=np.float64, seed=3)
    filled, weight = cressman(maybe_chunk(da, dask_), radius=10, kernel=kernel, times="3D", return_weight=True)
    assert filled.dtype == np.float64 and weight.dtype == np.float64
    t_out = pd.date_range(da.indexes["time"][0], da.indexes["time"][-1], freq="3D")
    ref_f, ref_w = brute_force(flat(da), da.indexes["time"], t_out, 10, kernel)
    np.testing.assert_allclose(flat(filled), ref_f, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(flat(weight), ref_w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dask_", [False, True])
def test_kept_observations_are_exact(dask_):
    da = make_cube(seed=5)
    filled = cressman(maybe_chunk(da, dask_)).values
    valid = ~np.isnan(da.values)
    assert valid.sum() > 100
    np.testing.assert_array_equal(filled[valid], da.values[valid])  # bitwise, not approximately
    # and in a "5D" grid, grid dates that coincide with an acquisition keep it too
    grid = cressman(maybe_chunk(da, dask_), times="1D")
    sub = grid.sel(time=da["time"]).values
    np.testing.assert_array_equal(sub[valid], da.values[valid])


@pytest.mark.parametrize("dask_", [False, True])
def test_all_nan_pixel_and_far_gaps_stay_nan(dask_):
    t = pd.DatetimeIndex(["2021-01-01", "2021-04-11"])  # 100 days apart
    x = np.array([[0.2, np.nan], [0.4, np.nan]], dtype=np.float32)  # pixel 1 never observed
    da = xr.DataArray(x, dims=("time", "x"), coords={"time": t})
    offsets = np.array([0, 9, 10, 29, 30, 30.5, 31, 50, 69.5, 70, 91, 100])
    times = t[0] + pd.to_timedelta(offsets, "D")
    g, gw = cressman(da.chunk({"time": 1, "x": 1}) if dask_ else da, radius="10D", times=times, return_weight=True)
    c, cw = cressman(da, radius="10D", kernel="cressman", times=times, return_weight=True)
    assert np.isnan(g.values[:, 1]).all() and (gw.values[:, 1] == 0).all()
    assert np.isnan(c.values[:, 1]).all() and (cw.values[:, 1] == 0).all()
    # gaussian: supported up to d <= 3R = 30 days from an observation
    g_supported = np.isfinite(g.values[:, 0])
    np.testing.assert_array_equal(g_supported, [1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1])
    # cressman: supported for d < R = 10 days
    c_supported = np.isfinite(c.values[:, 0])
    np.testing.assert_array_equal(c_supported, [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    # where only one observation has weight, the value is that observation
    np.testing.assert_allclose(g.values[[1, 3, 4], 0], 0.2)
    np.testing.assert_allclose(g.values[[9, 10], 0], 0.4)


def test_weight_values():
    t = pd.DatetimeIndex(["2021-01-01", "2021-01-05"])
    x = np.array([[1.0], [3.0]])
    da = xr.DataArray(x, dims=("time", "x"), coords={"time": t})
    out_t = pd.DatetimeIndex(["2021-01-01", "2021-01-03", "2021-01-08"])
    f, w = cressman(da, radius="10D", times=out_t, return_weight=True)
    g = lambda d: math.exp(-d * d / 200.0)  # noqa: E731
    # kept observation, but the weight still sums every valid observation
    assert f.values[0, 0] == 1.0 and w.values[0, 0] == pytest.approx(1 + g(4))
    assert f.values[1, 0] == pytest.approx((g(2) * 1 + g(2) * 3) / (2 * g(2)))
    assert w.values[1, 0] == pytest.approx(2 * g(2))
    assert f.values[2, 0] == pytest.approx((g(7) * 1 + g(3) * 3) / (g(7) + g(3)))
    assert w.values[2, 0] == pytest.approx(g(7) + g(3))
    fc, wc = cressman(da, radius=10, kernel="cressman", times=out_t, return_weight=True)
    c = lambda d: (100 - d * d) / (100 + d * d)  # noqa: E731
    assert wc.values[2, 0] == pytest.approx(c(7) + c(3))
    assert fc.values[2, 0] == pytest.approx((c(7) * 1 + c(3) * 3) / (c(7) + c(3)))


def test_radius_forms_are_equivalent():
    da = make_cube(seed=2)
    ref = cressman(da, radius="10D", times="4D").values
    for r in [pd.Timedelta(days=10), 10, 10.0, np.timedelta64(10, "D"), pd.Timedelta(hours=240).to_pytimedelta()]:
        np.testing.assert_array_equal(cressman(da, radius=r, times="4D").values, ref)
    assert not np.array_equal(cressman(da, radius="3D", times="4D").values, ref, equal_nan=True)


def test_dask_is_lazy_and_chunked():
    calls = []

    def source(block):
        if block.size:
            calls.append(block.shape)
        return block

    base = make_cube(nt=30, shape=(2, 8, 6))
    arr = dsa.from_array(base.values, chunks=(7, 1, 4, 3)).map_blocks(source, dtype=np.float32, meta=np.empty((0,) * 4, np.float32))
    da = base.copy(data=arr)
    f, w = cressman(da, times="5D", return_weight=True)
    assert calls == []  # nothing computed yet
    nt_out = len(pd.date_range(base.indexes["time"][0], base.indexes["time"][-1], freq="5D"))
    assert f.chunks == ((nt_out,), (1, 1), (4, 4), (3, 3))  # time whole, other chunks kept
    assert w.chunks == f.chunks
    ff, ww = dask.compute(f, w)
    assert len(calls) == 5 * 2 * 2 * 2  # each source block read once for both outputs
    ref_f, ref_w = cressman(base, times="5D", return_weight=True)
    np.testing.assert_allclose(ff.values, ref_f.values, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(ww.values, ref_w.values, rtol=2e-6, atol=1e-7)
    assert np.isnan(ff.values).sum() == np.isnan(ref_f.values).sum()


@pytest.mark.parametrize("dask_", [False, True])
def test_coords_attrs_and_dim_order(dask_):
    da = make_cube().transpose("y", "time", "band", "x")  # time not first
    out = cressman(maybe_chunk(da, dask_))
    assert out.dims == da.dims and out.name == da.name and out.attrs == da.attrs
    for c in ("band", "y", "x", "spatial_ref", "sun_elevation"):
        assert c in out.coords
    np.testing.assert_array_equal(out["sun_elevation"], da["sun_elevation"])
    np.testing.assert_array_equal(out["band"], da["band"])
    ref = cressman(da.transpose("time", ...)).transpose(*da.dims)
    np.testing.assert_allclose(out.values, ref.values, rtol=2e-6, atol=1e-7)
    regular = cressman(maybe_chunk(da, dask_), times="5D")
    assert "sun_elevation" not in regular.coords  # per-date coords cannot follow a new time axis
    assert regular.attrs == da.attrs and "spatial_ref" in regular.coords


def test_numpy_kernel_and_weights():
    da = make_cube(seed=4)
    t = da["time"].values
    out = cressman_array(da.values, t_in=t, radius=7)
    np.testing.assert_array_equal(out, cressman(da, radius=7).values)
    w = cressman_weights(t, t_in=t, radius="7D", dtype=np.float32)
    d = np.abs((t[:, None] - t[None, :]) / np.timedelta64(1, "D")).astype(float)
    np.testing.assert_allclose(w, np.where(d <= 21, np.exp(-(d**2) / 98), 0), rtol=1e-6)
    assert np.all((w == 0) | (np.abs(w) >= np.finfo(np.float32).tiny))  # no subnormals


def test_integer_input_is_promoted():
    da = make_cube().fillna(0)
    dn = (da * 10000).astype(np.uint16)
    out = cressman(dn, times="5D")
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"radius": -3}, "-3"),
        ({"radius": 0}, "radius"),
        ({"radius": "ten days"}, "ten days"),
        ({"radius": [10]}, r"\[10\]"),
        ({"radius": True}, "True"),
        ({"kernel": "linear"}, "linear"),
        ({"times": "every week"}, "every week"),
        ({"times": ["2020-02-01", "2020-01-01"]}, "out of order"),
        ({"times": []}, "empty"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        cressman(make_cube(), **kwargs)


def test_bad_time_axis():
    da = make_cube()
    with pytest.raises(InputError, match="no 'time' dim"):
        cressman(da.rename(time="date"))
    with pytest.raises(InputError, match="out of order"):
        cressman(da.isel(time=[0, 2, 1, 3]))
    with pytest.raises(InputError, match="duplicate"):
        cressman(da.isel(time=[0, 1, 1, 2]))
    with pytest.raises(InputError, match="datetime64"):
        cressman(da.assign_coords(time=np.arange(da.sizes["time"])))
    with pytest.raises(InputError, match="DataArray"):
        cressman(da.values)


@pytest.mark.parametrize("kernel", ["gaussian", "cressman"])
def test_several_inner_pixel_blocks(kernel, monkeypatch):
    """600 pixels in inner blocks of 256 (the last one shorter) give the brute-force result."""
    import s2pipe.gapfill as gapfill

    monkeypatch.setattr(gapfill, "_BLOCK_ELEMENTS", 1)  # -> 256 pixels per inner block
    da = make_cube(nt=16, shape=(2, 15, 20), seed=9)
    filled, weight = cressman(da, radius=9, kernel=kernel, times="4D", return_weight=True)
    t_out = pd.date_range(da.indexes["time"][0], da.indexes["time"][-1], freq="4D")
    ref_f, ref_w = brute_force(flat(da), da.indexes["time"], t_out, 9, kernel)
    np.testing.assert_allclose(flat(filled), ref_f, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(flat(weight), ref_w, rtol=2e-6, atol=1e-7)
    kept = cressman(da, radius=9, kernel=kernel).values
    valid = np.isfinite(da.values)
    np.testing.assert_array_equal(kept[valid], da.values[valid])

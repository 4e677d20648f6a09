"""Forecasting a whole cube chunk by chunk equals the in-memory forecast; gaps give NaN, not failures."""
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from s2pipe.errors import InputError
from s2pipe.forecast import fit_dynamics, forecast_cube


def _cube(ny=6, nx=7, n_t=40, n_b=4, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n_t)
    phase = rng.uniform(0, 2 * np.pi, size=(ny, nx))
    base = np.linspace(0.1, 0.4, n_b)[None, :, None, None]
    v = base + 0.05 * np.sin(2 * np.pi * t[:, None, None, None] / 20 + phase[None, None])
    return xr.DataArray(
        v.astype("float32"), dims=("time", "band", "y", "x"),
        coords={"time": pd.date_range("2020-01-01", periods=n_t, freq="5D"), "band": ["B02", "B03", "B04", "B08"][:n_b],
                "y": 100.0 - 10 * np.arange(ny), "x": 10.0 * np.arange(nx)},
    )


@pytest.fixture(scope="module")
def model():
    return fit_dynamics(_cube().isel(time=slice(0, 30)), scheme="rk4", hidden=16, epochs=3, seed=0)


@pytest.mark.parametrize("dask", [False, True])
def test_chunked_forecast_equals_in_memory(model, dask):
    cube = _cube()
    expected = model.forecast(cube, steps=12)
    history = cube.chunk({"y": 4, "x": 3}) if dask else cube
    got = forecast_cube(model, history, steps=12)
    assert (got.chunks is not None) == dask
    got = got.compute()
    np.testing.assert_allclose(got.values, expected.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.time.values, expected.time.values)
    np.testing.assert_array_equal(got.x.values, cube.x.values)


def test_pixels_with_gaps_get_nan(model):
    cube = _cube()
    cube[-1, 0, 2, 3] = np.nan
    cube[0, 0, 1, 1] = np.nan  # an old gap the model does not need: still forecast
    got = forecast_cube(model, cube.chunk({"y": 3}), steps=5).compute()
    assert np.isnan(got.values[:, :, 2, 3]).all()
    assert np.isfinite(np.delete(got.values.reshape(5, 4, -1), 2 * 7 + 3, axis=2)).all()


def test_wrong_dims(model):
    with pytest.raises(InputError, match="time, band, y, x"):
        forecast_cube(model, _cube().isel(y=0), steps=3)


def test_ensemble_mean_spread_save_load_and_coverage(tmp_path):
    from s2pipe.forecast import coverage, fit_ensemble, load_ensemble

    cube = _cube(ny=2, nx=3)
    train, truth = cube.isel(time=slice(0, 30)), cube.isel(time=slice(30, 40))
    ens = fit_ensemble(train, n=3, scheme="rk4", hidden=8, epochs=2, seed=5)
    fc = ens.forecast(train, steps=10)
    runs = np.stack([m.forecast(train, steps=10).values for m in ens.members])
    np.testing.assert_allclose(fc["mean"].values, runs.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fc["std"].values, runs.std(0, ddof=1), rtol=1e-4, atol=1e-7)
    assert float(fc["std"].mean()) > 0, "differently seeded members differ"
    again = load_ensemble(ens.save(tmp_path / "ens")).forecast(train, steps=10)
    np.testing.assert_allclose(again["mean"].values, fc["mean"].values, rtol=1e-6)
    c = coverage(fc, truth)
    wide = coverage(fc.assign(std=fc["std"] * 0 + 10.0), truth)
    assert 0.0 <= c <= 1.0 and wide == 1.0
    assert coverage(fc.assign(std=fc["std"] * 0), truth) < 0.01

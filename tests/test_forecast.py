"""Spectral-dynamics forecasting (s2pipe.forecast, s2pipe.ml.nets.dynamics, s2pipe.synthetic.dynamics)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from s2pipe.errors import InputError
from s2pipe.forecast import (
    _differences,
    annual_phase,
    fit_dynamics,
    forecast_cube,
    load_dynamics,
    rmse_by_lead,
    spectral_angle_by_lead,
)
from s2pipe.ml.nets.dynamics import Delta, LSTMDynamics, ResNetDynamics, lstm_hidden_for
from s2pipe.synthetic.dynamics import (
    TRAIN_STEPS,
    albedo_spectra,
    hapke_reflectance,
    hapke_series,
)

torch.set_num_threads(1)


def _series(T=40, L=3, ny=None, nx=None, step="5D", seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    base = (0.2 + 0.1 * np.sin(2 * np.pi * t / 12.0)[:, None] * np.linspace(0.5, 1.5, L)[None, :]
            + 0.03 * np.cos(2 * np.pi * t / 12.0)[:, None] * np.linspace(1.0, -1.0, L)[None, :])
    times = pd.date_range("2019-01-01", periods=T, freq=step)
    bands = [f"B{i:02d}" for i in range(1, L + 1)]
    if ny is None:
        return xr.DataArray(base.astype(np.float32), dims=("time", "band"), coords={"time": times, "band": bands})
    v = base[:, :, None, None] * (1 + 0.1 * rng.standard_normal((1, 1, ny, nx)))
    return xr.DataArray(v.astype(np.float32), dims=("time", "band", "y", "x"),
                        coords={"time": times, "band": bands, "y": np.arange(ny) * -10.0, "x": np.arange(nx) * 10.0})


# ------------------------------------------------------------------------------------------ modules
def _known_delta(dim=2, hidden=3):
    d = Delta(dim, hidden)
    with torch.no_grad():
        d.fc1.weight.copy_(torch.tensor([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.2]]))
        d.fc1.bias.copy_(torch.tensor([0.1, 0.0, -0.1]))
        d.fc2.weight.copy_(torch.tensor([[0.3, -0.1, 0.2], [0.05, 0.4, -0.3]]))
        d.fc2.bias.copy_(torch.tensor([0.01, -0.02]))
    return d


def _delta_np(x):
    w1 = np.array([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.2]]); b1 = np.array([0.1, 0.0, -0.1])
    w2 = np.array([[0.3, -0.1, 0.2], [0.05, 0.4, -0.3]]); b2 = np.array([0.01, -0.02])
    return w2 @ np.tanh(w1 @ x + b1) + b2


def test_rk4_step_matches_hand_computed():
    m = ResNetDynamics(2, 3, scheme="rk4")
    m.delta = _known_delta()
    x = np.array([0.7, -0.4])
    k1 = _delta_np(x)
    k2 = _delta_np(x + k1 / 2)
    k3 = _delta_np(x + k2 / 2)
    k4 = _delta_np(x + k3)
    want = x + (k1 + 2 * k2 + 2 * k3 + k4) / 6
    got = m(torch.tensor(x[None], dtype=torch.float32)).detach().numpy()[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # and it differs from a single Euler step (the test would catch a scheme swap)
    assert np.abs(want - (x + k1)).max() > 1e-4


def test_euler_step_and_rollout():
    m = ResNetDynamics(2, 3, scheme="euler")
    m.delta = _known_delta()
    x = np.array([0.7, -0.4])
    got = m.rollout(torch.tensor(x[None], dtype=torch.float32), 2).detach().numpy()[:, 0]
    x1 = x + _delta_np(x)
    x2 = x1 + _delta_np(x1)
    np.testing.assert_allclose(got, np.stack([x1, x2]), rtol=1e-5, atol=1e-6)


def test_lstm_size_matches_resnet_and_rollout_shape():
    h = lstm_hidden_for(20, 150)
    lstm = LSTMDynamics(20, h)
    n_lstm = sum(p.numel() for p in lstm.parameters())
    n_res = sum(p.numel() for p in ResNetDynamics(20, 150).parameters())
    assert abs(n_lstm - n_res) / n_res < 0.1
    out = lstm.rollout(torch.zeros(5, 7, 20), 9)
    assert out.shape == (9, 7, 20)


def test_derivative_state():
    z = np.arange(12, dtype=float).reshape(6, 1, 2) ** 2  # (T, P, k)
    x = _differences(z, 1)
    assert x.shape == (5, 1, 4)
    np.testing.assert_array_equal(x[:, 0, :2], z[1:, 0])
    np.testing.assert_array_equal(x[:, 0, 2:], z[1:, 0] - z[:-1, 0])
    x2 = _differences(z, 2)
    assert x2.shape == (4, 1, 6)
    d1 = z[1:] - z[:-1]
    np.testing.assert_array_equal(x2[:, 0, 4:], (d1[1:] - d1[:-1])[:, 0])


# ------------------------------------------------------------------------------------------ API
@pytest.fixture(scope="module")
def cube_model():
    s = _series(T=30, L=3, ny=2, nx=3)
    return s, fit_dynamics(s, scheme="rk4", hidden=8, epochs=3)


def test_shapes_both_layouts_and_time_coordinate(cube_model):
    s, m = cube_model
    f = m.forecast(s, steps=7)
    assert f.dims == ("time", "band", "y", "x") and f.shape == (7, 3, 2, 3)
    assert list(f["band"].values) == list(s["band"].values)
    np.testing.assert_array_equal(f["y"].values, s["y"].values)
    expected = pd.date_range(s["time"].values[-1], periods=8, freq="5D")[1:]
    np.testing.assert_array_equal(f["time"].values, expected.values)
    s1 = _series(T=30, L=3)
    m1 = fit_dynamics(s1, scheme="euler", hidden=8, epochs=2)
    f1 = m1.forecast(s1.isel(time=slice(0, 20)), steps=4)
    assert f1.dims == ("time", "band") and f1.shape == (4, 3)
    assert f1["time"].values[0] == s1["time"].values[20]
    ml = fit_dynamics(s, scheme="lstm", hidden=8, epochs=2)
    assert ml.forecast(s, steps=5).shape == (5, 3, 2, 3)


def test_save_load_round_trip(tmp_path, cube_model, monkeypatch):
    s, m = cube_model
    path = m.save(tmp_path / "m.pt")
    calls = []
    orig = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return orig(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    m2 = load_dynamics(path)
    assert calls == [True]
    assert m2.config == m.config
    xr.testing.assert_identical(m.forecast(s, steps=6), m2.forecast(s, steps=6))


def test_units_restored():
    """Scaling the input by 1000 scales the forecast by 1000 (internal scaling is undone)."""
    s = _series(T=40, L=3)
    m1 = fit_dynamics(s, hidden=8, epochs=5, seed=1)
    m2 = fit_dynamics(s * 1000.0, hidden=8, epochs=5, seed=1)
    f1, f2 = m1.forecast(s, steps=5), m2.forecast(s * 1000.0, steps=5)
    np.testing.assert_allclose(f2.values, 1000.0 * f1.values, rtol=2e-3)
    assert 0.05 < float(f1.mean()) < 0.5  # same order as the input reflectance


def test_nan_input_is_rejected():
    s = _series(T=30, L=3, ny=2, nx=2)
    s[3, 1, 0, 0] = np.nan
    s[5, 0, 1, 1] = np.nan
    with pytest.raises(InputError, match=r"2 NaN.*gap-fill"):
        fit_dynamics(s, epochs=1)
    m = fit_dynamics(s.fillna(0.2), hidden=4, epochs=1)
    s[-1, 2, 0, 1] = np.nan
    with pytest.raises(InputError, match=r"history holds 1 NaN"):
        m.forecast(s, steps=2)


def test_irregular_time_is_rejected(cube_model):
    s, m = cube_model
    t = s["time"].values.copy()
    t[10:] += np.timedelta64(1, "D")
    with pytest.raises(InputError, match="not regularly spaced"):
        fit_dynamics(s.assign_coords(time=t), epochs=1)
    with pytest.raises(InputError, match="not regularly spaced"):
        m.forecast(s.assign_coords(time=t), steps=2)
    with pytest.raises(InputError, match="trained at"):
        m.forecast(s.isel(time=slice(None, None, 2)), steps=2)


def test_bad_arguments():
    s = _series(T=30, L=3)
    with pytest.raises(InputError, match="scheme"):
        fit_dynamics(s, scheme="rk5")
    with pytest.raises(InputError, match="dims"):
        fit_dynamics(s.rename(band="wl"))
    with pytest.raises(InputError, match="training"):
        fit_dynamics(s, training="teacher")


def test_metrics():
    a = np.ones((2, 3, 4))
    b = a.copy(); b[1] *= 2.0  # same direction: zero angle, RMSE 1
    np.testing.assert_allclose(rmse_by_lead(b, a), [0.0, 1.0])
    np.testing.assert_allclose(spectral_angle_by_lead(b, a), [0.0, 0.0], atol=1e-7)


# ------------------------------------------------------------------------------------------ synthetic
def test_hapke_series():
    da = hapke_series(materials=("vegetation", "water"), n_bands=16, steps=100)
    assert da.dims == ("time", "band", "y", "x") and da.shape == (100, 16, 1, 2)
    assert float(da.min()) > 0 and float(da.max()) < 1
    v = da.values[:, :, 0, 0]
    np.testing.assert_allclose(v[:52], v[48:100], rtol=1e-5)  # daily period = 48 steps of 30 min
    w = albedo_spectra(("vegetation",), n_bands=144)
    assert w.shape == (1, 144) and w[0, -20:].mean() > 3 * w[0, :40].mean()  # red edge
    r = hapke_reflectance(0.5, np.array([0.5, 1.0]))
    assert r[0] > r[1]  # lower sun (smaller mu0), brighter isotropic reflectance per this model


def test_synthetic_accuracy_rk4_beats_persistence():
    """Small Table 1: RK4 with the default rollout training forecasts well below persistence at t+24/36."""
    da = hapke_series(materials=("vegetation",), n_bands=24, steps=TRAIN_STEPS // 2 + 48).isel(y=0, x=0)
    n = TRAIN_STEPS // 2
    train, truth = da.isel(time=slice(0, n)), da.isel(time=slice(n, n + 48)).values
    m = fit_dynamics(train, scheme="rk4", hidden=32, epochs=300)
    f = m.forecast(train, steps=48).values
    rmse = rmse_by_lead(f, truth)
    pers = rmse_by_lead(np.repeat(train.values[-1:], 48, 0), truth)
    assert rmse[23] < 0.2 * pers[23], (rmse[23], pers[23])
    assert rmse[35] < 0.2 * pers[35], (rmse[35], pers[35])
    assert rmse.max() < 3e-3


def test_higher_order_state_and_lstm_round_trip(tmp_path):
    s = _series(T=40, L=3, ny=1, nx=2)
    m2 = fit_dynamics(s, scheme="rk4", hidden=8, epochs=2, order=2, training="one_step")
    assert m2.config.dim == 9 and not m2.config.reduced
    assert m2.forecast(s, steps=3).shape == (3, 3, 1, 2)
    ml = fit_dynamics(s, scheme="lstm", hidden=8, epochs=2)
    ml2 = load_dynamics(ml.save(tmp_path / "lstm.pt"))
    np.testing.assert_array_equal(ml.forecast(s, steps=4).values, ml2.forecast(s, steps=4).values)
    with pytest.raises(InputError, match="not a saved"):
        (tmp_path / "junk.pt").write_bytes(b"not a model")
        load_dynamics(tmp_path / "junk.pt")


# ------------------------------------------------------------------------------------------ seasonal clock
def test_forced_rk4_step_matches_hand_computed():
    """δ(x, φ) reads [x, sin φ, cos φ]; RK4's midpoint evaluations see φ + h/2, the last one φ + h."""
    w1 = np.array([[0.5, -0.2, 0.3, -0.1], [0.1, 0.3, -0.2, 0.2], [-0.4, 0.2, 0.1, 0.05]])
    b1 = np.array([0.1, 0.0, -0.1])
    w2 = np.array([[0.3, -0.1, 0.2], [0.05, 0.4, -0.3]])
    b2 = np.array([0.01, -0.02])
    dphi = 2 * np.pi * 5 / 365.2425
    m = ResNetDynamics(2, 3, scheme="rk4", forcing=1, step_phase=dphi)
    with torch.no_grad():
        m.delta.fc1.weight.copy_(torch.tensor(w1)); m.delta.fc1.bias.copy_(torch.tensor(b1))
        m.delta.fc2.weight.copy_(torch.tensor(w2)); m.delta.fc2.bias.copy_(torch.tensor(b2))

    def f(x, p):
        return w2 @ np.tanh(w1 @ np.r_[x, np.sin(p), np.cos(p)] + b1) + b2

    x, p = np.array([0.7, -0.4]), 1.3
    k1 = f(x, p); k2 = f(x + k1 / 2, p + dphi / 2); k3 = f(x + k2 / 2, p + dphi / 2); k4 = f(x + k3, p + dphi)
    want = x + (k1 + 2 * k2 + 2 * k3 + k4) / 6
    got = m(torch.tensor(x[None], dtype=torch.float32), torch.tensor([p])).detach().numpy()[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a rollout advances the phase: its second state is one step from the first at φ + h
    r = m.rollout(torch.tensor(x[None], dtype=torch.float32), 2, phase=torch.tensor(p)).detach().numpy()
    np.testing.assert_allclose(r[1, 0], m(torch.tensor(r[0]), torch.tensor([p + dphi])).detach().numpy()[0],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="phase"):
        m(torch.zeros(1, 2))


def test_annual_phase():
    from s2pipe.forecast import annual_phase

    t = pd.to_datetime(["2019-01-01T00:00", "2019-07-02T12:00", "2020-01-01T06:00"], format="ISO8601").values
    ph = annual_phase(t)
    assert np.all((ph >= 0) & (ph < 2 * np.pi))
    assert abs(((ph[1] - ph[0]) % (2 * np.pi)) - np.pi) < 0.02  # half a year apart
    assert min(abs(ph[2] - ph[0]), 2 * np.pi - abs(ph[2] - ph[0])) < 0.01  # one year apart


def test_season_auto_and_round_trip(tmp_path):
    year = _series(T=73, ny=2, nx=2)  # 73 x 5 days = 360 days: a whole cycle
    short = _series(T=30, ny=2, nx=2)
    m = fit_dynamics(year, epochs=2, hidden=8, seed=0)
    assert m.config.season == 1
    assert fit_dynamics(short, epochs=2, hidden=8).config.season == 0
    assert fit_dynamics(year, epochs=2, hidden=8, season="none").config.season == 0
    assert fit_dynamics(year, epochs=2, hidden=8, training="one_step").config.season == 0  # the paper's model
    with pytest.raises(InputError, match="season"):
        fit_dynamics(year, epochs=1, hidden=8, season="daily")
    with pytest.raises(InputError, match="lstm|LSTM"):
        fit_dynamics(year, epochs=1, hidden=8, scheme="lstm", season="annual")
    f = m.forecast(year, steps=10)
    m2 = load_dynamics(m.save(tmp_path / "m.pt"))
    assert m2.config.season == 1
    np.testing.assert_array_equal(m2.forecast(year, steps=10).values, f.values)
    # the clock matters: the same states one season later give another forecast
    later = year.assign_coords(time=year["time"].values + np.timedelta64(180, "D"))
    assert not np.allclose(m.forecast(later, steps=10).values, f.values)


def test_bfloat16_and_tf32_precision(cube_model):
    cube, model = cube_model
    ref = model.forecast(cube, steps=6)
    bf = model.forecast(cube, steps=6, precision="bfloat16")
    tf = model.forecast(cube, steps=6, precision="tf32")  # float32 off CUDA
    np.testing.assert_array_equal(tf.values, ref.values)
    assert bf.dtype == ref.dtype
    err = float(np.abs(bf.values - ref.values).max())
    assert 0 < err < 0.02 * float(np.abs(ref.values).max())
    with pytest.raises(InputError, match="precision"):
        model.forecast(cube, steps=2, precision="float16")


# ------------------------------------------------------------------------------------------ seasonal blend, intervals
def _seasonal_cube(years=4, ny=3, nx=4, L=3, seed=0):
    """An annual cycle (5-day grid) per pixel with a random amplitude, plus AR(1) noise: (time, band, y, x)."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2016-01-02", periods=73 * years, freq="5D")
    ph = annual_phase(times.values)
    amp = rng.uniform(0.05, 0.15, size=(1, 1, ny, nx))
    base = np.linspace(0.1, 0.4, L)[None, :, None, None]
    noise = np.zeros((len(times), L, ny, nx))
    for i in range(1, len(times)):
        noise[i] = 0.7 * noise[i - 1] + 0.01 * rng.standard_normal((L, ny, nx))
    v = base + amp * np.sin(ph)[:, None, None, None] + noise
    return xr.DataArray(v.astype(np.float32), dims=("time", "band", "y", "x"),
                        coords={"time": times, "band": [f"B{i}" for i in range(L)],
                                "y": -10.0 * np.arange(ny), "x": 10.0 * np.arange(nx)})


@pytest.fixture(scope="module")
def seasonal_model():
    cube = _seasonal_cube()
    train = cube.isel(time=slice(0, 219))  # three years: hindcasts from origins in the second and third
    return cube, train, fit_dynamics(train, hidden=8, epochs=2, seed=0)


def test_seasonal_reference_recovers_a_periodic_signal():
    from s2pipe.forecast import seasonal_reference

    times = pd.date_range("2017-01-01", periods=3 * 73, freq="5D").values
    ph = annual_phase(times)
    sig = (0.3 + 0.1 * np.sin(ph) + 0.02 * np.cos(2 * ph))[:, None, None] * np.ones((1, 2, 3))
    future = times[-1] + np.arange(1, 11) * np.timedelta64(5, "D")
    fph = annual_phase(future)
    want = (0.3 + 0.1 * np.sin(fph) + 0.02 * np.cos(2 * fph))[:, None, None]
    got = seasonal_reference(sig, times, future, steps_per_year=73)
    assert got.shape == (10, 2, 3)
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), atol=2e-3)  # 365 vs 365.24 d grid
    with pytest.raises(InputError, match="at least 73 history dates"):
        seasonal_reference(sig[:50], times[:50], future, steps_per_year=73)


def test_level_returns_mean_lower_upper(seasonal_model):
    cube, train, m = seasonal_model
    assert m.config.baseline == "seasonal" and m.config.steps_per_year == 73
    assert m.calibration.shape == (12, 73, 3) and (m.calibration > 0).all()
    np.testing.assert_allclose(m.blend, 0.5)
    plain = m.forecast(train, steps=80)
    ds = m.forecast(train, steps=80, level=0.9)
    assert isinstance(plain, xr.DataArray) and isinstance(ds, xr.Dataset)
    assert set(ds.data_vars) == {"mean", "lower", "upper"}
    for k in ("mean", "lower", "upper"):
        assert ds[k].dims == plain.dims and ds[k].shape == plain.shape
        np.testing.assert_array_equal(ds[k]["time"].values, plain["time"].values)
    np.testing.assert_array_equal(ds["mean"].values, plain.values)
    assert (ds["lower"] <= ds["mean"]).all() and (ds["mean"] <= ds["upper"]).all()
    assert ds.attrs["level"] == 0.9 and ds.attrs["calibrated_steps"] == 73
    narrow = m.forecast(train, steps=80, level=0.5)
    w9 = float((ds["upper"] - ds["lower"]).mean())
    w5 = float((narrow["upper"] - narrow["lower"]).mean())
    assert 0 < w5 < w9
    # the calibrated interval holds most of the (synthetic) third year
    truth = cube.isel(time=slice(219, 292))
    from s2pipe.forecast import coverage

    c = coverage(m.forecast(train, steps=73, level=0.9), truth)
    assert 0.7 < c <= 1.0


@pytest.mark.parametrize("bad", [1.5, 0, -0.1, 1.0, float("nan"), "0.9", True])
def test_level_validation_names_the_value(seasonal_model, bad):
    _, train, m = seasonal_model
    with pytest.raises(InputError, match=r"level="):
        m.forecast(train, steps=5, level=bad)
    with pytest.raises(InputError, match=r"level="):
        forecast_cube(m, train, steps=5, level=bad)


def test_level_needs_calibration_and_a_year_of_history(seasonal_model):
    cube, train, m = seasonal_model
    for years in (1, 2):  # intervals need three years of training (hindcast targets in two)
        short = fit_dynamics(cube.isel(time=slice(0, 73 * years)), hidden=8, epochs=1)
        assert short.config.baseline == "seasonal" and short.calibration.shape[1] == 0
        np.testing.assert_allclose(short.blend, 0.5)
        with pytest.raises(InputError, match="no interval calibration.*at least 3 years"):
            short.forecast(cube.isel(time=slice(0, 73 * years)), steps=5, level=0.9)
    with pytest.raises(InputError, match="at least 73 dates"):
        m.forecast(train.isel(time=slice(0, 40)), steps=5, level=0.9)
    # shorter histories still get the network's point forecast
    assert m.forecast(train.isel(time=slice(0, 40)), steps=5).shape == (5, 3, 3, 4)
    paper = fit_dynamics(train, hidden=8, epochs=1, baseline="none")
    assert paper.config.baseline == "none" and paper.calibration.shape[1] == 0
    assert fit_dynamics(train, hidden=8, epochs=1, training="one_step").config.baseline == "none"
    with pytest.raises(InputError, match="baseline="):
        fit_dynamics(train, hidden=8, epochs=1, baseline="weekly")
    with pytest.raises(InputError, match="at least one year"):
        fit_dynamics(train.isel(time=slice(0, 40)), hidden=8, epochs=1, baseline="seasonal")


def test_blend_is_applied_to_the_network_and_reference(seasonal_model):
    from s2pipe.forecast import seasonal_reference

    _, train, m = seasonal_model
    f = m.forecast(train, steps=12)
    v = train.values.astype(np.float64).reshape(219, 3, -1).transpose(0, 2, 1)  # (T, P, L)
    net = m._net_values(v[-2:], annual_phase(train["time"].values[-1:])[0], 12, batch_size=64, dev=m.device,
                        precision="float32", dtype=np.float64)  # (12, L, P)
    ref = seasonal_reference(v, train["time"].values, f["time"].values, steps_per_year=73).transpose(0, 2, 1)
    want = ref + m.blend[:12, :, None] * (net - ref)
    np.testing.assert_allclose(f.values.reshape(12, 3, -1), want, rtol=1e-5, atol=1e-6)


def test_save_load_keeps_blend_and_calibration(tmp_path, seasonal_model):
    _, train, m = seasonal_model
    m2 = load_dynamics(m.save(tmp_path / "m.pt"))
    assert m2.config == m.config
    np.testing.assert_array_equal(m2.blend, m.blend)
    np.testing.assert_array_equal(m2.calibration, m.calibration)
    xr.testing.assert_identical(m2.forecast(train, steps=20, level=0.8), m.forecast(train, steps=20, level=0.8))


@pytest.mark.parametrize("dask", [False, True])
def test_forecast_cube_level_dask_equals_numpy(seasonal_model, dask):
    _, train, m = seasonal_model
    want = m.forecast(train, steps=15, level=0.9)
    got = forecast_cube(m, train.chunk({"y": 2, "x": 3}) if dask else train, steps=15, level=0.9)
    assert isinstance(got, xr.Dataset) and (got["mean"].chunks is not None) == dask
    got = got.compute()
    for k in ("mean", "lower", "upper"):
        np.testing.assert_allclose(got[k].values, want[k].values, rtol=1e-5, atol=1e-6)
    assert got.attrs["level"] == 0.9

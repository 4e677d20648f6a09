"""Per-pixel spectral forecasting with residual networks (Estopinan, Tochon & Drumetz): fit, forecast, save.

```python
model = fit_dynamics(series, scheme="rk4")          # series: (time, band) or (time, band, y, x)
future = model.forecast(history, steps=120)         # (time=120, band[, y, x]), same units as history
model.save("m.pt"); model = load_dynamics("m.pt")   # tensors + JSON config, loaded with weights_only=True
```

**State.** ``X_t = [s_t, s'_t, s''_t, …]`` with ``s'_t = s_t − s_{t−1}`` (left difference, per sampling
interval) and ``order`` differences in all (the paper: ``order=1``). Optionally (``reduce``) the spectra are
first projected on their leading principal components (fitted on the training series): spectra of a scene
move together, so the dynamics live in far fewer dimensions than L, the network is smaller and its
forecasts drift less. Each block of the state (values, first differences, …) is then centred (values only)
and divided by one scalar, its RMS over the training series (``normalize="block"``), which keeps spectral
shapes and gives the small differences the same weight as the values.

**Integration.** ``rk4`` / ``euler``: one step of a ResNet whose δ is two fully connected layers (``hidden``
units, tanh) shared across steps (``s2pipe.ml.nets.dynamics``). ``lstm``: an LSTM of about the same number
of parameters. Forecasts feed the **whole predicted state** back (the predicted ``s'`` too, as in the
paper's Fig. 2 b), the consistent choice for a model trained to map states to states.

**Training.** ``training="one_step"`` is the paper's: predict ``X_{t+1}`` from the true ``X_t``, Adam, MSE,
constant learning rate, full state (``reduce="none"``), no internal scaling (``normalize="none"``).
``training="rollout"`` (the default) adds what makes long runs better: the loss is the MSE of a
``rollout``-step free run from every true starting state (horizon ramped up from 1 over the first 30 % of
the epochs), a cosine learning-rate decay, block normalisation and the reduced state.

In reduced mode the part of each spectrum outside the retained components (tiny by construction) is
held at its value at the last history date.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time as _time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr

from s2pipe.errors import InputError
from s2pipe.ml.nets.dynamics import SCHEMES, Scheme, build_dynamics
from s2pipe.ml.weights import read_payload
from s2pipe.runtime.placement import (
    current_placement,
    inference_tasks,
    on_device,
    torch_threads,
)

__all__ = ["DynamicsConfig", "DynamicsModel", "fit_dynamics", "load_dynamics", "annual_phase", "rmse_by_lead",
           "spectral_angle_by_lead", "resolve_device", "TRAINING_MODES", "seasonal_reference", "hindcast",
           "forecast_cube", "fit_ensemble", "coverage", "interval_coverage"]

Training = Literal["rollout", "one_step"]
TRAINING_MODES: tuple[str, ...] = ("rollout", "one_step")
Normalize = Literal["block", "none"]
Season = Literal["auto", "annual", "none"]
Baseline = Literal["auto", "seasonal", "none"]
Precision = Literal["float32", "tf32", "bfloat16"]
_FORMAT = "s2pipe.dynamics/2"
_FORMAT_V1 = "s2pipe.dynamics/1"  # before blend/calibration: still readable
_YEAR_NS = 365.2425 * 86400e9
_SEASON_MIN_SPAN_DAYS = 350
"""``season="auto"`` turns the annual clock on when the training series spans at least this many days."""


def annual_phase(times) -> np.ndarray:
    """Phase of the annual cycle (radians in [0, 2π)) of datetime64 ``times``: 2π · (t mod year) / year."""
    t = np.asarray(times, dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
    return 2 * np.pi * np.mod(t, _YEAR_NS) / _YEAR_NS


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class DynamicsConfig:
    """Everything needed to rebuild a fitted model (stored as JSON beside the tensors).

    Fields:
        scheme: "rk4", "euler" or "lstm".
        hidden: δ width (units) for the ResNets; the ResNet width the LSTM matches in parameter count.
        order: number of left differences in the state (1: ``[s, s']``).
        n_bands: L, spectral bands of the series.
        components: k, dimensions per state block (k = L: full state, no projection).
        reduced: whether spectra are projected on k principal components.
        normalize: "block" (per-block centring/scaling) or "none".
        training: "rollout" or "one_step".
        rollout: training horizon (steps) of the rollout loss (1 for one_step).
        epochs: passes over the training samples.
        lr: initial Adam learning rate.
        batch_size: training samples per optimizer step.
        seed: torch seed of initialisation and batch order.
        activation: nonlinearity of δ.
        step_ns: sampling interval of the training series (ns); histories must share it.
        bands: band coordinate of the training series (JSON-able values).
        warmup: history steps the LSTM reads before forecasting (0 for ResNets).
        season: harmonics of the annual clock (day of year) fed to δ; 0: autonomous dynamics (the paper).
        baseline: "seasonal" (the network's forecast is blended with each pixel's own seasonal reference
            computed from its history) or "none" (the network alone, the paper).
        steps_per_year: sampling steps in a year (round(365.2425 d / step)); 0 without a seasonal baseline.
        history: history dates the seasonal reference reads (0: only what the network needs).
    """

    scheme: str
    hidden: int
    order: int
    n_bands: int
    components: int
    reduced: bool
    normalize: str
    training: str
    rollout: int
    epochs: int
    lr: float
    batch_size: int
    seed: int
    activation: str
    step_ns: int
    bands: list
    warmup: int
    season: int = 0
    baseline: str = "none"
    steps_per_year: int = 0
    history: int = 0

    @property
    def dim(self) -> int:
        """State size D = (order + 1) · components."""
        return (self.order + 1) * self.components


# ------------------------------------------------------------------------------------------ helpers
def resolve_device(device=None) -> torch.device:
    """``None`` → CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device={device!r} is not a torch device ({e}); pass device='cpu', 'cuda' or None") from None


def _check_series(da, *, argument: str, min_steps: int, last: int | None = None):
    """Validate; return (values float64 (T, P, L), times datetime64[ns] (T,), spatial dims tuple, da).

    ``last``: only the last ``last`` dates are loaded and checked for NaN (the whole time axis is checked
    for regular spacing).
    """
    if not isinstance(da, xr.DataArray):
        raise InputError(f"{argument} must be an xarray.DataArray with dims ('time', 'band'[, 'y', 'x']), "
                         f"got {type(da).__name__}")
    dims = set(da.dims)
    if dims == {"time", "band"}:
        spatial: tuple[str, ...] = ()
    elif dims == {"time", "band", "y", "x"}:
        spatial = ("y", "x")
    else:
        raise InputError(f"{argument} has dims {da.dims}; it needs ('time', 'band') or ('time', 'band', 'y', 'x') "
                         "(transpose/rename, or stack other dims into y/x)")
    da = da.transpose("time", "band", *spatial)
    T = da.sizes["time"]
    if T < min_steps:
        raise InputError(f"{argument} has {T} dates but at least {min_steps} are needed "
                         f"(state with differences + one step); pass a longer {argument}")
    try:
        times = pd.DatetimeIndex(da["time"].values).values.astype("datetime64[ns]")
    except (TypeError, ValueError) as e:
        raise InputError(f"{argument}'s time coordinate is not dates ({e}); give it datetime64 values") from None
    steps = np.diff(times.astype(np.int64))
    if np.any(steps <= 0):
        raise InputError(f"{argument}'s time coordinate is not strictly increasing; sortby('time') first")
    if np.any(steps != steps[0]):
        k = int(np.argmax(steps != steps[0]))
        raise InputError(
            f"{argument} is not regularly spaced in time: step {pd.Timedelta(int(steps[0]))} but "
            f"{pd.Timedelta(int(steps[k]))} between {times[k]} and {times[k + 1]}; resample it to a regular grid "
            "first (e.g. s2pipe.gapfill.cressman(..., times='5D'))")
    v = np.asarray((da if last is None else da.isel(time=slice(-last, None))).values, dtype=np.float64)
    n_nan = int(np.count_nonzero(~np.isfinite(v)))
    if n_nan:
        raise InputError(
            f"{argument} holds {n_nan} NaN/inf values of {v.size}; gap-fill it first "
            "(s2pipe.gapfill.cressman) or select only fully valid pixels (e.g. .dropna / a pixel mask)")
    T, L = v.shape[:2]
    v = v.reshape(T, L, -1).transpose(0, 2, 1)  # (T, P, L)
    return v, times, spatial, da


def _differences(z: np.ndarray, order: int) -> np.ndarray:
    """(T, P, k) → (T - order, P, (order+1)·k): [z_t, Δz_t, Δ²z_t, …] with left differences."""
    blocks = [z]
    d = z
    for _ in range(order):
        d = d[1:] - d[:-1]
        blocks.append(d)
    n = z.shape[0] - order
    return np.concatenate([b[b.shape[0] - n:] for b in blocks], axis=-1)


def rmse_by_lead(pred, truth) -> np.ndarray:
    """RMSE (data units) per forecast step over bands and pixels: (time, band, …) arrays → (time,)."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return np.sqrt(np.mean((p - t).reshape(p.shape[0], -1) ** 2, axis=1))


def spectral_angle_by_lead(pred, truth) -> np.ndarray:
    """Spectral angle error in **radians** per forecast step, averaged over pixels: (time, band, …) → (time,)."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    p = p.reshape(p.shape[0], p.shape[1], -1)
    t = t.reshape(t.shape[0], t.shape[1], -1)
    cos = (p * t).sum(1) / np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1), 1e-300)
    return np.arccos(np.clip(cos, -1.0, 1.0)).mean(axis=1)


# ------------------------------------------------------------------------------------------ seasonal reference
_REF_HARMONICS = 4
"""Annual harmonics of the per-pixel seasonal fit (periods 1 year … 3 months)."""
_REF_YEAR_WEIGHT = 0.3
"""Weight of each older year in the harmonic fit (1 for the last year, 0.3 the year before, 0.09, …)."""
_REF_YEARS = 3
"""Years of history the seasonal reference reads."""
_REF_LAST_YEAR = 0.5
"""Share of last year's value (same date a year earlier) in the reference; the rest is the harmonic fit."""
_REF_SMOOTH = 5
"""Width (dates) of the triangular time window that smooths last year's values in the reference. Measured
on the 4 Romania series (``benchmarks/bench_forecast_real.py``, reference alone, splits 2016-2018 -> 2019,
2016-2017 -> 2018, 2018 -> 2019): 5 dates lowered the mean RMSE on all 12 (by 0.4-1.5 % of climatology)
and also at +100 d on the 2016-2018 split; 9 dates lowered the mean further but raised +100 d by 5-10 %."""
_DEFAULT_BLEND = 0.5
"""Weight of the network against the seasonal reference. Measured (4 Romania series, 2018 -> 2019, the
default network): 0.3 / 0.5 / 0.7 gave 0.886-0.913 / 0.877-0.911 / 0.893-0.926 x climatology in the mean
RMSE. Weights fitted by least squares on the training hindcasts came out near 1 (mean 0.96: the network is
in-sample there) and scored worse on the held-out year (0.902 vs 0.862 x climatology, 10 m forest,
2016-2018 -> 2019), so the default is this fixed mix."""


def _harmonics(times, n: int) -> np.ndarray:
    """(T, 1 + 2n) design matrix [1, cos φ, sin φ, …, cos nφ, sin nφ] of the annual phase φ of ``times``."""
    ph = annual_phase(times)
    cols = [np.ones_like(ph)]
    for h in range(1, n + 1):
        cols += [np.cos(h * ph), np.sin(h * ph)]
    return np.stack(cols, axis=1)


def _smooth_time(v: np.ndarray, width: int) -> np.ndarray:
    """``v`` (T, …) smoothed along axis 0 by a triangular window of ``width`` dates, truncated and renormalised
    at both ends (the last dates use only the past)."""
    if width <= 1:
        return v
    k = np.bartlett(width + 2)[1:-1]
    T, half = len(v), width // 2
    num = np.zeros_like(v)
    den = np.zeros(T)
    for j in range(-half, half + 1):
        lo, hi = max(0, -j), min(T, T - j)
        num[lo:hi] += k[j + half] * v[lo + j:hi + j]
        den[lo:hi] += k[j + half]
    return num / den.reshape((T,) + (1,) * (v.ndim - 1))


def seasonal_reference(values: np.ndarray, times, future, *, steps_per_year: int) -> np.ndarray:
    """Each pixel's own seasonal expectation at the ``future`` dates, from its history alone.

    ``0.5 · (value one year earlier, the last year repeated) + 0.5 · (annual harmonic fit)``; last year's
    values are smoothed by a 5-date triangular window (it averages out single-date noise), the fit has
    4 harmonics over the last ≤ 3 years, years weighted 1, 0.3, 0.09 from the most recent (the cycle may
    change: a clearing, a new crop). Both halves beat the one-year climatology in different places (the
    last year keeps sharp, pixel-specific transitions; the fit averages out a single year's noise), and
    their mean beat either alone on the Romania series (``benchmarks/bench_forecast_real.py``).

    Parameters
    ----------
    values
        (T, P, L) history, T ≥ ``steps_per_year``, no NaN.
    times
        (T,) datetime64 dates of ``values``.
    future
        (S,) datetime64 dates to predict, after ``times[-1]`` on the same grid.
    steps_per_year
        sampling steps in one year.

    Returns
    -------
        (S, P, L) float64 in the units of ``values``.
    """
    v = np.asarray(values, dtype=np.float64)
    T, P, L = v.shape
    n = int(steps_per_year)
    if T < n:
        raise InputError(f"the seasonal reference needs at least {n} history dates (one year), got {T}; "
                         "pass a longer history")
    v = v[-min(T, _REF_YEARS * n):]
    times = np.asarray(times, dtype="datetime64[ns]")[-len(v):]
    S = len(future)
    j = np.arange(S)
    # last year and the dates the window reaches before it: smoothing more of the history changes nothing
    last = _smooth_time(v[-min(len(v), n + _REF_SMOOTH // 2):], _REF_SMOOTH)[-n:]
    last_year = last[j % n]  # (S, P, L): the date one (or k) years earlier on the grid
    age = np.floor((times[-1] - times).astype(np.int64) / _YEAR_NS)
    w = np.sqrt(_REF_YEAR_WEIGHT ** age)[:, None]
    X = _harmonics(times, _REF_HARMONICS)
    coef, *_ = np.linalg.lstsq(X * w, v.reshape(len(v), -1) * w, rcond=None)
    fit = (_harmonics(future, _REF_HARMONICS) @ coef).reshape(S, P, L)
    return _REF_LAST_YEAR * last_year + (1 - _REF_LAST_YEAR) * fit


def _per_step(table: np.ndarray, steps: int) -> np.ndarray:
    """Rows 0..steps-1 of a per-horizon table (H, …), the last row repeated beyond H."""
    table = np.asarray(table)
    idx = np.minimum(np.arange(steps), table.shape[0] - 1)
    return table[idx]


def _check_level(level) -> None:
    if isinstance(level, bool) or not isinstance(level, (float, int, np.floating, np.integer)) \
            or not np.isfinite(level) or not 0 < level < 1:
        raise InputError(f"level={level!r} must be a probability strictly between 0 and 1 (the central "
                         "interval's coverage); pass e.g. level=0.9")


# ------------------------------------------------------------------------------------------ model
class DynamicsModel:
    """A fitted spectral-dynamics model: the torch module plus the state encoding (projection, scaling).

    Attributes
    ----------
    config
        the ``DynamicsConfig``.
    module
        the torch module (``ResNetDynamics`` or ``LSTMDynamics``) on ``device``.
    blend
        (H, L) weight of the network against the seasonal reference at horizon 1..H, per band
        (``config.baseline == "seasonal"``; the last row is used beyond H); ``fit_dynamics`` sets 0.5.
    calibration
        (12, H, L) float32 RMS of hindcast residuals (truth − forecast) per calendar month
        of the forecast origin, horizon and band (data units); H = 0 when uncalibrated.
    device
        torch device it runs on.
    losses
        training loss per epoch (scaled-state MSE), empty after ``load_dynamics``.
    train_seconds
        wall time of training (s), 0 after loading.
    """

    def __init__(self, config: DynamicsConfig, module: torch.nn.Module, *, mean: np.ndarray, basis: np.ndarray,
                 offset: np.ndarray, scale: np.ndarray, device: torch.device, losses=(), train_seconds=0.0,
                 blend=None, calibration=None):
        self.config = config
        self.module = module.to(device).eval()
        self.device = device
        self.mean = np.asarray(mean, dtype=np.float64)  # (L,) reflectance mean removed before projection
        self.basis = np.asarray(basis, dtype=np.float64)  # (L, k) orthonormal columns
        self.offset = np.asarray(offset, dtype=np.float64)  # (D,) subtracted from the state
        self.scale = np.asarray(scale, dtype=np.float64)  # (D,) state divided by it
        self.losses = list(losses)
        self.train_seconds = float(train_seconds)
        L = config.n_bands
        # (H, L) weight of the network against the seasonal reference per horizon and band (last row reused)
        self.blend = (np.full((1, L), _DEFAULT_BLEND) if blend is None
                      else np.asarray(blend, dtype=np.float64).reshape(-1, L))
        # (12, H, L) hindcast residual RMS per origin month, horizon and band; H = 0: none
        self.calibration = (np.zeros((_SEASON_BINS, 0, L), dtype=np.float32) if calibration is None
                            else np.asarray(calibration, dtype=np.float32).reshape(_SEASON_BINS, -1, L))

    # -------------------------------------------------------------- encoding
    def _project(self, s: np.ndarray) -> np.ndarray:
        return (s - self.mean) @ self.basis if self.config.reduced else s - self.mean

    def _unproject(self, z: np.ndarray) -> np.ndarray:
        return z @ self.basis.T + self.mean if self.config.reduced else z + self.mean

    def encode(self, s: np.ndarray) -> np.ndarray:
        """Spectra (T, P, L) in data units → scaled states (T - order, P, D)."""
        return (_differences(self._project(s), self.config.order) - self.offset) / self.scale

    def decode(self, x: np.ndarray) -> np.ndarray:
        """Scaled states (..., D) → spectra (..., L) in the reduced space's reconstruction."""
        k = self.config.components
        z = x[..., :k] * self.scale[:k] + self.offset[:k]
        return self._unproject(z)

    # -------------------------------------------------------------- forecast
    def _read_steps(self) -> int:
        """History dates a forecast reads: the network's state (and LSTM warm-up), and the seasonal window."""
        cfg = self.config
        need = cfg.order + (cfg.warmup if cfg.scheme == "lstm" else 1)
        return max(need, cfg.history) if cfg.baseline == "seasonal" else need

    def _net_values(self, v: np.ndarray, phase0, steps: int, *, batch_size: int, dev, precision: str,
                    dtype) -> np.ndarray:
        """The network's free run: recent spectra ``v`` (T, P, L) → (steps, L, P) in ``dtype``.

        ``phase0``: annual phase (radians) of the last date of ``v``, a scalar or (P,) per pixel."""
        cfg = self.config
        T, P, L = v.shape
        tdtype = torch.float64 if dtype == np.float64 else torch.float32
        out = np.empty((steps, L, P), dtype=dtype)
        k = cfg.components
        # decoding on the device: s = mean + (x[:k]·scale + offset) @ basisᵀ (+ held residual)
        lin = torch.as_tensor(self.basis.T * self.scale[:k, None], dtype=tdtype, device=dev)  # (k, L)
        const = torch.as_tensor(self.offset[:k] @ self.basis.T + self.mean, dtype=tdtype, device=dev)  # (L,)
        ph_all = None
        if cfg.season:
            ph_all = torch.as_tensor(np.broadcast_to(np.asarray(phase0, dtype=np.float64), (P,)).copy(),
                                     dtype=torch.float32)
        for p0 in range(0, P, batch_size):
            vb = v[:, p0:p0 + batch_size]
            x = torch.as_tensor(self.encode(vb), dtype=torch.float32, device=dev)
            phase = None if ph_all is None else ph_all[p0:p0 + batch_size].to(dev)
            with torch.no_grad(), _precision(dev, precision):
                y = (self.module.rollout(x, steps) if cfg.scheme == "lstm"
                     else self.module.rollout(x[-1], steps, phase=phase)).float()
                shift = const
                if cfg.reduced:  # hold the part outside the retained components at its last value
                    last = vb[-1]
                    shift = const + torch.as_tensor(last - self._unproject(self._project(last)), dtype=tdtype,
                                                    device=dev)
                s = torch.matmul(y[..., :k].to(tdtype), lin) + shift  # (steps, Pb, L)
                out[:, :, p0:p0 + batch_size] = s.transpose(1, 2).cpu().numpy()
        return out

    def _blend(self, net: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """``ref + w_h (net − ref)``: net, ref (steps, L, P) → (steps, L, P), ``w`` per horizon and band."""
        w = _per_step(self.blend, net.shape[0])  # (steps, L)
        return ref + w[:, :, None] * (net - ref)

    def _bounds(self, mean: np.ndarray, level: float, origin) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated ``level`` interval around ``mean`` (steps, L, P) for a forecast from the date
        ``origin``: ± z · (hindcast RMS of the origins near that calendar month, per horizon and band), z
        the standard normal quantile of (1 + level) / 2."""
        table = self.calibration[int(_month_bin(np.asarray([origin]))[0])]  # (H, L)
        half = NormalDist().inv_cdf((1 + level) / 2) * _per_step(table, mean.shape[0])  # (steps, L)
        return mean - half[:, :, None], mean + half[:, :, None]

    def forecast(self, history: xr.DataArray, *, steps: int = 120, level: float | None = None,
                 batch_size: int = 65536, device=None, precision: Precision = "float32"):
        """Forecast ``steps`` dates after the last date of ``history``.

        Parameters
        ----------
        history
            (time, band) or (time, band, y, x), same bands and time step as the training series,
            at least ``order + 1`` dates (the LSTM reads up to ``warmup`` of them); with the seasonal
            baseline (``config.baseline == "seasonal"``, the default when the training series spans a
            year) the last ``config.history`` dates (up to 3 years) are read and a history of at least
            one year (``config.steps_per_year`` dates) is needed for the blend (shorter: the network
            alone). The dates read must hold no NaN.
        steps
            number of future dates (each one sampling interval after the previous).
        level
            None (default) returns the point forecast; a probability in (0, 1), e.g. 0.9, returns
            an ``xr.Dataset`` with ``mean`` (the point forecast), ``lower`` and ``upper``: the central
            ``level`` interval ``mean ± z·σ``, σ the RMS of hindcast residuals inside the training series
            for forecasts from the same season, per horizon and band (see ``fit_dynamics``). Horizons
            beyond the calibrated ones (``attrs["calibrated_steps"]``) reuse the last calibrated one.
        batch_size
            pixels per batch on the device.
        device
            torch device; None keeps the model's.
        precision
            arithmetic of the network: "float32" (default), "tf32" (CUDA TensorFloat-32 matmuls;
            float32 elsewhere) or "bfloat16" (autocast on CPU or CUDA). The state is carried in float32
            between steps either way; benchmarks/bench_forecast_synthetic.py measures speed and error.

        Returns
        -------
            (time=steps, band[, y, x]) in the units of ``history``, band/y/x coords kept, the time coordinate
            continuing with the series' spacing; float32 unless ``history`` is float64. With ``level``: a
            Dataset of three such arrays (``mean``, ``lower``, ``upper``).
        """
        cfg = self.config
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise InputError(f"steps={steps!r} must be a positive integer; pass e.g. steps=120")
        if level is not None:
            _check_level(level)
            if self.calibration.shape[1] == 0:
                raise InputError(
                    f"level={level!r}: this model holds no interval calibration (it needs a seasonal baseline and "
                    f"a training series of at least {_CALIBRATION_YEARS} years, "
                    f"{_CALIBRATION_YEARS * cfg.steps_per_year if cfg.steps_per_year else 'three years of'} dates, "
                    f"for hindcasts); refit with fit_dynamics(series of {_CALIBRATION_YEARS} years or more) or pass "
                    "level=None")
        v, times, spatial, da = _check_series(history, argument="history", min_steps=cfg.order + 1,
                                              last=self._read_steps())
        if v.shape[2] != cfg.n_bands:
            raise InputError(f"history has {v.shape[2]} bands but the model was trained on {cfg.n_bands}; "
                             "select the training bands in history")
        if len(times) > 1:
            dt = int(times[1].astype(np.int64) - times[0].astype(np.int64))
            if dt != cfg.step_ns:
                raise InputError(f"history is spaced {pd.Timedelta(dt)} but the model was trained at "
                                 f"{pd.Timedelta(cfg.step_ns)}; resample history to that step")
        if precision not in ("float32", "tf32", "bfloat16"):
            raise InputError(f"precision={precision!r}; pass 'float32', 'tf32' or 'bfloat16'")
        seasonal = cfg.baseline == "seasonal" and v.shape[0] >= cfg.steps_per_year
        if level is not None and not seasonal:
            raise InputError(f"level={level!r} needs a history of at least {cfg.steps_per_year} dates (one year) "
                             f"for the calibrated seasonal blend, got {v.shape[0]}; pass a longer history")
        dev = self.device if device is None else resolve_device(device)
        if dev != self.device:
            self.module.to(dev)
            self.device = dev
        T, P, L = v.shape
        dtype = np.float64 if history.dtype == np.float64 else np.float32
        need = cfg.order + (cfg.warmup if cfg.scheme == "lstm" else 1)
        phase = annual_phase(times[-1:])[0] if cfg.season else None
        out = self._net_values(v[-need:], phase, steps, batch_size=batch_size, dev=dev, precision=precision,
                               dtype=dtype)
        new_t = times[-1] + np.arange(1, steps + 1, dtype=np.int64) * np.timedelta64(cfg.step_ns, "ns")
        bounds = None
        if seasonal:
            ref = seasonal_reference(v, times[-T:], new_t, steps_per_year=cfg.steps_per_year)  # (steps, P, L)
            mean = self._blend(out.astype(np.float64), ref.transpose(0, 2, 1))
            if level is not None:
                bounds = self._bounds(mean, float(level), times[-1])
            out = mean.astype(dtype)
        coords = {"time": new_t, "band": da["band"].values}
        shape = (steps, L)
        if spatial:
            ny, nx = da.sizes["y"], da.sizes["x"]
            shape = (steps, L, ny, nx)
            for name, c in da.coords.items():
                if name not in ("time", "band") and "time" not in c.dims:
                    coords[name] = c
        else:
            for name, c in da.coords.items():
                if name not in ("time", "band") and "time" not in c.dims and set(c.dims) <= {"band"}:
                    coords[name] = c
        attrs = {**history.attrs, "forecast_scheme": cfg.scheme, "forecast_from": str(pd.Timestamp(times[-1]))}

        def wrap(a, name):
            return xr.DataArray(np.asarray(a, dtype=dtype).reshape(shape), dims=("time", "band", *spatial),
                                coords=coords, name=name, attrs=dict(attrs))

        res = wrap(out, history.name)
        if level is None:
            return res
        lower, upper = bounds
        return xr.Dataset({"mean": res.rename("mean"), "lower": wrap(lower, "lower"), "upper": wrap(upper, "upper")},
                          attrs={**attrs, "level": float(level), "calibrated_steps": int(self.calibration.shape[1]),
                                 "interval": "mean ± z·RMS of hindcast residuals in the training series (same season, horizon, band)"})

    # -------------------------------------------------------------- persistence
    def save(self, path) -> Path:
        """Write one ``.pt`` file: a dict of tensors and the JSON config (no pickled code)."""
        path = Path(path)
        payload = {
            "format": _FORMAT,
            "config": json.dumps(dataclasses.asdict(self.config)),
            "state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "mean": torch.from_numpy(self.mean),
            "basis": torch.from_numpy(self.basis),
            "offset": torch.from_numpy(self.offset),
            "scale": torch.from_numpy(self.scale),
            "blend": torch.from_numpy(self.blend),
            "calibration": torch.from_numpy(self.calibration),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, path)
        return path

    def __repr__(self) -> str:
        c = self.config
        return (f"DynamicsModel(scheme={c.scheme!r}, hidden={c.hidden}, order={c.order}, bands={c.n_bands}, "
                f"components={c.components}, training={c.training!r}, epochs={c.epochs})")


def load_dynamics(path, *, device=None) -> DynamicsModel:
    """Load a model written by ``DynamicsModel.save`` (``torch.load(weights_only=True)``: no code runs).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.pt`` file. Files of the older format ``s2pipe.dynamics/1`` (before blend and calibration) load
        with the default blend and no calibration.
    device : str or torch.device, optional
        Device the model runs on; None: CUDA when available, else CPU.

    Returns
    -------
    DynamicsModel
        The model on ``device``; ``losses`` is empty and ``train_seconds`` 0.

    Raises
    ------
    InputError
        ``path`` does not exist or is not a saved s2pipe dynamics model, or ``device`` is not a torch device.
    """
    payload = read_payload(path, fmt=(_FORMAT, _FORMAT_V1), what="dynamics model", owner="model")
    cfg = DynamicsConfig(**json.loads(payload["config"]))
    module = build_dynamics(scheme=cfg.scheme, dim=cfg.dim, hidden=cfg.hidden, activation=cfg.activation,
                            forcing=cfg.season, step_phase=_step_phase(cfg.step_ns))
    module.load_state_dict(payload["state_dict"])
    return DynamicsModel(cfg, module, mean=payload["mean"].numpy(), basis=payload["basis"].numpy(),
                         offset=payload["offset"].numpy(), scale=payload["scale"].numpy(),
                         device=resolve_device(device),
                         blend=payload["blend"].numpy() if "blend" in payload else None,
                         calibration=payload["calibration"].numpy() if "calibration" in payload else None)


class _precision:
    """Context for the forecast arithmetic: TF32 matmuls on CUDA, or bfloat16 autocast (CPU or CUDA)."""

    def __init__(self, device: torch.device, precision: str):
        self.device, self.precision = device, precision
        self._autocast = None
        self._tf32 = None

    def __enter__(self):
        if self.precision == "tf32" and self.device.type == "cuda":
            self._tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
        elif self.precision == "bfloat16":
            self._autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
            self._autocast.__enter__()
        return self

    def __exit__(self, *exc):
        if self._autocast is not None:
            self._autocast.__exit__(*exc)
        if self._tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = self._tf32
        return False


def _step_phase(step_ns: int) -> float:
    """Advance of the annual phase per sampling step (radians)."""
    return 2 * np.pi * float(step_ns) / _YEAR_NS


# ------------------------------------------------------------------------------------------ fit
_DEFAULTS = {
    # training: (epochs budget in optimizer steps, lr, rollout horizon)
    "one_step": {"steps": 2500, "lr": 1e-3, "rollout": 1},
    "rollout": {"steps": 800, "lr": 3e-3, "rollout": 16},
}
_LSTM_WINDOW = 48
_SMALL_MACS = 64_000_000
"""Below this many multiply-adds per δ layer and batch (batch × D × hidden), CPU training uses one thread."""


def _pca(s: np.ndarray, reduce, *, tol: float = 1e-6):
    """Mean (L,), basis (L, k) from spectra (T, P, L)."""
    L = s.shape[-1]
    flat = s.reshape(-1, L)
    mean = flat.mean(0)
    c = flat - mean
    _, sv, vt = np.linalg.svd(c, full_matrices=False)
    var = sv ** 2
    if reduce == "auto":
        tot = var.sum()
        if tot <= 0:
            k = 1
        else:
            resid = 1.0 - np.cumsum(var) / tot
            k = int(np.argmax(resid <= tol)) + 1 if np.any(resid <= tol) else L
        k = min(max(k, 1), L)
    else:
        k = int(reduce)
    basis = vt[:k].T.copy()
    basis *= np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(k)])  # deterministic signs
    return mean, basis


def _block_scaling(raw: np.ndarray, *, k: int, order: int, normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """Offset and scale (D,) of the training states ``raw`` (n, P, D): with ``normalize="block"`` the mean of
    the first block (the state itself) and one RMS per block of ``k`` components (the state and each
    difference); else 0 and 1."""
    offset = np.zeros(raw.shape[-1])
    scale = np.ones(raw.shape[-1])
    if normalize == "block":
        offset[:k] = raw[..., :k].reshape(-1, k).mean(0)
        for j in range(order + 1):
            blk = raw[..., j * k:(j + 1) * k].reshape(-1, k) - offset[j * k:(j + 1) * k]
            rms = float(np.sqrt(np.mean(blk ** 2)))
            scale[j * k:(j + 1) * k] = rms if rms > 0 else 1.0
    return offset, scale


def _training_windows(*, scheme: str, training: str, n_states: int, horizon: int, P: int,
                      batch_size: int | None) -> tuple[int, np.ndarray, int, int]:
    """Training windows: (length in steps, start date indices, samples = starts × pixels, batch size)."""
    if scheme == "lstm":
        win = int(min(_LSTM_WINDOW, n_states - 1))
        length = win + (horizon - 1 if training == "rollout" else 0)
        length = min(length, n_states - 1)
    else:
        length = horizon
    stride = max(1, _LSTM_WINDOW // 2) if scheme == "lstm" else 1  # LSTM windows overlap by half
    starts_t = np.arange(0, n_states - length, stride)
    n_samples = len(starts_t) * P
    bs = int(min(n_samples, 1024) if batch_size is None else batch_size)
    if bs < 1:
        raise InputError(f"batch_size={batch_size!r} must be a positive integer")
    return length, starts_t, n_samples, bs


def _batch_loss(module, win_x: torch.Tensor, tt: torch.Tensor, *, scheme: str, training: str, h_ep: int, length: int,
                phases: torch.Tensor, harmonics: int) -> torch.Tensor:
    """Mean squared error of one batch of windows ``win_x`` (B, length + 1, D) starting at date indices ``tt``:
    the LSTM predicts the next states (one step, or a rollout of ``h_ep`` steps after a warm-up); the RK4 /
    Euler operator rolls out ``h_ep`` steps from the first state, forced by the annual phase when
    ``harmonics``."""
    if scheme == "lstm":
        seq = win_x.transpose(0, 1)  # (length+1, B, D)
        if training == "one_step" or h_ep <= 1:
            pred = module(seq[:-1])
            return torch.mean((pred - seq[1:]) ** 2)
        w = max(1, length - (h_ep - 1))
        y, hc = module(seq[:w], return_state=True)
        preds = [y]
        x = y[-1:]
        for _ in range(h_ep - 1):
            x, hc = module(x, hc, return_state=True)
            preds.append(x)
        pred = torch.cat(preds)
        return torch.mean((pred - seq[1:w + h_ep]) ** 2)
    x = win_x[:, 0]
    ph = phases[tt] if harmonics else None
    acc = 0.0
    for j in range(h_ep):
        x = module(x, ph)
        if ph is not None:
            ph = ph + module.step_phase
        acc = acc + torch.mean((x - win_x[:, j + 1]) ** 2)
    return acc / h_ep


def _optimise(module, X: torch.Tensor, phases: torch.Tensor, starts_t: np.ndarray, *, P: int, bs: int, epochs: int,
              steps_per_epoch: int, lr: float, training: str, scheme: str, horizon: int, length: int, harmonics: int,
              gen: torch.Generator, dev: torch.device, hidden: int, verbose: bool) -> tuple[list[float], float]:
    """Adam over ``epochs`` epochs of shuffled windows (cosine learning rate and a rollout horizon that ramps up
    over the first 30 % of the epochs in ``"rollout"`` training). Returns the loss per epoch and the seconds."""
    n_samples = len(starts_t) * P
    total_steps = epochs * steps_per_epoch
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=lr * 0.01)
             if training == "rollout" else None)
    ramp = max(1, int(0.3 * epochs))
    idx_t = torch.arange(length + 1, device=dev)
    losses = []
    # small matmuls: on the shared 2-core machine a second thread was 4-6x slower
    small = dev.type == "cpu" and bs * X.shape[-1] * int(hidden) < _SMALL_MACS
    with torch_threads(1 if small else None):
        module.train()
        t0 = _time.perf_counter()
        for ep in range(epochs):
            h_ep = horizon if training == "one_step" else min(horizon, 1 + (horizon * ep) // ramp)
            perm = torch.randperm(n_samples, generator=gen).to(dev)
            tot = 0.0
            for b0 in range(0, n_samples, bs):
                sel = perm[b0:b0 + bs]
                tt = torch.as_tensor(starts_t, device=dev)[sel // P]
                pp = sel % P
                win_x = X[tt[:, None] + idx_t[None, :], pp[:, None]]  # (B, length+1, D)
                loss = _batch_loss(module, win_x, tt, scheme=scheme, training=training, h_ep=h_ep, length=length,
                                   phases=phases, harmonics=harmonics)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                tot += float(loss.detach()) * len(sel)
            losses.append(tot / n_samples)
            if verbose and (ep % max(1, epochs // 10) == 0 or ep == epochs - 1):
                print(f"epoch {ep + 1}/{epochs} horizon {h_ep} loss {losses[-1]:.3e}", flush=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = _time.perf_counter() - t0
    return losses, seconds


def fit_dynamics(
    series: xr.DataArray,
    *,
    scheme: Scheme = "rk4",
    hidden: int = 150,
    epochs: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device=None,
    training: Training = "rollout",
    rollout: int | None = None,
    order: int = 1,
    reduce: int | Literal["auto", "none"] | None = None,
    normalize: Normalize | None = None,
    batch_size: int | None = None,
    activation: Literal["tanh", "gelu", "silu"] = "tanh",
    season: Season | None = None,
    baseline: Baseline | None = None,
    observed: xr.DataArray | None = None,
    verbose: bool = False,
) -> DynamicsModel:
    """Fit one dynamics model shared by all pixels of ``series``.

    Parameters
    ----------
    series
        (time, band) or (time, band, y, x) reflectance, regularly spaced, no NaN; every pixel is an
        independent training trajectory.
    scheme
        "rk4" (default, the paper's best), "euler" or "lstm".
    hidden
        δ width (units); 150 is the paper's best on real data.
    epochs
        passes over the training samples; None: about 2500 (one_step) or 800 (rollout) optimizer steps
        (the paper used 2500 full-batch
        epochs on the synthetic series), at least 1 and at most 20000 epochs.
    lr
        Adam learning rate; None: 1e-3 (one_step, constant, as the paper) or 3e-3 with cosine decay
        to 1 % (rollout).
    seed
        torch seed (weights and batch order): same seed, same model on the same device.
    device
        None → "cuda" when available, else "cpu".
    training
        "rollout" (default: multi-step free-run loss) or "one_step" (the paper's).
    rollout
        horizon (steps) of the rollout loss; None: 16, capped to half the series.
    order
        differences in the state (1: ``[s, s']``).
    reduce
        "auto" (principal components keeping all but 1e-6 of the variance), an int k,
        or "none" (full state); None: "auto" for rollout, "none" for one_step.
    normalize
        "block" or "none"; None: "block" for rollout, "none" for one_step.
    batch_size
        samples per step; None: all of them up to 1024.
    activation
        δ nonlinearity ("tanh" as the paper).
    season
        "annual" feeds δ the phase of the year (sin/cos of the day of year, advanced step by step):
        the dynamics become non-autonomous, so a winter state is not mistaken for an autumn one; "none" is
        the paper's autonomous model; None ("auto"): "annual" for ResNets with rollout training when the
        series spans at least 350 days (it needs a whole cycle to learn from), else "none".
    baseline
        "seasonal" blends the network's forecast with each pixel's own seasonal reference
        (``seasonal_reference``: last year's value and a harmonic fit of the last ≤ 3 years of the
        history), ``ref + 0.5 (net − ref)``; "none" is the network alone (the paper). None ("auto"):
        "seasonal" for rollout training when the series spans at least 350 days, else "none". When the
        series spans at least 3 years, rolling-origin hindcasts inside it (``hindcast``: every origin
        with a year of history before it, up to one year ahead, 128 training pixels) calibrate
        ``forecast(..., level=)``: the RMS of their residuals per calendar month of the origin (± 2),
        horizon (± 2 steps) and band, and a normal interval ± z · RMS (no data after the series' end).
        Empirical residual quantiles were tried first: the hindcast residuals are sharply peaked (the
        network is in-sample there) with heavy tails, and their 90 % quantile covered only 61-70 % of
        the held-out 2019 values at 50-100 d (Romania 10 m forest); the RMS-based interval held 85-95 %.
        Shorter series get no calibration (point forecasts only): with 2 years, every hindcast of a
        winter origin targets the same single year, and the intervals held only 57-60 % of the held-out
        2018 values at 0-100 d (10 m forest, 2016-2017 -> 2018).
    observed
        optional bool array like ``series`` (the band dim may be left out): True where a value is
        an observation (e.g. the short-radius Cressman estimate), False where it was gap-filled from
        far away. Hindcast targets that are not observed are left out of the interval
        calibration, so that intervals are calibrated against real observations, not against smooth
        interpolation (which would make winter intervals too narrow). None: every value counts.
    verbose
        print the loss every 10 % of the epochs.

    Returns
    -------
        The fitted ``DynamicsModel`` (``losses`` per epoch, ``train_seconds``, ``blend``, ``calibration``).
    """
    if scheme not in SCHEMES:
        raise InputError(f"unknown scheme {scheme!r}; pass scheme= one of {', '.join(map(repr, SCHEMES))}")
    if training not in TRAINING_MODES:
        raise InputError(f"unknown training {training!r}; pass training= one of {', '.join(map(repr, TRAINING_MODES))}")
    for name, val, lo in (("hidden", hidden, 1), ("order", order, 1)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
            raise InputError(f"{name}={val!r} must be an integer >= {lo}")
    if activation not in ("tanh", "gelu", "silu"):
        raise InputError(f"activation={activation!r}; pass 'tanh', 'gelu' or 'silu'")
    v, times, _, _ = _check_series(series, argument="series", min_steps=order + 2)
    T, P, L = v.shape
    season = "auto" if season is None else season
    if season not in ("auto", "annual", "none"):
        raise InputError(f"season={season!r}; pass 'annual', 'none' or 'auto' (None)")
    span_days = (times[-1] - times[0]).astype("timedelta64[s]").astype(np.int64) / 86400
    if season == "auto":
        season = ("annual" if scheme != "lstm" and training == "rollout" and span_days >= _SEASON_MIN_SPAN_DAYS
                  else "none")
    if season == "annual" and scheme == "lstm":
        raise InputError("season='annual' is implemented for scheme='rk4' or 'euler'; pass season='none' for the LSTM")
    harmonics = 1 if season == "annual" else 0
    baseline = "auto" if baseline is None else baseline
    if baseline not in ("auto", "seasonal", "none"):
        raise InputError(f"baseline={baseline!r}; pass 'seasonal', 'none' or 'auto' (None)")
    if baseline == "auto":
        baseline = "seasonal" if training == "rollout" and span_days >= _SEASON_MIN_SPAN_DAYS else "none"
    step_ns = int(np.diff(times.astype(np.int64))[0])
    steps_per_year = int(round(_YEAR_NS / step_ns)) if baseline == "seasonal" else 0
    if baseline == "seasonal" and (T < steps_per_year or steps_per_year < 2 * _REF_HARMONICS + 1):
        raise InputError(f"baseline='seasonal' needs a series of at least one year ({steps_per_year} dates at "
                         f"{pd.Timedelta(step_ns)}, and at least {2 * _REF_HARMONICS + 1} dates a year), got {T}; "
                         "pass a longer series or baseline='none'")
    d = _DEFAULTS[training]
    reduce = ("auto" if training == "rollout" else "none") if reduce is None else reduce
    normalize = ("block" if training == "rollout" else "none") if normalize is None else normalize
    if normalize not in ("block", "none"):
        raise InputError(f"normalize={normalize!r}; pass 'block' or 'none'")
    if reduce == "none":
        mean, basis, reduced = v.reshape(-1, L).mean(0), np.eye(L), False
        if normalize == "none":
            mean = np.zeros(L)
    elif reduce == "auto" or (isinstance(reduce, (int, np.integer)) and not isinstance(reduce, bool) and 1 <= reduce <= L):
        mean, basis = _pca(v, reduce)
        reduced = True
    else:
        raise InputError(f"reduce={reduce!r}; pass 'auto', 'none' or an integer in [1, {L}] (components)")
    k = basis.shape[1]
    n_states = T - order
    if training == "rollout":
        horizon = d["rollout"] if rollout is None else rollout
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise InputError(f"rollout={rollout!r} must be a positive integer (training steps)")
        horizon = int(min(horizon, max(1, (n_states - 1) // 2)))
    else:
        horizon = 1
    lr = d["lr"] if lr is None else float(lr)
    if not lr > 0:
        raise InputError(f"lr={lr!r} must be positive; pass e.g. lr=1e-3")
    dev = resolve_device(device)
    # encoding (offset/scale fitted on the training states)
    tmp = DynamicsModel(
        DynamicsConfig(scheme=scheme, hidden=int(hidden), order=int(order), n_bands=L, components=k, reduced=reduced,
                       normalize=normalize, training=training, rollout=horizon, epochs=0, lr=lr, batch_size=0,
                       seed=int(seed), activation=activation, step_ns=step_ns,
                       bands=np.asarray(series["band"].values).tolist(), warmup=0, season=harmonics,
                       baseline=baseline, steps_per_year=steps_per_year,
                       history=_REF_YEARS * steps_per_year),
        torch.nn.Identity(), mean=mean, basis=basis, offset=np.zeros((order + 1) * k), scale=np.ones((order + 1) * k),
        device=torch.device("cpu"))
    raw = _differences(tmp._project(v), order)  # (n_states, P, D)
    offset, scale = _block_scaling(raw, k=k, order=order, normalize=normalize)
    X = torch.as_tensor((raw - offset) / scale, dtype=torch.float32, device=dev)  # (n, P, D)

    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    module = build_dynamics(scheme=scheme, dim=X.shape[-1], hidden=int(hidden), activation=activation,
                            forcing=harmonics, step_phase=_step_phase(step_ns)).to(dev)
    phases = torch.as_tensor(annual_phase(times[order:]), dtype=torch.float32, device=dev)  # (n_states,)

    length, starts_t, n_samples, bs = _training_windows(scheme=scheme, training=training, n_states=n_states,
                                                        horizon=horizon, P=P, batch_size=batch_size)
    steps_per_epoch = math.ceil(n_samples / bs)
    if epochs is None:
        epochs = int(min(20000, max(1, round(d["steps"] / steps_per_epoch))))
    elif isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise InputError(f"epochs={epochs!r} must be a positive integer (or None for the default)")
    losses, seconds = _optimise(module, X, phases, starts_t, P=P, bs=bs, epochs=epochs,
                                steps_per_epoch=steps_per_epoch, lr=lr, training=training, scheme=scheme,
                                horizon=horizon, length=length, harmonics=harmonics, gen=gen, dev=dev,
                                hidden=int(hidden), verbose=verbose)
    cfg = dataclasses.replace(tmp.config, epochs=int(epochs), batch_size=bs,
                              warmup=int(length if scheme == "lstm" else 0))
    model = DynamicsModel(cfg, module, mean=mean, basis=basis, offset=offset, scale=scale, device=dev,
                          losses=losses, train_seconds=seconds)
    if baseline == "seasonal" and T >= _CALIBRATION_YEARS * steps_per_year:
        hc = hindcast(model, v, times, seed=seed, observed=_observed_mask(observed, series, v.shape))
        if hc:
            model.calibration = _calibrate(hc, model.blend).astype(np.float32)
    return model


# ------------------------------------------------------------------------------------------ hindcasts
_HINDCAST_PIXELS = 128
_HINDCAST_ORIGINS = 160
_HINDCAST_POOL = 2
"""Residual quantiles at horizon h pool the hindcasts of horizons h − 2 … h + 2."""
_SEASON_BINS = 12
_CALIBRATION_YEARS = 3
"""Years a training series needs for interval calibration (hindcast targets in at least 2 years)."""
_ORIGIN_WINDOW = 2
"""Calibration of a forecast from month m pools the hindcast origins of months m − 2 … m + 2."""
_MIN_RESIDUALS = 200


def _month_bin(times) -> np.ndarray:
    """Calendar-month bin 0..11 of datetime64 ``times`` (any shape), from the annual phase."""
    t = np.asarray(times, dtype="datetime64[ns]")
    return np.minimum((annual_phase(t.ravel()) / (2 * np.pi) * _SEASON_BINS).astype(int),
                      _SEASON_BINS - 1).reshape(t.shape)


def _observed_mask(observed, series: xr.DataArray, shape) -> np.ndarray | None:
    """``observed`` (like ``series``, band optional) as a (T, P, L) bool array, or None."""
    if observed is None:
        return None
    if not isinstance(observed, xr.DataArray):
        raise InputError(f"observed must be a bool xarray.DataArray like series, got {type(observed).__name__}")
    extra = set(observed.dims) - set(series.dims)
    if extra:
        raise InputError(f"observed has dims {observed.dims} not in series {series.dims}; pass a mask on the "
                         "series' dims (the band dim may be left out)")
    try:
        full = observed.astype(bool).broadcast_like(series).transpose(*series.dims)
    except (ValueError, KeyError) as e:
        raise InputError(f"observed {observed.dims} {observed.shape} does not match series {series.dims} "
                         f"{series.shape} ({e}); pass a mask on the series' grid") from None
    full = full.transpose("time", "band", *[d for d in series.dims if d not in ("time", "band")])
    m = np.asarray(full.values)
    if m.shape[:2] != (shape[0], shape[2]) or m.size != int(np.prod(shape)):
        raise InputError(f"observed has shape {observed.shape}; it needs the series' shape {series.shape}")
    T, L = m.shape[:2]
    return m.reshape(T, L, -1).transpose(0, 2, 1)


def hindcast(model: DynamicsModel, values: np.ndarray, times, *, pixels: int = _HINDCAST_PIXELS,
             origins: int = _HINDCAST_ORIGINS, seed: int = 0, observed: np.ndarray | None = None) -> dict:
    """Rolling-origin hindcasts inside a series: the network and the seasonal reference from each origin.

    Every origin ``o`` (at least one year of history before it, at most ``origins`` of them evenly spread)
    forecasts the next ``H = min(steps_per_year, T − steps_per_year)`` dates from ``values[:o]`` only, for a
    random subset of ``pixels`` pixels. Used by ``fit_dynamics`` for the interval calibration; nothing after the origin enters the reference or the network's start state.

    Parameters
    ----------
    model
        a fitted model with ``config.steps_per_year`` > 0.
    values
        (T, P, L) training spectra; ``times`` (T,) datetime64 dates.
    observed
        optional (T, P, L) bool: truth values that are False are set to NaN (not scored).

    Returns
    -------
        dict with ``net``, ``ref``, ``truth``: (O, H, p, L) float64 (truth NaN past the series' end), or an
        empty dict when the series is too short (T ≤ steps_per_year).
    """
    cfg = model.config
    n = cfg.steps_per_year
    T, P, L = values.shape
    H = min(n, T - n)
    if n <= 0 or H < 1:
        return {}
    rng = np.random.default_rng(seed)
    px = np.sort(rng.choice(P, size=min(P, int(pixels)), replace=False))
    vp = np.asarray(values[:, px], dtype=np.float64)
    orig = np.arange(n, T)
    if len(orig) > origins:
        orig = orig[np.unique(np.linspace(0, len(orig) - 1, int(origins)).round().astype(int))]
    need = cfg.order + (cfg.warmup if cfg.scheme == "lstm" else 1)
    need = min(need, n)
    stack = np.concatenate([vp[o - need:o] for o in orig], axis=1)  # (need, O·p, L)
    phases = np.repeat(annual_phase(times[orig - 1]), len(px))
    net = model._net_values(stack, phases, H, batch_size=65536, dev=model.device, precision="float32",
                            dtype=np.float64)  # (H, L, O·p)
    net = net.reshape(H, L, len(orig), len(px)).transpose(2, 0, 3, 1)  # (O, H, p, L)
    step = np.timedelta64(cfg.step_ns, "ns")
    ref = np.stack([seasonal_reference(vp[:o], times[:o], times[o - 1] + np.arange(1, H + 1) * step,
                                       steps_per_year=n) for o in orig])
    truth = np.full_like(ref, np.nan)
    for i, o in enumerate(orig):
        m = min(H, T - o)
        truth[i, :m] = vp[o:o + m] if observed is None else np.where(observed[o:o + m][:, px], vp[o:o + m], np.nan)
    return {"net": net, "ref": ref, "truth": truth, "origins": orig, "pixels": px,
            "origin_month": _month_bin(times[orig - 1])}


def _calibrate(hc: dict, blend: np.ndarray) -> np.ndarray:
    """RMS (12, H, L) of the hindcast residuals ``truth − forecast`` of the blended forecast.

    Row ``m`` uses the origins whose last history date falls within ``_ORIGIN_WINDOW`` calendar months
    of month ``m`` (errors depend on the season a forecast starts in: one from late December crosses the
    winter first), pooled over horizons ``h ± 2``; a cell with fewer than ``_MIN_RESIDUALS`` residuals
    uses every origin."""
    w = _per_step(blend, hc["net"].shape[1])[None, :, None, :]  # (1, H, 1, L)
    e2 = (hc["truth"] - (hc["ref"] + w * (hc["net"] - hc["ref"]))) ** 2  # (O, H, p, L)
    O, H, p, L = e2.shape
    month = hc["origin_month"]  # (O,)
    ok = np.isfinite(e2)
    e2 = np.where(ok, e2, 0.0)
    cal = np.empty((_SEASON_BINS, H, L))
    for m in range(_SEASON_BINS):
        near = np.minimum(np.abs(month - m), _SEASON_BINS - np.abs(month - m)) <= _ORIGIN_WINDOW
        for h in range(H):
            hs = slice(max(0, h - _HINDCAST_POOL), h + _HINDCAST_POOL + 1)
            n = ok[near, hs].sum(axis=(0, 1, 2))  # (L,)
            s2 = e2[near, hs].sum(axis=(0, 1, 2))
            if n.min() < _MIN_RESIDUALS:
                n, s2 = ok[:, hs].sum(axis=(0, 1, 2)), e2[:, hs].sum(axis=(0, 1, 2))
            cal[m, h] = np.sqrt(s2 / np.maximum(n, 1))
    return cal


# ------------------------------------------------------------------------------------------ whole cubes
def forecast_cube(model: DynamicsModel, history: xr.DataArray, *, steps: int = 120, level: float | None = None,
                  batch_size: int = 65536):
    """Forecast every pixel of a ``(time, band, y, x)`` cube, chunk by chunk when it is Dask-backed.

    Pixels are independent, so each spatial block is forecast on its own (``xr.map_blocks``; time and band
    are made whole, y/x keep their chunks). Only the last dates the model reads are loaded (the network's
    state and, with the seasonal baseline, up to 3 years). A pixel with a NaN in those dates (a gap left
    after interpolation) gets NaN in the forecast instead of failing the whole cube. Returns
    ``(time=steps, band, y, x)``, lazy for Dask input, equal to ``model.forecast`` on the pixels without
    gaps; with ``level`` (see ``DynamicsModel.forecast``) a Dataset of ``mean``, ``lower``, ``upper``.

    Inside a GPU ``s2pipe.runtime.placement.inference_placement`` block, the forecast tasks of Dask input (keys
    ``forecast_block-…``) ask for a ``GPU`` worker resource and each runs on its worker's device (CUDA when
    available there, else CPU) with a per-process copy of ``model``.
    """
    if set(history.dims) != {"time", "band", "y", "x"}:
        raise InputError(f"forecast_cube needs dims (time, band, y, x), got {history.dims}; "
                         "use model.forecast for (time, band) series")
    if level is not None:
        _check_level(level)
    cfg = model.config
    need = model._read_steps()
    recent = history.transpose("time", "band", "y", "x").isel(time=slice(-max(need, 2), None))
    times = recent["time"].values
    new_t = times[-1] + np.arange(1, steps + 1, dtype=np.int64) * np.timedelta64(cfg.step_ns, "ns")
    dtype = np.float64 if history.dtype == np.float64 else np.float32
    names = ("mean", "lower", "upper") if level is not None else (None,)

    placement = current_placement()
    per_worker = recent.chunks is not None and placement is not None and placement.gpu

    def forecast_block(b: xr.DataArray):
        m = on_device(model, resolve_device(None), _model_on) if per_worker else model
        v = np.asarray(b.values)
        n_t, n_b, ny, nx = v.shape
        out = {k: np.full((steps, n_b, ny * nx), np.nan, dtype=dtype) for k in names}
        ok = np.isfinite(v[-need:]).all(axis=(0, 1)).ravel()
        if ok.any():
            flat = v.reshape(n_t, n_b, ny * nx)[:, :, ok][:, :, None, :]  # (time, band, y=1, x=valid pixels)
            sub = xr.DataArray(flat, dims=("time", "band", "y", "x"), coords={"time": b["time"].values, "band": b["band"].values})
            with torch_threads():  # on a distributed worker: its share of the host's cores
                f = m.forecast(sub, steps=steps, level=level, batch_size=batch_size)
            for k in names:
                out[k][:, :, ok] = (f if k is None else f[k]).values[:, :, 0, :]
        coords = {"time": new_t, "band": b["band"].values, "y": b["y"].values, "x": b["x"].values}
        arrays = {k: xr.DataArray(a.reshape(steps, n_b, ny, nx), dims=("time", "band", "y", "x"), coords=coords)
                  for k, a in out.items()}
        return arrays[None] if level is None else xr.Dataset(arrays)

    if recent.chunks is None:
        result = forecast_block(recent)
    else:
        import dask.array as dsa

        recent = recent.chunk({"time": -1, "band": -1})
        _, _, ychunks, xchunks = recent.chunks

        def empty():
            return xr.DataArray(
                dsa.empty((steps, recent.sizes["band"], recent.sizes["y"], recent.sizes["x"]), dtype=dtype,
                          chunks=((steps,), (recent.sizes["band"],), ychunks, xchunks)),
                dims=("time", "band", "y", "x"),
                coords={"time": new_t, "band": recent["band"].values, "y": recent["y"].values,
                        "x": recent["x"].values})

        template = empty() if level is None else xr.Dataset({k: empty() for k in names})
        with inference_tasks():  # resources={"GPU": 1} under GPU placement
            result = xr.map_blocks(forecast_block, recent.drop_vars([c for c in recent.coords if c not in recent.dims]),
                                   template=template)
    attrs = {**history.attrs, "forecast_scheme": cfg.scheme, "forecast_from": str(pd.Timestamp(times[-1]))}
    if level is None:
        result.name = history.name
        result.attrs = attrs
    else:
        for k in names:
            result[k].attrs = dict(attrs)
        result.attrs = {**attrs, "level": float(level), "calibrated_steps": int(model.calibration.shape[1])}
    return result


def _model_on(model: DynamicsModel, device: torch.device) -> DynamicsModel:
    """A copy of ``model`` on ``device`` (the original is left where it is)."""
    cfg = model.config
    module = build_dynamics(scheme=cfg.scheme, dim=cfg.dim, hidden=cfg.hidden, activation=cfg.activation,
                            forcing=cfg.season, step_phase=_step_phase(cfg.step_ns))
    module.load_state_dict(model.module.state_dict())
    return DynamicsModel(model.config, module, mean=model.mean, basis=model.basis, offset=model.offset,
                         scale=model.scale, device=device, blend=model.blend, calibration=model.calibration)


# ------------------------------------------------------------------------------------------ ensembles
class DynamicsEnsemble:
    """``n`` independently seeded models of one configuration: a forecast mean and its spread.

    The spread reflects how much the fitted dynamics depend on the initialisation (model variance), not
    the forecast error: on Romania 2018 -> 2019 (5 members) ``mean ± 2·std`` held only 12.5 % of the truth.
    For calibrated intervals use ``DynamicsModel.forecast(..., level=0.9)``.
    """

    def __init__(self, members: list[DynamicsModel]):
        if not members:
            raise InputError("an ensemble needs at least one model (argument: members)")
        self.members = list(members)

    def forecast(self, history: xr.DataArray, *, steps: int = 120, batch_size: int = 65536) -> xr.Dataset:
        """Dataset with ``mean`` and ``std`` (time=steps, band[, y, x]) over the members' forecasts."""
        runs = [m.forecast(history, steps=steps, batch_size=batch_size) for m in self.members]
        stack = xr.concat(runs, dim="member")
        return xr.Dataset({"mean": stack.mean("member"), "std": stack.std("member", ddof=1 if len(runs) > 1 else 0)},
                          attrs={"members": len(runs), **runs[0].attrs})

    def save(self, path) -> Path:
        """One ``member_<i>.pt`` per model in the folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(self.members):
            m.save(path / f"member_{i}.pt")
        return path


def fit_ensemble(series: xr.DataArray, *, n: int = 5, seed: int = 0, **kwargs) -> DynamicsEnsemble:
    """``n`` models fitted by ``fit_dynamics(series, seed=seed + i, **kwargs)``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n={n!r} must be a positive number of ensemble members")
    return DynamicsEnsemble([fit_dynamics(series, seed=seed + i, **kwargs) for i in range(n)])


def load_ensemble(path, *, device=None) -> DynamicsEnsemble:
    """Read an ensemble folder written by ``DynamicsEnsemble.save`` (weights only, no code executed)."""
    files = sorted(Path(path).glob("member_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise InputError(f"{path} holds no member_<i>.pt files; pass a folder written by DynamicsEnsemble.save")
    return DynamicsEnsemble([load_dynamics(f, device=device) for f in files])


def coverage(forecast: xr.Dataset, truth: xr.DataArray, *, k: float = 2.0) -> float:
    """Fraction of finite ``truth`` values inside a forecast's interval.

    ``forecast``: a Dataset with ``lower``/``upper`` (``DynamicsModel.forecast(..., level=)``: the
    calibrated interval) or with ``mean``/``std`` (an ensemble: ``mean ± k·std``, model spread only, which
    is not a calibrated interval; on Romania 2018 → 2019 it held 12.5 % of the truth at k = 2).
    """
    if "lower" in forecast and "upper" in forecast:
        lo, hi = forecast["lower"], forecast["upper"]
    else:
        lo, hi = forecast["mean"] - k * forecast["std"], forecast["mean"] + k * forecast["std"]
    truth = truth.sel(time=lo["time"])
    inside = (truth >= lo) & (truth <= hi) & np.isfinite(truth)
    n = int(np.isfinite(truth).sum())
    return float(inside.sum()) / n if n else float("nan")


def interval_coverage(lower, upper, truth, *, lead_days, buckets=((0, 50), (50, 100), (100, 200), (200, 366))):
    """Coverage of an interval per lead-time bucket: arrays (time, …) and ``lead_days`` (time,) in days.

    Returns ``{(lo, hi): (fraction of finite truth values with lower ≤ truth ≤ upper, count)}`` for the
    leads in ``(lo, hi]`` days."""
    lower, upper, truth = (np.asarray(a, dtype=np.float64) for a in (lower, upper, truth))
    lead = np.asarray(lead_days, dtype=np.float64)
    out = {}
    for lo, hi in buckets:
        sel = (lead > lo) & (lead <= hi)
        t = truth[sel]
        ok = np.isfinite(t)
        inside = (t >= lower[sel]) & (t <= upper[sel]) & ok
        n = int(ok.sum())
        out[(lo, hi)] = (float(inside.sum()) / n if n else float("nan"), n)
    return out

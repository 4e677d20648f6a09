"""The synthetic spectral-dynamics experiment of Estopinan et al. (section 3): Hapke reflectance under a
daily-periodic illumination angle.

The paper takes 144-band albedos from the DFC 2013 Houston scene (CASI, 380-1050 nm), which is not
available offline. ``albedo_spectra`` builds smooth, plausible endmember-like single-scattering albedo
spectra on the same 144-band grid instead — vegetation (green peak, red edge, NIR plateau), soil (rising
slowly), water (dark, falling in the NIR) and roof (grey, flat) — each perturbed by a few seeded smooth
Gaussian bumps (±5 % relative), so different seeds give different but similar materials.

Reflectance follows the simplified Hapke model of Drumetz et al. (the isotropic-scatterer form behind the
extended linear mixing model)::

    r(ω, μ0, μ) = ω / (4 (μ0 + μ)) · H(ω, μ0) · H(ω, μ),    H(ω, x) = (1 + 2x) / (1 + 2x √(1 − ω))

with μ = cos(viewing angle) fixed and μ0 = cos θ(t), ``θ(t) = θ0 + A cos(2π t / 1 day)``. Every band follows
the same one-dimensional periodic dynamics through μ0, with a different albedo per band.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from s2pipe.errors import InputError

__all__ = ["MATERIALS", "TRAIN_STEPS", "HORIZONS", "wavelengths", "albedo_spectra", "hapke_reflectance",
           "hapke_series"]

MATERIALS: tuple[str, ...] = ("vegetation", "soil", "water", "roof")
TRAIN_STEPS = 960
"""The paper's training window: 20 days every 30 minutes."""
HORIZONS: tuple[int, ...] = (12, 24, 36, 120)
"""The paper's Table 1 lead times (steps of 30 minutes after the end of training)."""


def wavelengths(n_bands: int = 144) -> np.ndarray:
    """Band centres (nm) of an ``n_bands`` grid over 380-1050 nm (the Houston CASI range)."""
    return np.linspace(380.0, 1050.0, n_bands)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _base_spectrum(material: str, wl: np.ndarray) -> np.ndarray:
    if material == "vegetation":
        green = 0.08 * np.exp(-0.5 * ((wl - 550.0) / 30.0) ** 2)
        chl_red = -0.03 * np.exp(-0.5 * ((wl - 670.0) / 25.0) ** 2)
        edge = 0.55 * _sigmoid((wl - 715.0) / 12.0)
        water_abs = -0.04 * np.exp(-0.5 * ((wl - 970.0) / 25.0) ** 2)
        return 0.06 + green + chl_red + edge + water_abs
    if material == "soil":
        return 0.12 + 0.30 * _sigmoid((wl - 600.0) / 150.0) - 0.02 * np.exp(-0.5 * ((wl - 900.0) / 60.0) ** 2)
    if material == "water":
        return 0.03 + 0.07 * np.exp(-0.5 * ((wl - 480.0) / 70.0) ** 2) - 0.02 * _sigmoid((wl - 700.0) / 40.0)
    if material == "roof":
        return 0.30 + 0.06 * (wl - 380.0) / 670.0 + 0.02 * np.sin((wl - 380.0) / 120.0)
    raise InputError(f"unknown material {material!r}; pass materials= a subset of {MATERIALS}")


def albedo_spectra(materials=MATERIALS, *, n_bands: int = 144, seed: int = 0) -> np.ndarray:
    """Single-scattering albedo spectra ω, float64 (n_materials, n_bands), unitless in [0.01, 0.95]."""
    if isinstance(materials, str):
        materials = (materials,)
    if not isinstance(n_bands, (int, np.integer)) or n_bands < 2:
        raise InputError(f"n_bands={n_bands!r} must be an integer >= 2; pass e.g. n_bands=144")
    wl = wavelengths(n_bands)
    rng = np.random.default_rng(seed)
    out = []
    for m in materials:
        base = _base_spectrum(m, wl)
        bumps = np.zeros_like(wl)
        for _ in range(4):
            c, w, a = rng.uniform(380, 1050), rng.uniform(40, 150), rng.uniform(-0.05, 0.05)
            bumps += a * np.exp(-0.5 * ((wl - c) / w) ** 2)
        out.append(np.clip(base * (1.0 + bumps), 0.01, 0.95))
    return np.stack(out)


def _H(w, x):
    return (1.0 + 2.0 * x) / (1.0 + 2.0 * x * np.sqrt(1.0 - w))


def hapke_reflectance(albedo, mu0, mu=1.0):
    """Simplified Hapke reflectance (unitless) for albedo ω and cosines μ0 (illumination), μ (view); broadcasts."""
    albedo, mu0, mu = np.asarray(albedo), np.asarray(mu0), np.asarray(mu)
    return albedo / (4.0 * (mu0 + mu)) * _H(albedo, mu0) * _H(albedo, mu)


def hapke_series(
    *,
    materials=MATERIALS,
    n_bands: int = 144,
    steps: int = TRAIN_STEPS + 240,
    step: str = "30min",
    theta0_deg: float = 45.0,
    amplitude_deg: float = 25.0,
    view_deg: float = 0.0,
    period: str = "1D",
    start: str = "2020-06-01",
    seed: int = 0,
    dtype=np.float32,
) -> xr.DataArray:
    """Hapke reflectance time series, dims (time, band, y, x) with y = 1 and x = one pixel per material.

    ``time``: ``steps`` dates every ``step`` from ``start``; ``band``: wavelength (nm, float); coords
    ``material`` (x) and ``albedo`` (band, x). The illumination angle is ``θ0 + A cos(2π t / period)`` in
    degrees, so the first sample is at the largest angle. The default length (1200 steps) covers the 960
    training steps plus 240 steps to score forecasts. Select one material with ``.isel(y=0, x=0)`` for a
    (time, band) series.
    """
    if isinstance(materials, str):
        materials = (materials,)
    if not isinstance(steps, (int, np.integer)) or steps < 3:
        raise InputError(f"steps={steps!r} must be an integer >= 3; pass e.g. steps=1200")
    try:
        dt = pd.Timedelta(step)
        per = pd.Timedelta(period)
    except (TypeError, ValueError) as e:
        raise InputError(f"step={step!r} / period={period!r} must be durations like '30min' ({e})") from None
    times = pd.date_range(pd.Timestamp(start), periods=int(steps), freq=dt)
    t = np.arange(steps) * (dt / per)  # in periods
    theta = np.deg2rad(theta0_deg + amplitude_deg * np.cos(2.0 * np.pi * t))
    mu0 = np.cos(theta)
    if np.any(mu0 <= 0):
        raise InputError(f"theta0_deg={theta0_deg} and amplitude_deg={amplitude_deg} put the sun below the "
                         "horizon; keep theta0_deg + amplitude_deg < 90")
    w = albedo_spectra(materials, n_bands=n_bands, seed=seed)  # (M, L)
    r = hapke_reflectance(w.T[None, :, :], mu0[:, None, None], np.cos(np.deg2rad(view_deg)))  # (T, L, M)
    return xr.DataArray(
        r[:, :, None, :].astype(dtype),
        dims=("time", "band", "y", "x"),
        coords={
            "time": times.values,
            "band": wavelengths(n_bands),
            "y": [0.0],
            "x": np.arange(len(materials), dtype=float),
            "material": ("x", list(materials)),
            "albedo": (("band", "x"), w.T),
        },
        name="reflectance",
        attrs={"units": "1", "model": "simplified Hapke", "theta0_deg": theta0_deg,
               "amplitude_deg": amplitude_deg, "view_deg": view_deg, "period": str(per)},
    )

"""Paper section 4 on real data: forecast one year of forest spectra on the Romania L2A cube.

Data: ``../shared/data/nrt-romania-s2l2a`` (never copied into the repository): ``romania_10m.npz``
(B02, B03, B04, B08 at 10 m, 140 dates 2015-08 -> 2021-01, SCL) and the Copernicus HRL Tree Cover
Density 2018 (20 m, same area) as the forest map.

Pipeline (the s2pipe stages, in order):

1. ``mask_clouds`` with SCL clear classes 4, 5, 6, 7 (reflectance = DN / 1e4, NaN elsewhere);
2. ``cressman(..., radius=10 days, times=<5-day grid>)``: the grid is ``pd.date_range(first date, last
   date, freq="5D")`` of the whole series, so 2018 has 73 dates (2018-01-02 .. 2018-12-28) and 2019 has
   73 dates (2019-01-02 .. 2019-12-28), exactly 365 days apart;
3. normalisation by the global maximum (``normalize(method="global_max")``) of the clear observations
   up to the end of the training year (no information from the forecast year);
4. forest = TCD >= ``--tcd`` % (default 70), upsampled x2 from 20 m to 10 m by nearest pixel centre
   (``s2pipe.pixels.align_mask``); training pixels = forest + their 4 neighbours
   (``training_pixels(neighbours=True)``), subsampled to ``--train-pixels``.

Gaps left on the 5-day grid (winter: no clear observation within 3R = 30 days, e.g. 2018-11-13 ->
2019-02-01) are handled as follows, and reported:

* **training year / history (2018)**: values that R = 10 d leaves NaN are filled by a second Cressman
  pass with R = ``--wide-radius`` (30 d; reaches 90 d) **using observations up to 2018-12-31 only**, so
  no information from the forecast year leaks into the history (late December is then essentially the
  last clear November spectrum). Pixels still NaN after that are dropped by ``training_pixels``.
* **truth (2019)**: the R = 10 d Cressman values of the full series; steps where that is NaN are not
  scored. At a step where no pixel has R = 10 d truth (+10 days = 2019-01-07 falls in the winter gap),
  the R = 30 d value is used instead and the row is marked ``*``.

Scores: RMSE over all bands and evaluation pixels at a step, ``sqrt(mean((forecast - truth)^2))``, in
normalized units (the paper's) and in reflectance. Horizons: +10 d = step 2 (2019-01-07), +100 d =
step 20 (2019-04-06), +200 d = step 40 (2019-07-15), counting step 1 = 2019-01-02, the first date after
the history's last (2018-12-28). Paper (Puerto Rico, one pixel): 5.0e-2 / 7.3e-2 / 1.3e-1.
Evaluation pixels: forest pixels (TCD >= threshold, complete history) that are NOT training pixels
(held out in space and time), at most ``--eval-pixels``.

Baselines: persistence (the last history date repeated) and climatology (the 2018 value at the same
5-day index, i.e. 365 days earlier, per pixel).

Models (``s2pipe.forecast.fit_dynamics``): RK4 with the library's defaults (rollout training and, since the
training year spans a whole cycle, the annual clock ``season="annual"``), the same without the clock
(``season="none"``, the paper's autonomous dynamics), RK4 with the paper's plain one-step full-state
training, Euler, LSTM; and an ensemble of ``--ensemble`` seeded default RK4 models (seeds 0..n-1, as ``fit_ensemble``:
mean and spread; coverage = fraction of scored values with |truth - mean| <= 2 sigma).

Budget (default run ~8 min on 2 CPU cores): 200 training pixels; RK4 / Euler / LSTM with ``fit_dynamics``'
own defaults (``--epochs/--batch-size/--rollout 0``: 800 optimizer steps of 1024 samples, 16-step rollouts,
~1 min per model); the paper's plain one-step training (``training="one_step"``) at 400 epochs, batch 256.

Run: ``.venv/bin/python benchmarks/bench_forecast_real.py`` (``--figures`` writes out/figures/*.png;
``--quick`` for a smoke run). Results are also saved to ``out/forecast_real/results.npz`` and
``table.json``; ``benchmarks/forecast_figures.py`` redraws the figures from the npz.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from s2pipe.cloudmask import mask_clouds
from s2pipe.gapfill import cressman
from s2pipe.normalize import compute_scale, normalize
from s2pipe.pixels import align_mask, as_yx, training_pixels

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "nrt-romania-s2l2a"
PAPER = {2: 5.0e-2, 20: 7.3e-2, 40: 1.3e-1}
HORIZONS = {2: "+10 d", 20: "+100 d", 40: "+200 d"}


# ------------------------------------------------------------------------------------------ data
def load_raw(data_dir: Path = DATA, *, name: str = "romania_10m.npz") -> xr.DataArray:
    """The real cube in the raw layout of docs/architecture.md: "dn" uint16 (time, band, y, x), SCL last."""
    from s2pipe.testing import romania_raw_cube

    return romania_raw_cube(Path(data_dir) / name)


def load_tcd(data_dir: Path = DATA) -> xr.DataArray:
    """Tree Cover Density 2018 (%), uint8 (y, x) on the 20 m grid, 255 = nodata, pixel-centre coords."""
    import rasterio

    with rasterio.open(Path(data_dir) / "tree_cover_density_2018_20m.tif") as r:
        v = r.read(1)
        t = r.transform
    y = t.f + t.e * (np.arange(v.shape[0]) + 0.5)
    x = t.c + t.a * (np.arange(v.shape[1]) + 0.5)
    return xr.DataArray(v, dims=("y", "x"), coords={"y": y, "x": x}, name="tcd", attrs={"units": "%", "nodata": 255})


def forest_mask(tcd: xr.DataArray, cube: xr.DataArray, *, threshold: float = 70) -> xr.DataArray:
    """bool (y, x) on the cube grid: TCD >= threshold (nodata 255 excluded), nearest-upsampled."""
    m = (tcd >= threshold) & (tcd != 255)
    return align_mask(m, cube, align="nearest")


def prepare(data_dir: Path = DATA, *, train_year: int = 2018, radius: float = 10, wide_radius: float = 30,
            tcd_threshold: float = 70) -> dict:
    """Normalized training-year cube (gaps filled from the past only), forecast-year truth, forest mask.

    Returns a dict: ``train`` (73, band, y, x) normalized, NaN only where even ``wide_radius`` finds no
    past observation; ``truth`` (73, band, y, x) normalized R = ``radius`` values of the next year (NaN =
    not scored); ``truth_wide`` the same with ``wide_radius``; ``forest`` bool (y, x); ``scale`` (float,
    reflectance per normalized unit); ``filled_frac`` fraction of training values from the wide pass.
    """
    raw = load_raw(data_dir)
    refl = mask_clouds(raw, clear_classes=(4, 5, 6, 7))
    t = refl.indexes["time"]
    grid = pd.date_range(t[0], t[-1], freq="5D")
    g_train = grid[grid.year == train_year]
    g_test = grid[grid.year == train_year + 1]
    past = refl.sel(time=refl["time"] <= np.datetime64(f"{train_year}-12-31T23:59"))
    scale = compute_scale(past, method="global_max")
    train10 = cressman(past, radius=radius, times=g_train.values)
    train_wide = cressman(past, radius=wide_radius, times=g_train.values)
    train = train10.fillna(train_wide)
    filled_frac = float((np.isnan(train10.values) & np.isfinite(train_wide.values)).mean())
    truth = cressman(refl, radius=radius, times=g_test.values)
    truth_wide = cressman(refl, radius=wide_radius, times=g_test.values)
    norm = lambda da: normalize(da, scale=scale)  # noqa: E731
    tcd = load_tcd(data_dir)
    return {
        "train": norm(train), "truth": norm(truth), "truth_wide": norm(truth_wide),
        "forest": forest_mask(tcd, refl, threshold=tcd_threshold), "scale": float(scale.values[0]),
        "filled_frac": filled_frac, "train10_nan_frac": float(np.isnan(train10.values).mean()),
    }


def select_pixels(prep: dict, *, train_pixels: int, eval_pixels: int, seed: int = 0):
    """Training pixels (forest + 4 neighbours, subsampled) and held-out forest evaluation pixels."""
    train = prep["train"]
    tr = training_pixels(train, mask=prep["forest"], neighbours=True, max_pixels=train_pixels, seed=seed)
    used = np.zeros(prep["forest"].shape, bool)
    used[tr["row"].values, tr["col"].values] = True
    held = prep["forest"] & xr.DataArray(~used, dims=("y", "x"), coords=prep["forest"].coords)
    ev = training_pixels(train, mask=held, max_pixels=eval_pixels, seed=seed + 1)
    return tr, ev


def at_pixels(da: xr.DataArray, px: xr.DataArray) -> np.ndarray:
    """(time, band, pixel) values of a (time, band, y, x) cube at the pixels of ``px``."""
    r = xr.DataArray(px["row"].values, dims="pixel")
    c = xr.DataArray(px["col"].values, dims="pixel")
    return da.transpose("time", "band", "y", "x").isel(y=r, x=c).values


# ------------------------------------------------------------------------------------------ scoring
def rmse_by_step(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(time,) RMSE over band and pixel of the finite truth values; NaN where none is finite."""
    err2 = (pred - truth) ** 2
    ok = np.isfinite(truth)
    n = ok.sum(axis=(1, 2))
    s = np.where(ok, err2, 0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.where(n > 0, s / np.maximum(n, 1), np.nan))


def score(pred: np.ndarray, truth: np.ndarray, truth_wide: np.ndarray) -> dict:
    """RMSE at the paper's horizons (wide-radius truth where R=10 truth is absent: flagged) and mean."""
    r10 = rmse_by_step(pred, truth)
    rw = rmse_by_step(pred, truth_wide)
    out = {"mean": float(np.nanmean(r10)), "by_step": r10}
    for k in HORIZONS:
        v = r10[k - 1]
        out[k] = (float(v), False) if np.isfinite(v) else (float(rw[k - 1]), True)
    return out


def baselines(hist: np.ndarray, steps: int) -> dict[str, np.ndarray]:
    """Persistence (last history date repeated) and climatology (history's last year, same 5-day index)."""
    return {
        "persistence": np.repeat(hist[-1:], steps, axis=0),
        "climatology": np.concatenate([hist[-73:]] * (steps // 73 + 1))[:steps],
    }


# ------------------------------------------------------------------------------------------ models
def fit_kwargs(fit, **want) -> dict:
    """Only the keyword options that this version of fit_dynamics accepts."""
    params = inspect.signature(fit).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return want
    return {k: v for k, v in want.items() if k in params}


def run_models(tr, hist_yx, steps, *, fit_opts, plain_opts, ensemble, seed=0, log=print):
    """Fit each variant and forecast; returns ({name: (time, band, pixel)}, ensemble members, seconds)."""
    from s2pipe.forecast import fit_dynamics

    series = as_yx(tr)
    variants = [("RK4", dict(scheme="rk4", **fit_opts)),
                ("RK4 no clock", dict(scheme="rk4", **fit_kwargs(fit_dynamics, season="none"), **fit_opts)),
                ("RK4 plain (paper)", dict(scheme="rk4", **plain_opts)),
                ("Euler", dict(scheme="euler", **fit_opts)), ("LSTM", dict(scheme="lstm", **fit_opts))]
    preds, times = {}, {}
    for name, kw in variants:
        t0 = time.perf_counter()
        model = fit_dynamics(series, seed=seed, **kw)
        f = model.forecast(hist_yx, steps=steps)
        times[name] = time.perf_counter() - t0
        preds[name] = f.transpose("time", "band", "y", "x").values[:, :, 0, :]
        log(f"  fitted {name:<18} in {times[name]:6.1f} s ({model.config.epochs} epochs, {kw})")
    members = [preds["RK4"]]
    for s in range(1, ensemble):
        t0 = time.perf_counter()
        model = fit_dynamics(series, scheme="rk4", seed=seed + s, **fit_opts)
        members.append(model.forecast(hist_yx, steps=steps).transpose("time", "band", "y", "x").values[:, :, 0, :])
        log(f"  fitted RK4 ensemble member {s} (seed {seed + s}) in {time.perf_counter() - t0:6.1f} s")
    return preds, np.stack(members), times


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tcd", type=float, default=70, help="forest = tree cover density >= this (%%)")
    ap.add_argument("--train-pixels", type=int, default=200)
    ap.add_argument("--eval-pixels", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=0, help="RK4/Euler/LSTM epochs (0: fit_dynamics' default)")
    ap.add_argument("--batch-size", type=int, default=0, help="0: fit_dynamics' default")
    ap.add_argument("--rollout", type=int, default=0, help="rollout-loss horizon (steps); 0: fit_dynamics' default")
    ap.add_argument("--plain-epochs", type=int, default=400, help="epochs of the paper's one-step training")
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--wide-radius", type=float, default=30)
    ap.add_argument("--baselines-only", action="store_true", help="skip the models (no s2pipe.forecast needed)")
    ap.add_argument("--figures", action="store_true", help="write out/figures/forecast_*.png")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "forecast_real")
    ap.add_argument("--quick", action="store_true", help="smoke run: few pixels and epochs, ensemble of 2")
    a = ap.parse_args(argv)
    if a.quick:
        a.train_pixels, a.eval_pixels, a.epochs, a.plain_epochs, a.ensemble = 100, 200, 5, 20, 2

    t0 = time.perf_counter()
    prep = prepare(a.data, wide_radius=a.wide_radius, tcd_threshold=a.tcd)
    tr, ev = select_pixels(prep, train_pixels=a.train_pixels, eval_pixels=a.eval_pixels)
    hist = ev.values  # (73, band, pixel) normalized 2018
    truth = at_pixels(prep["truth"], ev)
    truth_wide = at_pixels(prep["truth_wide"], ev)
    steps = truth.shape[0]
    scale = prep["scale"]
    bands = [str(b) for b in prep["train"]["band"].values]
    print(f"data ready in {time.perf_counter() - t0:.1f} s: bands {bands}, normalisation scale "
          f"(global max of clear obs <= 2018) = {scale:.4f} reflectance")
    print(f"2018 on the 5-day grid: {prep['train10_nan_frac']:.1%} NaN after R=10 d, "
          f"{prep['filled_frac']:.1%} filled from past data with R={a.wide_radius:g} d")
    print(f"forest (TCD >= {a.tcd:g} %): {int(prep['forest'].sum())} px at 10 m; training pixels: "
          f"{tr.sizes['pixel']} (of {tr.attrs['subsampled_from']} forest+neighbours with a complete history; "
          f"{tr.attrs['dropped_gap_pixels']} dropped for gaps); held-out evaluation pixels: {ev.sizes['pixel']}")
    scored = np.isfinite(truth).any(axis=(1, 2))
    print(f"2019 truth (R=10 d): {int(scored.sum())} of {steps} steps scored, {np.isnan(truth).mean():.1%} "
          f"of values NaN; step 2 (+10 d, 2019-01-07) has {'no' if not scored[1] else 'some'} R=10 d truth")

    preds = baselines(hist, steps)
    members = None
    times = {}
    if not a.baselines_only:
        import s2pipe.forecast as fc

        fit_opts = fit_kwargs(fc.fit_dynamics, epochs=a.epochs or None, batch_size=a.batch_size or None,
                              rollout=a.rollout or None)
        plain_opts = fit_kwargs(fc.fit_dynamics, training="one_step", epochs=a.plain_epochs or None,
                                batch_size=a.batch_size or 256)
        print(f"fitting: default training {fit_opts}; paper's plain training {plain_opts}; "
              f"ensemble of {a.ensemble} RK4")
        hist_yx = as_yx(ev)
        model_preds, members, times = run_models(tr, hist_yx, steps, fit_opts=fit_opts, plain_opts=plain_opts,
                                                 ensemble=a.ensemble)
        preds = {**model_preds, **preds}

    # ---- table
    print()
    head = f"{'model':<20}" + "".join(f"{h + ' (s' + str(k) + ')':>16}" for k, h in HORIZONS.items())
    head += f"{'mean scored':>13}"
    print("RMSE, normalized units (x scale = reflectance); * = vs R=30 d truth (no R=10 d truth at that step)")
    print(head)
    print(f"{'paper (RK4)':<20}" + "".join(f"{PAPER[k]:>16.2e}" for k in HORIZONS))
    results = {}
    for name, p in preds.items():
        s = score(p, truth, truth_wide)
        results[name] = s
        cells = "".join(f"{s[k][0]:>15.2e}{'*' if s[k][1] else ' '}" for k in HORIZONS)
        print(f"{name:<20}{cells}{s['mean']:>13.2e}")
    if members is not None:
        ens_mean = members.mean(axis=0)
        s = score(ens_mean, truth, truth_wide)
        results[f"RK4 ens. mean ({len(members)})"] = s
        cells = "".join(f"{s[k][0]:>15.2e}{'*' if s[k][1] else ' '}" for k in HORIZONS)
        print(f"{'RK4 ens. mean (' + str(len(members)) + ')':<20}{cells}{s['mean']:>13.2e}")
    print("\nsame, reflectance units (x %.4f)" % scale)
    for name, r in results.items():
        print(f"{name:<20}" + "".join(f"{r[k][0] * scale:>15.4f}{'*' if r[k][1] else ' '}" for k in HORIZONS)
              + f"{r['mean'] * scale:>13.4f}")
    if members is not None:
        mean = members.mean(axis=0)
        sd = members.std(axis=0, ddof=1)
        ok = np.isfinite(truth)
        inside = np.abs(truth - mean) <= 2 * sd
        cov = float(inside[ok].mean())
        print(f"\nensemble of {len(members)} RK4 models: truth within mean +- 2 sigma for {cov:.1%} of the "
              f"{int(ok.sum())} scored values (mean sigma {float(sd[ok].mean()):.2e}); at +10/+100/+200 d: "
              + ", ".join(f"{float(inside[k - 1][ok[k - 1]].mean()):.1%}" if ok[k - 1].any() else "n/a"
                          for k in HORIZONS))
        results["coverage_2sigma"] = cov
    for name, secs in times.items():
        print(f"time {name}: {secs:.1f} s")
    print(f"total {time.perf_counter() - t0:.1f} s")

    a.out.mkdir(parents=True, exist_ok=True)
    save = {f"pred_{k}": v for k, v in preds.items()}
    if members is not None:
        save["members"] = members
    t_train = prep["train"]["time"].values
    t_test = prep["truth"]["time"].values
    np.savez_compressed(a.out / "results.npz", hist=hist, truth=truth, truth_wide=truth_wide,
                        t_train=t_train.astype("datetime64[D]").astype(str),
                        t_test=t_test.astype("datetime64[D]").astype(str), bands=np.array(bands),
                        scale=scale, names=np.array(list(preds)), **{k.replace(" ", "_"): v for k, v in save.items()})
    (a.out / "table.json").write_text(json.dumps(
        {n: {str(k): v for k, v in r.items() if k != "by_step"} if isinstance(r, dict) else r
         for n, r in results.items()}, indent=1, default=float))
    if a.figures:
        sys.path.insert(0, str(Path(__file__).parent))
        from forecast_figures import make_figures

        for p in make_figures(a.out / "results.npz", REPO / "out" / "figures"):
            print(f"figure: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

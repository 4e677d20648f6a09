"""Year-ahead spectral forecasts on the real Romania L2A cube against persistence and climatology, with
calibrated 90 % intervals, on four series: 10 m and 20 m, forest and non-forest pixels.

Data: ``../shared/data/nrt-romania-s2l2a`` (never copied into the repository): ``romania_10m.npz``
(B02, B03, B04, B08 at 10 m) and ``romania_20m.npz`` (B03, B04, B8A, B11 at 20 m), 140 dates 2015-08 ->
2021-01 with SCL, and the Copernicus HRL Tree Cover Density 2018 (20 m, same area).

Pipeline (the s2pipe stages, in order), per resolution and split (training years -> forecast year):

1. ``mask_clouds`` with SCL clear classes 4, 5, 6, 7 (reflectance = DN / 1e4, NaN elsewhere);
2. ``cressman(..., radius=10 days, times=<5-day grid>)``: the grid is ``pd.date_range(first date, last
   date, freq="5D")`` of the whole series, so every year has 73 dates (2019: 2019-01-02 .. 2019-12-28);
   history gaps that R = 10 d leaves are filled by a second pass with R = ``--wide-radius`` (30 d) **using
   observations up to the end of the training years only** (no information from the forecast year);
3. normalisation by the global maximum of the clear observations up to the end of the training years;
4. pixel sets from the TCD (upsampled x2 to 10 m by nearest pixel centre): **forest** TCD >= 70 %
   (training pixels: forest + their 4 neighbours, the paper's choice), **open** (non-forest) TCD < 30 %
   (no neighbours); training pixels subsampled to ``--train-pixels`` (20 m open: at most half of the
   class), evaluation pixels = the other pixels of the class (held out in space and time), at most
   ``--eval-pixels``.

Truth (forecast year): the R = 10 d Cressman values of the full series; steps where that is NaN are not
scored (the winter gap). At +10 d (2019-01-07, in the gap) the R = 30 d value is used and marked ``*``.
RMSE per step over bands and pixels (normalized units); "mean" = mean over the scored steps of the year.

Baselines: **persistence** (the last history date repeated), **climatology** (the value at the same 5-day
index one year earlier, per pixel: the reference bar, "clim"), and for multi-year histories the
**multi-year climatology** (mean over the training years at that index, per pixel).

Models (``s2pipe.forecast.fit_dynamics(series)`` with the library's defaults, then
``model.forecast(history, steps=73)``): **RK4** = rollout training, annual clock and the seasonal blend
(``baseline="seasonal"``: the network's forecast mixed 0.5 / 0.5 with the pixel's own seasonal
reference; intervals calibrated on hindcasts inside the training years); **RK4 net only** = the same network
without the blend (weight set to 1: what the library forecast before the blend); **seasonal reference**
= the reference alone (``s2pipe.forecast.seasonal_reference``, weight 0); **RK4 cross-fit blend**
(``--crossfit``, a candidate: the network weight per horizon fitted out of sample, ``crossfit_blend``: a second
network trained without the last training year forecasts that year from its January origin); **RK4 plain (paper)**
(``--paper``, 10 m forest only: one-step training, full state, no clock, no blend).

Intervals: ``model.forecast(history, steps=73, level=0.9)``, calibrated with ``observed`` = the history
values that R = 10 d Cressman estimates (not the R = 30 d fill), so that hindcasts are scored like the
forecast year (``--no-observed``: every value); coverage = share of the scored truth values
within [lower, upper], per lead bucket 0-50, 50-100, 100-200, 200-365 d. Calibration needs a training
series of at least 3 years (hindcasts with targets in 2 years), so shorter splits (``2018:2019``,
``2016-2017:2018``) report no intervals.

Run: ``.venv/bin/python benchmarks/bench_forecast_real.py`` (default split 2016-2018 -> 2019, 4 series:
four default fits of 800 optimizer steps dominate; measured 1060 s with one torch thread on a 2-core
machine shared with 3 other jobs, load ~8, so well under that on a free core); ``--splits 2016-2018:2019,2016-2017:2018,2018:2019`` for other years; ``--quick`` for
a smoke run; ``--figures`` writes out/figures/*.png for the 10 m forest series of the first split.
Results: ``out/forecast_real/table.json`` and ``results.npz`` (for ``forecast_figures.py``).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from s2pipe.cloudmask import mask_clouds
from s2pipe.gapfill import cressman
from s2pipe.ml.pixels import align_mask, as_yx, training_pixels
from s2pipe.normalize import compute_scale, normalize

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "nrt-romania-s2l2a"
HORIZONS = {2: "+10 d", 20: "+100 d", 40: "+200 d"}
BUCKETS = ((0, 50), (50, 100), (100, 200), (200, 366))
RESOLUTIONS = {"10m": "romania_10m.npz", "20m": "romania_20m.npz"}


# ------------------------------------------------------------------------------------------ data
def load_raw(data_dir: Path = DATA, *, name: str = "romania_10m.npz") -> xr.DataArray:
    """The real cube in the raw layout of docs/architecture.md: "dn" uint16 (time, band, y, x), SCL last."""
    from s2pipe.synthetic.scenes import romania_raw_cube

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


def class_masks(tcd: xr.DataArray, cube: xr.DataArray, *, forest: float = 70, open_below: float = 30) -> dict:
    """bool (y, x) masks on the cube grid: "forest" TCD >= forest, "open" TCD < open_below (nodata excluded)."""
    valid = tcd != 255
    return {"forest": align_mask((tcd >= forest) & valid, cube, align="nearest"),
            "open": align_mask((tcd < open_below) & valid, cube, align="nearest")}


def prepare(data_dir: Path = DATA, *, name: str = "romania_10m.npz", train_years=(2016, 2018), test_year: int = 2019,
            radius: float = 10, wide_radius: float = 30) -> dict:
    """Normalized training-years cube (gaps filled from the past only), forecast-year truth, class masks.

    Returns a dict: ``train`` (73·years, band, y, x) normalized, NaN only where even ``wide_radius`` finds no
    past observation; ``truth`` (73, band, y, x) R = ``radius`` values of ``test_year`` (NaN = not scored);
    ``truth_wide`` the same with ``wide_radius``; ``masks`` {"forest", "open"}; ``scale`` (reflectance per
    normalized unit).
    """
    raw = load_raw(data_dir, name=name)
    refl = mask_clouds(raw, clear_classes=(4, 5, 6, 7))
    t = refl.indexes["time"]
    grid = pd.date_range(t[0], t[-1], freq="5D")
    g_train = grid[(grid.year >= train_years[0]) & (grid.year <= train_years[-1])]
    g_test = grid[grid.year == test_year]
    past = refl.sel(time=refl["time"] <= np.datetime64(f"{train_years[-1]}-12-31T23:59"))
    scale = compute_scale(past, method="global_max")
    train10 = cressman(past, radius=radius, times=g_train.values)
    train = train10.fillna(cressman(past, radius=wide_radius, times=g_train.values))
    truth = cressman(refl, radius=radius, times=g_test.values)
    truth_wide = cressman(refl, radius=wide_radius, times=g_test.values)
    norm = lambda da: normalize(da, scale=scale)  # noqa: E731
    return {"train": norm(train), "truth": norm(truth), "truth_wide": norm(truth_wide),
            "observed": np.isfinite(train10), "masks": class_masks(load_tcd(data_dir), refl),
            "scale": float(scale.values[0]),
            "train10_nan_frac": float(np.isnan(train10.values).mean())}


def select_pixels(train: xr.DataArray, mask: xr.DataArray, *, neighbours: bool, train_pixels: int,
                  eval_pixels: int, seed: int = 0):
    """Training pixels (optionally + 4 neighbours, subsampled) and held-out evaluation pixels of ``mask``."""
    n_class = int(mask.sum())
    tr = training_pixels(train, mask=mask, neighbours=neighbours, max_pixels=min(train_pixels, n_class // 2),
                         seed=seed)
    used = np.zeros(mask.shape, bool)
    used[tr["row"].values, tr["col"].values] = True
    held = mask & xr.DataArray(~used, dims=("y", "x"), coords=mask.coords)
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
    """RMSE at the horizons (wide-radius truth where R=10 truth is absent: flagged) and the mean."""
    r10 = rmse_by_step(pred, truth)
    rw = rmse_by_step(pred, truth_wide)
    out = {"mean": float(np.nanmean(r10)), "by_step": r10}
    for k in HORIZONS:
        v = r10[k - 1]
        out[k] = (float(v), False) if np.isfinite(v) else (float(rw[k - 1]), True)
    return out


def baselines(hist: np.ndarray, steps: int, *, years: int) -> dict[str, np.ndarray]:
    """Persistence, climatology (last year, same 5-day index) and the multi-year mean at that index."""
    rep = lambda a: np.concatenate([a] * (steps // 73 + 1))[:steps]  # noqa: E731
    out = {"persistence": np.repeat(hist[-1:], steps, axis=0), "climatology": rep(hist[-73:])}
    if years > 1:
        out[f"climatology {years}-yr mean"] = rep(np.mean([hist[len(hist) - 73 * (k + 1):len(hist) - 73 * k]
                                                           for k in range(years)], axis=0))
    return out


def bucket_coverage(lower, upper, truth, lead_days) -> dict:
    from s2pipe.forecast import interval_coverage

    return interval_coverage(lower, upper, truth, lead_days=lead_days, buckets=BUCKETS)


# ------------------------------------------------------------------------------------------ one series
def run_series(prep: dict, cls: str, *, a, log=print) -> dict:
    """Fit, forecast and score one pixel set of one prepared split; returns a dict of results."""
    from s2pipe.forecast import fit_dynamics, seasonal_reference

    tr, ev = select_pixels(prep["train"], prep["masks"][cls], neighbours=cls == "forest",
                           train_pixels=a.train_pixels, eval_pixels=a.eval_pixels)
    hist = ev.values
    truth = at_pixels(prep["truth"], ev)
    truth_wide = at_pixels(prep["truth_wide"], ev)
    steps = truth.shape[0]
    years = hist.shape[0] // 73
    preds = baselines(hist, steps, years=years)
    info = {"train_pixels": int(tr.sizes["pixel"]), "eval_pixels": int(ev.sizes["pixel"]), "seconds": {}}
    intervals = None
    if not a.baselines_only:
        opts = {} if not a.epochs else {"epochs": a.epochs}
        t0 = time.perf_counter()
        series = as_yx(tr)
        observed = series.copy(data=at_pixels(prep["observed"], tr)[:, :, None, :]) if not a.no_observed else None
        model = fit_dynamics(series, seed=a.seed, observed=observed, **opts)
        h = as_yx(ev)
        calibrated = model.calibration.shape[1] > 0
        if calibrated:
            ds = model.forecast(h, steps=steps, level=a.level)
            preds["RK4"] = ds["mean"].values[:, :, 0, :]
            intervals = (ds["lower"].values[:, :, 0, :], ds["upper"].values[:, :, 0, :])
        else:
            preds["RK4"] = model.forecast(h, steps=steps).values[:, :, 0, :]
        info["seconds"]["RK4"] = time.perf_counter() - t0
        net = copy.copy(model)
        net.blend = np.ones_like(model.blend)  # the network alone, the forecast before the seasonal blend
        preds["RK4 net only"] = net.forecast(h, steps=steps).values[:, :, 0, :]
        ref = seasonal_reference(hist.transpose(0, 2, 1), h["time"].values, prep["truth"]["time"].values,
                                 steps_per_year=73).transpose(0, 2, 1)
        preds["seasonal reference"] = ref
        log(f"    RK4 fitted+forecast in {info['seconds']['RK4']:.0f} s ({model.config.epochs} epochs, "
            f"{model.config.baseline} baseline, network weight {float(model.blend.mean()):.2f}, "
            f"{'calibrated on ' + str(model.calibration.shape[1]) + ' horizons' if calibrated else 'no calibration'})")
        if a.crossfit and years >= 2:
            t0 = time.perf_counter()
            preds["RK4 cross-fit blend"] = crossfit_blend(model, tr, h, prep, steps=steps, seed=a.seed, opts=opts,
                                                          observed=not a.no_observed, log=log)
            info["seconds"]["RK4 cross-fit blend"] = time.perf_counter() - t0
        if a.paper and cls == "forest" and prep["res"] == "10m":
            t0 = time.perf_counter()
            plain = fit_dynamics(as_yx(tr), scheme="rk4", training="one_step", epochs=a.plain_epochs,
                                 batch_size=256, seed=a.seed)
            preds["RK4 plain (paper)"] = plain.forecast(h, steps=steps).values[:, :, 0, :]
            info["seconds"]["RK4 plain (paper)"] = time.perf_counter() - t0
    scores = {name: score(p, truth, truth_wide) for name, p in preds.items()}
    out = {"scores": scores, "info": info, "preds": preds, "hist": hist, "truth": truth, "truth_wide": truth_wide}
    if intervals is not None:
        lead = 5.0 * np.arange(1, steps + 1)
        out["coverage"] = bucket_coverage(*intervals, truth, lead)
        ok = np.isfinite(truth)
        out["coverage_all"] = float(((truth >= intervals[0]) & (truth <= intervals[1]))[ok].mean())
        out["width"] = float((intervals[1] - intervals[0])[np.broadcast_to(ok, intervals[0].shape)].mean())
    return out


def crossfit_blend(model, tr: xr.DataArray, h: xr.DataArray, prep: dict, *, steps: int, seed: int, opts: dict,
                   observed: bool, log=print) -> np.ndarray:
    """The default forecast with a per-horizon network weight fitted out of sample (a candidate, not the default).

    A second network is fitted on the training years less the last one (same pixels, same settings). From the
    start of that last year it forecasts it (the same January origin as the real forecast), as does the seasonal
    reference from the years before; the weight w(h) = argmin sum (truth - ref - w (net - ref))^2 over bands and
    training pixels, clipped to [0, 1] and smoothed over 7 horizons, then replaces the fixed 0.5 of ``model``.
    Returns the (steps, band, pixel) forecast of the evaluation pixels ``h``.
    """
    from s2pipe.forecast import fit_dynamics, seasonal_reference
    from s2pipe.ml.pixels import as_yx

    Y = 73
    series = as_yx(tr)
    sub_obs = None
    if observed:
        sub_obs = series.copy(data=at_pixels(prep["observed"], tr)[:, :, None, :]).isel(time=slice(0, -Y))
    sub = fit_dynamics(series.isel(time=slice(0, -Y)), seed=seed, observed=sub_obs, **opts)
    net_only = copy.copy(sub)
    net_only.blend = np.ones_like(sub.blend)
    net = net_only.forecast(series.isel(time=slice(0, -Y)), steps=Y).values[:, :, 0, :]  # (Y, band, P)
    v = tr.values  # (T, band, P)
    times = tr["time"].values
    ref = seasonal_reference(v[:-Y].transpose(0, 2, 1), times[:-Y], times[-Y:], steps_per_year=Y).transpose(0, 2, 1)
    truth = v[-Y:].copy()
    if observed:
        truth[~at_pixels(prep["observed"], tr)[-Y:]] = np.nan
    d, e = net - ref, truth - ref
    ok = np.isfinite(e) & np.isfinite(d)
    num = np.where(ok, d * e, 0).sum(axis=(1, 2))
    den = np.where(ok, d * d, 0).sum(axis=(1, 2))
    w = np.clip(np.where(den > 0, num / np.maximum(den, 1e-12), 0.5), 0, 1)
    w = np.convolve(np.pad(w, 3, mode="edge"), np.ones(7) / 7, mode="valid")
    log(f"    cross-fit network weight by horizon: +10 d {w[1]:.2f}, +100 d {w[19]:.2f}, +200 d {w[39]:.2f}, "
        f"mean {w.mean():.2f}")
    cf = copy.copy(model)
    cf.blend = np.repeat(w[:, None], v.shape[1], axis=1)
    return cf.forecast(h, steps=steps).values[:, :, 0, :]


def print_series(title: str, res: dict, scale: float) -> None:
    s = res["scores"]
    clim = s["climatology"]
    print(f"\n{title}  ({res['info']['train_pixels']} training px, {res['info']['eval_pixels']} evaluation px)")
    print(f"  {'model':<26}" + "".join(f"{h:>11}" for h in HORIZONS.values()) + f"{'mean':>11}"
          + "   ratio to clim +100/+200/mean")
    for name, r in s.items():
        cells = "".join(f"{r[k][0]:>10.2e}{'*' if r[k][1] else ' '}" for k in HORIZONS)
        ratio = f"{r[20][0] / clim[20][0]:.3f} / {r[40][0] / clim[40][0]:.3f} / {r['mean'] / clim['mean']:.3f}"
        print(f"  {name:<26}{cells}{r['mean']:>11.2e}   {ratio}")
    if "coverage" in res:
        cells = "  ".join(f"{lo}-{hi if hi < 366 else 365} d {c:.1%} (n={n})" for (lo, hi), (c, n) in res["coverage"].items())
        print(f"  90 % interval coverage: {cells}; all {res['coverage_all']:.1%}; mean width {res['width']:.2e} "
              f"(= {res['width'] * scale:.4f} reflectance)")


# ------------------------------------------------------------------------------------------ main
def parse_split(text: str):
    a, b = text.split(":")
    ys = [int(x) for x in a.split("-")]
    return (ys[0], ys[-1]), int(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--splits", default="2016-2018:2019",
                    help="comma-separated TRAIN_FIRST-TRAIN_LAST:FORECAST_YEAR (e.g. 2016-2018:2019,2018:2019)")
    ap.add_argument("--resolutions", default="10m,20m")
    ap.add_argument("--classes", default="forest,open")
    ap.add_argument("--train-pixels", type=int, default=200)
    ap.add_argument("--eval-pixels", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=0, help="RK4 epochs (0: fit_dynamics' default)")
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paper", action="store_true", help="also fit the paper's plain RK4 (10 m forest)")
    ap.add_argument("--crossfit", action="store_true",
                    help="also score a candidate: the network weight per horizon fitted out of sample (crossfit_blend)")
    ap.add_argument("--plain-epochs", type=int, default=150, help="epochs of the paper's one-step training")
    ap.add_argument("--wide-radius", type=float, default=30)
    ap.add_argument("--baselines-only", action="store_true")
    ap.add_argument("--no-observed", action="store_true",
                    help="calibrate on every history value (also the R=30 d gap fill), not only the R=10 d ones")
    ap.add_argument("--figures", action="store_true", help="write out/figures/forecast_*.png")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "forecast_real")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 m forest only, few pixels and epochs")
    a = ap.parse_args(argv)
    if a.quick:
        a.train_pixels, a.eval_pixels, a.epochs, a.plain_epochs = 60, 200, 3, 3
        a.resolutions, a.classes = "10m", "forest"
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    table, figure_data = {}, None
    for split in a.splits.split(","):
        train_years, test_year = parse_split(split)
        for res in a.resolutions.split(","):
            prep = prepare(a.data, name=RESOLUTIONS[res], train_years=train_years, test_year=test_year,
                           wide_radius=a.wide_radius)
            prep["res"] = res
            print(f"\n=== {res} {train_years[0]}-{train_years[1]} -> {test_year}: bands "
                  f"{[str(b) for b in prep['train']['band'].values]}, scale {prep['scale']:.4f} reflectance, "
                  f"history {prep['train'].sizes['time']} dates ({prep['train10_nan_frac']:.1%} NaN after R=10 d, "
                  f"filled from the past with R={a.wide_radius:g} d), {time.perf_counter() - t0:.0f} s", flush=True)
            for cls in a.classes.split(","):
                r = run_series(prep, cls, a=a)
                key = f"{res} {cls} {train_years[0]}-{train_years[1]}->{test_year}"
                print_series(key, r, prep["scale"])
                sys.stdout.flush()
                table[key] = {
                    "scores": {n: {str(k): v for k, v in sc.items() if k != "by_step"} for n, sc in r["scores"].items()},
                    "ratio_to_climatology": {n: {str(k): (sc[k][0] / r["scores"]["climatology"][k][0]) for k in HORIZONS}
                                             | {"mean": sc["mean"] / r["scores"]["climatology"]["mean"]}
                                             for n, sc in r["scores"].items()},
                    "coverage": {f"{lo}-{hi}": c for (lo, hi), c in r.get("coverage", {}).items()},
                    "info": r["info"]}
                if figure_data is None and res == "10m" and cls == "forest":
                    figure_data = (r, prep)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")

    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.json").write_text(json.dumps(table, indent=1, default=float))
    if figure_data is not None:
        r, prep = figure_data
        t_train = prep["train"]["time"].values[-73:]
        t_test = prep["truth"]["time"].values
        preds = r["preds"]
        np.savez_compressed(a.out / "results.npz", hist=r["hist"][-73:], truth=r["truth"], truth_wide=r["truth_wide"],
                            t_train=t_train.astype("datetime64[D]").astype(str),
                            t_test=t_test.astype("datetime64[D]").astype(str),
                            bands=np.array([str(b) for b in prep["train"]["band"].values]), scale=prep["scale"],
                            names=np.array(list(preds)), **{f"pred_{k.replace(' ', '_')}": v for k, v in preds.items()})
        if a.figures:
            sys.path.insert(0, str(Path(__file__).parent))
            from forecast_figures import make_figures

            for p in make_figures(a.out / "results.npz", REPO / "out" / "figures"):
                print(f"figure: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Figures of the real-data forecast (paper Fig. 4 and a Fig. 3-style phase diagram) as PNGs.

Reads ``out/forecast_real/results.npz`` written by ``bench_forecast_real.py`` and writes

* ``out/figures/forecast_fig4_spectra.png``: one held-out forest pixel's spectra (reflectance against
  band, one curve per date coloured by day of year), (a) the 2018 training year, (b) the 2019 truth
  (R = 10 d Cressman; dates without truth omitted), (c) the 2019 RK4 forecast (73 dates);
* ``out/figures/forecast_fig3_phase.png``: phase diagram s vs s' (s' = left difference per 5-day step)
  of band B08 for the same pixel: 2018 truth, 2019 truth, and each model's 2019 forecast;
* ``out/figures/forecast_rmse.png``: RMSE against lead time for every model and baseline.

Run: ``.venv/bin/python benchmarks/forecast_figures.py [results.npz] [out_dir]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _pick_pixel(hist: np.ndarray, truth: np.ndarray) -> int:
    """The evaluation pixel with the most scored 2019 values (ties: the first)."""
    return int(np.argmax(np.isfinite(truth).all(axis=1).sum(axis=0)))


def make_figures(results: Path, out_dir: Path, *, pixel: int | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.load(results, allow_pickle=False)
    scale = float(z["scale"])
    hist, truth = z["hist"] * scale, z["truth"] * scale  # reflectance
    bands = [str(b) for b in z["bands"]]
    t_train = np.array(z["t_train"], dtype="datetime64[D]")
    t_test = np.array(z["t_test"], dtype="datetime64[D]")
    names = [str(n) for n in z["names"]]
    preds = {n: z["pred_" + n.replace(" ", "_")] * scale for n in names}
    p = _pick_pixel(hist, truth) if pixel is None else pixel
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    # ---- Fig. 4: spectra through the year
    model = "RK4" if "RK4" in preds else names[0]
    doy = lambda t: (t - t.astype("datetime64[Y]")).astype(int)  # noqa: E731
    panels = [(f"(a) {t_train[0].astype('datetime64[Y]')} training year (gap-filled)", hist[:, :, p], t_train),
              (f"(b) {t_test[0].astype('datetime64[Y]')} truth (R = 10 d Cressman)", truth[:, :, p], t_test),
              (f"(c) {t_test[0].astype('datetime64[Y]')} {model} forecast, 73 dates", preds[model][:, :, p], t_test)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    cmap = plt.get_cmap("viridis")
    xb = np.arange(len(bands))
    for ax, (title, s, t) in zip(axes, panels):
        d = doy(t)
        for i in range(s.shape[0]):
            if np.isfinite(s[i]).all():
                ax.plot(xb, s[i], color=cmap(d[i] / 365), lw=1, alpha=0.8)
        ax.set_xticks(xb, bands)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("band")
    axes[0].set_ylabel("surface reflectance")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 365))
    fig.colorbar(sm, ax=axes, label="day of year", fraction=0.02)
    fig.suptitle(f"Fig. 4 (Romania, held-out forest pixel #{p}): spectra through the year")
    path = out_dir / "forecast_fig4_spectra.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    # ---- Fig. 3: phase diagram s vs s' for B08
    b = bands.index("B08") if "B08" in bands else len(bands) - 1
    fig, ax = plt.subplots(figsize=(6.5, 5.5))

    def phase(series, **kw):
        s = series[:, b]
        ax.plot(s[1:], np.diff(s), **kw)

    phase(hist[:, :, p], color="0.6", lw=1, marker=".", label="2018 truth (training)")
    phase(truth[:, :, p], color="k", lw=2, marker="o", ms=3, label="2019 truth")
    for n, c in zip([n for n in names if n not in ("persistence", "climatology")], plt.get_cmap("tab10").colors):
        phase(preds[n][:, :, p], color=c, lw=1.3, label=f"2019 {n}")
    ax.set_xlabel(f"s ({bands[b]} reflectance)")
    ax.set_ylabel("s' (difference per 5-day step)")
    ax.set_title(f"Phase diagram, {bands[b]}, pixel #{p}")
    ax.legend(fontsize=8)
    path = out_dir / "forecast_fig3_phase.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)

    # ---- RMSE by lead
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lead = 5 * np.arange(1, truth.shape[0] + 1)
    ok = np.isfinite(truth)
    for n in names:
        e2 = np.where(ok, (preds[n] - truth) ** 2, 0).sum(axis=(1, 2))
        cnt = ok.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            ax.plot(lead, np.sqrt(e2 / cnt) / scale, label=n, lw=2 if n.startswith("RK4") else 1)
    if "members" in z.files:
        m = z["members"] * scale
        mean, sd = m.mean(0), m.std(0, ddof=1)
        cov = [np.mean(np.abs(truth[k] - mean[k])[ok[k]] <= 2 * sd[k][ok[k]]) if ok[k].any() else np.nan
               for k in range(len(lead))]
        ax2 = ax.twinx()
        ax2.plot(lead, cov, "k:", lw=1, label="ensemble 2σ coverage")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("fraction within mean ± 2σ (dotted)")
    for k, v in {10: 5.0e-2, 100: 7.3e-2, 200: 1.3e-1}.items():
        ax.plot(k, v, "r*", ms=10)
    ax.set_xlabel("lead (days after 2018-12-28)")
    ax.set_ylabel("RMSE (normalized units)")
    ax.set_title("RMSE vs lead, held-out forest pixels (red stars: paper)")
    ax.legend(fontsize=8)
    path = out_dir / "forecast_rmse.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)
    return paths


if __name__ == "__main__":
    res = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "out" / "forecast_real" / "results.npz"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "out" / "figures"
    for q in make_figures(res, out):
        print(q)

"""Quick-look PNG of a finished cube: an RGB date before and after gap filling, and one pixel's series."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from s2pipe.bands import DEFAULT_CLEAR_CLASSES  # noqa: E402
from s2pipe.normalize import invert  # noqa: E402


def _rgb(arr: np.ndarray) -> np.ndarray:
    """(3, y, x) reflectance -> (y, x, 3) display image (0..0.3 stretch, gamma 1/1.6)."""
    img = np.clip(np.nan_to_num(arr, nan=0.0) / 0.3, 0, 1) ** (1 / 1.6)
    return np.moveaxis(img, 0, -1)


def quicklook(
    raw: xr.DataArray,
    cube: xr.Dataset,
    path: str | Path,
    *,
    rgb: tuple[str, str, str] = ("B04", "B03", "B02"),
    series_band: str = "B08",
    target_cloud_fraction: float = 0.35,
) -> Path:
    """Save a PNG: raw RGB of a partly cloudy date, the same date gap-filled, and a pixel's time series.

    ``raw`` is the DN cube of ``s2pipe.cube.build_cube`` (with SCL); ``cube`` the written Dataset
    (``reflectance`` normalized, ``observed``). Only the slices shown are computed.
    """
    path = Path(path)
    clear_classes = tuple(cube.attrs.get("parameters", {}).get("clear_classes", DEFAULT_CLEAR_CLASSES))
    stride = max(1, max(raw.sizes["y"], raw.sizes["x"]) // 128)
    scl = raw.sel(band="SCL").isel(y=slice(None, None, stride), x=slice(None, None, stride)).values
    cloudy = ~np.isin(scl, clear_classes) & (scl != 0)
    frac = cloudy.mean(axis=(1, 2))
    out_times = set(cube.time.values.tolist())
    shared = [i for i, t in enumerate(raw.time.values.tolist()) if t in out_times]
    if not shared:
        shared = list(range(raw.sizes["time"]))
    ti = min(shared, key=lambda i: abs(frac[i] - target_cloud_fraction))
    t = raw.time.values[ti]

    def to_reflectance(da: xr.DataArray) -> np.ndarray:
        da = da.compute()
        refl = da.astype("float32")
        if "scale" in da.coords:
            refl = refl * da["scale"] + da["offset"]
        return refl.where(da != 0).values

    raw_rgb = to_reflectance(raw.sel(time=t, band=list(rgb)))
    refl = invert(cube["reflectance"])
    filled_t = refl.sel(time=t, method="nearest")
    filled_rgb = filled_t.sel(band=list(rgb)).values

    # the pixel: cloudy on the chosen date, nearest the centre of the image
    cy, cx = np.nonzero(cloudy[ti])
    if len(cy):
        centre = np.array(cloudy[ti].shape) / 2
        k = np.argmin((cy - centre[0]) ** 2 + (cx - centre[1]) ** 2)
        py, px = int(cy[k] * stride), int(cx[k] * stride)
    else:
        py, px = raw.sizes["y"] // 2, raw.sizes["x"] // 2
    series_raw = to_reflectance(raw.sel(band=series_band).isel(y=py, x=px))
    series_scl = raw.sel(band="SCL").isel(y=py, x=px).values
    clear = np.isin(series_scl, clear_classes)
    series_filled = refl.sel(band=series_band).isel(y=py, x=px).values

    fig = plt.figure(figsize=(14, 8.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.25, 1])
    date = str(np.datetime_as_string(t, unit="D"))
    for col, (img, title) in enumerate(
        [(raw_rgb, f"{date}: observed RGB ({frac[ti]:.0%} cloud/shadow)"), (filled_rgb, f"{date}: after Cressman gap filling")]
    ):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(_rgb(img), interpolation="nearest")
        ax.plot(px, py, marker="s", mfc="none", mec="magenta", ms=10, mew=2)
        ax.set_title(title)
        ax.set_axis_off()
    ax = fig.add_subplot(grid[1, :])
    tr = raw.time.values
    ax.plot(cube.time.values, series_filled, "-", color="tab:green", lw=1.5, label="gap-filled (Cressman)")
    ax.plot(tr[clear], series_raw[clear], "o", color="black", ms=4, label="clear observation")
    ax.plot(tr[~clear], series_raw[~clear], "x", color="tab:red", ms=5, label="cloudy / shadow (masked)")
    ax.axvline(t, color="magenta", lw=1, ls="--")
    ax.set_ylabel(f"{series_band} reflectance")
    ax.set_title(f"pixel (row {py}, col {px})")
    ax.set_ylim(0, max(0.6, float(np.nanmax(series_filled)) * 1.2 if np.isfinite(series_filled).any() else 0.6))
    ax.legend(loc="upper right", ncol=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

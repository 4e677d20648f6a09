"""Quick-look PNGs: of a finished cube (an RGB date before and after gap filling, and one pixel's series) and of
a land-cover map (image, labels, prediction, optionally a change map)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from s2pipe.bands import DEFAULT_CLEAR_CLASSES  # noqa: E402
from s2pipe.normalize import invert  # noqa: E402

__all__ = ["quicklook", "map_quicklook"]


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

    # the images are shown at most ~1024 px wide: a larger one costs seconds of resampling for the same PNG
    step = max(1, -(-max(raw.sizes["y"], raw.sizes["x"]) // 1024))
    thin = {"y": slice(None, None, step), "x": slice(None, None, step)}
    raw_rgb = to_reflectance(raw.sel(time=t, band=list(rgb)).isel(thin))
    refl = invert(cube["reflectance"])
    filled_t = refl.sel(time=t, method="nearest")
    filled_rgb = filled_t.sel(band=list(rgb)).isel(thin).values

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
        ax.plot(px / step, py / step, marker="s", mfc="none", mec="magenta", ms=10, mew=2)
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


def map_quicklook(
    images: xr.DataArray | None,
    class_map: xr.DataArray,
    path: str | Path,
    *,
    labels: xr.DataArray | None = None,
    earlier: xr.DataArray | None = None,
    change: xr.DataArray | None = None,
    rgb: tuple[str, str, str] = ("B04", "B03", "B02"),
    title: str | None = None,
) -> Path:
    """Save a PNG of a land-cover map, side by side with legends of class names: the image's last date (RGB,
    2–98 % stretch; none when ``images`` is None), the labels, an earlier map, the predicted classes, the change
    map (each when given).

    ``images`` (time, band, y, x) (bands ``rgb`` if present, else its first three, or one band in grey);
    ``class_map``/``labels``/``earlier``/``change`` (y, x) integer maps with ``classes`` names and ``nodata``
    attributes (``labels`` may use -1 for unlabelled). Only the last date of ``images`` is computed.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from s2pipe.products.maps import (
        CHANGE_COLORS,
        CHANGE_NAMES,
        class_colormap,
        class_names,
    )

    path = Path(path)

    panels: list[tuple[str, np.ndarray, dict[int, str], dict[int, tuple]]] = []

    def categorical(da: xr.DataArray, what: str, fixed: dict[int, str] | None = None, colors=None):
        values = np.asarray(da.values).astype(np.int64)
        nodata = int(da.attrs.get("nodata", 255))
        names = fixed or class_names(da, None)
        ids = sorted(set(names) | {int(v) for v in np.unique(values) if v >= 0 and v != nodata})
        cmap = class_colormap(ids, names, colors, nodata)
        panels.append((what, values, {i: names.get(i, f"class {i}") for i in ids}, cmap))

    if labels is not None:
        categorical(labels, "labels")
    if earlier is not None:
        categorical(earlier, "earlier map")
    mode = class_map.attrs.get("mapping_mode")
    categorical(class_map, ("later map" if earlier is not None else "prediction") + (f" ({mode})" if mode else ""))
    if change is not None:
        categorical(change, "change (" + ", ".join(change.attrs.get("target_names", [])) + ")", CHANGE_NAMES,
                    {**CHANGE_COLORS, 0: (235, 235, 235, 255)})

    n = (images is not None) + len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 5.2), constrained_layout=True, squeeze=False)
    axes = list(axes[0])
    if images is not None:
        img, date = _display_image(images, rgb)
        axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        axes[0].set_title(f"image {date}" + (f" ({'/'.join(map(str, rgb))})" if img.ndim == 3 else ""))
    for ax, (what, values, names, cmap) in zip(axes[n - len(panels):], panels):
        ids = sorted(names)
        lut = np.full(values.shape, len(ids), dtype=np.int64)  # len(ids): unlabelled / nodata (white)
        for k, cid in enumerate(ids):
            lut[values == cid] = k
        colours = [tuple(c / 255 for c in cmap.get(cid, (128, 128, 128, 255))[:3]) for cid in ids] + [(1, 1, 1)]
        ax.imshow(lut, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(ids) + 0.5, interpolation="nearest")
        ax.set_title(what)
        ax.legend(handles=[Patch(color=colours[k], label=f"{cid} {names[cid]}") for k, cid in enumerate(ids)],
                  loc="lower left", fontsize=8, framealpha=0.8)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _display_image(images: xr.DataArray, rgb: tuple[str, str, str]) -> tuple[np.ndarray, str]:
    """The last date of (time, band, y, x) ``images`` as a 2–98 % stretched RGB (or grey) image, and its date."""
    last = images.isel(time=-1)
    names = last["band"].values.tolist() if "band" in last.coords else []
    pick = [names.index(b) for b in rgb] if all(b in names for b in rgb) else list(range(min(3, last.sizes["band"])))
    if len(pick) == 2:
        pick = pick[:1]
    img = np.asarray(last.isel(band=pick).values, dtype=np.float32)
    lo, hi = np.nanpercentile(img, 2), np.nanpercentile(img, 98)
    img = np.clip((np.nan_to_num(img, nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1)
    img = np.moveaxis(img, 0, -1) if img.shape[0] == 3 else img[0]
    date = str(np.asarray(last["time"].values))[:10] if "time" in last.coords else "last date"
    return img, date

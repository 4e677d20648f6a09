"""Checks and small conversions of mapper inputs, shared by every mapper (``s2pipe.mapping``, ``s2pipe.ml.trees``).

Each check returns the input in the form the mappers use, or raises ``InputError`` naming the argument, the
value and the fix."""
from __future__ import annotations

import numpy as np
import xarray as xr

from s2pipe.errors import InputError

__all__ = ["check_images", "check_labels", "class_names", "positive_int", "spatial_coords", "training_bands"]


def check_images(images, *, argument: str = "images", min_dates: int = 1) -> xr.DataArray:
    if not isinstance(images, xr.DataArray):
        raise InputError(f"{argument} must be an xarray.DataArray with dims ('time', 'band', 'y', 'x'), "
                         f"got {type(images).__name__}")
    if set(images.dims) != {"time", "band", "y", "x"}:
        raise InputError(f"{argument} has dims {images.dims}; it needs ('time', 'band', 'y', 'x') "
                         "(transpose/rename, or expand_dims('time') for a single date)")
    images = images.transpose("time", "band", "y", "x")
    T = images.sizes["time"]
    if T < min_dates:
        raise InputError(f"{argument} has {T} dates but at least {min_dates} are needed (seq_len); pass more dates "
                         f"or a smaller seq_len")
    if "time" in images.coords and T > 1:
        t = images["time"].values
        try:
            ok = bool(np.all(t[1:] > t[:-1]))
        except TypeError:
            ok = True
        if not ok:
            raise InputError(f"{argument}'s time coordinate is not strictly increasing; sortby('time') first")
    if not np.issubdtype(images.dtype, np.number) or np.issubdtype(images.dtype, np.complexfloating):
        raise InputError(f"{argument} has dtype {images.dtype}; pass real numbers (reflectance)")
    return images


def check_labels(labels, images: xr.DataArray) -> np.ndarray:
    """(y, x) labels → int64 array, negative (and NaN) = unlabelled."""
    if not isinstance(labels, xr.DataArray):
        raise InputError(f"labels must be an xarray.DataArray with dims ('y', 'x'), got {type(labels).__name__}")
    if set(labels.dims) != {"y", "x"}:
        raise InputError(f"labels has dims {labels.dims}; it needs ('y', 'x') (one class id per pixel)")
    labels = labels.transpose("y", "x")
    shape, want = (labels.sizes["y"], labels.sizes["x"]), (images.sizes["y"], images.sizes["x"])
    if shape != want:
        raise InputError(f"labels is {shape[0]}×{shape[1]} (y×x) but images is {want[0]}×{want[1]}; pass labels on "
                         "the grid of images (e.g. labels.interp_like / rasterize on grid_of(images))")
    for d in ("y", "x"):
        if d in labels.coords and d in images.coords:
            a, b = labels[d].values, images[d].values
            if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
                same = np.allclose(a, b, rtol=0, atol=1e-6 * max(1.0, float(np.nanmax(np.abs(b)))))
            else:
                same = np.array_equal(a, b)
            if not same:
                raise InputError(f"labels' {d} coordinate differs from images' (first values {a[:2].tolist()} vs "
                                 f"{b[:2].tolist()}); pass labels on the grid of images (labels.reindex_like(images))")
    v = np.asarray(labels.values)
    if np.issubdtype(v.dtype, np.floating):
        finite = np.isfinite(v)
        if np.any(v[finite] != np.round(v[finite])):
            raise InputError("labels holds non-integer values; pass integer class ids (-1 = unlabelled)")
        v = np.where(finite, v, -1)
    elif not np.issubdtype(v.dtype, np.integer):
        raise InputError(f"labels has dtype {v.dtype}; pass integer class ids (-1 = unlabelled)")
    return v.astype(np.int64)


def training_bands(images: xr.DataArray, bands: list) -> xr.DataArray:
    """``images`` reduced to a trained mapper's ``bands``, in their order (by the band coordinate when it has one;
    otherwise the band count must match)."""
    if "band" in images.coords:
        missing = [b for b in bands if b not in set(images["band"].values.tolist())]
        if missing:
            raise InputError(f"images lacks the training bands {missing}; pass images with bands {bands}")
        return images.sel(band=bands)
    if images.sizes["band"] != len(bands):
        raise InputError(f"images has {images.sizes['band']} bands but the mapper was trained on "
                         f"{len(bands)} ({bands}); select those bands")
    return images


def class_names(labels, classes: np.ndarray) -> dict[str, str]:
    """{id: name} of the trained classes from a labels ``classes`` attribute ({} when it has none)."""
    given = getattr(labels, "attrs", {}).get("classes")
    if not isinstance(given, dict):
        return {}
    names = {str(k).strip(): str(v) for k, v in given.items()}
    return {str(int(c)): names[str(int(c))] for c in classes if str(int(c)) in names}


def positive_int(name: str, value, *, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise InputError(f"{name}={value!r} must be an integer >= {lo}")
    return int(value)


def spatial_coords(da: xr.DataArray) -> dict:
    """Coordinates without time/band dims (x, y, spatial_ref, …)."""
    return {n: c for n, c in da.coords.items() if not ({"time", "band"} & set(c.dims)) and n not in ("time", "band")}

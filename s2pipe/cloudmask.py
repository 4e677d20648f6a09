"""Cloud masking from the Sen2Cor scene classification (SCL) and DN -> reflectance scaling.

``mask_clouds`` turns the raw ``"dn"`` cube of ``s2pipe.cube.build_cube`` (uint16, (time, band, y, x),
SCL as one band) into float32 reflectance with NaN wherever the pixel is nodata (DN 0) or not clear.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np
import xarray as xr

from s2pipe.bands import DEFAULT_CLEAR_CLASSES, SCL, SCL_CLASSES
from s2pipe.errors import InputError

__all__ = ["DEFAULT_CLEAR_CLASSES", "DEFAULT_SCALE", "DEFAULT_OFFSET", "clear_mask", "observed_mask", "mask_clouds",
           "mask_array", "clear_band_max"]

DEFAULT_SCALE = 1e-4
"""Reflectance per DN when the cube carries no ``scale`` coordinate."""
DEFAULT_OFFSET = 0.0


def _check_classes(clear_classes) -> tuple[int, ...]:
    """Validate SCL classes: a non-empty collection of ints in 0..11."""
    if isinstance(clear_classes, numbers.Integral) and not isinstance(clear_classes, bool):
        clear_classes = (clear_classes,)
    if isinstance(clear_classes, (str, bytes)) or not isinstance(clear_classes, Iterable):
        raise InputError(
            f"clear_classes={clear_classes!r} is not a collection of SCL classes; pass e.g. clear_classes=(4, 5, 6, 7)"
        )
    out = []
    for c in clear_classes:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or int(c) not in SCL_CLASSES:
            valid = ", ".join(f"{k} {v}" for k, v in SCL_CLASSES.items())
            raise InputError(f"SCL class {c!r} in clear_classes is not an SCL code; choose among {valid}")
        out.append(int(c))
    if not out:
        raise InputError("clear_classes is empty, which would mask every pixel; pass e.g. clear_classes=(4, 5, 6, 7)")
    return tuple(sorted(set(out)))


def _lut(classes: tuple[int, ...]) -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[list(classes)] = True
    return lut


def _clear_array(scl: np.ndarray, *, lut: np.ndarray) -> np.ndarray:
    """NumPy kernel: bool array, True where the SCL code is in the lookup table (NaN / out of range -> False)."""
    scl = np.asarray(scl)
    if scl.dtype == np.uint8:
        return lut[scl]
    if np.issubdtype(scl.dtype, np.integer):  # lut[255] is False, so clipping keeps out-of-range codes unclear
        return lut[np.minimum(scl, 255) if scl.dtype.kind == "u" else np.clip(scl, 0, 255)]
    ok = np.isfinite(scl) & (scl >= 0) & (scl < 256)
    return lut[np.where(ok, scl, 255).astype(np.intp)]


def mask_array(dn: np.ndarray, scl: np.ndarray, scale, offset, *, lut: np.ndarray) -> np.ndarray:
    """NumPy kernel: float32 reflectance ``dn·scale + offset``, NaN where ``dn == 0`` or SCL is not clear.

    All inputs broadcast against each other (e.g. dn (T, B, Y, X), scl (T, 1, Y, X), scale (T, B, 1, 1)).
    Each value is computed in float64 and rounded once to float32 (DN 1005 · 1e-4 gives float32(0.1005)
    exactly). For uint16 (time, band, y, x) DN with one scale and offset per (date, band), the values come from a
    65,536-entry table per distinct (scale, offset) pair: 2x faster than the arithmetic, bit-identical to it.
    """
    dn = np.asarray(dn)
    scale = np.asarray(scale, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    if dn.dtype == np.uint16 and dn.ndim == 4 and all(_per_lead(v, dn.ndim) for v in (scale, offset)):
        return _mask_by_table(dn, scl, scale, offset, lut=lut)
    refl = np.multiply(dn, scale, dtype=np.float64)
    refl += offset
    out = refl.astype(np.float32)
    bad = dn == 0
    bad |= ~_clear_array(scl, lut=lut)
    np.copyto(out, np.float32(np.nan), where=bad)
    return out


def _per_lead(v: np.ndarray, ndim: int) -> bool:
    """True when ``v`` broadcasts against an ``ndim``-d array and varies at most along its first two axes."""
    return v.ndim <= ndim and all(n == 1 for n in ((1,) * (ndim - v.ndim) + v.shape)[2:])


def _mask_by_table(dn: np.ndarray, scl, scale: np.ndarray, offset: np.ndarray, *, lut: np.ndarray) -> np.ndarray:
    """``mask_array`` for uint16 ``dn`` whose scale/offset vary only along its first two axes."""
    lead = dn.shape[:2]
    sc, of = (np.broadcast_to(v.reshape((1,) * (dn.ndim - v.ndim) + v.shape), lead + (1, 1))[:, :, 0, 0]
              for v in (scale, offset))
    out = np.empty(dn.shape, dtype=np.float32)
    tables: dict[tuple[float, float], np.ndarray] = {}
    codes = np.arange(65536, dtype=np.float64)
    for i in np.ndindex(*lead):
        key = (float(sc[i]), float(of[i]))
        table = tables.get(key)
        if table is None:
            table = tables[key] = (codes * key[0] + key[1]).astype(np.float32)
            table[0] = np.nan  # DN 0 = nodata
        np.take(table, dn[i], out=out[i])
    np.copyto(out, np.float32(np.nan), where=~_clear_array(scl, lut=lut))
    return out


def clear_mask(scl: xr.DataArray, *, clear_classes=DEFAULT_CLEAR_CLASSES) -> xr.DataArray:
    """Clear-sky mask from the SCL band: True where the SCL class is clear. Lazy with Dask.

    Parameters
    ----------
    scl : xarray.DataArray
        SCL codes, usually (time, y, x), e.g. ``cube.sel(band="SCL")``.
    clear_classes : int or iterable of int, default ``DEFAULT_CLEAR_CLASSES``
        SCL codes (0..11) counted as clear (default 4 vegetation, 5 bare, 6 water, 7 unclassified; add 11 to
        keep snow).

    Returns
    -------
    xarray.DataArray
        ``"clear"`` bool with the dims and coordinates of ``scl`` (usually (time, y, x)); False for NaN and
        out-of-range codes. Attributes: ``long_name``, ``clear_classes`` (sorted list).

    Raises
    ------
    InputError
        ``scl`` is not a DataArray, or ``clear_classes`` is empty or holds a value that is not an SCL code.
    """
    if not isinstance(scl, xr.DataArray):
        raise InputError(f"clear_mask expects the SCL xarray.DataArray, got {type(scl).__name__}; pass cube.sel(band='SCL')")
    lut = _lut(_check_classes(clear_classes))
    out = xr.apply_ufunc(
        _clear_array,
        scl,
        kwargs={"lut": lut},
        dask="parallelized",
        output_dtypes=[bool],
        keep_attrs=False,
    )
    out.name = "clear"
    out.attrs = {"long_name": "clear-sky mask from SCL", "clear_classes": list(_check_classes(clear_classes))}
    return out


def _split_cube(cube: xr.DataArray, clear_classes, scl_band: str, what: str):
    """Validated parts of a raw cube: (dn (time, band, y, x) spectral, scl (time, y, x), scale, offset, lut)."""
    if not isinstance(cube, xr.DataArray):
        raise InputError(f"{what} expects the raw cube xarray.DataArray, got {type(cube).__name__}; pass cube=build_cube(...)")
    if "band" not in cube.dims:
        raise InputError(f"cube {cube.name!r} has dims {cube.dims} but no 'band' dim; pass the (time, band, y, x) cube")
    lut = _lut(_check_classes(clear_classes))
    bands = [str(b) for b in cube["band"].values]
    if scl_band not in bands:
        raise InputError(
            f"cube {cube.name!r} has no SCL band {scl_band!r} (bands: {bands}); "
            "build it with include_scl=True or pass scl_band= the name of the scene-classification band"
        )
    spectral = [b for b in bands if b != scl_band]
    if not spectral:
        raise InputError(f"cube {cube.name!r} holds only the SCL band {scl_band!r}; add spectral bands to it")

    def coord(name: str, default: float) -> xr.DataArray:
        if name in cube.coords:
            return cube.coords[name].sel(band=spectral).reset_coords(drop=True).astype(np.float64)
        return xr.DataArray(np.float64(default))

    scale = coord("scale", DEFAULT_SCALE)
    offset = coord("offset", DEFAULT_OFFSET)
    drop = [c for c in ("scale", "offset") if c in cube.coords]
    dn = cube.drop_vars(drop).sel(band=spectral)
    # Keep the same-dims coords of dn only once: strip them from the other inputs.
    scl = cube.drop_vars(drop).sel(band=scl_band, drop=True).reset_coords(drop=True)
    return dn, scl, scale, offset, lut


def observed_mask(cube: xr.DataArray, *, clear_classes=DEFAULT_CLEAR_CLASSES) -> xr.DataArray:
    """Bool (time, y, x): the pixels of a raw cube that are clear observations.

    A pixel is observed on a date when its SCL class is in ``clear_classes`` and the cube's first band has data
    there (DN > 0). This is the ``observed`` variable of the output store.

    Parameters
    ----------
    cube
        Raw cube ``"dn"`` (time, band, y, x) with an ``SCL`` band (``build_cube(..., include_scl=True)``).
    clear_classes
        SCL codes counted as clear (see ``clear_mask``).
    """
    if "band" not in cube.dims or "SCL" not in set(cube.band.values.tolist()):
        raise InputError("observed_mask needs the raw cube with its SCL band; build it with include_scl=True (argument: cube)")
    return clear_mask(cube.sel(band="SCL"), clear_classes=clear_classes) & (cube.isel(band=0) > 0)


def mask_clouds(cube: xr.DataArray, *, clear_classes=DEFAULT_CLEAR_CLASSES, scl_band: str = SCL) -> xr.DataArray:
    """Raw ``"dn"`` cube (time, band, y, x) uint16 with an SCL band -> float32 reflectance with NaN.

    reflectance = DN·scale + offset from the ``scale``/``offset`` coords (time, band), or 1e-4 and 0 when absent,
    computed in float64 and rounded once to float32; NaN where DN == 0 (nodata) or the SCL class is not in
    ``clear_classes``. Lazy and chunk-wise with Dask.

    Parameters
    ----------
    cube : xarray.DataArray
        Raw cube ``"dn"`` (time, band, y, x) uint16 with an SCL band (``build_cube(..., include_scl=True)``).
    clear_classes : int or iterable of int, default ``DEFAULT_CLEAR_CLASSES``
        SCL codes counted as clear (see ``clear_mask``).
    scl_band : str, default "SCL"
        Name of the scene-classification band of ``cube``.

    Returns
    -------
    xarray.DataArray
        ``"reflectance"`` float32 with the dims of ``cube`` and its spectral bands: the SCL band and the
        scale/offset coords are dropped; other coords and attrs are kept.

    Raises
    ------
    InputError
        ``cube`` is not a DataArray, has no ``band`` dim, lacks ``scl_band`` or holds only that band, or
        ``clear_classes`` is invalid (see ``clear_mask``).
    """
    dn, scl, scale, offset, lut = _split_cube(cube, clear_classes, scl_band, "mask_clouds")
    out = xr.apply_ufunc(
        mask_array,
        dn,
        scl,
        scale,
        offset,
        kwargs={"lut": lut},
        dask="parallelized",
        output_dtypes=[np.float32],
        keep_attrs=False,
    )
    if out.dims != dn.dims:
        out = out.transpose(*dn.dims)
    out.name = "reflectance"
    out.attrs = dict(cube.attrs)
    return out


def clear_band_max(cube: xr.DataArray, *, clear_classes=DEFAULT_CLEAR_CLASSES, scl_band: str = SCL) -> xr.DataArray:
    """Per-band maximum of the clear reflectance of a raw cube, computed on its uint16 DN (computes Dask input).

    Equals ``mask_clouds(cube, ...).max(["time", "y", "x"])`` bit for bit (DN -> reflectance is increasing
    for a positive scale, and so is the rounding to float32), without building the float32 cube: the largest
    clear DN of each (date, band) is found first, then converted with that date's scale and offset. This is
    the statistics pass of the ``global_max*`` / ``per_band_max`` normalisations (``normalize.scale_from_max``).

    Returns
    -------
    xr.DataArray
        float64, dims ("band",) (the spectral bands), NaN for a band without any clear value.
    """
    dn, scl, scale, offset, _ = _split_cube(cube, clear_classes, scl_band, "clear_band_max")
    dn = dn.transpose("time", "band", "y", "x")
    if bool((scale <= 0).any()):  # not increasing: take the max of the reflectance
        m = mask_clouds(cube, clear_classes=clear_classes, scl_band=scl_band).max(["time", "y", "x"], skipna=True)
        return m.astype(np.float64).compute().reset_coords(drop=True).rename("band_max")
    clear = clear_mask(scl, clear_classes=clear_classes).reset_coords(drop=True)
    kept = xr.where(clear & (dn > 0), dn, np.uint16(0)).astype(np.uint16)
    top = kept.max(["y", "x"]).transpose("time", "band").compute()  # (time, band) largest clear DN, 0 = none
    refl = (top.astype(np.float64) * scale + offset).astype(np.float32).where(top > 0)
    out = refl.max("time", skipna=True).astype(np.float64)
    return out.reset_coords(drop=True).rename("band_max")

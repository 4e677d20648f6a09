"""Choose training pixels from a (gap-filled) cube: by mask, class map, label raster or bounding box.

The spectral-dynamics models (``s2pipe.forecast``) treat pixels as independent samples that share one
model. ``training_pixels`` picks those samples from a ``(time, band, y, x)`` cube and returns them as a
``(time, band, pixel)`` stack; ``as_yx`` turns that stack into the ``(time, band, y=1, x=N)`` layout that
``fit_dynamics`` accepts.

Order of operations (each step recorded in the result's attrs):

1. candidates = ``mask`` (bool, or an integer class map / label raster reduced with ``classes``) AND the
   pixel centre inside ``bbox``;
2. ``neighbours=True`` adds each candidate's 4 direct neighbours (up, down, left, right) that lie inside
   the grid, whatever their class or position relative to ``bbox`` (the paper's option), without
   duplicates;
3. pixels whose series still holds a NaN anywhere (any date, any band: gaps that interpolation could not
   fill) are dropped and counted (``on_gaps="drop"``) or rejected (``on_gaps="raise"``);
4. ``max_pixels`` keeps a uniform random subset (``seed``) of what remains.

Pixels come out in row-major grid order (north to south, then west to east).
"""
from __future__ import annotations

import logging
import numbers
from typing import Literal

import numpy as np
import xarray as xr

from s2pipe.errors import InputError

__all__ = ["training_pixels", "as_yx", "align_mask"]

log = logging.getLogger(__name__)

OnGaps = Literal["drop", "raise"]
Align = Literal["exact", "nearest"]
_DIMS = ("time", "band", "y", "x")


# ------------------------------------------------------------------------------------------ checks
def _check_cube(cube) -> None:
    if not isinstance(cube, xr.DataArray):
        raise InputError(f"training_pixels expects the cube as an xarray.DataArray, got {type(cube).__name__}; pass cube=")
    if set(cube.dims) != set(_DIMS):
        raise InputError(
            f"cube {cube.name!r} has dims {cube.dims}; training_pixels needs exactly {_DIMS} "
            "(select or rename dims, e.g. cube.rename(lat='y', lon='x'))"
        )
    for d in ("y", "x"):
        if d not in cube.coords:
            raise InputError(f"cube {cube.name!r} has no {d!r} coordinate; assign pixel-centre coordinates to it")


def align_mask(mask: xr.DataArray, cube: xr.DataArray, *, align: Align = "nearest") -> xr.DataArray:
    """``mask`` (y, x) on the grid of ``cube``: unchanged when the coordinates are equal, otherwise (with
    ``align="nearest"``) each cube pixel takes the mask value whose pixel centre is nearest, within half a
    mask pixel (e.g. a 20 m class map upsampled ×2 to a 10 m cube). Cube pixels outside the mask's
    extent raise ``InputError``. ``align="exact"`` requires equal coordinates.
    """
    if not isinstance(mask, xr.DataArray):
        raise InputError(f"mask must be an xarray.DataArray with dims ('y', 'x'), got {type(mask).__name__}; pass mask=")
    if set(mask.dims) != {"y", "x"}:
        raise InputError(f"mask has dims {mask.dims}; pass mask= a DataArray with dims ('y', 'x') on the cube's grid")
    for d in ("y", "x"):
        if d not in mask.coords:
            raise InputError(f"mask has no {d!r} coordinate; assign the pixel-centre coordinates of its grid")
    mask = mask.transpose("y", "x")
    same = all(
        mask.sizes[d] == cube.sizes[d] and np.allclose(mask[d].values, cube[d].values, rtol=0, atol=1e-6)
        for d in ("y", "x")
    )
    if same:
        return mask.assign_coords(y=cube["y"].values, x=cube["x"].values)
    if align != "nearest":
        raise InputError(
            f"mask grid ({mask.sizes['y']} x {mask.sizes['x']} px) differs from the cube grid "
            f"({cube.sizes['y']} x {cube.sizes['x']} px); resample it or pass align='nearest'"
        )
    tol = {}
    for d in ("y", "x"):
        c = mask[d].values
        if c.size < 2:
            raise InputError(f"mask has a single {d!r} coordinate; cannot align it to the cube with align='nearest'")
        tol[d] = float(np.abs(np.diff(c)).max()) / 2 + 1e-6
    out = mask
    for d in ("y", "x"):
        out = out.reindex({d: cube[d].values}, method="nearest", tolerance=tol[d])
    # reindex fills out-of-tolerance cells with NaN (promoting the dtype): detect them
    if out.dtype != mask.dtype and np.isnan(np.asarray(out.values, dtype=float)).any():
        raise InputError(
            "mask does not cover the cube grid (some cube pixels lie more than half a mask pixel from any mask "
            "pixel); pass a mask covering the cube's extent"
        )
    return out.astype(mask.dtype)


def _selection(mask, classes, cube: xr.DataArray, align: Align) -> tuple[np.ndarray, np.ndarray | None]:
    """(Y, X) bool candidates and, for integer masks, the (Y, X) label values."""
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    if mask is None:
        if classes is not None:
            raise InputError(f"classes={classes!r} needs a class map; pass mask= an integer (y, x) DataArray")
        return np.ones((ny, nx), dtype=bool), None
    m = align_mask(mask, cube, align=align)
    values = np.asarray(m.values)
    if values.dtype == bool:
        if classes is not None:
            raise InputError(
                f"classes={classes!r} was given with a boolean mask; pass an integer class map as mask=, or drop classes="
            )
        return values, None
    if not np.issubdtype(values.dtype, np.integer):
        raise InputError(
            f"mask dtype {values.dtype} is neither bool nor integer; threshold it first "
            "(e.g. mask=tree_cover_density >= 70) or pass an integer class map"
        )
    if classes is None:  # label raster: 0 = unlabelled
        return values != 0, values
    if isinstance(classes, numbers.Integral) and not isinstance(classes, bool):
        classes = (classes,)
    try:
        given = list(classes)
    except TypeError:
        raise InputError(f"classes={classes!r} is not a collection of class ids; pass e.g. classes=(3,)") from None
    ids = [int(c) for c in given if not isinstance(c, bool) and isinstance(c, (numbers.Integral, np.integer))]
    if not ids or len(ids) != len(given):
        raise InputError(f"classes={classes!r} must be a non-empty collection of integer class ids; pass e.g. classes=(3,)")
    return np.isin(values, ids), values


def _bbox_mask(bbox, cube: xr.DataArray) -> np.ndarray:
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InputError(f"bbox={bbox!r} is not 4 numbers; pass bbox=(xmin, ymin, xmax, ymax) in the cube's CRS") from None
    if not all(np.isfinite([xmin, ymin, xmax, ymax])) or xmin > xmax or ymin > ymax:
        raise InputError(f"bbox={bbox!r} must be finite with xmin <= xmax and ymin <= ymax; pass (xmin, ymin, xmax, ymax)")
    x, y = cube["x"].values, cube["y"].values
    inside = ((y >= ymin) & (y <= ymax))[:, None] & ((x >= xmin) & (x <= xmax))[None, :]
    if not inside.any():
        crs = cube.attrs.get("crs", "the cube's CRS")
        raise InputError(
            f"bbox={bbox!r} contains no pixel centre of cube {cube.name!r} (x {x.min():.2f}..{x.max():.2f}, "
            f"y {y.min():.2f}..{y.max():.2f} in {crs}); pass bbox= in the cube's CRS coordinates"
        )
    return inside


def _add_neighbours(sel: np.ndarray) -> np.ndarray:
    out = sel.copy()
    out[1:, :] |= sel[:-1, :]
    out[:-1, :] |= sel[1:, :]
    out[:, 1:] |= sel[:, :-1]
    out[:, :-1] |= sel[:, 1:]
    return out


# ------------------------------------------------------------------------------------------ public API
def training_pixels(
    cube: xr.DataArray,
    *,
    mask: xr.DataArray | None = None,
    classes=None,
    bbox=None,
    neighbours: bool = False,
    max_pixels: int | None = None,
    seed: int = 0,
    on_gaps: OnGaps = "drop",
    align: Align = "exact",
) -> xr.DataArray:
    """Pixel series of ``cube`` selected for training, as a ``(time, band, pixel)`` DataArray.

    Parameters
    ----------
    cube : DataArray with dims ``(time, band, y, x)`` (any order), any units (e.g. normalized
        reflectance), ``y``/``x`` pixel-centre coordinates in the cube's CRS (m). NumPy or Dask.
    mask : None (every pixel), a bool ``(y, x)`` DataArray (True = keep), or an integer ``(y, x)`` class
        map / label raster. With an integer mask, ``classes`` lists the ids to keep (e.g. the forest
        classes); without ``classes`` every non-zero label is kept (0 = unlabelled). Floating masks
        (e.g. tree-cover density in %) must be thresholded first: ``mask=tcd >= 70``.
    classes : int or collection of ints, only with an integer ``mask``.
    bbox : ``(xmin, ymin, xmax, ymax)`` in the cube's CRS coordinates (m); pixels whose centre lies
        inside (edges included) are kept.
    neighbours : add the 4 direct neighbours of every selected pixel (inside the grid, no duplicates,
        whatever their class or position relative to ``bbox``).
    max_pixels : keep at most this many pixels, a uniform random subset drawn with ``seed``.
    on_gaps : pixels with a NaN at any date/band (gaps left after interpolation): ``"drop"`` them (count
        logged at INFO and kept in ``attrs["dropped_gap_pixels"]``) or ``"raise"`` ``InputError``.
    align : ``"exact"``: ``mask`` must be on the cube's grid; ``"nearest"``: ``mask`` may be on another
        grid (e.g. 20 m for a 10 m cube) and is resampled by nearest pixel centre (see ``align_mask``).

    Returns
    -------
    DataArray ``(time, band, pixel)``, same dtype, units, attrs and name as ``cube`` (Dask stays lazy: only
    one NaN flag per candidate pixel is computed). Coordinates along ``pixel``: ``y``, ``x`` (CRS, m),
    ``row``, ``col`` (grid indices), ``neighbour`` (True for pixels added only as neighbours) and
    ``label`` (the mask value, for integer masks). attrs added: ``selected_pixels``,
    ``neighbour_pixels_added``, ``dropped_gap_pixels``, ``subsampled_from``.
    """
    _check_cube(cube)
    if on_gaps not in ("drop", "raise"):
        raise InputError(f"on_gaps={on_gaps!r} is not a choice; pass on_gaps='drop' or 'raise'")
    if align not in ("exact", "nearest"):
        raise InputError(f"align={align!r} is not a choice; pass align='exact' or 'nearest'")
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1
    ):
        raise InputError(f"max_pixels={max_pixels!r} must be a positive integer or None; pass e.g. max_pixels=2000")
    if not isinstance(neighbours, bool):
        raise InputError(f"neighbours={neighbours!r} must be True or False")

    sel, labels = _selection(mask, classes, cube, align)
    if bbox is not None:
        sel = sel & _bbox_mask(bbox, cube)
    n_selected = int(sel.sum())
    if n_selected == 0:
        raise InputError(
            f"no pixel of cube {cube.name!r} matches mask/classes/bbox (classes={classes!r}, bbox={bbox!r}); "
            "check the class ids and the bbox CRS"
        )
    final = _add_neighbours(sel) if neighbours else sel
    added = final & ~sel
    rows, cols = np.nonzero(final)  # row-major order

    c = cube.transpose(*_DIMS)
    r_idx = xr.DataArray(rows, dims="pixel")
    c_idx = xr.DataArray(cols, dims="pixel")
    px = c.isel(y=r_idx, x=c_idx)  # (time, band, pixel); vectorised (vindex) on Dask

    keep, n_gap = _gap_free(px, rows, cols, on_gaps=on_gaps, name=cube.name)
    n_before_cap = keep.size
    if max_pixels is not None and keep.size > max_pixels:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(keep, size=max_pixels, replace=False))

    out = px.isel(pixel=keep)
    rows, cols = rows[keep], cols[keep]
    coords = {
        "row": ("pixel", rows),
        "col": ("pixel", cols),
        "neighbour": ("pixel", added[rows, cols]),
    }
    if labels is not None:
        coords["label"] = ("pixel", labels[rows, cols])
    out = out.assign_coords(coords)
    out = out.assign_coords(pixel=np.arange(len(keep)))
    out.name = cube.name
    out.attrs = {
        **cube.attrs,
        "selected_pixels": n_selected,
        "neighbour_pixels_added": int(added.sum()),
        "dropped_gap_pixels": n_gap,
        "subsampled_from": int(n_before_cap),
    }
    return out


def _gap_free(px: xr.DataArray, rows: np.ndarray, cols: np.ndarray, *, on_gaps: str, name) -> tuple[np.ndarray, int]:
    """Indices of the candidate pixels ``px`` (time, band, pixel) whose series hold no NaN, and how many do;
    ``on_gaps="raise"`` refuses any gap, naming the first pixels (``rows``, ``cols``) that have one."""
    cube_name = name
    gap = px.isnull().any(dim=("time", "band"))
    gap = np.asarray(gap.values, dtype=bool)
    n_gap = int(gap.sum())
    if n_gap:
        if on_gaps == "raise":
            where = ", ".join(f"(row {r}, col {q})" for r, q in zip(rows[gap][:5], cols[gap][:5]))
            raise InputError(
                f"{n_gap} of {len(rows)} selected pixels of cube {cube_name!r} still have NaN in their series "
                f"(e.g. {where}); fill the gaps (e.g. a wider cressman radius) or pass on_gaps='drop'"
            )
        log.info("training_pixels: dropped %d of %d pixels with NaN left in their series", n_gap, len(rows))
    keep = np.flatnonzero(~gap)
    if keep.size == 0:
        raise InputError(
            f"all {len(rows)} selected pixels of cube {cube_name!r} have NaN in their series; fill the gaps "
            "first (e.g. a wider cressman radius) or choose a time window without them"
        )
    return keep, n_gap


def as_yx(pixels: xr.DataArray) -> xr.DataArray:
    """``(time, band, pixel)`` → ``(time, band, y=1, x=N)``, the layout ``fit_dynamics`` accepts.

    The ``y``/``x`` dims are then sample axes, not geography: ``y`` = [0], ``x`` = pixel index; the
    pixels' real coordinates ride along ``x`` as ``pixel_y``, ``pixel_x`` (and ``row``, ``col``, ...).
    Values are the same (a view for NumPy, lazy for Dask).
    """
    if not isinstance(pixels, xr.DataArray) or set(pixels.dims) != {"time", "band", "pixel"}:
        got = pixels.dims if isinstance(pixels, xr.DataArray) else type(pixels).__name__
        raise InputError(f"as_yx expects a (time, band, pixel) DataArray from training_pixels, got {got}")
    p = pixels.transpose("time", "band", "pixel")
    if "y" in p.coords or "x" in p.coords:
        p = p.rename({k: f"pixel_{k}" for k in ("y", "x") if k in p.coords})
    p = p.rename(pixel="x").expand_dims("y", axis=2).assign_coords(y=[0])
    return p.assign_coords(x=np.arange(p.sizes["x"]))

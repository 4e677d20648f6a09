"""Training-pixel selection: masks, class maps, label rasters, bbox, neighbours, gaps, errors, Dask."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from s2pipe.errors import InputError
from s2pipe.ml.pixels import align_mask, as_yx, training_pixels

NY, NX = 6, 5
X0, Y0, RES = 1000.0, 2000.0, 10.0  # top-left corner; centres at +5 / -5


def make_cube(nt=4, nb=3, dask=False):
    t = pd.date_range("2018-01-01", periods=nt, freq="5D")
    y = Y0 - RES / 2 - RES * np.arange(NY)
    x = X0 + RES / 2 + RES * np.arange(NX)
    # value encodes (t, b, row, col) so any mix-up shows
    v = (
        1000 * np.arange(nt)[:, None, None, None]
        + 100 * np.arange(nb)[None, :, None, None]
        + 10 * np.arange(NY)[None, None, :, None]
        + np.arange(NX)[None, None, None, :]
    ).astype(np.float32)
    da = xr.DataArray(
        v, dims=("time", "band", "y", "x"),
        coords={"time": t, "band": ["B02", "B03", "B04"][:nb], "y": y, "x": x},
        name="reflectance", attrs={"crs": "EPSG:3035"},
    )
    return da.chunk({"time": -1, "band": 1, "y": 3, "x": 3}) if dask else da


def grid_mask(cube, values):
    return xr.DataArray(np.asarray(values), dims=("y", "x"), coords={"y": cube["y"], "x": cube["x"]})


def rc(px):
    return list(zip(px["row"].values.tolist(), px["col"].values.tolist()))


def check_values(px, cube):
    """Every returned series equals the cube's series at (row, col), and y/x coords match."""
    c = cube.transpose("time", "band", "y", "x").values
    for p, (r, q) in enumerate(rc(px)):
        np.testing.assert_array_equal(px.isel(pixel=p).values, c[:, :, r, q])
        assert px["y"].values[p] == cube["y"].values[r] and px["x"].values[p] == cube["x"].values[q]


def test_all_pixels_and_layout():
    cube = make_cube()
    px = training_pixels(cube)
    assert px.dims == ("time", "band", "pixel") and px.sizes["pixel"] == NY * NX
    assert rc(px) == [(r, q) for r in range(NY) for q in range(NX)]  # row-major
    assert px.name == "reflectance" and px.attrs["crs"] == "EPSG:3035"
    assert px.attrs["dropped_gap_pixels"] == 0 and not px["neighbour"].values.any()
    check_values(px, cube)


def test_bool_mask_and_transposed_cube():
    cube = make_cube()
    m = np.zeros((NY, NX), bool)
    m[1, 2] = m[4, 0] = True
    px = training_pixels(cube.transpose("y", "x", "band", "time"), mask=grid_mask(cube, m))
    assert rc(px) == [(1, 2), (4, 0)]
    check_values(px, cube)


def test_class_map_and_label_raster():
    cube = make_cube()
    classes = np.arange(NY * NX).reshape(NY, NX) % 4  # 0..3
    cmap = grid_mask(cube, classes.astype(np.int16))
    px = training_pixels(cube, mask=cmap, classes=(1, 3))
    assert set(px["label"].values.tolist()) == {1, 3}
    assert px.sizes["pixel"] == int(np.isin(classes, (1, 3)).sum())
    check_values(px, cube)
    one = training_pixels(cube, mask=cmap, classes=2)
    assert (one["label"].values == 2).all()
    # label raster without classes: every non-zero label
    labels = training_pixels(cube, mask=cmap)
    assert labels.sizes["pixel"] == int((classes != 0).sum()) and 0 not in labels["label"].values


def test_bbox_in_crs_coordinates():
    cube = make_cube()
    x, y = cube["x"].values, cube["y"].values
    # centres of cols 1..2 and rows 2..3, edges inclusive
    px = training_pixels(cube, bbox=(x[1], y[3], x[2], y[2]))
    assert rc(px) == [(2, 1), (2, 2), (3, 1), (3, 2)]
    # combined with a mask: intersection
    m = np.zeros((NY, NX), bool)
    m[2, 1] = m[0, 0] = True
    both = training_pixels(cube, mask=grid_mask(cube, m), bbox=(x[1], y[3], x[2], y[2]))
    assert rc(both) == [(2, 1)]


def test_neighbours_inside_grid_without_duplicates():
    cube = make_cube()
    m = np.zeros((NY, NX), bool)
    m[0, 0] = True  # corner: 2 neighbours
    m[0, 2] = True  # edge: 3 neighbours
    m[3, 2] = m[3, 3] = True  # adjacent interior pair: shared neighbours counted once
    px = training_pixels(cube, mask=grid_mask(cube, m), neighbours=True)
    got = rc(px)
    assert len(got) == len(set(got))
    expected = {(0, 0), (1, 0), (0, 1), (0, 2), (0, 3), (1, 2), (3, 2), (3, 3), (2, 2), (4, 2), (3, 1),
                (2, 3), (4, 3), (3, 4)}
    assert set(got) == expected
    assert all(0 <= r < NY and 0 <= q < NX for r, q in got)
    flagged = {p for p, n in zip(got, px["neighbour"].values) if n}
    assert flagged == expected - {(0, 0), (0, 2), (3, 2), (3, 3)}
    assert px.attrs["selected_pixels"] == 4 and px.attrs["neighbour_pixels_added"] == 10
    check_values(px, cube)
    # bottom-right corner
    m2 = np.zeros((NY, NX), bool)
    m2[NY - 1, NX - 1] = True
    assert set(rc(training_pixels(cube, mask=grid_mask(cube, m2), neighbours=True))) == {
        (NY - 1, NX - 1), (NY - 2, NX - 1), (NY - 1, NX - 2)}


def test_gaps_dropped_and_reported(caplog):
    cube = make_cube().copy()
    cube[2, 1, 4, 4] = np.nan  # one date, one band
    cube[:, :, 0, 1] = np.nan  # whole series
    with caplog.at_level(logging.INFO, logger="s2pipe.ml.pixels"):
        px = training_pixels(cube)
    assert px.attrs["dropped_gap_pixels"] == 2 and px.sizes["pixel"] == NY * NX - 2
    assert (4, 4) not in rc(px) and (0, 1) not in rc(px)
    assert not np.isnan(px.values).any()
    assert "dropped 2 of 30" in caplog.text
    with pytest.raises(InputError, match=r"2 of 30 .*on_gaps='drop'"):
        training_pixels(cube, on_gaps="raise")
    m = np.zeros((NY, NX), bool)
    m[0, 1] = True
    with pytest.raises(InputError, match="all 1 selected pixels"):
        training_pixels(cube, mask=grid_mask(cube, m))


def test_max_pixels_reproducible_subset():
    cube = make_cube()
    a = training_pixels(cube, max_pixels=7, seed=3)
    b = training_pixels(cube, max_pixels=7, seed=3)
    c = training_pixels(cube, max_pixels=7, seed=4)
    assert a.sizes["pixel"] == 7 and rc(a) == rc(b) and rc(a) != rc(c)
    assert rc(a) == sorted(rc(a)) and len(set(rc(a))) == 7
    assert a.attrs["subsampled_from"] == NY * NX
    check_values(a, cube)
    assert training_pixels(cube, max_pixels=1000).sizes["pixel"] == NY * NX


def test_dask_stays_lazy_and_matches():
    eager = make_cube().copy()
    eager[1, 0, 2, 2] = np.nan
    lazy = eager.chunk({"time": -1, "band": 1, "y": 3, "x": 3})
    m = np.zeros((NY, NX), bool)
    m[2, 1] = m[5, 4] = True
    kw = dict(mask=grid_mask(eager, m), neighbours=True)
    pl, pe = training_pixels(lazy, **kw), training_pixels(eager, **kw)
    assert pl.chunks is not None
    assert pl.attrs["dropped_gap_pixels"] == pe.attrs["dropped_gap_pixels"] == 1
    np.testing.assert_array_equal(pl.values, pe.values)
    assert rc(pl) == rc(pe)


def test_coarser_mask_aligned_nearest():
    cube = make_cube()  # 10 m, 6 x 5
    # 20 m mask over the same extent: 3 x 3 (covers 6 x 6 at 10 m)
    y20 = Y0 - 10 - 20 * np.arange(3)
    x20 = X0 + 10 + 20 * np.arange(3)
    m20 = xr.DataArray(np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]], bool), dims=("y", "x"), coords={"y": y20, "x": x20})
    with pytest.raises(InputError, match="align='nearest'"):
        training_pixels(cube, mask=m20)
    px = training_pixels(cube, mask=m20, align="nearest")
    assert rc(px) == [(0, 0), (0, 1), (1, 0), (1, 1), (4, 4), (5, 4)]
    up = align_mask(m20, cube)
    assert up.dtype == bool and up.shape == (NY, NX)
    # a mask that does not reach the cube's extent is an error, not silent False
    with pytest.raises(InputError, match="does not cover"):
        align_mask(m20.isel(x=slice(0, 2)), cube)


def test_as_yx_layout():
    cube = make_cube()
    px = training_pixels(cube, max_pixels=4)
    g = as_yx(px)
    assert g.dims == ("time", "band", "y", "x") and g.shape[2:] == (1, 4)
    np.testing.assert_array_equal(g.values[:, :, 0, :], px.values)
    np.testing.assert_array_equal(g["pixel_x"].values, px["x"].values)
    with pytest.raises(InputError, match="as_yx"):
        as_yx(cube)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bbox=(0, 0, 1, 1)), r"bbox=\(0, 0, 1, 1\) contains no pixel"),
        (dict(bbox=(5, 0, 1, 1)), "xmin <= xmax"),
        (dict(bbox=(1, 2, 3)), "not 4 numbers"),
        (dict(on_gaps="fill"), "on_gaps='fill'"),
        (dict(align="bilinear"), "align='bilinear'"),
        (dict(max_pixels=0), "max_pixels=0"),
        (dict(classes=(1,)), "needs a class map"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        training_pixels(make_cube(), **kwargs)


def test_mask_errors():
    cube = make_cube()
    with pytest.raises(InputError, match="threshold it first"):
        training_pixels(cube, mask=grid_mask(cube, np.random.default_rng(0).random((NY, NX))))
    with pytest.raises(InputError, match="boolean mask"):
        training_pixels(cube, mask=grid_mask(cube, np.ones((NY, NX), bool)), classes=(1,))
    with pytest.raises(InputError, match="no pixel"):
        training_pixels(cube, mask=grid_mask(cube, np.ones((NY, NX), np.int8)), classes=(7,))
    with pytest.raises(InputError, match="integer class ids"):
        training_pixels(cube, mask=grid_mask(cube, np.ones((NY, NX), np.int8)), classes=("forest",))
    with pytest.raises(InputError, match="dims"):
        training_pixels(cube.isel(band=0))
    with pytest.raises(InputError, match="dims"):
        training_pixels(cube, mask=cube.isel(time=0))

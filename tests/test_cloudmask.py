"""SCL clear mask and DN -> reflectance masking, NumPy and Dask paths."""
from __future__ import annotations

import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from s2pipe.cloudmask import clear_mask, mask_clouds
from s2pipe.errors import InputError

BANDS = ["B02", "B03", "B04", "B08"]


def raw_cube(nt=6, ny=8, nx=10, seed=0, scl_name="SCL", with_scale=True):
    """A raw cube as build_cube documents it: "dn" uint16 (time, band, y, x), SCL last, scale/offset coords."""
    rng = np.random.default_rng(seed)
    dn = rng.integers(1, 6000, (nt, len(BANDS) + 1, ny, nx)).astype(np.uint16)
    dn[:, -1] = rng.integers(0, 12, (nt, ny, nx))  # every SCL class occurs
    dn[rng.random(dn.shape) < 0.05] = 0  # scattered nodata in the spectral bands
    dn[:, -1] = np.where(dn[:, -1] == 0, 4, dn[:, -1])
    dn[1, -1, 0, :] = 0  # SCL nodata row
    coords = {
        "time": pd.date_range("2021-03-01", periods=nt, freq="5D"),
        "band": BANDS + [scl_name],
        "y": 5000.0 - 10 * np.arange(ny) - 5,
        "x": 300000.0 + 10 * np.arange(nx) + 5,
        "spatial_ref": 0,
    }
    if with_scale:
        scale = np.full((nt, len(BANDS) + 1), 1e-4)
        offset = np.where(np.arange(nt)[:, None] >= nt // 2, -0.1, 0.0) * np.ones((1, len(BANDS) + 1))
        scale[:, -1], offset[:, -1] = 1.0, 0.0
        coords["scale"] = (("time", "band"), scale)
        coords["offset"] = (("time", "band"), offset)
    attrs = {"crs": "EPSG:32633", "transform": [10.0, 0.0, 300000.0, 0.0, -10.0, 5000.0], "resolution": 10.0}
    return xr.DataArray(dn, dims=("time", "band", "y", "x"), coords=coords, name="dn", attrs=attrs)


def maybe_chunk(da, dask_):
    """dask_: False (NumPy), True (all bands in one chunk), "split" (one band per chunk, SCL on its own)."""
    if not dask_:
        return da
    return da.chunk({"time": 2, "band": 1 if dask_ == "split" else -1, "y": 4, "x": 5})


@pytest.mark.parametrize("dask_", [False, True])
def test_clear_mask_default_and_snow(dask_):
    cube = raw_cube()
    scl = maybe_chunk(cube, dask_).sel(band="SCL", drop=True)
    m = clear_mask(scl)
    assert m.dtype == bool and m.dims == ("time", "y", "x")
    assert isinstance(m.data, dsa.Array) == dask_
    codes = cube.sel(band="SCL").values
    np.testing.assert_array_equal(m.values, np.isin(codes, [4, 5, 6, 7]))
    snow = clear_mask(scl, clear_classes=(4, 5, 6, 7, 11)).values
    np.testing.assert_array_equal(snow, np.isin(codes, [4, 5, 6, 7, 11]))
    assert (snow & ~m.values).sum() == (codes == 11).sum() > 0
    only_veg = clear_mask(scl, clear_classes=[4]).values
    np.testing.assert_array_equal(only_veg, codes == 4)


def test_clear_mask_float_scl_with_nan():
    scl = xr.DataArray(np.array([[4.0, np.nan, 9.0, 6.0, 300.0, -1.0]]), dims=("time", "x"))
    np.testing.assert_array_equal(clear_mask(scl).values, [[True, False, False, True, False, False]])


@pytest.mark.parametrize("bad", [(4, 12), (-1,), ("4",), (), (4.5,), (True,), "4567", None])
def test_clear_classes_validated(bad):
    scl = raw_cube().sel(band="SCL")
    with pytest.raises(InputError, match="clear_classes"):
        clear_mask(scl, clear_classes=bad)
    with pytest.raises(InputError, match="clear_classes"):
        mask_clouds(raw_cube(), clear_classes=bad)


@pytest.mark.parametrize("dask_", [False, True, "split"])
def test_mask_clouds_values(dask_):
    cube = raw_cube()
    out = mask_clouds(maybe_chunk(cube, dask_))
    assert out.name == "reflectance" and out.dtype == np.float32
    assert isinstance(out.data, dsa.Array) == bool(dask_)
    assert out.dims == ("time", "band", "y", "x")
    assert list(out["band"].values) == BANDS
    assert "scale" not in out.coords and "offset" not in out.coords
    assert "spatial_ref" in out.coords and out.attrs == cube.attrs
    np.testing.assert_array_equal(out["x"], cube["x"])
    # reference computed independently in float64
    dn = cube.values[:, :-1].astype(np.float64)
    scl = cube.values[:, -1]
    scale = cube["scale"].values[:, :-1, None, None]
    offset = cube["offset"].values[:, :-1, None, None]
    expect = dn * scale + offset
    ok = np.isin(scl, [4, 5, 6, 7])[:, None] & (dn != 0)
    expect[~ok] = np.nan
    got = out.values
    np.testing.assert_array_equal(np.isnan(got), ~ok)
    np.testing.assert_array_equal(got, expect.astype(np.float32))  # one rounding, from float64
    assert 0.2 < np.isnan(got).mean() < 0.8  # not vacuous
    assert (got < 0).any()  # the -0.1 offset was applied


def test_mask_clouds_is_lazy_and_chunkwise():
    calls = []

    def source(block):
        if block.size:
            calls.append(block.shape)
        return block

    cube = raw_cube(nt=4, ny=8, nx=8)
    arr = dsa.from_array(cube.values, chunks=(1, -1, 4, 4)).map_blocks(
        source, dtype=np.uint16, meta=np.empty((0,) * 4, np.uint16)
    )
    lazy = cube.copy(data=arr)
    out = mask_clouds(lazy)
    assert calls == []
    assert out.chunks == ((1, 1, 1, 1), (4,), (4, 4), (4, 4))
    np.testing.assert_array_equal(out.values, mask_clouds(cube).values)
    assert len(calls) == 16  # each source block read once


def test_snow_kept_when_asked():
    cube = raw_cube()
    snow = (cube.sel(band="SCL") == 11).values[:, None] & (cube.values[:, :-1] != 0)
    assert snow.any()
    default = mask_clouds(cube).values
    with_snow = mask_clouds(cube, clear_classes=(4, 5, 6, 7, 11)).values
    assert np.isnan(default[snow]).all() and np.isfinite(with_snow[snow]).all()


def test_default_scale_without_coords_and_custom_scl_name():
    cube = raw_cube(with_scale=False, scl_name="scl_band")
    out = mask_clouds(cube, scl_band="scl_band")
    dn = cube.values[:, :-1].astype(np.float64)
    ok = np.isin(cube.values[:, -1], [4, 5, 6, 7])[:, None] & (dn != 0)
    np.testing.assert_allclose(out.values[ok], dn[ok] * 1e-4, rtol=1e-6)
    assert np.isnan(out.values[~ok]).all()


def test_mask_clouds_errors():
    cube = raw_cube()
    with pytest.raises(InputError, match="no SCL band 'SCL'.*include_scl"):
        mask_clouds(cube.sel(band=BANDS))
    with pytest.raises(InputError, match="'MASK'"):
        mask_clouds(cube, scl_band="MASK")
    with pytest.raises(InputError, match="no 'band' dim"):
        mask_clouds(cube.isel(band=0))
    with pytest.raises(InputError, match="only the SCL band"):
        mask_clouds(cube.sel(band=["SCL"]))
    with pytest.raises(InputError, match="ndarray"):
        mask_clouds(cube.values)


def test_table_path_is_bit_identical_to_the_arithmetic():
    """uint16 (time, band, y, x) DN go through a lookup table; it must equal float64 arithmetic rounded once."""
    from s2pipe.cloudmask import _lut, mask_array

    rng = np.random.default_rng(1)
    dn = rng.integers(0, 65536, (4, 3, 16, 16), dtype=np.uint16)
    dn[:, :, 0, :4] = [0, 1, 65535, 1005]
    scl = rng.integers(0, 12, (4, 1, 16, 16)).astype(np.uint8)
    scale = np.full((4, 3, 1, 1), 1e-4)
    scale[3, 1] = 2e-4
    offset = np.where(np.arange(4) >= 2, -0.1, 0.0)[:, None, None, None] * np.ones((1, 3, 1, 1))
    lut = _lut((4, 5, 6, 7))
    got = mask_array(dn, scl, scale, offset, lut=lut)
    want = (dn.astype(np.float64) * scale + offset).astype(np.float32)
    want[(dn == 0) | ~lut[scl]] = np.nan
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32
    assert np.isnan(got[0, 0, 0, 3]) or got[0, 0, 0, 3] == np.float32(0.1005)
    # scalars and a 3-d cube take the arithmetic path: same values
    np.testing.assert_array_equal(mask_array(dn, scl, 1e-4, 0.0, lut=lut), mask_array(dn, scl, np.full((4, 3, 1, 1), 1e-4), np.zeros((4, 3, 1, 1)), lut=lut))
    np.testing.assert_array_equal(mask_array(dn[:, 0], scl[:, 0], 1e-4, -0.1, lut=lut), mask_array(dn, scl, 1e-4, -0.1, lut=lut)[:, 0])


@pytest.mark.parametrize("dask", [False, True])
@pytest.mark.parametrize("with_scale", [True, False])
def test_clear_band_max_equals_the_max_of_the_masked_reflectance(dask, with_scale):
    from s2pipe.cloudmask import clear_band_max

    cube = raw_cube(nt=7, ny=12, nx=9, seed=3, with_scale=with_scale)
    cube[:, 2] = np.where(cube[:, -1] == 4, 0, cube[:, 2])  # band B04 only valid on non-class-4 pixels
    cube[:, 3] = 0  # B08: no valid DN at all -> NaN
    if dask:
        cube = cube.chunk({"time": -1, "band": 1, "y": 5, "x": 4})
    got = clear_band_max(cube, clear_classes=(4, 5))
    want = mask_clouds(cube, clear_classes=(4, 5)).max(["time", "y", "x"]).astype(np.float64).values
    assert got.dims == ("band",) and list(got["band"].values) == BANDS
    np.testing.assert_array_equal(got.values, want)
    assert np.isnan(got.values[3]) and np.isfinite(got.values[:3]).all()
    with pytest.raises(InputError, match="no SCL band"):
        clear_band_max(cube.isel(band=slice(0, 4)))

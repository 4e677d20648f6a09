"""The staging store of streamed runs (s2pipe.store.staging): what it holds, its maxima, resume and replacement."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from s2pipe.store import staging
from s2pipe.store.zarr import STATE_DIR


def _cube(seed: int = 0, *, dask: bool) -> tuple[xr.Dataset, xr.DataArray]:
    rng = np.random.default_rng(seed)
    v = rng.uniform(0, 0.5, (6, 3, 20, 24)).astype("float32")
    v[rng.random(v.shape) < 0.3] = np.nan
    v[:, 2, :5, :5] = np.nan  # pixels of one band never clear
    coords = {"time": pd.date_range("2022-01-01", periods=6, freq="5D"), "band": ["B02", "B03", "B11"],
              "y": 5_000_000.0 - 10 * np.arange(20) - 5, "x": 400_000.0 + 10 * np.arange(24) + 5}
    refl = xr.DataArray(v, dims=("time", "band", "y", "x"), coords=coords, name="reflectance")
    if dask:
        refl = refl.chunk({"time": -1, "band": 1, "y": 10, "x": 12})
    filled = refl.fillna(0.25)
    ds = xr.Dataset({"reflectance": filled, "weight": filled.isel(band=0, drop=True) * 0 + 1},
                    attrs={"crs": "EPSG:32617", "seed": seed})
    return ds, refl


@pytest.mark.parametrize("dask", [False, True])
def test_stage_holds_the_cube_and_each_pixels_clear_maximum(tmp_path, dask):
    ds, refl = _cube(dask=dask)
    out = tmp_path / "cube.zarr"
    staged = staging.stage(ds, refl, out, region_size=10)
    where = staging.staging_path(out)
    assert where == tmp_path / "cube.zarr.staging" and staging.is_complete(where) and not out.exists()
    np.testing.assert_array_equal(staged["reflectance"].values, ds["reflectance"].values)
    want = np.nanmax(refl.values, axis=0)  # (band, y, x), NaN where a pixel was never clear
    np.testing.assert_array_equal(staged["reflectance_max"].transpose("band", "y", "x").values, want)
    bm = staging.band_max(staged)
    assert bm.dims == ("band",) and bm.dtype == np.float64
    np.testing.assert_array_equal(bm.values, np.nanmax(refl.values, axis=(0, 2, 3)).astype(np.float64))
    assert not staged["reflectance"].encoding  # feeds the output write like an in-memory cube

    again = staging.stage(ds, refl, out, region_size=10)  # complete, same inputs: nothing rewritten
    xr.testing.assert_identical(again.load(), staged.load())
    staging.remove(out)
    assert not where.exists()
    staging.remove(out)  # nothing there: no error


def test_a_staging_store_of_other_inputs_is_replaced(tmp_path):
    out = tmp_path / "cube.zarr"
    ds, refl = _cube(0, dask=True)
    staging.stage(ds, refl, out, region_size=10)
    other, refl2 = _cube(1, dask=True)
    staged = staging.stage(other, refl2, out, region_size=10)
    np.testing.assert_array_equal(staged["reflectance"].values, other["reflectance"].values)
    assert (staging.staging_path(out) / STATE_DIR / "complete").exists()

"""Normalisation scales (global max by resolution group, global, per band, percentile) and round trips."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from s2pipe.errors import InputError
from s2pipe.normalize import band_percentile, compute_scale, invert, normalize

BANDS = ["B02", "B03", "B05", "B8A", "B11"]  # 10 m: B02 B03; 20 m: B05 B8A B11


def cube(nt=12, ny=20, nx=16, dtype=np.float32, seed=0, nan_frac=0.3):
    rng = np.random.default_rng(seed)
    base = np.array([0.05, 0.08, 0.15, 0.3, 0.2])[None, :, None, None]
    x = (base * rng.gamma(4.0, 0.25, (nt, len(BANDS), ny, nx))).astype(dtype)
    x[rng.random(x.shape) < nan_frac] = np.nan
    return xr.DataArray(
        x,
        dims=("time", "band", "y", "x"),
        coords={"time": pd.date_range("2020-01-01", periods=nt, freq="5D"), "band": BANDS, "spatial_ref": 0},
        name="reflectance",
        attrs={"crs": "EPSG:32633"},
    )


def maybe_chunk(da, dask_):
    return da.chunk({"time": 5, "band": 2, "y": 8}) if dask_ else da


def per_band(da):
    return np.moveaxis(da.values, 1, 0).reshape(len(BANDS), -1)


@pytest.mark.parametrize("dask_", [False, True])
def test_global_max_by_resolution_groups_separately(dask_):
    da = cube()
    x = per_band(da)
    s = compute_scale(maybe_chunk(da, dask_))
    assert s.dims == ("band",) and list(s["band"].values) == BANDS
    m10, m20 = np.nanmax(x[:2]), np.nanmax(x[2:])
    np.testing.assert_allclose(s.values, [m10, m10, m20, m20, m20], rtol=1e-7)
    assert m10 != m20
    # a bright 20 m value moves only the 20 m group
    bright = da.copy()
    bright.loc[{"band": "B11"}] = bright.sel(band="B11").where(False, 1.7).where(np.isfinite(da.sel(band="B11")))
    s2 = compute_scale(maybe_chunk(bright, dask_))
    np.testing.assert_allclose(s2.values, [m10, m10, 1.7, 1.7, 1.7], rtol=1e-7)


@pytest.mark.parametrize("dask_", [False, True])
def test_global_and_per_band_max(dask_):
    da = cube(seed=1)
    x = per_band(da)
    g = compute_scale(maybe_chunk(da, dask_), method="global_max")
    np.testing.assert_allclose(g.values, np.full(5, np.nanmax(x)), rtol=1e-7)
    b = compute_scale(maybe_chunk(da, dask_), method="per_band_max")
    np.testing.assert_allclose(b.values, np.nanmax(x, axis=1), rtol=1e-7)
    assert len(set(b.values.tolist())) == 5


@pytest.mark.parametrize("dask_", [False, True])
@pytest.mark.parametrize("p", [0.0, 2.5, 50.0, 99.0, 99.9, 100.0])
def test_percentile_matches_numpy(p, dask_):
    da = cube(seed=2)
    s = compute_scale(maybe_chunk(da, dask_), method="per_band_percentile", percentile=p)
    ref = np.nanpercentile(per_band(da).astype(np.float64), p, axis=1)
    np.testing.assert_allclose(s.values, ref, rtol=0, atol=1e-4)
    assert s.attrs["percentile"] == p


@pytest.mark.parametrize("dask_", [False, True])
def test_percentile_outside_first_histogram_range(dask_):
    """DN-scaled values and negative offsets need the refinement passes; still within 1e-4."""
    da = cube(seed=3, dtype=np.float64) * 10000 - 1500
    ref = np.nanpercentile(per_band(da), [1, 99], axis=1)
    for q, r in zip([1, 99], ref):
        got = band_percentile(maybe_chunk(da, dask_), q)
        np.testing.assert_allclose(got, r, rtol=0, atol=1e-4)


def test_nan_and_inf_ignored():
    da = cube(seed=4)
    x = per_band(da)
    withinf = da.copy()
    withinf[0, 0, 0, 0] = np.inf
    withinf[0, 0, 0, 1] = -np.inf
    p = compute_scale(withinf, method="per_band_percentile", percentile=100)
    np.testing.assert_allclose(p.values[1:], np.nanmax(x[1:], axis=1), rtol=1e-7)
    m = compute_scale(withinf, method="per_band_max")
    assert np.isfinite(m.values).all()


@pytest.mark.parametrize("dask_", [False, True])
@pytest.mark.parametrize("method", ["global_max_by_resolution", "global_max", "per_band_max", "per_band_percentile"])
def test_round_trip(method, dask_):
    da = maybe_chunk(cube(seed=5), dask_)
    n = normalize(da, method=method, percentile=98)
    assert n.attrs["normalize_method"] == method
    assert n.attrs["normalize_bands"] == BANDS
    scale = n.attrs["normalize_scale"]
    assert isinstance(scale, list) and all(isinstance(v, float) for v in scale)
    np.testing.assert_allclose(scale, compute_scale(da, method=method, percentile=98).values)
    assert n.dtype == np.float32 and n.dims == da.dims and n.attrs["crs"] == "EPSG:32633"
    assert ("spatial_ref" in n.coords) and n.name == da.name
    if method != "per_band_percentile":
        assert float(n.max()) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(n.values, da.values / np.array(scale)[:, None, None], rtol=1e-6)
    back = invert(n)
    assert not any(k.startswith("normalize_") for k in back.attrs) and back.attrs["crs"] == "EPSG:32633"
    np.testing.assert_array_equal(np.isnan(back.values), np.isnan(da.values))
    np.testing.assert_allclose(back.values, da.values, rtol=2e-7, atol=0)


def test_normalize_by_resolution_each_group_peaks_at_one():
    n = normalize(cube(seed=6))
    assert float(n.sel(band=["B02", "B03"]).max()) == pytest.approx(1.0)
    assert float(n.sel(band=["B05", "B8A", "B11"]).max()) == pytest.approx(1.0)


def test_given_scale_forms():
    train, test = cube(seed=7), cube(seed=8)
    s = compute_scale(train)
    a = normalize(test, scale=s)
    assert a.attrs["normalize_method"] == "global_max_by_resolution"
    np.testing.assert_allclose(a.attrs["normalize_scale"], s.values)
    b = normalize(test, scale=dict(zip(BANDS, s.values)))
    c = normalize(test, scale=list(s.values))
    for other in (b, c):
        np.testing.assert_array_equal(other.values, a.values)
        assert other.attrs["normalize_method"] == "given"
    d = normalize(test, scale=2.0)
    np.testing.assert_allclose(d.values, test.values / 2, rtol=1e-7)
    # a scale for a band subset order is matched by name
    rev = s.isel(band=slice(None, None, -1))
    np.testing.assert_array_equal(normalize(test, scale=rev).values, a.values)
    np.testing.assert_allclose(invert(normalize(test.isel(band=[4, 0]), scale=s)).values,
                               test.isel(band=[4, 0]).values, rtol=2e-7)


def test_errors():
    da = cube()
    with pytest.raises(InputError, match="'median'"):
        compute_scale(da, method="median")
    with pytest.raises(InputError, match="101"):
        compute_scale(da, method="per_band_percentile", percentile=101)
    with pytest.raises(InputError, match="no 'band' dim"):
        compute_scale(da.isel(band=0))
    with pytest.raises(InputError, match="no normalisation attrs"):
        invert(da)
    with pytest.raises(InputError, match="already normalized"):
        normalize(normalize(da))
    with pytest.raises(InputError, match="Sentinel-2 band names.*'red'"):
        compute_scale(da.assign_coords(band=["blue", "green", "red", "nir", "swir"]))
    empty = da.copy()
    empty.loc[{"band": "B05"}] = np.nan
    with pytest.raises(InputError, match="positive and finite.*B05"):
        normalize(empty, method="per_band_max")
    with pytest.raises(InputError, match="no value for bands.*B11"):
        normalize(da, scale={"B02": 1.0, "B03": 1.0, "B05": 1.0, "B8A": 1.0})
    with pytest.raises(InputError, match="3 values but the cube has 5"):
        normalize(da, scale=[1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="positive"):
        normalize(da, scale=0.0)
    n = normalize(da)
    with pytest.raises(InputError, match="B04"):
        invert(n.assign_coords(band=["B02", "B03", "B04", "B8A", "B11"]))


@pytest.mark.parametrize("dask_", [False, True])
def test_percentile_in_several_slices(dask_, monkeypatch):
    """Histogram steps over slices of a band (bounded memory) add up to the same percentile."""
    import s2pipe.normalize as normalize_mod

    monkeypatch.setattr(normalize_mod, "_SLICE", 999)
    da = cube(seed=9)
    ref = np.nanpercentile(per_band(da).astype(np.float64), 97.5, axis=1)
    np.testing.assert_allclose(band_percentile(maybe_chunk(da, dask_), 97.5), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["global_max_by_resolution", "per_band_max", "per_band_percentile"])
def test_large_graphs_are_reduced_in_strips_with_the_same_result(method):
    """A Dask cube whose graph exceeds max_graph_tasks is reduced strip by strip: several small graphs, each far
    below the limit's order, and exactly the statistics of one pass."""
    from dask.callbacks import Callback

    da = cube(seed=7).chunk({"time": 6, "band": 1, "y": 2, "x": 4})
    sizes = []

    class GraphSizes(Callback):
        def _start_state(self, dsk, state):
            sizes.append(len(dsk))

    with GraphSizes():
        whole = compute_scale(da, method=method, percentile=90.0)
    limit = max(sizes) // 3
    sizes.clear()
    with GraphSizes():
        split = compute_scale(da, method=method, percentile=90.0, max_graph_tasks=limit)
    np.testing.assert_array_equal(split.values, whole.values)
    assert len(sizes) >= 3 and max(sizes) <= limit


def test_scale_from_max_matches_compute_scale():
    from s2pipe.normalize import compute_scale, scale_from_max

    rng = np.random.default_rng(0)
    bands = ["B02", "B03", "B05", "B11"]
    refl = xr.DataArray(rng.random((3, 4, 5, 6)).astype(np.float32), dims=("time", "band", "y", "x"),
                        coords={"band": bands})
    bmax = refl.max(["time", "y", "x"]).astype(np.float64)
    for method in ("global_max_by_resolution", "global_max", "per_band_max"):
        a, b = compute_scale(refl, method=method), scale_from_max(bmax, method=method)
        np.testing.assert_array_equal(a.values, b.values)
        assert a.attrs == b.attrs and list(b["band"].values) == bands
    with pytest.raises(InputError, match="per_band_percentile"):
        scale_from_max(bmax, method="per_band_percentile")
    with pytest.raises(InputError, match="dims"):
        scale_from_max(bmax.values)

"""export_cube / `s2pipe export`: a cube store's dates and bands as COGs, a STAC ItemCollection and a VRT stack."""
from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import xarray as xr
from affine import Affine
from pyproj import Transformer
from rasterio.warp import transform_bounds
from typer.testing import CliRunner

from s2pipe.errors import InputError, OutputConflictError
from s2pipe.grid import grid_of
from s2pipe.normalize import invert, normalize
from s2pipe.products import export as export_module
from s2pipe.products.export import COG_MEDIA_TYPE, export_cube
from s2pipe.store.zarr import open_cube, write_cube

NT, NY, NX = 5, 144, 200
BANDS = ["B02", "B04", "B08"]
SCALE = {"B02": 0.25, "B04": 0.5, "B08": 0.8}
TRANSFORM = (10.0, 0.0, 399960.0, 0.0, -10.0, 5000040.0)
DATES = [d.date().isoformat() for d in pd.date_range("2022-01-01", periods=NT, freq="5D")]


def _dataset(bands=BANDS, normalized=True, ny=NY, nx=NX) -> xr.Dataset:
    """A normalized store Dataset (as ``s2pipe run`` writes it) on a UTM 33N grid, NaN where unobserved."""
    rng = np.random.default_rng(7)
    refl = rng.uniform(0, 0.4, (NT, len(bands), ny, nx)).astype("float32")
    refl[refl < 0.02] = np.nan
    x = TRANSFORM[2] + (np.arange(nx) + 0.5) * TRANSFORM[0]
    y = TRANSFORM[5] + (np.arange(ny) + 0.5) * TRANSFORM[4]
    da = xr.DataArray(refl, dims=("time", "band", "y", "x"), name="reflectance",
                      coords={"time": pd.to_datetime(DATES), "band": list(bands), "y": y, "x": x})
    if normalized:
        da = normalize(da, scale={b: SCALE[b] for b in bands})
    ds = xr.Dataset({
        "reflectance": da.chunk({"time": 1, "band": -1, "y": 64, "x": 64}),
        "weight": (("time", "y", "x"), rng.uniform(0, 3, (NT, ny, nx)).astype("float32")),
        "observed": (("time", "y", "x"), (rng.uniform(0, 1, (NT, ny, nx)) > 0.3).astype("uint8")),
    })
    ds.attrs = {"crs": "EPSG:32633", "transform": list(TRANSFORM), "resolution": 10.0}
    return ds


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_cube(_dataset(), tmp_path_factory.mktemp("cube") / "cube.zarr", region_size=64)


@pytest.fixture(scope="module")
def cube(store):
    with open_cube(store) as ds:
        yield ds.load()


def _lonlat(x, y):
    return Transformer.from_crs(32633, 4326, always_xy=True).transform(x, y)


def test_each_date_becomes_a_cog_with_the_store_values_band_names_date_nodata_and_overviews(store, cube, tmp_path):
    out = export_cube(store, tmp_path / "out")
    assert out["dates"] == DATES and out["bands"] == BANDS and out["written"] == DATES and out["skipped"] == []
    assert out["values"] == "normalized" and out["shape"] == [NY, NX]
    grid = grid_of(cube)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([f"{d}.tif" for d in DATES]
                                                                          + ["items.json", "stack.vrt"])
    for day in DATES:
        with rasterio.open(tmp_path / "out" / f"{day}.tif") as src:
            assert src.count == 3 and src.dtypes == ("float32",) * 3
            np.testing.assert_array_equal(src.read(), cube.reflectance.sel(time=day).values)
            assert src.descriptions == tuple(BANDS)
            assert [src.tags(i + 1)["band"] for i in range(3)] == BANDS
            tags = src.tags()
            assert tags["date"] == day and tags["datetime"] == f"{day}T00:00:00Z"
            assert tags["TIFFTAG_DATETIME"] == day.replace("-", ":") + " 00:00:00"
            assert tags["values"] == "normalized"
            assert json.loads(tags["normalize_scale"]) == [SCALE[b] for b in BANDS]
            assert np.isnan(src.nodata)
            assert src.overviews(1) == [2]
            assert src.crs.to_epsg() == grid.epsg and src.transform == grid.transform
            assert src.profile["tiled"] and src.profile["compress"] == "deflate"
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "temporary files left"


def test_denormalize_writes_invert_of_the_chosen_dates_and_bands_in_the_order_given(store, cube, tmp_path):
    out = export_cube(store, tmp_path, dates=["2022-01-11", "2022-01-01"], bands=["B08", "B02"], denormalize=True)
    assert out["dates"] == ["2022-01-01", "2022-01-11"] and out["values"] == "reflectance"
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == ["2022-01-01.tif", "2022-01-11.tif"]
    for day in out["dates"]:
        expected = invert(cube.reflectance.sel(time=day, band=["B08", "B02"])).values
        with rasterio.open(tmp_path / f"{day}.tif") as src:
            np.testing.assert_array_equal(src.read(), expected)
            assert src.descriptions == ("B08", "B02") and src.tags()["values"] == "reflectance"


def test_bbox_cuts_the_window_to_the_pixels_it_covers(store, cube, tmp_path):
    # pixels rows 20..59, cols 30..99, shrunk by a quarter pixel so the box touches exactly those
    x0, x1 = TRANSFORM[2] + 30 * 10 + 2.5, TRANSFORM[2] + 100 * 10 - 2.5
    y0, y1 = TRANSFORM[5] - 60 * 10 + 2.5, TRANSFORM[5] - 20 * 10 - 2.5
    tr = Transformer.from_crs(32633, 4326, always_xy=True)
    w, s, e, n = tr.transform_bounds(x0, y0, x1, y1)
    # the lon/lat box's outline projected back covers its own corners: a pixel or so more at most
    out = export_cube(store, tmp_path, dates=[DATES[0]], bbox=(w, s, e, n))
    with rasterio.open(tmp_path / f"{DATES[0]}.tif") as src:
        col0, row0 = ~grid_of(cube).transform @ (src.transform.c, src.transform.f)
        col0, row0 = round(col0), round(row0)
        assert 28 <= col0 <= 30 and 18 <= row0 <= 20 and 70 <= src.width <= 74 and 40 <= src.height <= 44
        assert out["shape"] == [src.height, src.width]
        np.testing.assert_array_equal(
            src.read(), cube.reflectance.sel(time=DATES[0]).values[:, row0:row0 + src.height, col0:col0 + src.width])


def test_geometry_sets_pixels_outside_to_nodata_and_cuts_the_window_to_its_bounds(store, cube, tmp_path):
    # a triangle over rows 10..89, cols 20..139 (in the CRS), given in lon/lat
    corners = [(TRANSFORM[2] + c * 10, TRANSFORM[5] - r * 10) for r, c in ((10, 20), (10, 140), (90, 20))]
    ring = [list(_lonlat(x, y)) for x, y in corners]
    geometry = {"type": "Polygon", "coordinates": [ring + [ring[0]]]}
    export_cube(store, tmp_path, dates=[DATES[1]], geometry={"type": "Feature", "geometry": geometry, "properties": {}})
    with rasterio.open(tmp_path / f"{DATES[1]}.tif") as src:
        data = src.read()
        col0, row0 = (round(v) for v in ~grid_of(cube).transform @ (src.transform.c, src.transform.f))
        assert abs(col0 - 20) <= 1 and abs(row0 - 10) <= 1 and abs(src.width - 120) <= 2 and abs(src.height - 80) <= 2
    store_values = cube.reflectance.sel(time=DATES[1]).values[:, row0:row0 + data.shape[1], col0:col0 + data.shape[2]]
    from rasterio.features import geometry_mask
    from shapely.geometry import Polygon

    inside = geometry_mask([Polygon(corners)], out_shape=data.shape[1:], transform=src.transform, invert=True)
    assert 0.4 < inside.mean() < 0.6  # a triangle: half of its bounding box
    np.testing.assert_array_equal(data[:, inside], store_values[:, inside])
    assert np.isnan(data[:, ~inside]).all()


def test_stac_items_round_trip_through_pystac_and_the_vrt_stacks_dates_by_bands(store, cube, tmp_path):
    out = export_cube(store, tmp_path, bands=["B04", "B08"])
    raw = json.loads((tmp_path / "items.json").read_text())
    items = pystac.ItemCollection.from_dict(raw)
    assert pystac.ItemCollection.from_file(str(tmp_path / "items.json")).to_dict() == items.to_dict()
    assert [i.datetime.date().isoformat() for i in items] == DATES
    w, s, e, n = transform_bounds("EPSG:32633", "EPSG:4326", *grid_of(cube).bounds)
    for item, day in zip(items, DATES):
        assert item.properties["proj:epsg"] == 32633  # kept through pystac's migration
        assert item.properties["proj:shape"] == [NY, NX]
        assert item.properties["proj:transform"] == list(TRANSFORM)
        assert item.bbox == pytest.approx([w, s, e, n], abs=1e-6)
        assert item.geometry["type"] == "Polygon"
        asset = item.assets["data"]
        assert asset.media_type == COG_MEDIA_TYPE == pystac.MediaType.COG
        assert [b["name"] for b in asset.extra_fields["eo:bands"]] == ["B04", "B08"]
        assert asset.get_absolute_href() == str((tmp_path / f"{day}.tif").resolve())
        with rasterio.open(asset.href) as src:
            np.testing.assert_array_equal(src.read(2), cube.reflectance.sel(time=day, band="B08").values)
    assert pystac.ItemCollection.from_dict(items.to_dict()).to_dict() == items.to_dict()

    with rasterio.open(out["vrt"]) as vrt:
        assert vrt.count == NT * 2 and vrt.crs.to_epsg() == 32633 and vrt.transform == Affine(*TRANSFORM)
        assert vrt.descriptions[:3] == (f"{DATES[0]} B04", f"{DATES[0]} B08", f"{DATES[1]} B04")
        assert vrt.tags(3) == {"date": DATES[1], "band": "B04"}
        np.testing.assert_array_equal(vrt.read(2 * 3 + 2), cube.reflectance.sel(time=DATES[3], band="B08").values)
        assert np.isnan(vrt.nodata) and vrt.overviews(1) == [2]
        with rasterio.open(tmp_path / f"{DATES[3]}.tif") as cog:
            np.testing.assert_array_equal(vrt.read(2 * 3 + 2, out_shape=(NY // 2, NX // 2)),
                                          cog.read(2, out_shape=(NY // 2, NX // 2)))  # the COG's overview


def test_a_rerun_skips_complete_files_overwrite_rewrites_and_another_export_conflicts(store, tmp_path):
    export_cube(store, tmp_path, dates=DATES[:2])
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = export_cube(store, tmp_path, dates=DATES[:2])
    assert again["written"] == [] and again["skipped"] == DATES[:2]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before, "a rerun rewrote files"

    with pytest.raises(OutputConflictError, match=r"2022-01-01\.tif holds another export \(bands"):
        export_cube(store, tmp_path, dates=DATES[:3], bands=["B02"])
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before, "a conflict wrote something"

    redo = export_cube(store, tmp_path, dates=DATES[:2], overwrite=True)
    assert redo["written"] == DATES[:2]
    assert (tmp_path / f"{DATES[0]}.tif").stat().st_mtime_ns != before[f"{DATES[0]}.tif"]
    assert (tmp_path / "items.json").stat().st_mtime_ns == before["items.json"]  # same content: left alone


@pytest.mark.parametrize("kwargs,match", [
    ({"bands": ["B04", "B99"]}, r"band\(s\) B99 not in the store .* it has B02, B04, B08 \(argument: bands\)"),
    ({"dates": ["2022-01-01", "2022-02-01"]}, r"date\(s\) 2022-02-01 not in the store .* it has 2022-01-01, .*\(argument: dates\)"),
    ({"dates": ["Jan 3"]}, r"dates 'Jan 3' is not a date"),
    ({"bbox": (20.0, 10.0, 20.1, 10.1)}, r"bbox with bounds \(20, 10, 20.1, 10.1\) does not overlap the store, which covers"),
    ({"bbox": (-170.0, -80.0, -169.0, -79.0)}, r"does not overlap the store"),
    ({"bbox": (13.0, 46.0, 12.0, 47.0)}, r"inverted"),
    ({"bbox": (13.0, 45.0, 14.0, 46.0), "geometry": {"type": "Polygon", "coordinates": []}}, r"exactly one region"),
    ({"blocksize": 100}, r"blocksize=100 must be a multiple of 16"),
])
def test_bad_input_raises_input_error_naming_the_value_before_anything_is_written(store, tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        export_cube(store, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_missing_store_and_denormalizing_a_store_without_factors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no Zarr store at"):
        export_cube(tmp_path / "nope.zarr", tmp_path / "out")
    plain = write_cube(_dataset(normalized=False).isel(time=[0]), tmp_path / "plain.zarr", region_size=64)
    with pytest.raises(InputError, match=r"no normalisation factors .* pass denormalize=False"):
        export_cube(plain, tmp_path / "out", denormalize=True)
    assert not (tmp_path / "out").exists()


def test_memory_stays_bounded_by_one_window_of_one_date(tmp_path, monkeypatch):
    big = write_cube(_dataset(ny=512, nx=512).isel(time=slice(0, 3)), tmp_path / "big.zarr", region_size=128)
    one_date = len(BANDS) * 512 * 512 * 4  # 3 MiB; the cube: 9 MiB
    monkeypatch.setattr(export_module, "TILE_BYTES", 128 * 128 * len(BANDS) * 4)  # one Zarr chunk per window
    export_cube(big, tmp_path / "warm", dates=[DATES[0]], bands=["B02"])  # imports and caches out of the measurement
    tracemalloc.start()
    try:
        export_cube(big, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the Python heap (NumPy arrays included; GDAL's buffers are not traced): one window and bookkeeping
    assert peak < one_date / 2, f"peak {peak:,} B, one date {one_date:,} B (the cube is {3 * one_date:,} B)"


def test_cli_export_writes_the_files_and_prints_a_summary(store, cube, tmp_path):
    from s2pipe.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["export", str(store), str(tmp_path / "gis"), "--dates", f"{DATES[0]},{DATES[2]}",
                              "--bands", "B04,B08", "--denormalize"])
    assert res.exit_code == 0, res.output
    assert "2 dates x 2 bands" in res.output and "reflectance" in res.output and "items.json" in res.output
    with rasterio.open(tmp_path / "gis" / f"{DATES[2]}.tif") as src:
        np.testing.assert_array_equal(src.read(), invert(cube.reflectance.sel(time=DATES[2], band=["B04", "B08"])).values)
    again = runner.invoke(app, ["export", str(store), str(tmp_path / "gis"), "--dates", f"{DATES[0]},{DATES[2]}",
                                "--bands", "B04,B08", "--denormalize"])
    assert again.exit_code == 0 and "2 up to date" in again.output
    bad = runner.invoke(app, ["export", str(store), str(tmp_path / "gis2"), "--bands", "B99"])
    assert bad.exit_code == 2 and "B99" in bad.output and not (tmp_path / "gis2").exists()
    bad_bbox = runner.invoke(app, ["export", str(store), str(tmp_path / "gis2"), "--bbox", "1,2,3"])
    assert bad_bbox.exit_code == 2 and "--bbox" in bad_bbox.output
    assert os.listdir(tmp_path) == ["gis"]

    ring = [list(_lonlat(TRANSFORM[2] + c * 10, TRANSFORM[5] - r * 10)) for r, c in ((0, 0), (0, 50), (30, 50), (30, 0))]
    aoi = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}}]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    clipped = runner.invoke(app, ["export", str(store), str(tmp_path / "aoi"), "--dates", DATES[4],
                                  "--geometry", str(tmp_path / "aoi.geojson")])
    assert clipped.exit_code == 0, clipped.output
    with rasterio.open(tmp_path / "aoi" / f"{DATES[4]}.tif") as src:
        assert abs(src.width - 50) <= 1 and abs(src.height - 30) <= 1

"""build_cube on real synthetic COGs (s2pipe.synthetic.scenes.make_scenes): grid exactness, resampling, solar-day merging."""
from __future__ import annotations

import copy

import dask
import numpy as np
import pandas as pd
import pytest
from pyproj import Transformer

from s2pipe.bands import SPECTRAL_10
from s2pipe.cube import build_cube, grid_of
from s2pipe.errors import InputError, NoScenesError
from s2pipe.synthetic.scenes import (
    BASELINE_OFFSET_DN,
    TILE_BIAS_DN,
    make_scenes,
    read_cog,
    synthetic_reflectance,
)

SIZE = 64  # 10 m pixels per tile side
ORIGIN = (399960.0, 5000040.0)
EPSG = 32633
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray + affine


@pytest.fixture(scope="module")
def one_tile(tmp_path_factory):
    """One tile, three dates straddling the 2022-01-25 baseline change (offsets 0, -0.1, -0.1)."""
    return make_scenes(tmp_path_factory.mktemp("one"), n_dates=3, tiles=1, size=SIZE, start="2022-01-20", block_size=16)


@pytest.fixture(scope="module")
def two_tiles(tmp_path_factory):
    """Two overlapping tiles per date (same solar day); tile 0 has 6 nodata columns at its eastern edge."""
    return make_scenes(tmp_path_factory.mktemp("two"), n_dates=2, tiles=2, size=SIZE, overlap=16, nodata_cols=6,
                       start="2021-07-01", block_size=16)


def lonlat_bbox(xmin, ymin, xmax, ymax):
    t = Transformer.from_crs(EPSG, 4326, always_xy=True)
    return t.transform_bounds(xmin, ymin, xmax, ymax)


def test_dims_dtype_coords_attrs(one_tile):
    cube = build_cube(one_tile)
    assert cube.name == "dn"
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.dtype == np.uint16
    assert isinstance(cube.data, dask.array.Array)
    assert list(cube.band.values) == list(SPECTRAL_10) + ["SCL"]
    assert cube.sizes == {"time": 3, "band": 11, "y": SIZE, "x": SIZE}
    assert cube.time.dtype == np.dtype("datetime64[ns]")
    assert list(pd.DatetimeIndex(cube.time.values)) == list(pd.to_datetime(["2022-01-20", "2022-01-25", "2022-01-30"]))
    assert cube.scale.dims == ("time", "band") and cube.offset.dims == ("time", "band")
    assert cube.attrs["crs"] == f"EPSG:{EPSG}"
    assert cube.attrs["resolution"] == 10.0
    assert cube.attrs["stac_items"] == [it.id for it in one_tile]
    assert {"catalog", "catalog_url"} <= set(cube.attrs)
    assert cube.rio.crs.to_epsg() == EPSG
    assert "spatial_ref" in cube.coords
    # without SCL, a band subset, in the order asked
    sub = build_cube(one_tile, bands=["B08", "B02"], include_scl=False)
    assert list(sub.band.values) == ["B08", "B02"]


def test_transform_exact_and_10m_values_equal_cog(one_tile):
    cube = build_cube(one_tile, chunk_size=32)
    arr, transform = read_cog(one_tile[0].assets["B02"].href)
    assert tuple(cube.attrs["transform"]) == tuple(transform)[:6]
    assert cube.rio.transform() == transform
    assert grid_of(cube).transform == transform
    # pixel centres exactly
    assert cube.x.values[0] == ORIGIN[0] + 5.0 and cube.y.values[0] == ORIGIN[1] - 5.0
    np.testing.assert_array_equal(np.diff(cube.x.values), 10.0)
    np.testing.assert_array_equal(np.diff(cube.y.values), -10.0)
    np.testing.assert_array_equal(cube.sel(band="B02").isel(time=0).values, arr)
    arr2, _ = read_cog(one_tile[2].assets["B08"].href)
    np.testing.assert_array_equal(cube.sel(band="B08").isel(time=2).values, arr2)


def test_bbox_is_snapped_to_the_pixel_grid_and_values_still_exact(one_tile):
    # a lon/lat box whose projected edges fall inside pixels
    box = lonlat_bbox(ORIGIN[0] + 103.7, ORIGIN[1] - 401.2, ORIGIN[0] + 377.1, ORIGIN[1] - 152.9)
    cube = build_cube(one_tile, bbox=box, bands=["B02", "B05"], include_scl=True)
    t = grid_of(cube).transform
    for edge in (t.c, t.f, t.c + t.a * cube.sizes["x"], t.f + t.e * cube.sizes["y"]):
        assert edge % 10.0 == 0.0
    xmin, ymin, xmax, ymax = grid_of(cube).bounds
    assert xmin <= ORIGIN[0] + 103.7 and xmax >= ORIGIN[0] + 377.1  # covers the box (snapped outwards)
    col, row = int((t.c - ORIGIN[0]) / 10), int((ORIGIN[1] - t.f) / 10)
    arr, _ = read_cog(one_tile[1].assets["B02"].href)
    expected = arr[row:row + cube.sizes["y"], col:col + cube.sizes["x"]]
    np.testing.assert_array_equal(cube.sel(band="B02").isel(time=1).values, expected)
    # SCL (nearest from 20 m): each 10 m pixel is the 20 m pixel it lies in
    scl, _ = read_cog(one_tile[1].assets["SCL"].href)
    up = np.repeat(np.repeat(scl, 2, 0), 2, 1)[row:row + cube.sizes["y"], col:col + cube.sizes["x"]]
    np.testing.assert_array_equal(cube.sel(band="SCL").isel(time=1).values, up)


def test_20m_band_cubic_close_to_truth_scl_nearest_exact(one_tile):
    cube = build_cube(one_tile, bands=["B05", "B11"], include_scl=True).isel(time=0).compute()
    xc, yc = cube.x.values, cube.y.values
    inner = (slice(3, -3), slice(3, -3))  # away from the tile edge (no neighbours outside)
    for band in ("B05", "B11"):
        truth = np.rint(synthetic_reflectance(band, 0, xc[None, :], yc[:, None]) / 1e-4)
        got = cube.sel(band=band).values.astype(float)
        cog, _ = read_cog(one_tile[0].assets[band].href)
        nearest = np.repeat(np.repeat(cog, 2, 0), 2, 1).astype(float)
        err_cubic = np.abs(got - truth)[inner]
        err_nearest = np.abs(nearest - truth)[inner]
        assert err_cubic.mean() < 0.5 * err_nearest.mean(), (band, err_cubic.mean(), err_nearest.mean())
        assert err_cubic.max() < 60  # DN, on a field of amplitude 1500 DN
        assert not np.array_equal(got, nearest)
    scl, _ = read_cog(one_tile[0].assets["SCL"].href)
    np.testing.assert_array_equal(cube.sel(band="SCL").values, np.repeat(np.repeat(scl, 2, 0), 2, 1))


def test_solar_day_merge_first_valid_pixel_wins(two_tiles):
    assert len(two_tiles) == 4
    cube = build_cube(two_tiles, bands=["B02", "B05"], chunk_size=32)
    assert cube.sizes["time"] == 2  # 4 scenes, 2 solar days
    assert cube.sizes["x"] == 2 * SIZE - 16
    assert cube.attrs["stac_items"] == [it.id for it in two_tiles]
    b02 = cube.sel(band="B02").isel(time=0).values
    t0, _ = read_cog(two_tiles[0].assets["B02"].href)
    t1, _ = read_cog(two_tiles[1].assets["B02"].href)
    start1 = SIZE - 16  # first column of tile 1
    # west of the overlap: tile 0; overlap where tile 0 is valid: tile 0; its nodata columns: tile 1; east: tile 1
    np.testing.assert_array_equal(b02[:, :start1], t0[:, :start1])
    np.testing.assert_array_equal(b02[:, start1:SIZE - 6], t0[:, start1:SIZE - 6])
    np.testing.assert_array_equal(b02[:, SIZE - 6:SIZE], t1[:, 16 - 6:16])
    np.testing.assert_array_equal(b02[:, SIZE:], t1[:, 16:])
    # the tiles differ by TILE_BIAS_DN in the overlap, so the test above tells them apart
    assert np.all(t1[:, :10].astype(int) - t0[:, start1:SIZE - 6].astype(int) == TILE_BIAS_DN)
    assert np.all(cube.isel(time=1).values > 0)  # no holes after the merge
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(cube.values, build_cube(two_tiles, bands=["B02", "B05"], chunk_size=16).values)


@pytest.mark.parametrize("read", ["auto", "warp"])
def test_time_whole_chunks_equal_per_date_chunks(two_tiles, tmp_path, read):
    """time_chunks="all": one (all dates, 1 band, y, x) block per read task, the solar-day merge and the offset
    shift done inside it, values identical to the per-date chunks."""
    per_date = build_cube(two_tiles, bands=["B02", "B05"], chunk_size=32, read=read)
    whole = build_cube(two_tiles, bands=["B02", "B05"], chunk_size=32, read=read, time_chunks="all")
    assert whole.data.chunks[:2] == ((2,), (1, 1, 1)) and per_date.data.chunks[0] == (1, 1)
    assert whole.data.chunks[2:] == per_date.data.chunks[2:]
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(whole.values, per_date.values)
    first, late = _day_of_mixed_offsets(tmp_path)  # a day whose second scene needs the DN shift
    extra = make_scenes(tmp_path / "more", n_dates=2, tiles=1, size=32, overlap=8, start="2022-02-20")
    items = [first, late, *extra]
    a = build_cube(items, bands=["B02"], read=read).compute()
    b = build_cube(items, bands=["B02"], read=read, time_chunks="all")
    assert b.data.chunks[0] == (3,)
    np.testing.assert_array_equal(b.values, a.values)
    with pytest.raises(InputError, match="time_chunks='weekly'"):
        build_cube(items, time_chunks="weekly")


def test_offsets_per_date_and_reflectance(one_tile):
    cube = build_cube(one_tile, bands=["B02", "B05"]).compute()
    np.testing.assert_array_equal(cube.offset.sel(band="B02").values, [0.0, -0.1, -0.1])
    np.testing.assert_array_equal(cube.scale.sel(band="B02").values, [1e-4] * 3)
    np.testing.assert_array_equal(cube.offset.sel(band="SCL").values, [0.0] * 3)
    np.testing.assert_array_equal(cube.scale.sel(band="SCL").values, [1.0] * 3)
    refl = cube.sel(band="B02") * cube.scale.sel(band="B02") + cube.offset.sel(band="B02")
    for d in range(3):
        truth = synthetic_reflectance("B02", d, cube.x.values[None, :], cube.y.values[:, None])
        np.testing.assert_allclose(refl.isel(time=d).values, truth, atol=1e-4)
    raw = cube.sel(band="B02").values.astype(int)
    for d, extra in [(0, 0), (1, BASELINE_OFFSET_DN)]:  # DN + 1000 after the baseline change
        truth = synthetic_reflectance("B02", d, cube.x.values[None, :], cube.y.values[:, None])
        np.testing.assert_array_equal(raw[d], np.rint(truth / 1e-4).astype(int) + extra)


def _day_of_mixed_offsets(tmp_path):
    """Tile 0 on 2022-01-20 (offset 0) and tile 1 of 2022-01-30 (offset -0.1, DN + 1000) relabelled to the same day."""
    items = make_scenes(tmp_path, n_dates=3, tiles=2, size=32, overlap=8, start="2022-01-20")
    first, late = copy.deepcopy(items[0]), copy.deepcopy(items[5])
    late.datetime = first.datetime + pd.Timedelta(seconds=5)
    late.properties["s2pipe:solar_day"] = first.properties["s2pipe:solar_day"]
    return first, late


def test_mixed_offsets_within_a_day_are_aligned_to_the_first_scene(tmp_path):
    first, late = _day_of_mixed_offsets(tmp_path)
    cube = build_cube([late, first], bands=["B02"], include_scl=False).compute()  # order given does not matter
    assert cube.sizes["time"] == 1
    assert float(cube.offset.item()) == 0.0
    t1, _ = read_cog(late.assets["B02"].href)
    np.testing.assert_array_equal(cube.values[0, 0, :, 32:], t1[:, 8:] - BASELINE_OFFSET_DN)
    t0, _ = read_cog(first.assets["B02"].href)
    np.testing.assert_array_equal(cube.values[0, 0, :, :32], t0)
    late.assets["B02"].extra_fields["raster:bands"][0]["scale"] = 2e-4
    with pytest.raises(InputError, match="different scales"):
        build_cube([first, late], bands=["B02"], include_scl=False)


def test_errors(one_tile):
    with pytest.raises(NoScenesError, match="empty item list"):
        build_cube([])
    with pytest.raises(InputError, match="unknown Sentinel-2 band 'B99'"):
        build_cube(one_tile, bands=["B02", "B99"])
    with pytest.raises(InputError, match="SCL"):
        build_cube(one_tile, bands=["B02", "SCL"])
    partial = copy.deepcopy(one_tile)
    del partial[1].assets["B05"]
    with pytest.raises(InputError, match=r"band 'B05' is missing from 1 of 3 items \(S2A_T0_20220125_L2A\)"):
        build_cube(partial)
    with pytest.raises(InputError, match=r"does not intersect any of the 3 items"):
        build_cube(one_tile, bbox=(-60.0, -10.0, -59.9, -9.9))
    with pytest.raises(InputError, match="inverted"):
        build_cube(one_tile, bbox=(14.0, 45.0, 13.0, 46.0))
    with pytest.raises(InputError, match="resolution"):
        build_cube(one_tile, resolution=0)
    with pytest.raises(InputError, match="chunk_size"):
        build_cube(one_tile, chunk_size=-5)


def test_building_reads_no_pixels(one_tile):
    missing = copy.deepcopy(one_tile)
    for item in missing:
        for asset in item.assets.values():
            asset.href = asset.href.replace(".tif", "-missing.tif")
    cube = build_cube(missing)  # metadata only: must not open any file
    assert cube.shape == (3, 11, SIZE, SIZE)
    with pytest.raises(Exception, match="missing"):
        cube.isel(time=0, band=0).compute()


def test_chunks_follow_the_cog_block_grid(one_tile):
    cube = build_cube(one_tile, chunk_size=32)
    assert cube.data.chunks[:2] == ((1, 1, 1), (1,) * 11)
    assert cube.data.chunks[2:] == ((32, 32), (32, 32))
    # a bbox starting 13 px into the tile: the first chunk ends on the tile's 16-px block grid
    box = lonlat_bbox(ORIGIN[0] + 133.0, ORIGIN[1] - 600.0, ORIGIN[0] + 600.0, ORIGIN[1] - 133.0)
    cube = build_cube(one_tile, bbox=box, chunk_size=16)
    col0 = round((grid_of(cube).transform.c - ORIGIN[0]) / 10)
    edges = col0 + np.cumsum(cube.data.chunks[3])[:-1]
    assert col0 % 16 != 0 and np.all(edges % 16 == 0)


def test_epsg_default_most_common_and_override(one_tile, tmp_path):
    other = make_scenes(tmp_path, n_dates=1, tiles=1, size=16, epsg=32634, origin=(166020.0, 5000040.0),
                        start="2022-02-10", bands=("B02",), include_scl=False)
    items = [it for it in copy.deepcopy(one_tile)] + other
    for it in items[:3]:
        it.assets = {"B02": it.assets["B02"]}
    cube = build_cube(items, bands=["B02"], include_scl=False)
    assert cube.attrs["crs"] == "EPSG:32633"  # 3 of 4 items
    cube34 = build_cube(items, bands=["B02"], include_scl=False, epsg=32634, resolution=20)
    assert cube34.rio.crs.to_epsg() == 32634 and cube34.attrs["resolution"] == 20.0
    assert grid_of(cube34).transform.c % 20 == 0
    assert (cube34.isel(time=-1).values > 0).any()


@pytest.mark.parametrize("scheduler", ["threads", "distributed"])
def test_dask_compute(two_tiles, scheduler):
    cube = build_cube(two_tiles, bands=["B02", "B12"], chunk_size=32)
    with dask.config.set(scheduler="sync"):
        expected = cube.values
    if scheduler == "threads":
        with dask.config.set(scheduler="threads", num_workers=2):
            got = cube.compute().values
    else:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
                Client(cluster):
            got = cube.compute().values
    np.testing.assert_array_equal(got, expected)
    assert (expected > 0).all()


# ------------------------------------------------------------------------------------- direct read path
def _edge_band(a: np.ndarray, width: int) -> np.ndarray:
    """Boolean mask of the ``width`` outermost rows/columns of ``a``."""
    m = np.zeros(a.shape, dtype=bool)
    m[:width], m[-width:], m[:, :width], m[:, -width:] = True, True, True, True
    return m


@pytest.mark.parametrize("chunk_size", [64, 24])
def test_direct_read_equals_warped_read(one_tile, chunk_size):
    """read="auto" (direct, aligned assets) vs read="warp" (stackstac's WarpedVRT), the whole cube: identical for
    the 10 m bands and SCL (nearest), and for the cubic 20 m bands away from the tile edge; at the edge within a
    documented tolerance."""
    box = lonlat_bbox(ORIGIN[0] + 103.7, ORIGIN[1] - 401.2, ORIGIN[0] + 377.1, ORIGIN[1] - 152.9)
    for kw in ({}, {"bbox": box}):
        direct = build_cube(one_tile, chunk_size=chunk_size, **kw)
        warped = build_cube(one_tile, chunk_size=chunk_size, read="warp", **kw)
        assert direct.dims == warped.dims and direct.shape == warped.shape
        assert direct.attrs == warped.attrs and grid_of(direct) == grid_of(warped)
        with dask.config.set(scheduler="sync"):
            d, w = direct.values.astype(int), warped.values.astype(int)
        bands = list(direct.band.values)
        for j, band in enumerate(bands):
            if band in ("B02", "B03", "B04", "B08", "SCL"):
                np.testing.assert_array_equal(d[:, j], w[:, j], err_msg=band)
            else:
                edge = _edge_band(d[0, j], 3) if not kw else np.zeros(d.shape[2:], dtype=bool)
                inner = np.abs(d[:, j][:, ~edge] - w[:, j][:, ~edge])
                assert inner.max() <= 1 and (inner == 0).mean() > 0.99, (band, inner.max(), (inner == 0).mean())
                # at the tile's outer edge: GDAL's resampler and the warper treat missing neighbours differently
                diff = np.abs(d[:, j] - w[:, j])
                contrast = float(np.ptp(w[:, j]))
                assert diff.max() <= 0.02 * contrast, (band, diff.max(), contrast)


def test_direct_read_two_tiles_nodata_columns_and_merge(two_tiles):
    """Two overlapping tiles, the first with nodata columns: same footprint, same solar-day mosaic; the cubic 20 m
    bands as close to the synthetic truth as the warped read."""
    from s2pipe.synthetic.scenes import TILE_BIAS_DN

    direct = build_cube(two_tiles, bands=["B02", "B05", "B11"], chunk_size=32)
    warped = build_cube(two_tiles, bands=["B02", "B05", "B11"], chunk_size=32, read="warp")
    with dask.config.set(scheduler="sync"):
        d, w = direct.values.astype(int), warped.values.astype(int)
    np.testing.assert_array_equal(d[:, [0, 3]], w[:, [0, 3]])  # B02, SCL
    for j, band in ((1, "B05"), (2, "B11")):
        for t in range(d.shape[0]):
            truth = np.rint(synthetic_reflectance(band, t, direct.x.values[None, :], direct.y.values[:, None]) / 1e-4)
            truth[:, SIZE - 6:] += TILE_BIAS_DN  # tile 1 (biased) east of tile 0's valid columns
            err_d, err_w = np.abs(d[t, j] - truth), np.abs(w[t, j] - truth)
            assert err_d.mean() <= err_w.mean() + 0.1, (band, err_d.mean(), err_w.mean())
            assert err_d[:, 3:SIZE - 9].max() <= err_w[:, 3:SIZE - 9].max() + 2
        assert np.abs(d[:, j] - w[:, j]).max() <= 0.02 * np.ptp(w[:, j])


def test_direct_plan_rules():
    from affine import Affine

    from s2pipe.cube import direct_plan

    out = Affine(10, 0, 399960, 0, -10, 5000040)
    p = direct_plan("EPSG:32633", Affine(20, 0, 399960, 0, -20, 5000040), (32, 32), crs=32633, transform=out)
    assert p is not None and (p.col0, p.row0, p.width, p.height, p.ratio) == (0, 0, 64, 64, 2.0)
    p = direct_plan("EPSG:32633", Affine(10, 0, 400000, 0, -10, 4999960), (64, 64), crs=32633, transform=out)
    assert (p.col0, p.row0, p.ratio) == (4, 8, 1.0)
    p = direct_plan("EPSG:32633", Affine(10, 0, 399960, 0, -10, 5000040), (64, 64), crs=32633,
                    transform=Affine(20, 0, 399960, 0, -20, 5000040))
    assert p.ratio == 0.5 and p.width == 32
    # warped: another CRS, an origin off the lattice, a non-integer ratio, rotation, an odd far edge at 20 m
    assert direct_plan("EPSG:32634", Affine(20, 0, 399960, 0, -20, 5000040), (32, 32), crs=32633, transform=out) is None
    assert direct_plan("EPSG:32633", Affine(20, 0, 399965, 0, -20, 5000040), (32, 32), crs=32633, transform=out) is None
    assert direct_plan("EPSG:32633", Affine(15, 0, 399960, 0, -15, 5000040), (32, 32), crs=32633, transform=out) is None
    assert direct_plan("EPSG:32633", Affine(20, 1, 399960, 0, -20, 5000040), (32, 32), crs=32633, transform=out) is None
    assert direct_plan("EPSG:32633", Affine(10, 0, 399960, 0, -10, 5000040), (63, 63), crs=32633,
                       transform=Affine(20, 0, 399960, 0, -20, 5000040)) is None
    with pytest.raises(InputError, match="read='fast'"):
        build_cube([{"id": "x", "assets": {}}], bands=["B02"], include_scl=False, read="fast")


def test_direct_read_on_real_sentinel2_pixels(shared_data, tmp_path):
    """Real L2A pixels (Romania, 20 m B11 and SCL, written as tiled COGs): the direct reader reads them onto a 10 m
    grid of the same lattice exactly as stackstac's warped reader does (nearest exactly, cubic inside)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window
    from stackstac.raster_spec import RasterSpec

    from s2pipe.cube import DirectReadRioReader, PlainReadRioReader

    src_path = shared_data / "nrt-romania-s2l2a" / "romania_20m_20150831.tif"
    with rasterio.open(src_path) as src:
        profile, names = src.profile, list(src.descriptions)
        arrays = {n: src.read(i + 1) for i, n in enumerate(names)}
    t = profile["transform"]
    paths = {}
    for name in ("B11", "SCL"):
        p = tmp_path / f"{name}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=50, height=50, count=1, dtype="uint16", crs=profile["crs"],
                           transform=t, nodata=0, tiled=True, blockxsize=16, blockysize=16) as dst:
            dst.write(arrays[name], 1)
        paths[name] = str(p)
    spec = RasterSpec(epsg=3035, bounds=(t.c, t.f - 1000.0, t.c + 1000.0, t.f), resolutions_xy=(10.0, 10.0))
    kw = dict(spec=spec, dtype=np.dtype("uint16"), fill_value=np.uint16(0), scale_offset=(1, 0))
    for name, rs in (("SCL", Resampling.nearest), ("B11", Resampling.cubic)):
        direct = DirectReadRioReader(url=paths[name], resampling=rs, **kw)
        warped = PlainReadRioReader(url=paths[name], resampling=rs, **kw)
        for win in (Window(0, 0, 100, 100), Window(13, 27, 50, 41), Window(80, 85, 20, 15)):
            d, w = direct.read(win).astype(int), warped.read(win).astype(int)
            assert direct._plan is not None and d.shape == (win.height, win.width)
            if name == "SCL":
                np.testing.assert_array_equal(d, w)
            else:
                inside = np.zeros((100, 100), dtype=bool)
                inside[3:-3, 3:-3] = True  # 3 px from the asset edge
                r0, c0 = int(win.row_off), int(win.col_off)
                sub = np.zeros(d.shape, dtype=bool)
                ov = inside[r0:r0 + d.shape[0], c0:c0 + d.shape[1]]
                sub[:ov.shape[0], :ov.shape[1]] = ov
                inner = np.abs(d[sub] - w[sub])
                assert inner.max() <= 1 and (inner == 0).mean() > 0.99, (inner.max(), (inner == 0).mean())
                assert np.abs(d - w).max() <= 0.05 * np.ptp(arrays[name])  # edge: 3.8 % measured
    # the same asset on a grid snapped to whole 10 m (its origin is not): warped, so identical by construction
    snapped = RasterSpec(epsg=3035, bounds=(5271980.0, 2532000.0, 5272990.0, 2533010.0), resolutions_xy=(10.0, 10.0))
    r = DirectReadRioReader(url=paths["B11"], resampling=Resampling.cubic, **{**kw, "spec": snapped})
    r.read(Window(0, 0, 10, 10))
    assert r._plan is None

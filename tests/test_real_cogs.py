"""build_cube on real Sentinel-2 L2A pixels served by a STAC API, against a direct rasterio read of the source.

Two real scenes of ../shared/data/nrt-romania-s2l2a (EPSG:3035, 10 m bands at 10 m, 20 m bands and SCL at 20 m): the
clear 2015-08-31 of the GeoTIFFs and the partly cloudy 2018-08-05 of the .npz cubes (same grid). Each band is written
as a single-band tiled COG with ``s2pipe.products.cog.write_cog``, each scene described by an Earth Search v1 item, served by
``rustac serve`` (``LocalStacServer``), found with ``search_items`` and read with ``build_cube``.
Their origin (5271982.58, 2533004.21) is not on the 10 m lattice that ``build_cube`` snaps the grid to, so every
asset is warped: the real case of a catalog on a grid of its own.
"""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject

from s2pipe.cube import build_cube
from s2pipe.products.cog import write_cog
from s2pipe.search import search_items
from s2pipe.stac.catalog import load_profile
from s2pipe.stac.server import LocalStacServer
from s2pipe.synthetic.items import earth_search_item

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

CLEAR_DATE, CLOUDY_DATE = "2015-08-31", "2018-08-05"  # SCL: all vegetation / classes 3, 4, 5, 7, 8, 9, 10
OVERPASS = dt.time(9, 20, 26)  # UTC, Sentinel-2 over western Romania
BANDS_10 = ("B02", "B03", "B04", "B08")
BANDS_20 = ("B8A", "B11")  # the 20 m files' B03/B04 duplicate the 10 m bands


@pytest.fixture(scope="module")
def source(shared_data):
    """{date: {band: (array, transform, crs)}}: the clear date from the GeoTIFFs, a partly cloudy one from the .npz
    cubes of the same grid; 10 m bands at 10 m, 20 m bands and SCL at 20 m (as Sentinel-2 delivers SCL)."""
    folder = shared_data / "nrt-romania-s2l2a"
    clear = {}
    for name, wanted in (("romania_10m_20150831.tif", BANDS_10), ("romania_20m_20150831.tif", BANDS_20 + ("SCL",))):
        with rasterio.open(folder / name) as src:
            for i, band in enumerate(src.descriptions):
                if band in wanted:
                    clear[band] = (src.read(i + 1), src.transform, src.crs)
    cloudy = {}
    for name, wanted in (("romania_10m.npz", BANDS_10), ("romania_20m.npz", BANDS_20)):
        with np.load(folder / name, allow_pickle=False) as z:
            t = [str(d) for d in z["dates"]].index(CLOUDY_DATE)
            transform, crs = Affine(*z["transform"][:6]), rasterio.crs.CRS.from_string(str(z["crs"]))
            names = [str(b) for b in z["band_names"]]
            for band in wanted:
                cloudy[band] = (z["reflectance_dn"][t, names.index(band)], transform, crs)
            if name == "romania_20m.npz":
                cloudy["SCL"] = (z["scl"][t], transform, crs)
    for scene in (clear, cloudy):
        assert set(scene) == set(BANDS_10 + BANDS_20 + ("SCL",))
    assert clear["B02"][1] == cloudy["B02"][1] and clear["SCL"][1] == cloudy["SCL"][1]
    return {CLEAR_DATE: clear, CLOUDY_DATE: cloudy}


@pytest.fixture(scope="module")
def served_items(source, tmp_path_factory):
    """The COGs and their items served by a real STAC API, searched with search_items: normalized items."""
    root = tmp_path_factory.mktemp("romania")
    features = []
    for date, scene in source.items():
        item_id = f"S2A_34TFQ_{date.replace('-', '')}_0_L2A"
        hrefs = {}
        for band, (arr, transform, crs) in scene.items():
            dtype = np.uint8 if band == "SCL" else np.uint16  # as Sentinel-2 L2A ships them
            hrefs[band] = str(write_cog(root / item_id / f"{band}.tif", arr.astype(dtype), transform=transform,
                                        crs=crs.to_wkt(), nodata=0, blocksize=32))
        t10 = scene["B02"][1]
        scl = scene["SCL"][0]
        features.append(earth_search_item(
            item_id, datetime=dt.datetime.combine(dt.date.fromisoformat(date), OVERPASS, tzinfo=dt.timezone.utc),
            epsg=3035, bounds=(t10.c, t10.f - 1000.0, t10.c + 1000.0, t10.f), assets=hrefs,
            shapes={10: (100, 100), 20: (50, 50)}, mgrs_tile="34TFQ",
            cloud_cover=100.0 * float(np.isin(scl, (3, 8, 9, 10)).mean())))
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    times = [f["properties"]["datetime"] for f in features]
    collection = {"type": "Collection", "stac_version": "1.0.0", "id": "sentinel-2-l2a", "description": "Romania",
                  "license": "proprietary", "links": [],
                  "extent": {"spatial": {"bbox": [features[0]["bbox"]]}, "temporal": {"interval": [[times[0], times[-1]]]}}}
    (root / "collection.json").write_text(json.dumps(collection))
    w, s, e, n = features[0]["bbox"]
    with LocalStacServer([root / "collection.json", root / "items.json"]) as server:
        profile = load_profile("local-demo").model_copy(update={"local_roots": (str(root),)})
        items = search_items(profile, bbox=(w + 0.001, s + 0.001, e - 0.001, n - 0.001), start=CLEAR_DATE,
                             end=CLOUDY_DATE, url=server.url)
    assert [it.id for it in items] == [f["id"] for f in features]
    assert items[0].assets["B02"].href == features[0]["assets"]["blue"]["href"]  # Earth Search "blue" -> B02
    return items


@pytest.fixture(scope="module")
def cube(served_items):
    cube = build_cube(served_items, bands=BANDS_10 + BANDS_20, chunk_size=32)
    return cube, cube.values


def pixel_centres(cube):
    return np.meshgrid(cube.x.values, cube.y.values)


def test_grid_and_metadata_of_the_real_cube(cube, source):
    cube, _ = cube
    t10 = source[CLEAR_DATE]["B02"][1]
    assert cube.attrs["crs"] == "EPSG:3035" and cube.attrs["resolution"] == 10.0
    # snapped outwards to whole 10 m: 5271980 .. 5272990 x 2532000 .. 2533010 (101 x 101 px)
    x0, y1 = np.floor(t10.c / 10) * 10, np.ceil(t10.f / 10) * 10
    assert tuple(cube.attrs["transform"]) == (10.0, 0.0, x0, 0.0, -10.0, y1)
    assert cube.sizes == {"time": 2, "band": 7, "y": 101, "x": 101}
    assert list(cube.band.values) == list(BANDS_10 + BANDS_20) + ["SCL"]
    assert [str(t)[:10] for t in cube.time.values] == [CLEAR_DATE, CLOUDY_DATE]
    np.testing.assert_array_equal(cube.scale.values, [[1e-4] * 6 + [1.0]] * 2)
    np.testing.assert_array_equal(cube.offset.values, np.zeros((2, 7)))
    assert cube.data.chunksize[2:] == (32, 32)


@pytest.mark.parametrize("date", [CLEAR_DATE, CLOUDY_DATE])
def test_scl_equals_the_source_pixel_under_each_output_centre(cube, source, date):
    """Nearest neighbour: each output pixel holds the source SCL pixel its centre falls in; 0 outside the source."""
    cube, values = cube
    t = [str(v)[:10] for v in cube.time.values].index(date)
    arr, transform, _ = source[date]["SCL"]
    xs, ys = pixel_centres(cube)
    cols, rows = ~transform * (xs, ys)
    cols, rows = np.floor(cols).astype(int), np.floor(rows).astype(int)
    inside = (rows >= 0) & (rows < arr.shape[0]) & (cols >= 0) & (cols < arr.shape[1])
    assert 0.95 < inside.mean() < 1  # the last column's centres lie east of the source
    got = values[t, -1]
    np.testing.assert_array_equal(got[inside], arr[rows[inside], cols[inside]])
    assert (got[~inside] == 0).all()
    assert len(np.unique(got[inside])) == (1 if date == CLEAR_DATE else 7)


@pytest.mark.parametrize("date", [CLEAR_DATE, CLOUDY_DATE])
@pytest.mark.parametrize("band", BANDS_10 + BANDS_20)
def test_bands_equal_the_source_resampled_by_gdal(cube, source, band, date):
    """Cubic bands: equal to the source warped by GDAL (rasterio.warp.reproject, cubic) onto the cube's grid, and
    close to the source pixel under each centre (the grid is shifted by 0.26 px in x, 0.58 px in y from the source's)."""
    cube, values = cube
    j = list(cube.band.values).index(band)
    t = [str(v)[:10] for v in cube.time.values].index(date)
    got = values[t, j].astype(np.int64)
    arr, transform, crs = source[date][band]
    want = np.zeros(got.shape, dtype=np.uint16)
    reproject(arr, want, src_transform=transform, src_crs=crs, src_nodata=0, dst_transform=Affine(*cube.attrs["transform"]),
              dst_crs=crs, dst_nodata=0, resampling=Resampling.cubic)
    valid = want > 0
    assert valid.mean() > 0.95
    np.testing.assert_array_equal(got, want)  # measured: identical, every pixel, both dates, all six bands
    # against the raw source pixel that holds each centre: a real image shifted by < 1 source pixel
    xs, ys = pixel_centres(cube)
    cols, rows = ~transform * (xs, ys)
    cols, rows = np.floor(cols).astype(int), np.floor(rows).astype(int)
    inside = (rows >= 0) & (rows < arr.shape[0]) & (cols >= 0) & (cols < arr.shape[1]) & valid
    near = arr[rows[inside], cols[inside]].astype(np.int64)
    corr = np.corrcoef(got[inside], near)[0, 1]
    assert corr > 0.9, (band, corr)
    assert np.median(np.abs(got[inside] - near)) < 0.1 * np.ptp(arr), band

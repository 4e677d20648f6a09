"""STAC metadata of an output store (``s2pipe.products.stac_metadata``): a Collection and an Item beside the store, with the
datacube and projection fields of its grid, dates, bands and variables, and provenance links to the inputs.

pystac's ``validate()`` fetches the JSON schemas over HTTP (no network here): the required fields and the
consistency of the datacube fields with the store are checked directly instead."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pystac
import pytest
import xarray as xr
from helpers import NB, NT, NX, NY, TRANSFORM, make_dataset
from pyproj import Transformer

from s2pipe.errors import InputError
from s2pipe.grid import grid_of
from s2pipe.products.stac_metadata import (
    DATACUBE_SCHEMA,
    PROJECTION_SCHEMA,
    ZARR_MEDIA_TYPE,
    cube_stac,
    stac_paths,
    write_cube_stac,
)
from s2pipe.store.zarr import open_cube, write_cube

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray + affine

SECRET_URL = "https://user:pw@stac.example.com/v1/?token=SECRET123"
"""A catalog URL with credentials, given to the store attrs as is (upstream redacts it; the STAC must too)."""
ITEMS = ("S2A_33TWL_20210301_0_L2A", "S2B_33TWL_20210306_0_L2A", "S2A 33TWL/odd")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A finished store from an http(s) catalog (built-in profile earth-search-v1-l2a), with a quick-look beside it,
    and its STAC written."""
    ds = make_dataset(backing="numpy", items=ITEMS)
    ds.attrs.update(catalog="earth-search-v1-l2a", catalog_url=SECRET_URL)
    path = write_cube(ds, tmp_path_factory.mktemp("out") / "cube.zarr", region_size=32)
    path.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return path, write_cube_stac(path)


def _json(path) -> dict:
    return json.loads(path.read_text())


def test_files_beside_the_store_round_trip_through_pystac(store):
    path, files = store
    assert files == stac_paths(path) == {"collection": path.with_name("cube.collection.json"),
                                         "item": path.with_name("cube.item.json")}
    item = pystac.read_file(files["item"])
    collection = pystac.Collection.from_file(files["collection"])
    assert isinstance(item, pystac.Item) and item.id == "cube" and item.collection_id == "cube"
    assert collection.id == "cube" and collection.license == "other"
    assert item.get_collection().id == "cube"
    assert [i.id for i in collection.get_items()] == ["cube"]
    # cube_stac returns the same objects, their self hrefs on the files, linked to each other in memory
    c2, i2 = cube_stac(path)
    assert i2.get_self_href() == str(files["item"]) and c2.get_self_href() == str(files["collection"])
    assert i2.get_collection() is c2 and list(c2.get_items()) == [i2]
    assert i2.properties.pop("proj:epsg") == 32633  # as written; pystac.read_file's migration drops it
    assert i2.properties == item.properties and i2.bbox == item.bbox and i2.geometry == item.geometry
    assert c2.to_dict()["cube:dimensions"] == collection.to_dict()["cube:dimensions"]
    assert {k: a.to_dict() for k, a in i2.assets.items()} == {k: a.to_dict() for k, a in item.assets.items()}


def test_required_fields_and_extensions(store):
    _, files = store
    item, coll = _json(files["item"]), _json(files["collection"])
    assert item["type"] == "Feature" and item["stac_version"].startswith("1.")
    assert {"id", "geometry", "bbox", "properties", "links", "assets"} <= set(item)
    assert item["stac_extensions"] == [DATACUBE_SCHEMA, PROJECTION_SCHEMA]
    props = item["properties"]
    assert props["datetime"] is None
    assert props["start_datetime"] == "2021-03-01T00:00:00Z" and props["end_datetime"] == "2021-03-16T00:00:00Z"
    assert item["geometry"]["type"] == "Polygon" and len(item["geometry"]["coordinates"][0]) == 81  # 21 a side, closed
    assert coll["type"] == "Collection" and coll["stac_extensions"] == [DATACUBE_SCHEMA]
    assert {"id", "description", "license", "extent", "links", "cube:dimensions"} <= set(coll)
    assert coll["extent"]["temporal"]["interval"] == [[props["start_datetime"], props["end_datetime"]]]
    assert coll["extent"]["spatial"]["bbox"] == [item["bbox"]]
    assert coll["cube:dimensions"] == props["cube:dimensions"]
    assert coll["cube:variables"] == props["cube:variables"]
    for link in item["links"] + coll["links"]:
        assert {"rel", "href"} <= set(link)
    assert not any(link["rel"] == "self" for link in item["links"] + coll["links"])  # relocatable


def test_datacube_fields_match_the_store(store):
    path, files = store
    ds, grid = open_cube(path), grid_of(open_cube(path))
    dims = _json(files["item"])["properties"]["cube:dimensions"]
    assert list(dims) == ["x", "y", "time", "band"]
    xmin, ymin, xmax, ymax = grid.bounds
    for name, lo, hi, n in (("x", xmin, xmax, NX), ("y", ymin, ymax, NY)):
        d = dims[name]
        assert d["type"] == "spatial" and d["axis"] == name and d["reference_system"] == 32633
        assert d["extent"] == [lo, hi] and d["step"] == 10.0
        assert round((hi - lo) / d["step"]) == n == ds.sizes[name]
        centres = ds[name].values  # the coordinates are the pixel centres, half a step inside the extent
        assert centres.min() - 5.0 == lo and centres.max() + 5.0 == hi
    t = dims["time"]
    assert t["type"] == "temporal" and t["extent"] == ["2021-03-01T00:00:00Z", "2021-03-16T00:00:00Z"]
    assert t["step"] == "P5D" and "values" not in t and ds.sizes["time"] == NT
    assert dims["band"] == {"type": "bands", "values": ["B02", "B03", "B8A"],
                            "description": "Sentinel-2 band (s2pipe canonical names)"}
    assert len(dims["band"]["values"]) == NB == ds.sizes["band"]

    variables = _json(files["item"])["properties"]["cube:variables"]
    assert set(variables) == set(ds.data_vars) == {"reflectance", "weight", "observed"}
    for name, v in variables.items():
        assert v["dimensions"] == list(ds[name].dims) and v["type"] == "data"
        assert v["data_type"] == ds[name].dtype.name
        assert set(v["dimensions"]) <= set(dims)
    assert variables["reflectance"]["dimensions"] == ["time", "band", "y", "x"]
    assert variables["reflectance"]["description"] == "reflectance" and variables["reflectance"]["nodata"] == "nan"
    assert variables["weight"]["unit"] == "1" and variables["observed"]["values"] == [0, 1]


def test_projection_fields_equal_the_grid(store):
    path, files = store
    raw = _json(files["item"])["properties"]
    assert raw["proj:code"] == "EPSG:32633" and raw["proj:epsg"] == 32633
    assert raw["proj:shape"] == [NY, NX] and raw["proj:transform"] == TRANSFORM
    grid = grid_of(open_cube(path))
    assert raw["proj:bbox"] == list(grid.bounds)
    item = pystac.read_file(files["item"])  # pystac's migration keeps proj:code (it drops proj:epsg on reading)
    assert item.ext.proj.code == "EPSG:32633" and item.ext.proj.shape == [NY, NX]


def test_bbox_contains_the_grid_centre_and_matches_the_region(store):
    path, files = store
    item = _json(files["item"])
    west, south, east, north = item["bbox"]
    grid = grid_of(open_cube(path))
    xmin, ymin, xmax, ymax = grid.bounds
    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform((xmin + xmax) / 2, (ymin + ymax) / 2)
    assert west < lon < east and south < lat < north
    expected = to_ll.transform_bounds(xmin, ymin, xmax, ymax, densify_pts=21)
    np.testing.assert_allclose(item["bbox"], expected, atol=2e-7)
    ring = np.array(item["geometry"]["coordinates"][0])
    assert (ring[:, 0] >= west).all() and (ring[:, 0] <= east).all()
    assert (ring[:, 1] >= south).all() and (ring[:, 1] <= north).all()


def test_assets_open_the_store_and_name_the_quicklook(store):
    path, files = store
    item = pystac.read_file(files["item"])
    data = item.assets["data"]
    assert data.media_type == ZARR_MEDIA_TYPE == pystac.MediaType.ZARR and data.roles == ["data"]
    assert _json(files["item"])["assets"]["data"]["href"] == "./cube.zarr"  # relative: moves with the store
    opened = xr.open_zarr(data.get_absolute_href())
    assert dict(opened.sizes) == dict(open_cube(path).sizes)
    np.testing.assert_array_equal(opened["observed"].values, open_cube(path)["observed"].values)
    overview = item.assets["overview"]
    assert overview.media_type == "image/png" and overview.roles == ["overview"]
    assert overview.get_absolute_href() == str(path.with_suffix(".png"))
    coll = pystac.Collection.from_file(files["collection"])
    assert coll.assets["data"].get_absolute_href() == str(path)


def test_derived_from_links_name_the_inputs_without_the_secret(store):
    _, files = store
    item = pystac.read_file(files["item"])
    links = [link.href for link in item.links if link.rel == "derived_from"]
    base = "https://stac.example.com/v1/collections/sentinel-2-l2a/items"
    assert links == [f"{base}/{ITEMS[0]}", f"{base}/{ITEMS[1]}", f"{base}/S2A%2033TWL%2Fodd"]
    assert item.properties["s2pipe:input_items"] == list(ITEMS)
    assert item.properties["s2pipe:catalog"] == "earth-search-v1-l2a"
    assert item.properties["s2pipe:catalog_url"] == "https://stac.example.com/v1/"
    for f in files.values():
        text = f.read_text()
        assert "SECRET123" not in text and "token" not in text and "pw@" not in text


def test_writing_again_is_idempotent(store):
    path, files = store
    before = {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in files.items()}
    assert write_cube_stac(path) == files
    assert {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in files.items()} == before
    assert not [p.name for p in path.parent.iterdir() if ".part-" in p.name]


def test_local_catalog_irregular_dates_and_a_given_collection(tmp_path):
    """A catalog that is no http(s) API: ids only; unevenly spaced dates: listed, no step."""
    ds = make_dataset(backing="numpy").isel(time=[0, 1, 3])
    ds.attrs.update(catalog="my-profile", catalog_url="local-demo")
    path = write_cube(ds, tmp_path / "irregular.zarr", region_size=32)
    files = write_cube_stac(path)
    item = pystac.read_file(files["item"])
    assert not [link for link in item.links if link.rel == "derived_from"]
    assert item.properties["s2pipe:input_items"] == ["A", "B"]
    assert "overview" not in item.assets
    t = item.properties["cube:dimensions"]["time"]
    assert t["step"] is None
    assert t["values"] == ["2021-03-01T00:00:00Z", "2021-03-06T00:00:00Z", "2021-03-16T00:00:00Z"]
    # an http(s) catalog with an unknown profile links only once the collection is given
    ds.attrs.update(catalog_url="https://stac.example.com/v1")
    other = write_cube(ds, tmp_path / "other.zarr", region_size=32)
    _, item = cube_stac(other)
    assert not [link for link in item.links if link.rel == "derived_from"]
    _, item = cube_stac(other, input_collection="sentinel-2-c1-l2a")
    assert [link.href for link in item.links if link.rel == "derived_from"] == [
        "https://stac.example.com/v1/collections/sentinel-2-c1-l2a/items/A",
        "https://stac.example.com/v1/collections/sentinel-2-c1-l2a/items/B"]


def test_object_store_and_missing_store(tmp_path):
    import fsspec

    url = f"memory://stac-{uuid.uuid4().hex[:8]}/cube.zarr"
    write_cube(make_dataset(backing="numpy"), url, region_size=32)
    files = write_cube_stac(url)
    assert files == {"collection": url.replace("cube.zarr", "cube.collection.json"),
                     "item": url.replace("cube.zarr", "cube.item.json")}
    fs = fsspec.filesystem("memory")
    item = json.loads(fs.cat_file(files["item"]))
    assert item["assets"]["data"]["href"] == "./cube.zarr" and item["id"] == "cube"
    fs.rm(url.rsplit("/", 1)[0], recursive=True)
    with pytest.raises(InputError, match="no Zarr store at .*nope.zarr"):
        write_cube_stac(tmp_path / "nope.zarr")
    assert not list(tmp_path.iterdir())

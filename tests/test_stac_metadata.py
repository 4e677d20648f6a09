"""STAC metadata of every output (``s2pipe.products.stac_metadata``): a Collection and an Item beside each cube
store, map product folder, change map and forecast store, with the datacube, projection and classification
fields of its grid, dates, bands, variables and classes, and provenance links to the inputs and to the outputs
it was made from; and ``s2pipe serve``, which serves them with a STAC API that pystac-client searches.

pystac's ``validate()`` fetches the JSON schemas over HTTP (no network here): the required fields and the
consistency of the fields with the files are checked directly instead."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import xarray as xr
from helpers import NB, NT, NX, NY, TRANSFORM, make_dataset, wait_for_api
from pyproj import Transformer
from pystac.extensions.classification import ClassificationExtension
from typer.testing import CliRunner

from s2pipe.cli import EXIT_INPUT, app
from s2pipe.errors import InputError
from s2pipe.grid import grid_of
from s2pipe.products.maps import (
    class_map,
    detect_change,
    read_class_map,
    write_change,
    write_class_map,
    write_probabilities,
    write_uncertainty,
)
from s2pipe.products.stac_metadata import (
    CLASSIFICATION_SCHEMA,
    COG_MEDIA_TYPE,
    DATACUBE_SCHEMA,
    GEOPACKAGE_MEDIA_TYPE,
    PROJECTION_SCHEMA,
    ZARR_MEDIA_TYPE,
    cube_stac,
    stac_paths,
    write_change_stac,
    write_cube_stac,
    write_map_stac,
)
from s2pipe.stac.server import find_stac_files, free_port, served_stac
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


# ---------------------------------------------------------------------------------------------- other outputs

CLASSES = {"0": "background", "1": "bare soil", "2": "road"}
"""The mapper's classes ("bare soil": a name the classification extension's ``name`` cannot hold as is)."""


def _map_product(folder: Path, cube: Path, *, last: str, seed: int) -> Path:
    """A map product folder as ``s2pipe map predict`` writes it (``flows.mapping.predict_task``, without a mapper):
    probability.zarr (with entropy, margin and the provenance attributes), class_map.tif with its legend,
    entropy.tif, margin.tif, map.png and summary.json. Returns the class map."""
    ds = open_cube(cube)
    p = np.random.default_rng(seed).dirichlet([1, 1, 1], size=(NY, NX)).transpose(2, 0, 1).astype("float32")
    p[:, :2, :3] = np.nan  # a corner without data: nodata in the class map
    proba = xr.DataArray(p, dims=("class", "y", "x"), coords={"class": [0, 1, 2], "y": ds["y"], "x": ds["x"]},
                         attrs={"crs": ds.attrs["crs"], "transform": ds.attrs["transform"], "classes": CLASSES,
                                "mapping_mode": "temporal", "mapping_model": "random-forest", "mapping_dates": 2,
                                "mapping_last_date": last, "source_cube": str(cube.resolve()),
                                "model": str(folder.parent / "models" / "rf.pt")})
    written = open_cube(write_probabilities(proba, folder / "probability.zarr"))
    classes = class_map(written["probability"].load())
    classes.attrs.update(classes=CLASSES, mapping_mode="temporal")
    tif = write_class_map(classes, folder / "class_map.tif")
    write_uncertainty(written[["entropy", "margin"]].load(), folder)
    (folder / "map.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "summary.json").write_text(json.dumps({"last_date": last, "model_kind": "random-forest"}))
    return tif


@pytest.fixture(scope="module")
def products(store):
    """Beside the ``store`` cube (and its STAC): two maps (``maps/map-a``, ``maps/map-b``), the change of class 2
    between them (``maps/roads.tif`` + .gpkg + .png) and a forecast store, each with its STAC written."""
    cube, _ = store
    out = cube.parent
    a = _map_product(out / "maps" / "map-a", cube, last="2021-03-06", seed=1)
    b = _map_product(out / "maps" / "map-b", cube, last="2021-03-16", seed=2)
    change = detect_change(read_class_map(a), read_class_map(b), target=[2], kind="both", min_pixels=1)
    files = write_change(change, out / "maps" / "roads.tif", out / "maps" / "roads.gpkg")
    (out / "maps" / "roads.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    ds = open_cube(cube)
    times = pd.date_range(ds["time"].values[-1], periods=3, freq="5D")[1:]
    fc = xr.Dataset(
        {"forecast": (("time", "band", "y", "x"), np.full((2, NB, NY, NX), 0.5, "float32"),
                      {"long_name": "forecast reflectance"})},
        coords={"time": times, "band": ds["band"].values, "y": ds["y"].values, "x": ds["x"].values},
        attrs={"title": "s2pipe rk4 spectral forecast", "crs": ds.attrs["crs"], "transform": ds.attrs["transform"],
               "source_cube": str(cube.resolve()), "model": str(out / "models" / "rk4.pt"),
               "forecast_from": "2021-03-16", "steps": 2})
    forecast = write_cube(fc, out / "forecast.zarr", region_size=32)
    return {
        "cube": cube, "a": a, "b": b, "change": files.raster, "forecast": forecast,
        "stac": {"map-a": write_map_stac(a.parent), "map-b": write_map_stac(b.parent),
                 "roads": write_change_stac(files.raster, earlier=a, later=b,
                                            properties={"s2pipe:change_kind": "both", "s2pipe:polygons": files.n_polygons}),
                 "forecast": write_cube_stac(forecast)},
    }


def _derived_from(item: pystac.Item) -> list[str]:
    return [link.get_absolute_href() for link in item.links if link.rel == "derived_from"]


def _assets_resolve(item: pystac.Item) -> None:
    for key, asset in item.assets.items():
        assert Path(asset.get_absolute_href()).exists(), (key, asset.href)
        assert not Path(asset.href).is_absolute() and asset.href.startswith(("./", "../"))  # relative in the file


def test_map_item_round_trips_with_every_file_of_the_folder(products):
    a, cube = products["a"], products["cube"]
    files = products["stac"]["map-a"]
    assert files == stac_paths(a.parent) == {"collection": a.parent.with_name("map-a.collection.json"),
                                             "item": a.parent.with_name("map-a.item.json")}
    item = pystac.Item.from_file(files["item"])
    assert item.id == item.collection_id == "map-a"
    assert item.stac_extensions == [CLASSIFICATION_SCHEMA, DATACUBE_SCHEMA, PROJECTION_SCHEMA]
    assert set(item.assets) == {"class_map", "class_map_aux", "class_map_style", "probability", "entropy", "margin",
                                "overview", "summary"}
    _assets_resolve(item)
    assert {k: Path(a.get_absolute_href()).name for k, a in item.assets.items()} == {
        "class_map": "class_map.tif", "class_map_aux": "class_map.tif.aux.xml", "class_map_style": "class_map.qml",
        "probability": "probability.zarr", "entropy": "entropy.tif", "margin": "margin.tif", "overview": "map.png",
        "summary": "summary.json"}
    for key in ("class_map", "entropy", "margin"):
        assert item.assets[key].media_type == COG_MEDIA_TYPE == pystac.MediaType.COG
        assert item.assets[key].roles == ["data"]
    assert item.assets["probability"].media_type == ZARR_MEDIA_TYPE
    assert item.assets["class_map_style"].roles == item.assets["class_map_aux"].roles == ["metadata"]
    # projection fields and footprint: the class map's grid, the cube's
    grid = grid_of(open_cube(cube))
    assert item.ext.proj.code == "EPSG:32633" and item.ext.proj.shape == [NY, NX]
    assert item.properties["proj:transform"] == TRANSFORM and item.properties["proj:bbox"] == list(grid.bounds)
    assert item.bbox == pystac.Item.from_file(stac_paths(cube)["item"]).bbox
    with rasterio.open(a) as src:
        assert list(src.transform)[:6] == TRANSFORM and src.shape == (NY, NX)
    # the dates the mapper read: the cube's 2 dates up to the map's last one
    assert item.datetime == pd.Timestamp("2021-03-06", tz="UTC")
    assert item.properties["start_datetime"] == "2021-03-01T00:00:00Z"
    assert item.properties["end_datetime"] == "2021-03-06T00:00:00Z"
    # provenance: the cube's Item (relative), the model's file name
    assert _derived_from(item) == [str(stac_paths(cube)["item"])]
    raw = json.loads(files["item"].read_text())
    assert [link["href"] for link in raw["links"] if link["rel"] == "derived_from"] == ["../cube.item.json"]
    assert item.properties["s2pipe:model"] == "rf.pt" and item.properties["s2pipe:model_kind"] == "random-forest"
    assert item.properties["s2pipe:mapping_mode"] == "temporal" and item.properties["s2pipe:mapping_dates"] == 2
    assert "rf.pt" in raw["properties"]["s2pipe:model"] and str(a.parent.parent) not in files["item"].read_text()
    # the probability store's datacube fields
    fields = raw["assets"]["probability"]
    assert list(fields["cube:dimensions"]) == ["x", "y", "class"]
    assert fields["cube:dimensions"]["class"]["values"] == [0, 1, 2]
    assert fields["cube:dimensions"]["x"]["extent"] == [grid.bounds[0], grid.bounds[2]]
    assert set(fields["cube:variables"]) == {"probability", "entropy", "margin"}
    assert fields["cube:variables"]["probability"]["dimensions"] == ["class", "y", "x"]
    assert xr.open_zarr(item.assets["probability"].get_absolute_href()).sizes["class"] == 3
    # the Collection around it
    coll = pystac.Collection.from_file(files["collection"])
    assert coll.id == "map-a" and [i.id for i in coll.get_items()] == ["map-a"]
    assert coll.extent.temporal.intervals == [[pd.Timestamp("2021-03-01", tz="UTC"), pd.Timestamp("2021-03-06", tz="UTC")]]
    assert coll.extent.spatial.bboxes == [item.bbox]


def test_class_map_classification_classes_are_the_maps_classes(products):
    a = products["a"]
    item = pystac.Item.from_file(products["stac"]["map-a"]["item"])
    classes = ClassificationExtension.ext(item.assets["class_map"]).classes
    named = [c for c in classes if not c.nodata]
    assert {str(c.value): c.title for c in named} == CLASSES == read_class_map(a).attrs["classes"]
    assert [c.name for c in named] == ["background", "bare-soil", "road"]  # letters, digits, - and _ only
    with rasterio.open(a) as src:
        colours = src.colormap(1)
        nodata = int(src.nodata)
    for c in named:
        assert c.color_hint == "%02X%02X%02X" % colours[c.value][:3]
    assert classes[1].color_hint == "BF812D"  # "bare soil" by name (CLASS_COLORS)
    assert [(c.value, c.nodata) for c in classes if c.nodata] == [(nodata, True)]


def test_change_item_links_both_maps(products):
    change = products["change"]
    files = products["stac"]["roads"]
    assert files["item"] == change.with_name("roads.item.json")
    item = pystac.Item.from_file(files["item"])
    assert item.id == "roads" and set(item.assets) == {"change", "change_aux", "change_style", "polygons", "overview"}
    _assets_resolve(item)
    assert item.assets["polygons"].media_type == GEOPACKAGE_MEDIA_TYPE == pystac.MediaType.GEOPACKAGE
    assert item.assets["polygons"].get_absolute_href() == str(change.with_suffix(".gpkg"))
    assert item.assets["change"].media_type == COG_MEDIA_TYPE and item.assets["change_style"].roles == ["metadata"]
    classes = {c.value: c for c in ClassificationExtension.ext(item.assets["change"]).classes}
    assert {v: c.title for v, c in classes.items() if not c.nodata} == {0: "no change", 1: "appeared", 2: "disappeared"}
    assert classes[0].color_hint is None  # transparent: not drawn
    assert classes[1].color_hint == "E41A1C" and classes[2].color_hint == "377EB8"
    assert _derived_from(item) == [str(stac_paths(products["a"].parent)["item"]),
                                   str(stac_paths(products["b"].parent)["item"])]
    assert item.properties["start_datetime"] == "2021-03-06T00:00:00Z"
    assert item.properties["end_datetime"] == "2021-03-16T00:00:00Z"
    assert item.properties["s2pipe:change_target"] == [2] and item.properties["s2pipe:change_kind"] == "both"
    assert item.ext.proj.shape == [NY, NX]


def test_forecast_item_is_a_cube_derived_from_the_cube(products):
    forecast, cube = products["forecast"], products["cube"]
    files = products["stac"]["forecast"]
    assert files == stac_paths(forecast)
    item = pystac.Item.from_file(files["item"])
    assert item.id == "forecast" and item.properties["title"] == "s2pipe rk4 spectral forecast"
    assert item.stac_extensions == [DATACUBE_SCHEMA, PROJECTION_SCHEMA]
    _assets_resolve(item)
    assert item.assets["data"].media_type == ZARR_MEDIA_TYPE
    dims = item.properties["cube:dimensions"]
    assert list(dims) == ["x", "y", "time", "band"] and dims["time"]["step"] == "P5D"
    assert dims["time"]["extent"] == ["2021-03-21T00:00:00Z", "2021-03-26T00:00:00Z"]
    assert dims["band"]["values"] == ["B02", "B03", "B8A"]
    assert list(item.properties["cube:variables"]) == ["forecast"]
    assert _derived_from(item) == [str(stac_paths(cube)["item"])]
    assert item.properties["s2pipe:model"] == "rk4.pt" and item.properties["s2pipe:steps"] == 2
    assert item.properties["s2pipe:forecast_from"] == "2021-03-16"
    assert "s2pipe:input_items" not in item.properties  # a forecast's input is the cube, linked
    coll = pystac.Collection.from_file(files["collection"])
    assert coll.to_dict()["cube:dimensions"] == dims


def test_every_output_writes_the_same_bytes_again(products):
    written = [f for files in products["stac"].values() for f in files.values()]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written}
    again = [write_map_stac(products["a"].parent), write_map_stac(products["b"].parent),
             write_change_stac(products["change"], earlier=products["a"], later=products["b"],
                               properties={"s2pipe:change_kind": "both",
                                           "s2pipe:polygons": json.loads(products["stac"]["roads"]["item"].read_text())[
                                               "properties"]["s2pipe:polygons"]}),
             write_cube_stac(products["forecast"])]
    assert again == list(products["stac"].values())
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written} == before
    assert not [p for p in products["cube"].parent.rglob("*") if ".part-" in p.name]


def test_map_and_change_without_what_they_need_are_refused(products, tmp_path):
    with pytest.raises(InputError, match=r"holds no class_map.tif; pass a folder written by `s2pipe map predict`"):
        write_map_stac(tmp_path)
    # a class map alone, no probabilities, no summary: its date is needed
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(products["a"], lone / "class_map.tif")
    with pytest.raises(InputError, match=r"date of the map in .*lone is not recorded.*pass date='YYYY-MM-DD'"):
        write_map_stac(lone)
    assert not list(tmp_path.glob("*.json"))
    item = pystac.Item.from_file(write_map_stac(lone, date="2022-05-01")["item"])
    assert item.datetime == pd.Timestamp("2022-05-01", tz="UTC") and set(item.assets) == {"class_map"}
    assert not _derived_from(item) and "start_datetime" not in item.properties
    # a change of maps from elsewhere: the dates are needed
    change = shutil.copy(products["change"], tmp_path / "change.tif")
    with pytest.raises(InputError, match=r"pass start='YYYY-MM-DD' and end='YYYY-MM-DD'"):
        write_change_stac(change, earlier=lone / "nowhere.tif")
    with pytest.raises(InputError, match=r"end='2021-13-01' is not a date"):
        write_change_stac(change, start="2021-01-01", end="2021-13-01")
    assert not list(tmp_path.glob("change.*.json"))
    item = pystac.Item.from_file(write_change_stac(change, start="2021-01-01", end="2021-06-01")["item"])
    assert item.properties["start_datetime"] == "2021-01-01T00:00:00Z" and not _derived_from(item)


def test_served_stac_makes_hrefs_absolute_and_links_the_api(products, tmp_path):
    out = products["cube"].parent
    files = find_stac_files(out)
    assert [f.relative_to(out).as_posix() for f in files] == [
        "cube.collection.json", "cube.item.json", "forecast.collection.json", "forecast.item.json",
        "maps/map-a.collection.json", "maps/map-a.item.json", "maps/map-b.collection.json", "maps/map-b.item.json",
        "maps/roads.collection.json", "maps/roads.item.json"]  # nothing from inside the Zarr stores
    url = "http://127.0.0.1:9"
    collections, items = served_stac(files, url=url)
    assert [c["id"] for c in collections] == ["cube", "forecast", "map-a", "map-b", "roads"]
    by_id = {it["id"]: it for it in items}
    for obj in collections + items:
        for asset in obj["assets"].values():
            assert Path(asset["href"]).is_absolute() and Path(asset["href"]).exists(), asset["href"]
        assert not {link["rel"] for link in obj["links"]} & {"self", "root", "parent", "collection", "item"}
    assert by_id["map-a"]["assets"]["class_map"]["href"] == str(products["a"])
    assert [link["href"] for link in by_id["map-a"]["links"]] == [f"{url}/collections/cube/items/cube"]
    assert [link["href"] for link in by_id["roads"]["links"]] == [f"{url}/collections/map-a/items/map-a",
                                                                 f"{url}/collections/map-b/items/map-b"]
    # the files themselves are untouched
    assert json.loads(stac_paths(products["a"].parent)["item"].read_text())["assets"]["class_map"]["href"] == \
        "./map-a/class_map.tif"
    # two outputs of the same name: refused, naming both
    copy = tmp_path / "other"
    copy.mkdir()
    shutil.copy(stac_paths(products["a"].parent)["item"], copy / "map-a.item.json")
    with pytest.raises(InputError, match=r"map-a.item.json and .*map-a.item.json both hold the item map-a/map-a"):
        served_stac([*files, copy / "map-a.item.json"], url=url)
    (copy / "x.item.json").write_text('{"type": "Collection", "id": "x"}')
    with pytest.raises(InputError, match=r"x.item.json is not a STAC Item"):
        served_stac([copy / "x.item.json"], url=url)


def test_serve_command_without_stac_files_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == EXIT_INPUT
    assert "no *.collection.json or *.item.json file under" in result.output
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == EXIT_INPUT and "is not a folder" in result.output


def test_s2pipe_serve_is_searched_with_pystac_client(products):
    """`s2pipe serve DIR` on the folder of a cube, its maps, change map and forecast: pystac-client searches the
    outputs by collection as it searches the inputs; the assets served open on this machine, and a map's
    derived_from link is the cube's item in the same API. SIGTERM stops it cleanly."""
    import pystac_client

    out = products["cube"].parent
    port = free_port()
    exe = Path(sys.executable).with_name("s2pipe")
    proc = subprocess.Popen([str(exe), "serve", str(out), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_api(url, proc)
        client = pystac_client.Client.open(url)
        found = {it.id: it for it in client.search(collections=["cube", "map-a"], max_items=None).items()}
        assert set(found) == {"cube", "map-a"}
        assert found["map-a"].collection_id == "map-a"
        assert found["map-a"].assets["class_map"].href == str(products["a"])
        with rasterio.open(found["map-a"].assets["class_map"].href) as src:
            assert src.shape == (NY, NX)
        assert xr.open_zarr(found["cube"].assets["data"].href).sizes["time"] == NT
        classes = ClassificationExtension.ext(found["map-a"].assets["class_map"]).classes
        assert {str(c.value): c.title for c in classes if not c.nodata} == CLASSES
        (link,) = [link.href for link in found["map-a"].links if link.rel == "derived_from"]
        with urllib.request.urlopen(link, timeout=10) as resp:
            assert json.load(resp)["id"] == "cube"
        later = {it.id for it in client.search(datetime="2021-03-17/2021-12-31", max_items=None).items()}
        assert later == {"forecast"}
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    assert f"STAC API at {url}: 5 items in the collections cube, forecast, map-a, map-b, roads" in stdout

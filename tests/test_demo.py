"""The generated demo region: COG files, STAC items, DN offsets, SCL/clouds, tile overlap, seasons, vectors,
idempotence and atomicity. Tiny configs keep it fast (32 px tiles, ~8 months at a 10-day revisit)."""
from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from s2pipe.bands import BANDS, SPECTRAL_10
from s2pipe.errors import InputError, OutputConflictError
from s2pipe.synthetic.demo import (
    CLASSES,
    DemoConfig,
    DemoRegion,
    generate_demo,
    load_demo,
)
from s2pipe.synthetic.items import BASELINE_CHANGE, EARTH_SEARCH_KEYS

SMALL = DemoConfig(start="2021-07-01", end="2022-02-28", revisit_days=10, tile_size=32, overlap=8, block_size=16)
TINY = DemoConfig(start="2021-03-01", end="2021-03-31", revisit_days=10, tile_size=16, overlap=4, block_size=16)


@pytest.fixture(scope="module")
def region(tmp_path_factory) -> DemoRegion:
    return generate_demo(tmp_path_factory.mktemp("demo") / "region", SMALL)


@pytest.fixture(scope="module")
def items(region) -> list[dict]:
    return json.loads(region.items_path.read_text())["features"]


def read(item: dict, band: str) -> np.ndarray:
    with rasterio.open(item["assets"][EARTH_SEARCH_KEYS[band]]["href"]) as ds:
        return ds.read(1)


def when(item: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))


def landcover(region: DemoRegion) -> np.ndarray:
    with rasterio.open(region.landcover_path) as ds:
        return ds.read(1)


def reflectance(item: dict, band: str) -> np.ndarray:
    rb = item["assets"][EARTH_SEARCH_KEYS[band]]["raster:bands"][0]
    return read(item, band) * rb["scale"] + rb["offset"]


def by_date(items: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for it in items:
        out.setdefault(it["properties"]["datetime"][:10], []).append(it)
    return out


def test_layout_and_region_facts(region, items):
    assert region.root.is_dir() and region.epsg == 32617
    for p in (region.items_path, region.collection_path, region.landcover_path, region.roads_path,
              region.mangroves_path):
        assert p.is_file(), p
    assert region.classes == CLASSES and set(region.classes.values()) >= {
        "forest", "mangrove", "water", "bare soil", "urban", "road"}
    assert len(items) == region.n_items
    # 2 tiles per date, 10-day revisit from 2021-07-01 to 2022-02-28 (25 dates) minus missing dates.
    dates = by_date(items)
    assert all(len(v) == 2 for v in dates.values())
    assert 20 <= len(dates) <= 25
    # The lon/lat AOI lies inside the union and straddles the overlap of the two tiles.
    w, s, e, n = region.default_bbox
    W, S, E, N = region.bbox
    assert W < w < e < E and S < s < n < N
    from pyproj import Transformer

    x, _ = Transformer.from_crs(4326, region.epsg, always_xy=True).transform([w, e], [s, s])
    tile1_xmin = next(it for it in items if "RPJ" in it["id"])["assets"]["blue"]["proj:transform"][2]
    tile0_xmax = region.bounds[0] + 10 * SMALL.tile_size
    assert x[0] < tile1_xmin < tile0_xmax < x[1]
    coll = json.loads(region.collection_path.read_text())
    assert coll["type"] == "Collection" and coll["id"] == "sentinel-2-l2a"
    assert coll["extent"]["spatial"]["bbox"] == [list(region.bbox)]
    assert coll["extent"]["temporal"]["interval"][0] == [items[0]["properties"]["datetime"],
                                                        items[-1]["properties"]["datetime"]]


def test_assets_are_cogs_on_the_item_grid(items):
    for it in (items[0], items[-1]):
        assert set(it["assets"]) == {EARTH_SEARCH_KEYS[b] for b in (*SPECTRAL_10, "SCL")}
        assert it["properties"]["proj:epsg"] == 32617
        for band in (*SPECTRAL_10, "SCL"):
            asset = it["assets"][EARTH_SEARCH_KEYS[band]]
            assert os.path.isabs(asset["href"])
            res = BANDS[band].resolution
            with rasterio.open(asset["href"]) as ds:
                assert ds.driver == "GTiff" and ds.count == 1
                assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
                assert ds.block_shapes == [(16, 16)]
                assert ds.profile["tiled"] or ds.width == 16  # a single 16 px block reads as untiled
                assert ds.crs.to_epsg() == 32617
                assert ds.res == (res, res)
                assert list(ds.transform)[:6] == asset["proj:transform"]
                assert [ds.height, ds.width] == asset["proj:shape"] == [32 * 10 // res] * 2
                assert ds.nodata == 0
                assert ds.dtypes[0] == ("uint8" if band == "SCL" else "uint16")
    with rasterio.open(items[0]["assets"]["blue"]["href"].replace("B02.tif", "../../landcover.tif")) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and ds.dtypes[0] == "uint8"


def test_dn_offset_follows_the_processing_baseline(region, items):
    lc20 = landcover(region)[::2, ::2][:, :16]
    before = [it for it in items if when(it) < BASELINE_CHANGE]
    after = [it for it in items if when(it) >= BASELINE_CHANGE]
    assert before and after
    water_swir = {}
    for it in items:
        new = when(it) >= BASELINE_CHANGE
        assert it["properties"]["s2:processing_baseline"] == ("04.00" if new else "02.14")
        for band in SPECTRAL_10:
            rb = it["assets"][EARTH_SEARCH_KEYS[band]]["raster:bands"][0]
            assert rb["scale"] == 0.0001 and rb["nodata"] == 0 and rb["offset"] == (-0.1 if new else 0.0)
        b12 = read(it, "B12")
        assert b12.min() >= 1  # 0 is nodata: never produced for a valid pixel
        scl = read(it, "SCL")
        clear_water = (scl == 6) & (lc20[: scl.shape[0], : scl.shape[1]] == 1)
        if "RNJ" in it["id"] and clear_water.sum() > 10:
            water_swir[new] = water_swir.get(new, []) + [float(np.median(b12[clear_water]))]
    # Clear water is dark in SWIR (reflectance ~0.005): ~50 DN before, ~1050 DN after the baseline change,
    # and the same reflectance once raster:bands is applied.
    assert max(water_swir[False]) < 200 and min(water_swir[True]) > 1000
    assert abs(np.mean(water_swir[False]) - (np.mean(water_swir[True]) - 1000)) < 30


def test_scl_clouds_shadows_and_cloud_cover(items):
    seen: set[int] = set()
    covers = []
    for it in items:
        scl = read(it, "SCL")
        seen |= set(np.unique(scl).tolist())
        cc = 100.0 * np.isin(scl, (8, 9, 10)).mean()
        assert it["properties"]["eo:cloud_cover"] == pytest.approx(cc, abs=1e-3)
        assert it["properties"]["s2:cloud_shadow_percentage"] == pytest.approx(100.0 * (scl == 3).mean(), abs=1e-3)
        covers.append(cc)
    assert {3, 4, 5, 6, 8, 9, 10} <= seen <= {3, 4, 5, 6, 8, 9, 10}
    covers = np.array(covers)
    assert (covers == 0).sum() >= 5 and ((covers > 5) & (covers < 95)).sum() >= 3 and (covers == 100).sum() >= 2


def test_clouds_are_bright_and_shadows_dark(items):
    tile0 = [it for it in items if "RNJ" in it["id"]]
    clear = [it for it in tile0 if it["properties"]["eo:cloud_cover"] == 0
             and it["properties"]["s2:cloud_shadow_percentage"] == 0]
    n_shadow = 0
    for it in tile0:
        scl = read(it, "SCL")
        b02 = reflectance(it, "B02")
        b02 = 0.25 * (b02[0::2, 0::2] + b02[1::2, 0::2] + b02[0::2, 1::2] + b02[1::2, 1::2])  # on the 20 m grid
        b8a = reflectance(it, "B8A")
        if (scl == 9).sum() >= 5:
            assert np.median(b02[scl == 9]) > 0.25  # thick cloud: bright in the blue
            if np.isin(scl, (4, 5)).sum() >= 5:
                assert np.median(b02[scl == 9]) > 3 * np.median(b02[np.isin(scl, (4, 5))])
        shadow = scl == 3
        if shadow.sum() >= 20:  # small shadows are mostly penumbra
            ref = min(clear, key=lambda c: abs(when(c) - when(it)))
            ratio = np.median(b8a[shadow] / reflectance(ref, "B8A")[shadow])
            assert ratio < 0.7, (it["id"], ratio)
            n_shadow += 1
    assert n_shadow >= 2


def test_neighbouring_tiles_agree_in_their_overlap(items):
    step = SMALL.tile_size - SMALL.overlap
    for day, pair in by_date(items).items():
        west, east = sorted(pair, key=lambda it: it["bbox"][0])
        assert west["id"] != east["id"]
        assert west["properties"]["grid:code"] != east["properties"]["grid:code"]
        assert 0 < (when(east) - when(west)).total_seconds() < 10  # same solar day, seconds apart
        assert east["assets"]["blue"]["proj:transform"][2] - west["assets"]["blue"]["proj:transform"][2] == 10 * step
        for band in (*SPECTRAL_10, "SCL"):
            k = 1 if BANDS[band].resolution == 10 else 2
            a, b = read(west, band), read(east, band)
            np.testing.assert_array_equal(a[:, step // k:], b[:, : SMALL.overlap // k], err_msg=f"{day} {band}")
            if band != "SCL":  # different ground (SCL is all 9 on a fully cloudy date)
                assert not np.array_equal(a, b)


def test_seasons_show_in_clear_time_series(region, items):
    lc = landcover(region)[:, :32]
    ndvi: dict[int, dict[str, list[float]]] = {c: {"summer": [], "winter": []} for c in (2, 3, 1)}
    for it in items:
        if "RNJ" not in it["id"]:
            continue
        month = when(it).month
        season = "summer" if month in (7, 8, 9) else "winter" if month in (12, 1, 2) else None
        if season is None:
            continue
        clear = np.isin(read(it, "SCL"), (4, 5, 6)).repeat(2, 0).repeat(2, 1)
        red, nir = reflectance(it, "B04"), reflectance(it, "B08")
        v = (nir - red) / (nir + red)
        for c in ndvi:
            m = clear & (lc == c)
            if m.sum() >= 10:
                ndvi[c][season].append(float(v[m].mean()))
    forest, mangrove, water = (ndvi[c] for c in (3, 2, 1))
    assert len(forest["summer"]) >= 3 and len(forest["winter"]) >= 3
    amp_forest = np.mean(forest["summer"]) - np.mean(forest["winter"])
    amp_mangrove = np.mean(mangrove["summer"]) - np.mean(mangrove["winter"])
    assert amp_forest > 0.15  # seasonal forest: strong green-up in the wet season
    assert 0 <= amp_mangrove < amp_forest / 2  # evergreen mangrove
    assert np.mean(forest["summer"]) > 0.75 and np.mean(water["summer"]) < 0


def test_class_spectra_are_distinct(region, items):
    it = next(i for i in items if "RNJ" in i["id"] and i["properties"]["eo:cloud_cover"] == 0
              and when(i).month in (8, 9))
    lc = landcover(region)[:, :32][::2, ::2]
    clear = np.isin(read(it, "SCL"), (4, 5, 6))
    spec = {c: np.array([np.median(reflectance(it, b)[::2, ::2][(lc == c) & clear] if BANDS[b].resolution == 10
                                   else reflectance(it, b)[(lc == c) & clear]) for b in SPECTRAL_10])
            for c in (1, 2, 3, 4) if ((lc == c) & clear).sum() >= 5}
    i = {b: k for k, b in enumerate(SPECTRAL_10)}
    forest, mangrove, water = spec[3], spec[2], spec[1]
    assert forest[i["B08"]] > 3 * forest[i["B04"]] and forest[i["B07"]] > forest[i["B05"]]  # red edge, NIR plateau
    assert mangrove[i["B11"]] < forest[i["B11"]] and mangrove[i["B08"]] < forest[i["B08"]]  # darker, lower SWIR
    assert water[i["B08"]] < 0.05 and water[i["B11"]] < 0.03 and water[i["B02"]] > water[i["B08"]]


def test_vectors_match_the_landcover_raster(region):
    import shapely
    from pyproj import Transformer
    from shapely.geometry import shape
    
    lc = landcover(region)
    with rasterio.open(region.landcover_path) as ds:
        tf, crs, lc_shape = ds.transform, ds.crs, ds.shape
        assert crs.to_epsg() == region.epsg and tuple(ds.bounds) == region.bounds and ds.res == (10.0, 10.0)
    tr = Transformer.from_crs(4326, region.epsg, always_xy=True)

    def to_utm(xy: np.ndarray) -> np.ndarray:
        return np.c_[tr.transform(xy[:, 0], xy[:, 1])]
    roads = json.loads(region.roads_path.read_text())
    mangroves = json.loads(region.mangroves_path.read_text())
    for fc, kind in ((roads, "LineString"), (mangroves, "Polygon")):
        assert fc["type"] == "FeatureCollection" and "crs" not in fc and fc["features"]
        assert {f["geometry"]["type"] for f in fc["features"]} == {kind}
    for f in mangroves["features"]:
        assert shape(f["geometry"]).exterior.is_ccw  # RFC 7946 winding
    lon, lat = np.array([c for f in roads["features"] for c in f["geometry"]["coordinates"]]).T
    w, s, e, n = region.bbox
    assert (lat > s - 0.01).all() and (lat < n + 0.01).all() and (lon > w - 0.01).all() and (lon < e + 0.01).all()
    road_lines = [shapely.transform(shape(f["geometry"]), to_utm) for f in roads["features"]]
    burned = rasterize([(g, 1) for g in road_lines], out_shape=lc_shape, transform=tf, fill=0, dtype="uint8")
    assert burned.sum() > 30
    assert (lc[burned == 1] == 7).mean() > 0.99
    assert {f["properties"]["highway"] for f in roads["features"]} >= {"primary", "secondary"}
    polys = [shapely.transform(shape(f["geometry"]), to_utm) for f in mangroves["features"]]
    burned = rasterize([(g, 1) for g in polys], out_shape=lc_shape, transform=tf, fill=0, dtype="uint8")
    assert (lc[burned == 1] == 2).mean() > 0.9  # roads cut through the mangroves
    assert (burned[lc == 2] == 1).all()


def test_load_demo_reads_back_the_same_region(region):
    assert load_demo(region.root) == region
    assert region.config == SMALL


def test_generation_is_idempotent_deterministic_and_atomic(tmp_path):
    calls: list[tuple[int, int]] = []
    root = tmp_path / "demo"
    r1 = generate_demo(root, TINY, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (r1.n_items, r1.n_items) and len(calls) == r1.n_items
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    # Same config: returned at once, nothing rewritten.
    calls.clear()
    assert generate_demo(root, TINY, progress=lambda d, t: calls.append((d, t))) == r1 and not calls
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps
    # A region with a scene missing is not current: it is regenerated in full.
    victim = next((root / "scenes").iterdir())
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    assert generate_demo(root, TINY) == r1 and victim.is_dir()
    # Same config elsewhere, written by two forked processes: the same pixels and items (deterministic).
    r2 = generate_demo(tmp_path / "again", TINY, workers=2)
    it1, it2 = (json.loads(r.items_path.read_text())["features"] for r in (r1, r2))
    assert [i["id"] for i in it1] == [i["id"] for i in it2]
    assert [i["properties"]["eo:cloud_cover"] for i in it1] == [i["properties"]["eo:cloud_cover"] for i in it2]
    for a, b in zip(it1, it2):
        for band in ("B04", "B11", "SCL"):
            np.testing.assert_array_equal(read(a, band), read(b, band))
    # A different config regenerates in place.
    r3 = generate_demo(root, DemoConfig(**{**TINY.to_json(), "center_lonlat": TINY.center_lonlat, "seed": 1}))
    assert r3.config.seed == 1 and load_demo(root).config.seed == 1
    it3 = json.loads(r3.items_path.read_text())["features"]
    assert [i["id"] for i in it3] != [i["id"] for i in it1] or not all(
        np.array_equal(read(a, "B04"), read(b, "B04")) for a, b in zip(it2, it3))  # pixels differ from seed 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "demo"]  # no temp folders left


def test_interrupted_generation_leaves_nothing(tmp_path):
    root = tmp_path / "demo"

    def stop(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_demo(root, TINY, progress=stop)
    assert list(tmp_path.iterdir()) == []
    # An older region stays intact when a regeneration is interrupted.
    r = generate_demo(root, TINY)
    with pytest.raises(KeyboardInterrupt):
        generate_demo(root, DemoConfig(**{**TINY.to_json(), "center_lonlat": TINY.center_lonlat, "seed": 5}),
                      progress=stop)
    assert load_demo(root) == r and [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_refuses_to_replace_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputConflictError, match="mine.*root"):
        generate_demo(tmp_path / "mine", TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="no demo region"):
        load_demo(tmp_path / "nothing")
    with pytest.raises(InputError, match="workers=-1"):
        generate_demo(tmp_path / "other", TINY, workers=-1)
    with pytest.raises(InputError, match="config"):
        generate_demo(tmp_path / "other", {"tile_size": 16})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tile_size=33), "tile_size=33"),
        (dict(overlap=300), "overlap=300"),
        (dict(start="2022-01-01", end="2021-01-01"), "end '2021-01-01' is before start"),
        (dict(start="January"), "start='January'"),
        (dict(block_size=100), "block_size=100"),
        (dict(missing_date_fraction=1.5), "missing_date_fraction=1.5"),
        (dict(epsg=4326), "epsg=4326"),
        (dict(revisit_days=0), "revisit_days=0"),
    ],
)
def test_bad_config_is_an_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        DemoConfig(**kwargs)


def test_default_config_is_the_readme_demo():
    c = DemoConfig()
    assert (c.start, c.end, c.revisit_days, c.tile_size, c.overlap, c.n_tiles, c.epsg, c.block_size) == (
        "2021-01-01", "2022-12-31", 5, 256, 64, 2, 32617, 128)
    assert (dt.date.fromisoformat(c.end) - dt.date.fromisoformat(c.start)).days >= 2 * 365 - 1

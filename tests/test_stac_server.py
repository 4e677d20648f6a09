"""A real STAC API (`rustac serve`) on 127.0.0.1 serving the demo region, searched with pystac-client.

rustac serve implements neither the query nor the filter extension, and answers open-ended datetime
ranges with HTTP 500: every search here uses a closed range, as s2pipe does.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import urllib.request

import pystac_client
import pytest
from pyproj import Transformer
from shapely.geometry import box, shape

from s2pipe.errors import S2PipeError
from s2pipe.stac.server import LocalStacServer
from s2pipe.synthetic.demo import DemoConfig, demo_server, generate_demo

CONFIG = DemoConfig(start="2021-06-01", end="2021-08-31", revisit_days=5, tile_size=16, overlap=4, block_size=16)


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("stac") / "demo", CONFIG)


@pytest.fixture(scope="module")
def features(region):
    return json.loads(region.items_path.read_text())["features"]


@pytest.fixture(scope="module")
def client(region):
    with demo_server(region) as server:
        yield pystac_client.Client.open(server.url)


def expected(features, bbox, start, end):
    """Ids of the items whose footprint meets ``bbox`` and whose time is in [start, end] (UTC, inclusive)."""
    aoi = box(*bbox)
    t0 = dt.datetime.fromisoformat(start).replace(tzinfo=dt.timezone.utc)
    t1 = dt.datetime.fromisoformat(end).replace(tzinfo=dt.timezone.utc)
    out = set()
    for f in features:
        t = dt.datetime.fromisoformat(f["properties"]["datetime"].replace("Z", "+00:00"))
        if t0 <= t <= t1 and shape(f["geometry"]).intersects(aoi):
            out.add(f["id"])
    return out


def search_ids(client, bbox, datetime):
    found = list(client.search(collections=["sentinel-2-l2a"], bbox=list(bbox), datetime=datetime).items())
    ids = [it.id for it in found]
    assert len(ids) == len(set(ids))
    return set(ids), found


def test_collection_is_served_with_its_extent(client, region):
    collections = {c.id: c for c in client.get_collections()}
    assert set(collections) == {"sentinel-2-l2a"}
    extent = collections["sentinel-2-l2a"].extent
    assert extent.spatial.bboxes[0] == pytest.approx(list(region.bbox))
    assert extent.temporal.intervals[0][0].date() >= dt.date(2021, 6, 1)


def test_search_returns_exactly_the_items_inside(client, region, features):
    # The whole window over the default AOI: every scene of both tiles (the AOI straddles their overlap).
    ids, found = search_ids(client, region.default_bbox, f"{region.start}/{region.end}T23:59:59Z")
    assert ids == {f["id"] for f in features} == expected(features, region.default_bbox, region.start,
                                                         region.end + "T23:59:59")
    assert {it.properties["grid:code"] for it in found} == {"MGRS-17RNJ", "MGRS-17RPJ"}
    # Hrefs come back as the absolute local paths of the COGs.
    href = found[0].assets["blue"].href
    assert os.path.isabs(href) and os.path.isfile(href)
    # A closed sub-range: only the scenes of July.
    ids, _ = search_ids(client, region.default_bbox, "2021-07-01T00:00:00Z/2021-07-31T23:59:59Z")
    assert ids == expected(features, region.default_bbox, "2021-07-01", "2021-07-31T23:59:59")
    assert 0 < len(ids) < len(features)
    assert all("_202107" in i for i in ids)


def test_bbox_inside_one_tile_returns_only_that_tile(client, region, features):
    # West part of the union, west of the second tile's first column: only the 17RNJ scenes.
    xmin, ymin, _, ymax = region.bounds
    step = CONFIG.tile_size - CONFIG.overlap
    to_lonlat = Transformer.from_crs(region.epsg, 4326, always_xy=True)
    lon, lat = to_lonlat.transform([xmin + 20, xmin + 10 * step - 30], [ymin + 20, ymax - 20])
    west = (lon[0], lat[0], lon[1], lat[1])
    ids, _ = search_ids(client, west, f"{region.start}/{region.end}T23:59:59Z")
    assert ids == expected(features, west, region.start, region.end + "T23:59:59")
    assert ids and all("_17RNJ_" in i for i in ids)
    # Far away: nothing.
    ids, _ = search_ids(client, (10.0, 45.0, 10.1, 45.1), f"{region.start}/{region.end}T23:59:59Z")
    assert ids == set()


def test_bad_hrefs_raise(tmp_path):
    with pytest.raises(S2PipeError, match="does not exist"):
        LocalStacServer([tmp_path / "missing.json"])
    broken = tmp_path / "broken.json"
    broken.write_text("{ this is not JSON")
    with pytest.raises(S2PipeError, match="rustac serve"):
        LocalStacServer([broken], startup_timeout=20).start()


def test_server_process_is_gone_after_exit(region):
    with demo_server(region) as server:
        proc = server._proc
        pid, port = proc.pid, server.port
        with urllib.request.urlopen(server.url + "/collections", timeout=5) as resp:
            assert resp.status == 200
    assert proc.poll() is not None  # exited and reaped
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more

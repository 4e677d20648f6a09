"""The search stage against a real STAC API (rustac serve) serving the real item files."""
from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import threading
import time
import urllib.parse
import urllib.request

import pystac_client
import pytest
import shapely.geometry

from s2pipe.errors import CatalogUnreachableError, InputError, NoScenesError
from s2pipe.search import parse_day, parse_region, search_items
from s2pipe.stac.catalog import load_profile
from s2pipe.stac.server import LocalStacServer, free_port

PC_ITEMS = "planetary-computer/rustac_100-items_T13TDE_2024.json"
C1_ITEMS = "earth-search-v1/rustac_sentinel-2-c1-l2a_item-collection.json"
C1_COLLECTION = "earth-search-v1/rustac_sentinel-2-c1-l2a.collection.json"

# Inside tile 13TDE. WEST lies where only the full-tile orbit (R098) has data; EAST is covered by every scene.
WEST = (-106.0, 40.2, -105.8, 40.4)
EAST = (-105.2, 40.0, -105.0, 40.2)


@pytest.fixture(scope="module")
def pc_server(stac_items_dir):
    with LocalStacServer([stac_items_dir / PC_ITEMS]) as server:
        yield server


@pytest.fixture(scope="module")
def c1_server(stac_items_dir):
    with LocalStacServer([stac_items_dir / C1_COLLECTION, stac_items_dir / C1_ITEMS]) as server:
        yield server


@pytest.fixture(scope="module")
def pc_features(stac_items_dir) -> list[dict]:
    return json.loads((stac_items_dir / PC_ITEMS).read_text())["features"]


@pytest.fixture(scope="module")
def pc():
    """The Planetary Computer profile without URL signing (offline: the SAS token service is out of reach)."""
    return load_profile("planetary-computer-l2a").model_copy(update={"signing": "none"})


def expected_ids(features, region, start: str, end: str, max_cloud: float = 100.0) -> list[str]:
    """Direct computation from the JSON: footprint intersects, UTC date within [start, end], cloud limit."""
    out = []
    for f in features:
        day = f["properties"]["datetime"][:10]
        if not start <= day <= end:
            continue
        if not shapely.geometry.shape(f["geometry"]).intersects(region):
            continue
        if f["properties"]["eo:cloud_cover"] > max_cloud:
            continue
        out.append((f["properties"]["datetime"], f["id"]))
    return [i for _, i in sorted(out)]


def test_bbox_search_returns_the_matching_items(pc_server, pc, pc_features):
    items = search_items(pc, bbox=WEST, start="2024-03-01", end="2024-12-31", url=pc_server.url)
    want = expected_ids(pc_features, shapely.geometry.box(*WEST), "2024-03-01", "2024-12-31")
    assert 0 < len(want) < len(pc_features)  # the region really selects
    assert [it.id for it in items] == want
    every = search_items(pc, bbox=EAST, start="2024-03-01", end="2024-12-31", url=pc_server.url)
    assert len(every) == len(pc_features) == 100


def test_results_are_normalized_and_sorted(pc_server, pc):
    items = search_items(pc, bbox=EAST, start="2024-06-01", end="2024-06-30", url=pc_server.url)
    assert [it.datetime for it in items] == sorted(it.datetime for it in items)
    for it in items:
        assert it.properties["proj:epsg"] == 32613
        assert set(it.assets) == set(pc.assets)
        assert it.assets["B04"].extra_fields["raster:bands"] == [{"scale": 1e-4, "offset": -0.1, "nodata": 0}]
        assert it.properties["s2pipe:solar_day"] == it.datetime.date().isoformat()  # ~10:45 local time
        assert not [ln for ln in it.links if ln.rel == "root"]


def test_geometry_search(pc_server, pc, pc_features):
    # A triangle reaching into the western strip: hits full-tile scenes only, at its west corner.
    tri = {"type": "Polygon", "coordinates": [[[-106.1, 40.3], [-105.5, 40.1], [-105.5, 40.5], [-106.1, 40.3]]]}
    items = search_items(pc, geometry=tri, start="2024-04-01", end="2024-09-30", url=pc_server.url)
    want = expected_ids(pc_features, shapely.geometry.shape(tri), "2024-04-01", "2024-09-30")
    assert [it.id for it in items] == want and want
    # A MultiPolygon, one part outside the tile: the same scenes as its part inside.
    multi = {"type": "MultiPolygon", "coordinates": [tri["coordinates"], [[[0, 0], [1, 0], [1, 1], [0, 0]]]]}
    assert [it.id for it in search_items(pc, geometry=multi, start="2024-04-01", end="2024-09-30",
                                         url=pc_server.url)] == want


def test_a_region_of_many_vertices_is_asked_as_its_hull_and_filtered_exactly(pc_server, pc, pc_features):
    """The triangle of test_geometry_search drawn with 30,000 vertices: the STAC API is asked with the convex
    hull (a request it takes), and the items kept are those meeting the region itself."""
    from s2pipe.search import MAX_QUERY_VERTICES

    corners = [(-106.1, 40.3), (-105.5, 40.1), (-105.5, 40.5)]
    ring = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        ring += [[x0 + (x1 - x0) * k / 10_000, y0 + (y1 - y0) * k / 10_000] for k in range(10_000)]
    dense = {"type": "Polygon", "coordinates": [ring + [ring[0]]]}
    assert len(ring) > MAX_QUERY_VERTICES
    items = search_items(pc, geometry=dense, start="2024-04-01", end="2024-09-30", url=pc_server.url)
    want = expected_ids(pc_features, shapely.geometry.shape(dense), "2024-04-01", "2024-09-30")
    assert [it.id for it in items] == want and want


def test_date_window_is_inclusive_at_both_ends(pc_server, pc, pc_features):
    days = sorted({f["properties"]["datetime"][:10] for f in pc_features})
    first, last = days[10], days[13]
    items = search_items(pc, bbox=EAST, start=first, end=last, url=pc_server.url)
    got_days = sorted({it.datetime.date().isoformat() for it in items})
    assert got_days == days[10:14]
    assert [it.id for it in items] == expected_ids(pc_features, shapely.geometry.box(*EAST), first, last)
    one = search_items(pc, bbox=EAST, start=dt.date.fromisoformat(first), end=dt.datetime.fromisoformat(first),
                       url=pc_server.url)
    assert {it.datetime.date().isoformat() for it in one} == {first}


def test_cloud_limit_is_applied_on_the_client(pc_server, pc, pc_features):
    client = pystac_client.Client.open(pc_server.url)
    assert not client.conforms_to(pystac_client.ConformanceClasses.QUERY)  # rustac ignores `query`
    items = search_items(pc, bbox=EAST, start="2024-03-01", end="2024-12-31", max_cloud=10, url=pc_server.url)
    want = expected_ids(pc_features, shapely.geometry.box(*EAST), "2024-03-01", "2024-12-31", max_cloud=10)
    assert 0 < len(want) < 100
    assert [it.id for it in items] == want
    assert all(it.properties["eo:cloud_cover"] <= 10 for it in items)


def test_max_items(pc_server, pc, pc_features):
    items = search_items(pc, bbox=EAST, start="2024-03-01", end="2024-12-31", max_items=3, url=pc_server.url)
    assert len(items) == 3
    assert [it.datetime for it in items] == sorted(it.datetime for it in items)
    assert {it.id for it in items} <= {f["id"] for f in pc_features}


def test_earth_search_c1_collection_by_profile_name(c1_server, stac_items_dir):
    features = json.loads((stac_items_dir / C1_ITEMS).read_text())["features"]
    items = search_items("earth-search-v1-c1-l2a", bbox=WEST, start="2024-03-31", end="2024-04-22",
                         max_cloud=50, url=c1_server.url)
    want = expected_ids(features, shapely.geometry.box(*WEST), "2024-03-31", "2024-04-22", max_cloud=50)
    assert [it.id for it in items] == want and want
    for it in items:
        assert it.assets["B8A"].extra_fields["raster:bands"][0]["offset"] == pytest.approx(-0.1)
        assert it.assets["SCL"].extra_fields["raster:bands"][0] == {"scale": 1.0, "offset": 0.0, "nodata": 0}


def test_unknown_collection_lists_the_available_ones(pc_server, pc):
    with pytest.raises(InputError, match=r"collection 'sentinel-2-c1-l2a' does not exist.*available collections: sentinel-2-l2a"):
        search_items(pc.model_copy(update={"collection": "sentinel-2-c1-l2a"}), bbox=EAST, start="2024-04-01",
                     end="2024-04-30", url=pc_server.url)


def test_no_scenes(pc_server, pc):
    with pytest.raises(NoScenesError, match=r"no scenes.*2021-04-01\.\.2021-04-30.*widen"):
        search_items(pc, bbox=EAST, start="2021-04-01", end="2021-04-30", url=pc_server.url)
    with pytest.raises(NoScenesError, match=r"no scenes.*bbox \(10, 10, 11, 11\)"):
        search_items(pc, bbox=(10, 10, 11, 11), start="2024-04-01", end="2024-04-30", url=pc_server.url)
    with pytest.raises(NoScenesError, match=r"matched but had eo:cloud_cover above 0.*max_cloud"):
        search_items(pc, bbox=EAST, start="2024-04-01", end="2024-04-30", max_cloud=0, url=pc_server.url)


# --------------------------------------------------------------------------------------- bad input


@pytest.fixture()
def listener():
    """A mute TCP port: the kernel completes connections into the backlog, nothing ever answers.

    Yields its URL and a function counting the connections made so far: proves that validation fails
    before any request, and makes requests to it time out.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    accepted = []

    def connections() -> int:
        while True:
            try:
                accepted.append(sock.accept()[0])
            except BlockingIOError:
                return len(accepted)

    yield f"http://127.0.0.1:{sock.getsockname()[1]}", connections
    for c in accepted:
        c.close()
    sock.close()


GOOD = dict(bbox=EAST, start="2024-04-01", end="2024-04-30")
BAD_INPUTS = [
    (dict(bbox=(-105.0, 40.0, -105.2, 40.2)), r"bbox \(-105, 40, -105.2, 40.2\) is inverted: west -105 > east -105.2.*argument: bbox"),
    (dict(bbox=(-105.2, 40.2, -105.0, 40.0)), r"inverted: south 40.2 > north 40.*argument: bbox"),
    (dict(bbox=(-105.2, 40.0, -105.2, 40.2)), r"is empty.*west == east.*argument: bbox"),
    (dict(bbox=(-105.2, 40.0, -105.0, 40.0)), r"is empty.*south == north"),
    (dict(bbox=(-200.0, 40.0, -105.0, 40.2)), r"west -200 is outside the longitude range.*argument: bbox"),
    (dict(bbox=(40.0, -105.2, 40.2, 40.4)), r"south -105.2 is outside the latitude range.*\(west, south, east, north\)"),
    (dict(bbox=(1, 2, 3)), r"has 3 numbers.*argument: bbox"),
    (dict(bbox="west"), r"not 4 numbers"),
    (dict(bbox=None, geometry={"type": "Point", "coordinates": [0, 0]}), r"'Point' is not supported.*argument: geometry"),
    (dict(bbox=None, geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}), r"geometry is invalid: Self-intersection"),
    (dict(bbox=None, geometry={"type": "Polygon", "coordinates": "nope"}), r"not valid GeoJSON.*argument: geometry"),
    (dict(bbox=None, geometry={"type": "Polygon", "coordinates": [[[0, 0], [400, 0], [400, 1], [0, 0]]]}), r"east 400 is outside the longitude range"),
    (dict(bbox=None, geometry={"type": "Polygon", "coordinates": []}), r"geometry is empty"),
    (dict(bbox=None, geometry=[1, 2]), r"not a GeoJSON geometry dict"),
    (dict(bbox=None), r"exactly one region.*neither"),
    (dict(geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}), r"exactly one region.*both"),
    (dict(start="2024-05-01", end="2024-04-30"), r"end 2024-04-30 is before start 2024-05-01.*arguments: start, end"),
    (dict(start="01/04/2024"), r"start '01/04/2024' is not a date.*argument: start"),
    (dict(end=20240430), r"end 20240430 is not a date"),
    (dict(max_cloud=101), r"max_cloud 101 is not a number ≥ 0 and ≤ 100.*argument: max_cloud"),
    (dict(max_cloud=-1), r"max_cloud -1"),
    (dict(max_cloud=float("nan")), r"max_cloud nan"),
    (dict(max_items=0), r"max_items 0 is not an integer ≥ 1"),
    (dict(max_items=2.5), r"max_items 2.5"),
    (dict(retries=-1), r"retries -1"),
    (dict(timeout=0), r"timeout 0 is not a number > 0"),
    (dict(url="ftp://example.org"), r"URL 'ftp://example.org' must start with http"),
]


@pytest.mark.parametrize("bad,message", BAD_INPUTS, ids=[m[:40] for _, m in BAD_INPUTS])
def test_bad_input_fails_before_any_request(listener, pc, bad, message):
    url, connections = listener
    kwargs = {**GOOD, "url": url, "retries": 0, "timeout": 0.5, **bad}
    with pytest.raises(InputError, match=message):
        search_items(pc, **kwargs)
    assert connections() == 0


def test_listener_does_see_a_real_request(listener, pc):
    """The no-request check above can fail: a valid call does connect (and times out on the mute port)."""
    url, connections = listener
    with pytest.raises(CatalogUnreachableError):
        search_items(pc, **GOOD, url=url, retries=0, timeout=0.2)
    assert connections() == 1


def test_local_demo_needs_its_server_url():
    with pytest.raises(InputError, match=r"'local-demo'.*argument: url"):
        search_items("local-demo", **GOOD)


def test_unknown_catalog_name():
    with pytest.raises(InputError, match=r"unknown catalog 'nope'.*earth-search-v1-l2a"):
        search_items("nope", **GOOD)


def test_parse_region_and_day():
    assert parse_region(bbox=[1, 2, 3, 4]).bounds == (1.0, 2.0, 3.0, 4.0)
    poly = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    assert parse_region(geometry=poly).area == pytest.approx(0.5)
    assert parse_region(geometry={"type": "Feature", "properties": {}, "geometry": poly}).area == pytest.approx(0.5)
    assert parse_region(geometry=shapely.geometry.shape(poly)).area == pytest.approx(0.5)
    assert parse_day("2024-02-29", argument="start") == dt.date(2024, 2, 29)
    assert parse_day("2024-02-29T23:30:00-02:00", argument="start") == dt.date(2024, 3, 1)
    assert parse_day(dt.datetime(2024, 1, 1, 5), argument="start") == dt.date(2024, 1, 1)


# ----------------------------------------------------------------------------------- unreachable API


def test_unreachable_catalog_after_retries(pc):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(CatalogUnreachableError, match=rf"STAC API {url} is unreachable after 3 attempts \(connection failed: .*Connection refused"):
        search_items(pc, **GOOD, url=url, retries=2, backoff=0.01)
    assert time.monotonic() - t0 < 5


def test_time_out_is_retried_then_reported(listener, pc):
    url, connections = listener
    with pytest.raises(CatalogUnreachableError, match=r"unreachable after 2 attempts \(time-out: .*read timeout=0.2"):
        search_items(pc, **GOOD, url=url, retries=1, backoff=0.01, timeout=0.2)
    assert connections() == 2


class _Gateway(http.server.ThreadingHTTPServer):
    """A gateway in front of the real STAC API that answers 503 to its first ``failures`` requests."""

    def __init__(self, upstream: str | None, failures: int, strip: tuple[str, ...] = (), add_conformance: str = ""):
        self.upstream, self.failures, self.strip, self.seen = upstream, failures, strip, []
        self.add_conformance, self.bodies = add_conformance, []
        self.broken = 0  # the next this many /search answers are cut in the middle (200, invalid JSON)
        super().__init__(("127.0.0.1", 0), _GatewayHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _GatewayHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _handle(self, method: str):
        gw: _Gateway = self.server  # type: ignore[assignment]
        gw.seen.append((method, self.path))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
        if gw.upstream is None or len(gw.seen) <= gw.failures:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.path
        if body and path.startswith("/search"):
            gw.bodies.append(json.loads(body))
        if gw.strip and path.startswith("/search"):  # play a server that ignores these search fields
            if body:
                body = json.dumps({k: v for k, v in json.loads(body).items() if k not in gw.strip}).encode()
            parts = urllib.parse.urlsplit(path)
            query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in gw.strip]
            path = urllib.parse.urlunsplit(("", "", parts.path, urllib.parse.urlencode(query), ""))
            gw.stripped = True
        req = urllib.request.Request(gw.upstream + path, data=body, method=method,
                                     headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
        with urllib.request.urlopen(req) as resp:
            # Rewrite the upstream's absolute links so paging goes through the gateway too.
            data = resp.read().replace(gw.upstream.encode(), gw.url.encode())
            if gw.add_conformance and self.path.split("?")[0] in ("/", "/conformance"):
                doc = json.loads(data)
                doc["conformsTo"].append(gw.add_conformance)  # play a server with one more extension
                data = json.dumps(doc).encode()
            if gw.broken > 0 and self.path.startswith("/search"):
                gw.broken -= 1
                data = data[: len(data) // 2]  # a page cut short: the proxy in front lost the rest
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


@pytest.fixture()
def gateway():
    servers = []

    def make(upstream, failures, strip=(), add_conformance=""):
        gw = _Gateway(upstream, failures, strip, add_conformance)
        threading.Thread(target=gw.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(gw)
        return gw

    yield make
    for gw in servers:
        gw.shutdown()
        gw.server_close()


def test_http_503_is_retried_then_reported(gateway, pc):
    gw = gateway(None, failures=10**6)
    with pytest.raises(CatalogUnreachableError, match=rf"{gw.url} is unreachable after 3 attempts \(HTTP 503"):
        search_items(pc, **GOOD, url=gw.url, retries=2, backoff=0.01)
    assert len(gw.seen) == 3  # one request + 2 retries, no more


def test_transient_503s_are_survived(gateway, pc_server, pc, pc_features):
    gw = gateway(pc_server.url, failures=2)
    items = search_items(pc, **GOOD, url=gw.url, retries=3, backoff=0.01)
    assert [it.id for it in items] == expected_ids(pc_features, shapely.geometry.box(*EAST), "2024-04-01", "2024-04-30")
    assert len(gw.seen) > 3


def test_broken_page_is_retried_then_survived(gateway, pc_server, pc, pc_features):
    gw = gateway(pc_server.url, failures=0)
    gw.broken = 1
    items = search_items(pc, **GOOD, url=gw.url, retries=2, backoff=0.01)
    assert gw.broken == 0
    assert [it.id for it in items] == expected_ids(pc_features, shapely.geometry.box(*EAST), "2024-04-01", "2024-04-30")


def test_broken_pages_fail_clearly_naming_the_request(gateway, pc_server, pc):
    gw = gateway(pc_server.url, failures=0)
    gw.broken = 10**6
    with pytest.raises(CatalogUnreachableError, match=rf"search at STAC API {gw.url}.*broken page.*after 3 attempts"):
        search_items(pc, **GOOD, url=gw.url, retries=2, backoff=0.01)
    assert sum(p.startswith("/search") for _, p in gw.seen) == 3  # one request + 2 retries


def test_region_and_window_are_also_checked_on_the_client(gateway, pc_server, pc, pc_features):
    """Against a server that ignores the region and the time window, the results are still right."""
    gw = gateway(pc_server.url, failures=0, strip=("bbox", "intersects", "datetime"))
    items = search_items(pc, bbox=WEST, start="2024-05-01", end="2024-06-30", url=gw.url)
    assert getattr(gw, "stripped", False)
    assert [it.id for it in items] == expected_ids(pc_features, shapely.geometry.box(*WEST), "2024-05-01", "2024-06-30")


def test_cloud_query_is_sent_only_to_servers_with_the_query_extension(gateway, pc_server, pc, pc_features):
    plain = gateway(pc_server.url, failures=0)
    search_items(pc, bbox=EAST, start="2024-05-01", end="2024-06-30", max_cloud=20, url=plain.url)
    assert plain.bodies and all("query" not in b for b in plain.bodies)
    # The same API announcing the query extension gets the limit too (the gateway strips it again,
    # as rustac implements no query); the client-side filter still decides.
    gw = gateway(pc_server.url, failures=0, strip=("query",),
                 add_conformance="https://api.stacspec.org/v1.0.0/item-search#query")
    items = search_items(pc, bbox=EAST, start="2024-05-01", end="2024-06-30", max_cloud=20, url=gw.url)
    assert gw.bodies[0]["query"] == {"eo:cloud_cover": {"lte": 20.0}}
    assert gw.bodies[0]["datetime"] == "2024-05-01T00:00:00Z/2024-06-30T23:59:59Z"
    assert [it.id for it in items] == expected_ids(pc_features, shapely.geometry.box(*EAST), "2024-05-01",
                                                   "2024-06-30", max_cloud=20)

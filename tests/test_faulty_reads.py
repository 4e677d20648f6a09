"""Pixel reads that survive a faulty object store: the demo COGs served over HTTP by a server that spoils a
seeded fraction of the range requests (503, 429, stalls, connections cut mid-body, truncated bodies)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from s2pipe.cube import build_cube
from s2pipe.errors import AssetReadError
from s2pipe.runtime.retry import RetryPolicy, http_gdal_options
from s2pipe.stac.catalog import load_profile
from s2pipe.stac.items import normalize_item
from s2pipe.synthetic.faulty_server import FaultyCogServer, http_items

FAST = RetryPolicy(retries=3, backoff=0.1)
"""Shorter sleeps than the default READ_RETRY, same number of attempts (the test's time, not the logic)."""


@pytest.fixture(scope="module")
def region_items(tiny_demo):
    region, profile = tiny_demo
    features = json.loads(region.items_path.read_text())["features"]
    items = [normalize_item(f, load_profile(profile), sign=False).to_dict() for f in features]
    return region, items


@pytest.fixture(scope="module")
def local_cube(region_items):
    region, items = region_items
    return build_cube(items, bbox=region.default_bbox, chunk_size=64, time_chunks="all").compute(scheduler="threads")


def test_gdal_retries_each_http_request_with_the_policys_count_and_time_out():
    opts = http_gdal_options(RetryPolicy(retries=3, backoff=0.5), timeout=30)
    assert opts == {"GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "0.5", "GDAL_HTTP_TIMEOUT": "30",
                    "GDAL_HTTP_CONNECTTIMEOUT": "10"}


def test_a_cube_read_through_a_faulty_server_equals_the_local_read(region_items, local_cube):
    """5 % of the range requests fail, in every way the server knows: the cube is identical, bit for bit."""
    region, items = region_items
    with FaultyCogServer(region.root, rate=0.05, seed=7, stall_s=3.0) as server:
        t0 = time.monotonic()
        got = build_cube(http_items(items, server), bbox=region.default_bbox, chunk_size=64, time_chunks="all",
                         read_retry=FAST, http_timeout=1).compute(scheduler="threads")
        seconds = time.monotonic() - t0
    faults = {k: v for k, v in server.counts.items() if k in FaultyCogServer.KINDS}
    assert sum(faults.values()) >= 5 and len(faults) >= 3, server.counts  # the faults really happened
    np.testing.assert_array_equal(got.values, local_cube.values)
    assert got.attrs["stac_items"] == local_cube.attrs["stac_items"]
    print(f"faulty read: {server.counts['requests']} requests, faults {faults}, {seconds:.1f} s")


def test_an_asset_that_keeps_failing_fails_the_read_naming_it_within_bounded_time(region_items):
    """A file that answers 503 to every request: GDAL's and s2pipe's retries give up, and the error names it."""
    region, items = region_items
    victim = items[len(items) // 2]
    name = victim["assets"]["B04"]["href"].rsplit("/", 1)[-1]
    one = [victim]
    with FaultyCogServer(region.root, broken=(name,)) as server:
        cube = build_cube(http_items(one, server), bbox=region.default_bbox, chunk_size=64, time_chunks="all",
                          read_retry=RetryPolicy(retries=2, backoff=0.1), http_timeout=1)
        t0 = time.monotonic()
        with pytest.raises(AssetReadError, match=name):
            cube.compute(scheduler="single-threaded")
        seconds = time.monotonic() - t0
    # GDAL: 1 + 2 tries per request with its backoff from 0.1 s; no second layer on top for an HTTP status
    assert server.counts["broken"] <= 3 * 2, server.counts  # the opening requests only: nothing multiplied
    assert seconds < 10, seconds


def _signer(server, **kwargs):
    from s2pipe.stac.signing import HrefSigner

    return HrefSigner(token_url=server.token_url, hosts=(server.url(server.root / "x").split("/")[2],), **kwargs)


def test_hrefs_signed_at_read_time_survive_tokens_that_expire_during_the_read(region_items, local_cube):
    """Tokens live 0.4 s, far less than the read: each reader signs its href when it opens the file, and a
    range answered 403 (the token expired on an open file) is signed again and read again."""
    from s2pipe.stac.signing import forget_tokens

    region, items = region_items
    forget_tokens()
    with FaultyCogServer(region.root, token_ttl=0.4) as server:
        signer = _signer(server, renew_before=0.0, retry=RetryPolicy(retries=2, backoff=0.1))
        t0 = time.monotonic()
        got = build_cube(http_items(items, server), bbox=region.default_bbox, chunk_size=64, time_chunks="all",
                         read_retry=FAST, http_timeout=2, signer=signer).compute(scheduler="threads")
        seconds = time.monotonic() - t0
    assert server.counts["tokens"] >= 2, server.counts  # tokens really expired (renewed before, at half-life)
    np.testing.assert_array_equal(got.values, local_cube.values)
    print(f"read with expiring tokens: {dict(server.counts)}, {seconds:.1f} s")


def test_revoked_tokens_are_answered_403_and_the_readers_sign_again(region_items, local_cube):
    """Every token revoked between two reads (the cached one still looks valid): the files answer 403, the
    readers drop the token, get a new one and read again."""
    from s2pipe.runtime.objectstore import forget_cached_ranges
    from s2pipe.stac.signing import forget_tokens

    region, items = region_items
    forget_tokens()
    with FaultyCogServer(region.root, token_ttl=600) as server:
        signer = _signer(server, retry=RetryPolicy(retries=2, backoff=0.1))
        cube = build_cube(http_items(items[:4], server), bbox=region.default_bbox, chunk_size=64,
                          time_chunks="all", read_retry=FAST, http_timeout=2, signer=signer)
        first = cube.compute(scheduler="threads")
        issued = server.counts["tokens"]
        server.revoke()
        for it in http_items(items[:4], server):  # what GDAL keeps of the files would hide the revocation
            for asset in it["assets"].values():
                forget_cached_ranges(asset["href"])
        again = cube.compute(scheduler="threads")
    assert server.counts["403"] >= 1 and server.counts["tokens"] > issued, server.counts
    np.testing.assert_array_equal(again.values, first.values)


def test_without_a_signer_a_token_server_refuses_every_read(region_items):
    region, items = region_items
    with FaultyCogServer(region.root, token_ttl=60) as server:
        cube = build_cube(http_items(items[:1], server), bbox=region.default_bbox, chunk_size=64,
                          time_chunks="all", read_retry=RetryPolicy(retries=1, backoff=0.1), http_timeout=1)
        with pytest.raises(AssetReadError, match="403"):
            cube.compute(scheduler="single-threaded")
    assert server.counts["403"] >= 1 and server.counts["tokens"] == 0


def test_the_signer_caches_tokens_renews_them_before_expiry_and_keeps_them_out_of_messages(region_items):
    from urllib.parse import parse_qs, urlsplit

    from s2pipe.errors import SigningError
    from s2pipe.stac.assets import redact_href
    from s2pipe.stac.signing import HrefSigner, forget_tokens

    region, items = region_items
    forget_tokens()
    with FaultyCogServer(region.root, token_ttl=3.0) as server:
        href = http_items(items[:1], server)[0]["assets"]["B04"]["href"]
        fresh = _signer(server, renew_before=0.0)
        a, b = fresh.sign(href), fresh.sign(href + "?se=1&sig=stale")
        assert a == b and server.counts["tokens"] == 1  # one token per container, an old one replaced
        assert parse_qs(urlsplit(a).query)["sig"] and redact_href(a).count("sig=") == 0
        eager = _signer(server)  # renew 300 s before expiry, but at most half a token's lifetime (here 1.5 s)
        assert eager.sign(href) == a and server.counts["tokens"] == 1
        time.sleep(1.6)
        assert eager.sign(href) != a and server.counts["tokens"] == 2
        assert fresh.sign(href) == eager.sign(href) and server.counts["tokens"] == 2  # one cache per process
        fresh.renew(href)  # after a 403
        fresh.sign(href)
        assert server.counts["tokens"] == 3
        assert fresh.sign("https://example.org/x.tif") == "https://example.org/x.tif"  # other hosts as they are
    dead = HrefSigner(token_url="http://127.0.0.1:9/token", hosts=("127.0.0.1:9",),
                      retry=RetryPolicy(retries=1, backoff=0.05), timeout=1)
    with pytest.raises(SigningError, match="after 2 attempts"):
        dead.sign("http://127.0.0.1:9/c/x.tif")


def test_a_dead_object_store_fails_the_check_and_the_read_within_the_documented_time(region_items):
    """Nothing listens where the COGs should be: the asset check gives up on every asset after its attempts and
    says so (NoScenesError), and a read without the check fails naming the href, each within seconds."""
    from pathlib import Path

    from s2pipe.errors import NoScenesError
    from s2pipe.stac.assets import check_assets
    from s2pipe.stac.server import free_port

    region, items = region_items
    port = free_port()  # bound to nothing
    dead = json.loads(json.dumps(items[:3]))
    for it in dead:
        for asset in it["assets"].values():
            asset["href"] = f"http://127.0.0.1:{port}/{Path(asset['href']).relative_to(region.root).as_posix()}"
    t0 = time.monotonic()
    with pytest.raises(NoScenesError, match="all 3 scenes failed the asset check"):
        check_assets(dead, ["B04", "SCL"], retries=2, backoff=0.1, timeout=1)
    assert time.monotonic() - t0 < 15
    cube = build_cube(dead, bbox=region.default_bbox, chunk_size=64, time_chunks="all",
                      read_retry=RetryPolicy(retries=2, backoff=0.1), http_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(AssetReadError, match=f"could not read http://127.0.0.1:{port}/"):
        cube.compute(scheduler="single-threaded")
    assert time.monotonic() - t0 < 15


def test_s3_reads_through_a_faulty_s3_endpoint_equal_the_local_read(region_items, local_cube):
    """The same faults behind an S3 endpoint: ``s3://`` hrefs read through GDAL's /vsis3/ (path-style, unsigned,
    the endpoint from ``storage``) from the faulty server, whose root holds the bucket. The cube is identical."""
    from pathlib import Path

    region, items = region_items
    root = Path(region.root)
    s3 = json.loads(json.dumps(items))
    for it in s3:
        for asset in it["assets"].values():
            asset["href"] = f"s3://{root.name}/{Path(asset['href']).relative_to(root).as_posix()}"
    with FaultyCogServer(root.parent, rate=0.05, seed=5, stall_s=3.0) as server:
        endpoint = "http://" + server.token_url.split("/")[2]
        got = build_cube(s3, bbox=region.default_bbox, chunk_size=64, time_chunks="all", read_retry=FAST,
                         http_timeout=1, storage={"endpoint_url": endpoint, "anon": True}).compute(scheduler="threads")
    faults = {k: v for k, v in server.counts.items() if k in FaultyCogServer.KINDS}
    assert sum(faults.values()) >= 5 and len(faults) >= 3, server.counts
    np.testing.assert_array_equal(got.values, local_cube.values)
    print(f"faulty S3 read: {server.counts['requests']} requests, faults {faults}")

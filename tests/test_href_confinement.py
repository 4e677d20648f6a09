"""Asset hrefs are confined: a catalog naming /etc/passwd, ``file://`` URLs, ``..`` paths, symlinks out of its folder,
devices or other schemes gets the scene left out (strict: an error naming the href), and no byte of such a file is
read, let alone shown. Tiny COGs from s2pipe.synthetic.scenes, normalized with a local-demo profile rooted at them."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from s2pipe.errors import AssetError
from s2pipe.stac import assets as assets_mod
from s2pipe.stac.assets import (
    HrefNotAllowedError,
    check_asset,
    check_assets,
    check_hrefs,
    confine_href,
    item_local_roots,
)
from s2pipe.stac.catalog import load_profile
from s2pipe.stac.items import LOCAL_ROOTS, normalize_item
from s2pipe.synthetic.scenes import make_scenes

BANDS = ("B02", "SCL")
FAST = dict(retries=1, backoff=0.01)
CANARY = "CANARY-7f3a91-secret-file-content"
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")


@pytest.fixture
def world(tmp_path):
    """``root`` (the catalog's folder: three one-date scenes), ``outside`` (a folder beside it holding ``secret``,
    a file whose content is the canary) and the scenes normalized with a local-demo profile rooted at ``root``."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    scenes = make_scenes(root, n_dates=3, size=32, block_size=16, bands=("B02",))
    outside.mkdir()
    secret = outside / "secret.tif"
    secret.write_text(CANARY + "\n")
    profile = load_profile("local-demo").model_copy(update={"demo_root": str(root)})
    items = [normalize_item(it, profile).to_dict(transform_hrefs=False) for it in scenes]
    return {"root": root, "outside": outside, "secret": secret, "profile": profile, "items": items}


@pytest.fixture
def opened(monkeypatch):
    """Every href the asset check reads bytes of (its ``_probe``), in call order."""
    calls: list[str] = []
    real = assets_mod._probe

    def spy(href, timeout):
        calls.append(href)
        return real(href, timeout)

    monkeypatch.setattr(assets_mod, "_probe", spy)
    return calls


def _hostile(w) -> dict[str, str]:
    """Hrefs a catalog may not make s2pipe open, by name."""
    root, secret = w["root"], w["secret"]
    scene_a, scene_b = (Path(it["assets"]["B02"]["href"]).parent for it in w["items"][:2])
    (root / "link.tif").symlink_to(secret)
    os.mkfifo(root / "pipe.tif")
    return {
        "absolute": "/etc/passwd",
        "file-url": "file:///etc/passwd",
        "relative-dotdot": "../../etc/hostname",
        "outside-root": str(secret),
        "outside-root-file-url": secret.as_uri(),
        "symlink-out": str(root / "link.tif"),
        "other-scene-dotdot": f"{scene_a}/../{scene_b.name}/B02.tif",
        "other-host-file-url": "file://fileserver/etc/passwd",
        "fifo": str(root / "pipe.tif"),
        "directory": str(root),
        "ftp": "ftp://example.org/B02.tif",
        "javascript": "javascript:alert(1)",
        "data-url": "data:text/plain;base64,cm9vdDp4OjA=",
        "vsizip": f"/vsizip/{secret}/a.tif",
        "vsicurl-file": f"/vsicurl/file://{secret}",
        "nul": f"{root}/a\x00.tif",
    }


HOSTILE = ["absolute", "file-url", "relative-dotdot", "outside-root", "outside-root-file-url", "symlink-out",
           "other-scene-dotdot", "other-host-file-url", "fifo", "directory", "ftp", "javascript", "data-url",
           "vsizip", "vsicurl-file", "nul"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_href_is_left_out_unread(world, opened, caplog, kind):
    caplog.set_level(logging.DEBUG)
    href = _hostile(world)[kind]
    items = world["items"]
    items[1]["assets"]["B02"]["href"] = href
    check = check_assets(items, BANDS, **FAST)
    assert check.items == [items[0], items[2]] and check.dropped_ids == [items[1]["id"]]
    (entry,) = check.dropped
    assert entry["asset"] == "B02" and entry["attempts"] == 0
    assert entry["reason"].startswith("HrefNotAllowedError: "), entry["reason"]
    assert href not in opened and len(opened) == 3 * len(BANDS) - 1  # every other asset was read, not this one
    shown = json.dumps([check.summary(), check.provenance()]) + caplog.text
    assert CANARY not in shown and "root:x:0" not in shown


@pytest.mark.parametrize("kind", ["absolute", "file-url", "symlink-out", "other-scene-dotdot", "javascript"])
def test_strict_mode_raises_naming_the_href_before_reading_anything(world, opened, kind):
    href = _hostile(world)[kind]
    items = world["items"]
    items[2]["assets"]["SCL"]["href"] = href
    with pytest.raises(AssetError) as info:
        check_assets(items, BANDS, strict=True, **FAST)
    msg = str(info.value)
    assert href in msg and items[2]["id"] in msg and "'SCL'" in msg and "HrefNotAllowedError" in msg
    assert "without being opened" in msg and CANARY not in msg
    assert (info.value.item_id, info.value.asset, info.value.attempts) == (items[2]["id"], "SCL", 0)
    assert href not in opened
    # the pixel read's guard (build_cube) refuses it the same way, with the same error
    with pytest.raises(AssetError, match="HrefNotAllowedError") as again:
        check_hrefs(items, BANDS)
    assert href in str(again.value)
    check_hrefs(items[:2], BANDS)  # the good ones pass


def test_reasons_never_quote_the_bytes_of_a_file(world, opened):
    """A non-TIFF file the catalog may name is read (that is the check), but its bytes are in no message."""
    inside = world["root"] / "notes.tif"
    inside.write_text(CANARY)
    items = world["items"]
    items[0]["assets"]["B02"]["href"] = str(inside)
    check = check_assets(items, BANDS, **FAST)
    assert check.dropped_ids == [items[0]["id"]] and str(inside) in opened
    assert check.dropped[0]["reason"] == "NotATiffError: not a TIFF (no II*/MM* signature at the start of the file)"
    assert CANARY not in json.dumps(check.summary())


def test_profile_local_roots_allow_other_folders(world, opened):
    """``local_roots`` names the folders a catalog may use; the default (the catalog's own root) is then replaced."""
    w = world
    copy = w["outside"] / "B02.tif"
    copy.write_bytes(Path(w["items"][0]["assets"]["B02"]["href"]).read_bytes())
    raw = json.loads(json.dumps(w["items"]))
    raw[0]["assets"]["B02"]["href"] = str(copy)
    both = w["profile"].model_copy(update={"local_roots": (str(w["root"]), str(w["outside"]))})
    items = [normalize_item(d, both).to_dict() for d in raw]
    assert items[0]["properties"][LOCAL_ROOTS] == [str(w["root"].resolve()), str(w["outside"].resolve())]
    assert check_assets(items, BANDS, **FAST).ok and str(copy) in opened
    only_outside = w["profile"].model_copy(update={"local_roots": (str(w["outside"]),)})
    items = [normalize_item(d, only_outside).to_dict() for d in raw]
    check = check_assets(items, ["B02"], **FAST)
    assert check.items == [items[0]] and check.dropped_ids == [items[1]["id"], items[2]["id"]]
    assert "lies outside the folders the catalog may name" in check.dropped[0]["reason"]
    # an explicit local_roots argument overrides what the items say
    assert check_assets(items, BANDS, local_roots=[w["root"], w["outside"]], **FAST).ok


def test_a_remote_catalog_names_no_local_file(world, opened):
    """The catalog's own root of a remote STAC API is none: its local hrefs are all refused."""
    remote = load_profile("earth-search-v1-l2a")
    assert remote.asset_roots == ()
    raw = json.loads(json.dumps(world["items"]))
    for d in raw:
        d["assets"] = {remote.assets[b]: a for b, a in d["assets"].items()}
        d["properties"].pop("s2pipe:solar_day")  # as the remote catalog sends them
    items = [normalize_item(d, remote).to_dict() for d in raw[:2]] + [world["items"][2]]
    check = check_assets(items, BANDS, **FAST)
    assert check.items == [items[2]] and len(check.dropped) == 2 * len(BANDS) and len(opened) == len(BANDS)
    assert "none: the catalog's assets are remote" in check.dropped[0]["reason"]


def test_the_catalog_cannot_widen_its_own_roots(world):
    """``s2pipe:local_roots`` a catalog sends is replaced by the profile's; a malformed one allows nothing."""
    raw = json.loads(json.dumps(world["items"][0]))
    raw["properties"][LOCAL_ROOTS] = ["/"]
    raw["assets"]["B02"]["href"] = "/etc/passwd"
    item = normalize_item(raw, world["profile"]).to_dict()
    assert item["properties"][LOCAL_ROOTS] == [str(world["root"].resolve())]
    assert check_assets([item, world["items"][1]], BANDS, **FAST).dropped_ids == [item["id"]]
    assert item_local_roots({"properties": {LOCAL_ROOTS: "/"}}) == ()
    assert item_local_roots({"properties": {}}) is None  # built in-process: not confined to a folder


def test_relative_hrefs_resolve_against_the_item_location(world):
    raw = json.loads(json.dumps(world["items"][0]))
    folder = Path(raw["assets"]["B02"]["href"]).parent
    raw["links"] = [{"rel": "self", "href": (folder / "item.json").as_uri()}]
    raw["assets"]["B02"]["href"] = "./B02.tif"
    raw["assets"]["SCL"]["href"] = "../" + world["items"][1]["id"] + "/SCL.tif"  # another scene's file
    item = normalize_item(raw, world["profile"]).to_dict()
    assert item["assets"]["B02"]["href"] == os.path.join(folder, "./B02.tif")
    check = check_assets([item], ["B02"], **FAST)
    assert check.ok
    with pytest.raises(AssetError, match=r"SCL.*climbs out of its folder with '\.\.'"):
        check_assets([item], ["SCL"], strict=True, **FAST)
    served = dict(raw, links=[{"rel": "self", "href": "https://stac.example/collections/c/items/x"}])
    assert normalize_item(served, world["profile"]).assets["B02"].href == "https://stac.example/collections/c/items/B02.tif"


@pytest.mark.parametrize("href", [
    "https://h/a.tif", "http://h/a.tif?sig=1", "s3://bucket/a.tif", "gs://bucket/a.tif", "az://container/a.tif",
    "/vsicurl/https://h/a.tif", "/vsis3/bucket/a.tif", "/vsigs/bucket/a.tif", "/vsiaz/container/a.tif",
])
def test_remote_hrefs_are_allowed_with_no_local_root(href):
    confine_href(href, local_roots=())


def test_check_asset_refuses_without_reading(world, opened):
    res = check_asset(str(world["secret"]), local_roots=[world["root"]], **FAST)
    assert res["ok"] is False and res["attempts"] == 0 and "HrefNotAllowedError" in res["reason"]
    res = check_asset("/etc/../etc/passwd", **FAST)  # unconfined, but '..' is never followed
    assert res["attempts"] == 0 and "climbs out" in res["reason"]
    assert opened == []
    with pytest.raises(HrefNotAllowedError, match="scheme 'ftp'"):
        confine_href("ftp://h/a.tif", local_roots=None)


def test_local_roots_in_a_profile_yaml(tmp_path):
    base = (Path(__file__).resolve().parents[1] / "catalogs" / "local-demo.yaml").read_text()
    good = tmp_path / "good.yaml"
    good.write_text(base + "local_roots: [/data/scenes, relative/folder]\n")
    profile = load_profile(good)
    assert profile.local_roots == ("/data/scenes", "relative/folder")
    assert profile.asset_roots == ("/data/scenes", str(Path("relative/folder").resolve()))
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "local_roots: [s3://bucket/scenes]\n")
    with pytest.raises(Exception, match=r"field 'local_roots'.*not local folders"):
        load_profile(bad)

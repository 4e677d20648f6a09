"""The item adapter (s2pipe.stac.items) on every real item file in ../shared/data/stac-s2-items."""
from __future__ import annotations

import copy
import datetime as dt
import json
import random
from pathlib import Path

import numpy as np
import pystac
import pytest

from s2pipe.bands import BANDS, SPECTRAL_10
from s2pipe.errors import InputError
from s2pipe.stac.catalog import load_profile
from s2pipe.stac.items import (
    is_normalized,
    item_datetime,
    load_item_dicts,
    normalize_item,
    normalize_items,
    solar_day,
)
from s2pipe.synthetic.items import earth_search_item

# Facts read off the files (inventory.json and the items' own properties), not computed by s2pipe:
# file -> (profile, EPSG, expected offset of every spectral band in reflectance units).
ITEM_FILES: dict[str, tuple[str, int, float]] = {
    # v0: no processing baseline, 2020 -> old baseline, offset 0; 3x3 proj:transform.
    "earth-search-v0/odc-stac_S2A_28QCH_20200714_0_L2A.json": ("earth-search-v0", 32628, 0.0),
    # v1 l2a, baseline 05.09 but earthsearch:boa_offset_applied = true: the pixels are already offset-free.
    "earth-search-v1/eodm_sentinel-2-l2a_items.json": ("earth-search-v1-l2a", 32639, 0.0),
    # Collection 1: raster:bands offset -0.1 is right.
    "earth-search-v1/rustac_sentinel-2-c1-l2a_item-collection.json": ("earth-search-v1-c1-l2a", 32613, -0.1),
    # Planetary Computer: baseline 02.12 (2019/2020) -> 0; 04.00 (2023) and 05.1x (2024) -> -0.1.
    "planetary-computer/odc-stac_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json": ("planetary-computer-l2a", 32606, 0.0),
    "planetary-computer/odc-stac_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531_raster_ext.json": ("planetary-computer-l2a", 32606, 0.0),
    "planetary-computer/odc-stac_site1-20200606-tall-strip-africa.json": ("planetary-computer-l2a", 32735, 0.0),
    "planetary-computer/odc-stac_site2-2020_jun_jul-35MNM.json": ("planetary-computer-l2a", 32735, 0.0),
    "planetary-computer/rustac_100-items_T13TDE_2024.json": ("planetary-computer-l2a", 32613, -0.1),
    "planetary-computer/rustac_items-page-1.json": ("planetary-computer-l2a", 32752, -0.1),
    "planetary-computer/rustac_search-page-1.json": ("planetary-computer-l2a", 32619, -0.1),
    "planetary-computer/rustac_two-sentinel-2-items.json": ("planetary-computer-l2a", 32613, -0.1),
}


def _profile(name: str):
    if name == "earth-search-v0":
        # Earth Search v0 keys its assets by band name (B04, SCL); otherwise it reads like v1 l2a.
        v1 = load_profile("earth-search-v1-l2a")
        return v1.model_copy(update={"name": name, "collection": "sentinel-s2-l2a-cogs",
                                     "assets": {b: b for b in v1.assets}})
    return load_profile(name)


@pytest.fixture(scope="module")
def item_files(stac_items_dir) -> dict[str, list[dict]]:
    return {rel: load_item_dicts(stac_items_dir / rel) for rel in ITEM_FILES}


def test_every_item_file_is_covered(stac_items_dir):
    """No real item file escapes the adapter tests (Collections are not items)."""
    inventory = json.loads((stac_items_dir / "inventory.json").read_text())
    item_files = {e["file"] for e in inventory if e["kind"] in ("Feature", "FeatureCollection", "list")}
    on_disk = {
        str(p.relative_to(stac_items_dir)) for p in stac_items_dir.glob("*/*.json")
        if json.loads(p.read_text()).get("type") in ("Feature", "FeatureCollection")
    }
    assert item_files == on_disk == set(ITEM_FILES)


@pytest.mark.parametrize("rel", list(ITEM_FILES))
def test_real_items_normalize(item_files, rel):
    profile_name, epsg, offset = ITEM_FILES[rel]
    profile = _profile(profile_name)
    raw = item_files[rel]
    before = copy.deepcopy(raw)
    items = normalize_items(raw, profile, sign=False)
    assert raw == before, "normalize_items must not modify its input"
    assert len(items) == len(raw) > 0
    times = [item_datetime(it) for it in items]
    assert times == sorted(times)
    for it, src in zip(items, sorted(raw, key=lambda d: (item_datetime(d), d["id"]))):
        assert it.id == src["id"]
        assert is_normalized(it)
        props = it.properties
        assert props["proj:epsg"] == epsg and type(props["proj:epsg"]) is int
        assert "proj:code" not in props
        # Canonical keys: exactly the profile's bands this item has; every other asset dropped.
        expected_keys = {band for band, key in profile.assets.items() if key in src["assets"]}
        assert set(it.assets) == expected_keys
        assert set(SPECTRAL_10) | {"SCL"} <= expected_keys
        for band, asset in it.assets.items():
            assert asset.href == src["assets"][profile.assets[band]]["href"]
            f = asset.extra_fields
            res = BANDS[band].resolution
            assert len(f["proj:transform"]) == 6
            assert f["proj:transform"][0] == res and f["proj:transform"][4] == -res
            assert f["proj:shape"] == [109800 // res] * 2
            rb = f["raster:bands"]
            assert len(rb) == 1 and set(rb[0]) == {"scale", "offset", "nodata"}
            assert rb[0]["nodata"] == 0
            if band == "SCL":
                assert (rb[0]["scale"], rb[0]["offset"]) == (1.0, 0.0)
            else:
                assert rb[0]["scale"] == pytest.approx(1e-4)
                assert rb[0]["offset"] == pytest.approx(offset, abs=1e-12)
        # Solar day: UTC datetime + longitude/15 h, longitude from the item's own bbox centre.
        west, _, east, _ = src["bbox"]
        local = item_datetime(src) + dt.timedelta(hours=(west + east) / 2 / 15)
        assert props["s2pipe:solar_day"] == local.date().isoformat()
        assert solar_day(it) == local.date()
        assert not [ln for ln in it.links if ln.rel == "root"]


def test_v0_three_by_three_transform_is_cut(item_files):
    raw = item_files["earth-search-v0/odc-stac_S2A_28QCH_20200714_0_L2A.json"][0]
    assert len(raw["assets"]["B04"]["proj:transform"]) == 9
    it = normalize_item(raw, _profile("earth-search-v0"))
    assert it.assets["B04"].extra_fields["proj:transform"] == [10.0, 0.0, 300000.0, 0.0, -10.0, 2300040.0]
    assert it.assets["SCL"].extra_fields["proj:transform"] == [20.0, 0.0, 300000.0, 0.0, -20.0, 2300040.0]


def test_solar_day_hand_computed(item_files):
    """T52CEB (Antarctica, lon ~129.3 E) at 2023-02-16 23:57:51 UTC: local solar time ~08:35 the next day."""
    raw = item_files["planetary-computer/rustac_items-page-1.json"][0]
    it = normalize_item(raw, load_profile("planetary-computer-l2a"), sign=False)
    assert it.datetime.date() == dt.date(2023, 2, 16)
    assert it.properties["s2pipe:solar_day"] == "2023-02-17"
    # T06VVN (Alaska, lon ~-147) at 21:25 UTC: ~11:37 local, same day.
    raw = item_files["planetary-computer/odc-stac_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"][0]
    assert solar_day(raw) == dt.date(2019, 6, 29)


def test_solar_day_west_goes_back_a_day_and_antimeridian():
    """A Hawaii-zone scene at 03:00 UTC belongs to the previous local day; a footprint across 180° is east."""
    d = earth_search_item(
        "S2A_04QFJ_20230102_0_L2A", datetime=dt.datetime(2023, 1, 2, 3, 0), epsg=32604,
        bounds=(600000.0, 2290200.0, 709800.0, 2400000.0), assets={"B04": "https://x/B04.tif"},
        shapes={10: (10980, 10980)}, cloud_cover=1.0,
    )
    assert normalize_item(d, load_profile("earth-search-v1-l2a")).properties["s2pipe:solar_day"] == "2023-01-01"
    ring = [[179.0, -17.0], [-179.4, -17.0], [-179.4, -16.0], [179.0, -16.0], [179.0, -17.0]]
    d["geometry"] = {"type": "Polygon", "coordinates": [ring]}  # centroid lon 179.8 E, not ~0
    d["bbox"] = [179.0, -17.0, -179.4, -16.0]
    d["properties"]["datetime"] = "2023-01-01T13:00:00Z"  # + 11.99 h
    assert solar_day(d) == dt.date(2023, 1, 2)


def test_proj_code_only_item_and_asset_level(item_files):
    raw = copy.deepcopy(item_files["planetary-computer/rustac_two-sentinel-2-items.json"][0])
    epsg = raw["properties"].pop("proj:epsg")
    raw["properties"]["proj:code"] = f"EPSG:{epsg}"
    profile = load_profile("planetary-computer-l2a")
    it = normalize_item(raw, profile, sign=False)
    assert it.properties["proj:epsg"] == 32613 and "proj:code" not in it.properties
    # Only the assets state the CRS (proj:code, as pystac >= 1.12 writes it at asset level).
    del raw["properties"]["proj:code"]
    for a in raw["assets"].values():
        a["proj:code"] = "EPSG:32613"
    it = normalize_item(raw, profile, sign=False)
    assert it.properties["proj:epsg"] == 32613
    assert all("proj:code" not in a.extra_fields for a in it.assets.values())


def test_pystac_migrated_item(item_files):
    """pystac 1.15 migrates proj:epsg to proj:code on from_dict (pystac-client does the same for search results)."""
    item = pystac.Item.from_dict(item_files["earth-search-v1/rustac_sentinel-2-c1-l2a_item-collection.json"][0])
    assert "proj:epsg" not in item.properties and item.properties["proj:code"] == "EPSG:32613"
    it = normalize_item(item, load_profile("earth-search-v1-c1-l2a"))
    assert it.properties["proj:epsg"] == 32613
    assert it.assets["B02"].extra_fields["raster:bands"][0]["offset"] == pytest.approx(-0.1)


def test_round_trip_through_pystac_migration_keeps_the_normalized_form(item_files):
    it = normalize_item(item_files["planetary-computer/rustac_two-sentinel-2-items.json"][0],
                        load_profile("planetary-computer-l2a"), sign=False)
    again = pystac.Item.from_dict(it.to_dict())  # migrate=True, as any consumer would read it
    assert again.properties["proj:epsg"] == 32613
    assert again.assets["B04"].extra_fields["raster:bands"] == it.assets["B04"].extra_fields["raster:bands"]
    # And normalizing a normalized item (dict or Item) changes nothing.
    assert normalize_item(it, load_profile("planetary-computer-l2a"), sign=False).to_dict() == it.to_dict()
    assert normalize_item(it.to_dict(), load_profile("planetary-computer-l2a"), sign=False).to_dict() == it.to_dict()


def test_item_level_proj_fields_are_copied_to_assets(item_files):
    raw = copy.deepcopy(item_files["planetary-computer/rustac_two-sentinel-2-items.json"][0])
    raw["properties"]["proj:shape"] = [10980, 10980]
    raw["properties"]["proj:transform"] = [10.0, 0.0, 399960.0, 0.0, -10.0, 4500000.0, 0.0, 0.0, 1.0]
    del raw["assets"]["B04"]["proj:shape"], raw["assets"]["B04"]["proj:transform"]
    it = normalize_item(raw, load_profile("planetary-computer-l2a"), sign=False)
    assert it.assets["B04"].extra_fields["proj:shape"] == [10980, 10980]
    assert it.assets["B04"].extra_fields["proj:transform"] == [10.0, 0.0, 399960.0, 0.0, -10.0, 4500000.0]
    assert it.properties["proj:transform"] == [10.0, 0.0, 399960.0, 0.0, -10.0, 4500000.0]
    assert it.assets["SCL"].extra_fields["proj:shape"] == [5490, 5490]  # its own value wins


# ---------------------------------------------------------------------------------------- offset rules


def _offset(raw, profile_name):
    it = normalize_item(raw, _profile(profile_name), sign=False)
    return it.assets["B04"].extra_fields["raster:bands"][0]["offset"]


def test_processing_baseline_rule(item_files):
    raw = copy.deepcopy(item_files["planetary-computer/rustac_two-sentinel-2-items.json"][0])
    p = raw["properties"]
    assert p["s2:processing_baseline"] == "05.11"
    assert _offset(raw, "planetary-computer-l2a") == pytest.approx(-0.1)
    p["s2:processing_baseline"] = "04.00"
    assert _offset(raw, "planetary-computer-l2a") == pytest.approx(-0.1)
    p["s2:processing_baseline"] = "2.14"  # numerically < 04.00 although the string "2.14" > "04.00"
    assert _offset(raw, "planetary-computer-l2a") == 0.0
    p["s2:processing_baseline"] = "03.99"
    assert _offset(raw, "planetary-computer-l2a") == 0.0
    del p["s2:processing_baseline"]  # fall back to the acquisition date
    p["datetime"] = "2022-01-24T23:59:59Z"
    assert _offset(raw, "planetary-computer-l2a") == 0.0
    p["datetime"] = "2022-01-25T00:00:00Z"
    assert _offset(raw, "planetary-computer-l2a") == pytest.approx(-0.1)
    p["s2:processing_baseline"] = "N05.11"
    with pytest.raises(InputError, match="s2:processing_baseline"):
        _offset(raw, "planetary-computer-l2a")


def test_earthsearch_boa_flag_rule(item_files):
    raw = copy.deepcopy(item_files["earth-search-v1/eodm_sentinel-2-l2a_items.json"][0])
    p = raw["properties"]
    assert p["earthsearch:boa_offset_applied"] is True and raw["assets"]["red"]["raster:bands"][0]["offset"] == -0.1
    assert _offset(raw, "earth-search-v1-l2a") == 0.0  # the item's raster:bands offset is not trusted
    p["earthsearch:boa_offset_applied"] = False  # baseline 05.09 -> -1000 DN
    assert _offset(raw, "earth-search-v1-l2a") == pytest.approx(-0.1)
    del p["earthsearch:boa_offset_applied"]
    p["sentinel:boa_offset_applied"] = True  # the legacy name
    assert _offset(raw, "earth-search-v1-l2a") == 0.0
    del p["sentinel:boa_offset_applied"], p["s2:processing_baseline"]
    p["datetime"] = "2021-06-01T00:00:00Z"
    assert _offset(raw, "earth-search-v1-l2a") == 0.0


def test_raster_bands_rule(item_files):
    raw = copy.deepcopy(item_files["earth-search-v1/rustac_sentinel-2-c1-l2a_item-collection.json"][0])
    raw["assets"]["red"]["raster:bands"][0].update(scale=2e-4, offset=-0.05)
    it = normalize_item(raw, load_profile("earth-search-v1-c1-l2a"))
    assert it.assets["B04"].extra_fields["raster:bands"] == [{"scale": 2e-4, "offset": -0.05, "nodata": 0}]
    del raw["assets"]["red"]["raster:bands"]  # defaults: profile scale, no offset
    it = normalize_item(raw, load_profile("earth-search-v1-c1-l2a"))
    assert it.assets["B04"].extra_fields["raster:bands"] == [{"scale": 1e-4, "offset": 0.0, "nodata": 0}]


# ------------------------------------------------------------------------------------------------ errors


def test_missing_epsg_and_datetime_name_item_and_field(item_files):
    raw = copy.deepcopy(item_files["planetary-computer/rustac_two-sentinel-2-items.json"][0])
    profile = load_profile("planetary-computer-l2a")
    no_dt = copy.deepcopy(raw)
    no_dt["properties"]["datetime"] = None
    with pytest.raises(InputError, match=rf"{raw['id']}.*'datetime'"):
        normalize_item(no_dt, profile, sign=False)
    del raw["properties"]["proj:epsg"]
    with pytest.raises(InputError, match=rf"{raw['id']}.*'proj:epsg'"):
        normalize_item(raw, profile, sign=False)
    raw["properties"]["proj:code"] = "OGC:CRS84"
    with pytest.raises(InputError, match="'proj:code' 'OGC:CRS84'"):
        normalize_item(raw, profile, sign=False)
    raw["properties"].update({"proj:code": "EPSG:32613", "proj:epsg": 32612})
    with pytest.raises(InputError, match="disagree"):
        normalize_item(raw, profile, sign=False)


def test_wrong_profile_names_the_assets(item_files):
    raw = item_files["earth-search-v0/odc-stac_S2A_28QCH_20200714_0_L2A.json"][0]
    with pytest.raises(InputError, match=r"S2A_28QCH_20200714_0_L2A.*earth-search-v1-l2a.*B04"):
        normalize_item(raw, load_profile("earth-search-v1-l2a"))


def test_load_item_dicts_rejects_non_items(stac_items_dir, tmp_path):
    with pytest.raises(InputError, match="no STAC items"):
        load_item_dicts(stac_items_dir / "planetary-computer/rustac_sentinel-2-l2a.collection.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        load_item_dicts(bad)


def test_normalize_items_accepts_collections_and_sorts(item_files):
    raw = list(item_files["planetary-computer/rustac_100-items_T13TDE_2024.json"])
    random.Random(0).shuffle(raw)
    profile = load_profile("planetary-computer-l2a")
    from_list = normalize_items(raw, profile, sign=False)
    from_fc = normalize_items({"type": "FeatureCollection", "features": raw}, profile, sign=False)
    from_ic = normalize_items(pystac.ItemCollection(raw), profile, sign=False)
    ids = [it.id for it in from_list]
    assert ids == [it.id for it in from_fc] == [it.id for it in from_ic]
    assert ids == [d["id"] for d in sorted(raw, key=lambda d: d["properties"]["datetime"])]


# ----------------------------------------------------------------------------------------------- signing


def test_planetary_computer_signing_path(item_files):
    """The PC profile signs every Azure blob href with a token of its token service (here a local one, the
    token API of ``FaultyCogServer``), replacing a token already there; other hosts are left as they are, and
    ``sign=False`` or an unsigned profile asks for no token."""
    from s2pipe.stac.signing import forget_tokens
    from s2pipe.synthetic.faulty_server import FaultyCogServer

    raw = copy.deepcopy(item_files["planetary-computer/rustac_two-sentinel-2-items.json"][0])
    stale = "st=2024-01-01T00%3A00%3A00Z&se=2024-01-02T00%3A00%3A00Z&sp=rl&sig=abc"
    raw["assets"]["B04"]["href"] += "?" + stale
    raw["assets"]["B05"]["href"] = raw["assets"]["B05"]["href"].replace(
        "https://sentinel2l2a01.blob.core.windows.net", "http://127.0.0.1:9")
    forget_tokens()
    with FaultyCogServer(Path(__file__).parent, token_ttl=600) as server:
        profile = load_profile("planetary-computer-l2a").model_copy(update={"token_url": server.token_url})
        assert profile.signing == "planetary-computer"
        it = normalize_item(raw, profile)
        assert server.counts["tokens"] == 1  # one container, one token (cached)
        signed = {k: a.href for k, a in it.assets.items() if ".blob.core.windows.net" in a.href}
        assert "B04" in signed and "SCL" in signed
        for href in signed.values():
            assert "&sig=" in href and "se=" in href and stale not in href
        assert it.assets["B05"].href == raw["assets"]["B05"]["href"]
        assert normalize_item(raw, profile, sign=False).assets["B04"].href.endswith(stale)
        normalize_item(item_files["earth-search-v1/rustac_sentinel-2-c1-l2a_item-collection.json"][0],
                       load_profile("earth-search-v1-c1-l2a"))
        assert server.counts["tokens"] == 1


# ---------------------------------------------------------------------------------------------- stackstac


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # stackstac 0.5.1 uses affine's `*`
@pytest.mark.parametrize(
    "rel,n",
    [
        ("planetary-computer/rustac_100-items_T13TDE_2024.json", 100),
        ("earth-search-v1/rustac_sentinel-2-c1-l2a_item-collection.json", 10),
        ("earth-search-v0/odc-stac_S2A_28QCH_20200714_0_L2A.json", 1),
    ],
)
def test_stackstac_builds_lazily(item_files, rel, n):
    """stackstac 0.5.1 reads only proj:epsg and asset proj fields: the normalized form is enough (no pixel reads)."""
    import stackstac

    profile_name, epsg, offset = ITEM_FILES[rel]
    items = normalize_items(item_files[rel], _profile(profile_name), sign=False)
    da = stackstac.stack(items, assets=["B04", "B8A", "SCL"], resolution=10, rescale=False,
                         fill_value=np.uint16(0), dtype="uint16", xy_coords="center")
    assert da.shape == (n, 3, 10980, 10980)
    assert int(da.epsg) == epsg and da.dtype == np.uint16
    assert list(da.band.values) == ["B04", "B8A", "SCL"]
    x0 = items[0].assets["B04"].extra_fields["proj:transform"][2]
    assert float(da.x[0]) == x0 + 5.0  # pixel centre
    # With rescale, stackstac applies the normalized raster:bands (scale, offset) lazily.
    scaled = stackstac.stack(items[:1], assets=["B04"], resolution=60)
    assert scaled.dtype == np.float64 and scaled.shape == (1, 1, 1830, 1830)

"""Catalog profiles (catalogs/*.yaml) and their loader."""
from __future__ import annotations

import pytest

from s2pipe.bands import BANDS, SPECTRAL_10
from s2pipe.errors import InputError
from s2pipe.stac.catalog import CATALOG_DIR, CatalogProfile, list_profiles, load_profile

PROFILES = ["earth-search-v1-c1-l2a", "earth-search-v1-l2a", "local-demo", "planetary-computer-l2a"]


def test_the_four_profiles_are_listed():
    assert list_profiles() == PROFILES


@pytest.mark.parametrize("name", PROFILES)
def test_profile_loads_and_maps_the_paper_bands(name):
    p = load_profile(name)
    assert isinstance(p, CatalogProfile) and p.name == name
    assert set(SPECTRAL_10) | {"SCL"} <= set(p.assets)
    assert set(p.assets) <= set(BANDS)
    assert len(set(p.assets.values())) == len(p.assets)  # one source key per band
    assert p.collection and p.url and p.scale == pytest.approx(1e-4) and p.nodata == 0
    assert p.asset_key("B04") == p.assets["B04"]
    # Loading by path gives the same profile.
    assert load_profile(CATALOG_DIR / f"{name}.yaml") == p


def test_profile_specifics():
    es = load_profile("earth-search-v1-l2a")
    assert (es.assets["B04"], es.assets["B8A"], es.assets["SCL"], es.offset_rule) == ("red", "nir08", "scl", "earthsearch-boa-flag")
    c1 = load_profile("earth-search-v1-c1-l2a")
    assert (c1.collection, c1.offset_rule) == ("sentinel-2-c1-l2a", "raster-bands")
    pc = load_profile("planetary-computer-l2a")
    assert (pc.assets["B04"], pc.signing, pc.offset_rule) == ("B04", "planetary-computer", "processing-baseline")
    demo = load_profile("local-demo")
    assert demo.is_local_demo and demo.demo_root and not pc.is_local_demo


def test_profiles_are_frozen():
    p = load_profile("earth-search-v1-l2a")
    with pytest.raises(Exception):
        p.url = "http://elsewhere"  # type: ignore[misc]


def test_unknown_catalog_lists_the_profiles():
    with pytest.raises(InputError, match=r"unknown catalog 'earth-search-v2'.*" + ", ".join(PROFILES) + r".*argument: catalog"):
        load_profile("earth-search-v2")


def test_unknown_band_in_profile_raises():
    with pytest.raises(InputError, match=r"band 'B13' is not offered by catalog 'earth-search-v1-l2a'.*argument: bands"):
        load_profile("earth-search-v1-l2a").asset_key("B13")


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: x\nurl: [unclosed\n", r"bad\.yaml is not valid YAML"),  # YAML syntax error
        ("- just\n- a list\n", r"bad\.yaml is invalid"),  # not a mapping
        ("name: x\nurl: http://a\ncollection: c\nassets: {B04: red}\n", r"(?s)bad\.yaml is invalid.*offset_rule"),
        ("name: x\nurl: http://a\ncollection: c\noffset_rule: guess\nassets: {B04: red}\n", r"(?s)bad\.yaml is invalid.*offset_rule"),
        ("name: x\nurl: http://a\ncollection: c\noffset_rule: raster-bands\nassets: {B04: red}\ncolour: blue\n",
         r"(?s)bad\.yaml is invalid.*colour"),
        ("name: x\nurl: http://a\ncollection: c\noffset_rule: raster-bands\nassets: {B4: red}\n",
         r"bad\.yaml maps unknown band names \['B4'\]"),
    ],
)
def test_invalid_profile_yaml(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_profile(path)

"""Secrets in a catalog profile (the URL's user info and query string, a header a user adds) reach no error message,
traceback, log line or output attribute: ``load_profile`` errors name fields, not values; ``CatalogProfile.public_url``
is the URL without them; the search logs and raises with the redacted URL (a real STAC API, rustac, and a dead port)."""
from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import pytest

from s2pipe.errors import CatalogUnreachableError, InputError
from s2pipe.search import search_items
from s2pipe.stac.catalog import load_profile
from s2pipe.stac.server import LocalStacServer, free_port

CANARY = "CANARYx9q2"
BASE = (Path(__file__).resolve().parents[1] / "catalogs" / "earth-search-v1-l2a.yaml").read_text()
SECRET_URL = f"https://robot:{CANARY}pw@stac.example.org/v1?token={CANARY}tok&sig={CANARY}sig"
PC_ITEMS = "planetary-computer/rustac_100-items_T13TDE_2024.json"
GOOD = dict(bbox=(-105.2, 40.0, -105.0, 40.2), start="2024-04-01", end="2024-04-30")


def _profile_text(**replace: str) -> str:
    text = BASE.replace("url: https://earth-search.aws.element84.com/v1", f"url: {SECRET_URL}")
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def _shown(exc: BaseException) -> str:
    """Everything a user may see of ``exc``: its message and its whole traceback, causes included."""
    return str(exc) + "".join(traceback.format_exception(exc))


BAD_PROFILES = {
    "a headers field": (_profile_text() + f"headers:\n  Authorization: Bearer {CANARY}hdr\n",
                        r"field 'headers': not a profile field: remove it"),
    "a bad offset_rule": (_profile_text(**{"offset_rule: earthsearch-boa-flag": "offset_rule: guess"}),
                          r"field 'offset_rule': Input should be"),
    "a url that is not text": (_profile_text(**{f"url: {SECRET_URL}": f"url:\n  - {SECRET_URL}"}),
                               r"field 'url': Input should be a valid string"),
    "a missing collection": (_profile_text(**{"collection: sentinel-2-l2a\n": ""}),
                             r"field 'collection': required: add it"),
    "a YAML syntax error": (_profile_text(**{f"url: {SECRET_URL}": f"url: {SECRET_URL}\n\tbad: {SECRET_URL}"}),
                            r"not valid YAML: .* at line \d+, column \d+"),
}


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_profile_errors_never_repeat_a_value(tmp_path, case):
    text, message = BAD_PROFILES[case]
    assert CANARY in text
    path = tmp_path / "secret.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert CANARY not in _shown(info.value) and "input_value" not in str(info.value)


def test_public_url_has_no_credentials(tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text(_profile_text())
    profile = load_profile(path)
    assert profile.url == SECRET_URL  # sent as given
    assert profile.public_url == "https://stac.example.org/v1"
    assert load_profile("earth-search-v1-l2a").public_url == "https://earth-search.aws.element84.com/v1"
    assert load_profile("local-demo").public_url == "local-demo"


@pytest.fixture(scope="module")
def pc_server(stac_items_dir):
    with LocalStacServer([stac_items_dir / PC_ITEMS]) as server:
        yield server


@pytest.fixture
def pc():
    return load_profile("planetary-computer-l2a").model_copy(update={"signing": "none"})


def _secret(url: str) -> str:
    host = url.split("://", 1)[1]
    return f"http://robot:{CANARY}pw@{host}/?token={CANARY}tok"


def test_search_logs_never_show_the_url_credentials(pc_server, pc, caplog):
    caplog.set_level(logging.DEBUG, logger="s2pipe")
    items = search_items(pc, **GOOD, url=_secret(pc_server.url), retries=0)
    assert items and f"searching {pc_server.url}/ collection" in caplog.text
    assert CANARY not in caplog.text
    assert CANARY not in json.dumps([it.to_dict(transform_hrefs=False) for it in items])
    # the profile's own url is searched the same way
    caplog.clear()
    assert search_items(pc.model_copy(update={"url": _secret(pc_server.url)}), **GOOD, retries=0)
    assert CANARY not in caplog.text and pc_server.url in caplog.text


def test_unreachable_catalog_errors_and_retry_lines_are_redacted(pc, caplog):
    caplog.set_level(logging.DEBUG, logger="s2pipe")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(CatalogUnreachableError, match=rf"STAC API {url}/ is unreachable after 2 attempts") as info:
        search_items(pc, **GOOD, url=_secret(url), retries=1, backoff=0.01)
    assert "attempt 2/2" in caplog.text and f"opening the catalog at {url}/ failed" in caplog.text
    assert "Connection refused" in str(info.value)  # the cause is still told, scrubbed
    assert CANARY not in caplog.text and CANARY not in _shown(info.value)


def test_a_bad_api_url_is_refused_without_repeating_it(pc):
    with pytest.raises(InputError, match=r"'ftp://host/x' must start with http") as info:
        search_items(pc, **GOOD, url=f"ftp://u:{CANARY}@host/x?token={CANARY}")
    assert CANARY not in _shown(info.value)

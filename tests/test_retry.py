"""The one retry policy (``s2pipe.runtime.retry``): counts, sleeps, the longest time to failure, and no layer
that multiplies the retries of another."""
from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from s2pipe.errors import CatalogUnreachableError, InputError
from s2pipe.runtime.retry import ASSET_RETRY, SEARCH_RETRY, RetryPolicy
from s2pipe.search import search_items
from s2pipe.stac.catalog import load_profile


def test_delays_and_longest_wait():
    p = RetryPolicy(retries=4, backoff=0.5, max_delay=1.5, jitter=0.2)
    assert p.attempts == 5
    assert [p.delay(k) for k in range(4)] == [0.5, 1.0, 1.5, 1.5]
    assert p.longest_wait == pytest.approx((0.5 + 1.0 + 1.5 + 1.5) * 1.2)
    assert SEARCH_RETRY.attempts == 4 and SEARCH_RETRY.longest_wait == pytest.approx(7 * 1.1)
    assert ASSET_RETRY.attempts == 3 and ASSET_RETRY.longest_wait == pytest.approx(1.5 * 1.1)


@pytest.mark.parametrize("kwargs, word", [({"retries": -1}, "retries"), ({"retries": True}, "retries"),
                                          ({"backoff": float("nan")}, "backoff"), ({"max_delay": -2}, "max_delay"),
                                          ({"jitter": 1.0}, "jitter")])
def test_bad_settings_are_input_errors(kwargs, word):
    with pytest.raises(InputError, match=word):
        RetryPolicy(**kwargs)


def test_call_retries_only_transient_failures_and_counts_its_attempts(monkeypatch, caplog):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    p = RetryPolicy(retries=3, backoff=1.0, jitter=0.0)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="s2pipe"):
        assert p.call(flaky, retry_on=lambda e: isinstance(e, ConnectionError), what="reading x") == "ok"
    assert len(calls) == 3 and slept == [1.0, 2.0]
    assert "reading x failed (ConnectionError); attempt 2/4" in caplog.text

    calls.clear()
    with pytest.raises(ValueError):  # not transient: no retry at all
        p.call(lambda: calls.append(1) or (_ for _ in ()).throw(ValueError("bad")), retry_on=lambda e: False, what="")
    assert len(calls) == 1

    calls.clear()
    with pytest.raises(RuntimeError, match="gave up after 4"):
        p.call(lambda: calls.append(1) or (_ for _ in ()).throw(ConnectionError("down")), retry_on=lambda e: True,
               what="", give_up=lambda exc, n: RuntimeError(f"gave up after {n}"))
    assert len(calls) == 4


@pytest.fixture
def slamming_server():
    """A TCP server on 127.0.0.1 that accepts each connection and closes it at once (a dead catalog that
    answers nothing): it counts the connections."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    seen = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            seen.append(time.monotonic())
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}", seen
    stop.set()
    t.join(timeout=2)
    srv.close()


def test_a_dead_catalog_fails_after_the_documented_attempts_within_the_longest_wait(slamming_server):
    url, seen = slamming_server
    t0 = time.monotonic()
    with pytest.raises(CatalogUnreachableError, match=rf"{url} is unreachable after {SEARCH_RETRY.attempts} attempts"):
        search_items(load_profile("earth-search-v1-c1-l2a"), bbox=(22.1, 45.2, 22.2, 45.3), start="2024-01-01",
                     end="2024-01-31", url=url, timeout=5)
    elapsed = time.monotonic() - t0
    assert len(seen) == SEARCH_RETRY.attempts  # one connection per attempt: nothing retried twice
    sleeps = sum(SEARCH_RETRY.delay(k) for k in range(SEARCH_RETRY.retries))
    assert sleeps * (1 - SEARCH_RETRY.jitter) - 0.1 <= elapsed <= SEARCH_RETRY.longest_wait + 3.0


def test_prefect_does_not_retry_on_top_of_the_library():
    from s2pipe.flows import regional_cube as rc

    tasks = [getattr(rc, n) for n in rc.__all__ if n.endswith("_task")]
    assert tasks and all(t.retries == 0 for t in tasks), {t.name: t.retries for t in tasks}

"""The one retry policy of s2pipe: which layer retries what, how often, and how long until it gives up.

=================  ==========================================  ====================  ==========================
layer              retried failures                            attempts (default)    sleeps after failure k
=================  ==========================================  ====================  ==========================
STAC search        connection errors, time-outs, broken pages   1 + 3 per call        1, 2, 4 s (± 10 %)
(``search_items``) HTTP 429 / 5xx (urllib3, per request,        1 + 3 per request     urllib3's backoff, and
                   honouring ``Retry-After``)                                         ``Retry-After``
asset check        any failure to open or read an asset's       1 + 3 per asset       0.5, 1, 2 s (± 10 %)
(``check_assets``) header (then its scene is left out); GDAL    (the profile's
                   retries each HTTP request 2 more times       ``read_retries``)
pixel reads        HTTP 429 / 5xx, time-outs, resets (GDAL,     1 + 3 per request     GDAL's, from 0.5 s
(GDAL /vsicurl)    per range request, ``http_gdal_options``)
pixel reads        anything else: a body cut short, a broken    1 + 3 per window      0.5, 1, 2 s (± 10 %)
(``build_cube``'s  connection, a stalled request (the file is
readers)           opened again, GDAL's cache of it dropped);
                   a 403 when hrefs are signed (a new token)
SAS tokens         connection errors, time-outs, 429 / 5xx      1 + 3 per token       1, 2, 4 s (± 10 %)
(``stac.signing``)
Prefect tasks      none: a task that fails with ``TransientError`` is not tried again, so retries never
                   multiply; a scheduled run is retried by its next run, which resumes the store
=================  ==========================================  ====================  ==========================

A window that still fails raises ``AssetReadError``; the flow then leaves its scene out and builds the cube
again without it, where the run owns the whole output (not ``strict``, not a resumed or appended store).

The pixel-read and asset-check counts, backoff and HTTP time-out come from the catalog profile
(``read_retries``, ``read_backoff``, ``http_timeout``); ``check_assets`` called on its own retries 1 + 2 times
(``ASSET_RETRY``). A read error that GDAL already retried (an HTTP status) is not read again by s2pipe, so a
range that keeps answering 503 costs 1 + 3 requests, not (1 + 3)².

So a dead catalog (nothing listening) fails after 4 attempts, within ``RetryPolicy.longest_wait`` = 7.7 s of sleep
plus 4 connect time-outs, with one :class:`~s2pipe.errors.CatalogUnreachableError` naming the URL and the
attempts made.
"""
from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from s2pipe.errors import InputError

__all__ = ["RetryPolicy", "SEARCH_RETRY", "ASSET_RETRY", "READ_RETRY", "HTTP_TIMEOUT", "http_gdal_options",
           "retryable_read_error"]

T = TypeVar("T")
log = logging.getLogger("s2pipe")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a call is retried after a transient failure, and how long it waits in between."""

    retries: int = 3
    """Extra attempts after the first (0: no retry)."""
    backoff: float = 1.0
    """Seconds slept after the first failure; it doubles after each further one (exponential backoff)."""
    max_delay: float = 30.0
    """Upper bound of one sleep, in seconds."""
    jitter: float = 0.1
    """Each sleep is scaled by a random factor in [1 - jitter, 1 + jitter], so that many workers that failed
    together do not retry together."""

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InputError(f"retries={self.retries!r} must be an int >= 0 (argument: retries)")
        for name in ("backoff", "max_delay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"{name}={v!r} must be a number of seconds >= 0 (argument: {name})")
        if not (isinstance(self.jitter, (int, float)) and 0 <= self.jitter < 1):
            raise InputError(f"jitter={self.jitter!r} must be a fraction in [0, 1) (argument: jitter)")

    @property
    def attempts(self) -> int:
        """Attempts in all: the first one and the retries."""
        return self.retries + 1

    def delay(self, k: int) -> float:
        """The nominal sleep (s) after failure ``k`` (0-based), before jitter."""
        return min(self.max_delay, self.backoff * 2**k)

    @property
    def longest_wait(self) -> float:
        """The most seconds a call sleeps before it gives up (every retry failed, largest jitter)."""
        return sum(self.delay(k) for k in range(self.retries)) * (1 + self.jitter)

    def call(self, fn: Callable[[], T], *, retry_on: Callable[[BaseException], bool], what: str | Callable[[], str],
             give_up: Callable[[BaseException, int], BaseException] | None = None,
             before_retry: Callable[[BaseException], None] | None = None) -> T:
        """``fn()``, retried while it raises an exception for which ``retry_on`` is true.

        Parameters
        ----------
        fn
            The call; it takes no argument.
        retry_on
            Whether an exception is transient (retried); any other exception propagates at once.
        what
            What is tried, for the log line of each retry ("opening the catalog at https://..."), or a function
            that says it (called only when a retry happens).
        give_up
            ``give_up(exc, attempts)`` -> the exception raised after the last failed attempt (default: ``exc``).
        before_retry
            ``before_retry(exc)`` is called after each failure that is retried, before the sleep (e.g. to reopen
            a connection).
        """
        for k in range(self.attempts):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - retry_on decides
                if not retry_on(exc):
                    raise
                if k == self.retries:
                    if give_up is None:
                        raise
                    raise give_up(exc, self.attempts) from exc
                if before_retry is not None:
                    before_retry(exc)
                self.sleep(k, what=what() if callable(what) else what, exc=exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def sleep(self, k: int, *, what: str = "", exc: BaseException | None = None) -> None:
        """Sleep after failure ``k`` (0-based), with jitter; logs the retry when ``what`` is given."""
        delay = self.delay(k) * (1 + self.jitter * (2 * random.random() - 1))
        if what:
            reason = f" ({type(exc).__name__})" if exc is not None else ""
            log.warning(f"{what} failed{reason}; attempt {k + 2}/{self.attempts} in {delay:.1f} s")
        time.sleep(delay)


SEARCH_RETRY = RetryPolicy(retries=3, backoff=1.0)
"""The STAC search's default: 1 + 3 attempts, sleeping 1, 2, 4 s."""

ASSET_RETRY = RetryPolicy(retries=2, backoff=0.5)
"""The asset check's default per asset: 1 + 2 attempts, sleeping 0.5, 1 s."""

READ_RETRY = RetryPolicy(retries=3, backoff=0.5)
"""The pixel reads' default per window (``cube.PlainReadRioReader``): 1 + 3 attempts, sleeping 0.5, 1, 2 s."""

HTTP_TIMEOUT = 30.0
"""Seconds GDAL waits for an HTTP answer (``GDAL_HTTP_TIMEOUT``) before the request counts as failed."""

_NOT_RETRIED = re.compile(r"HTTP response code: \d{3}|exactly 1 band|No such file or directory")
"""Read errors retried elsewhere (HTTP statuses: by GDAL, per request) or not worth a retry (a local file
missing, a multi-band asset)."""


def http_gdal_options(retry: RetryPolicy = READ_RETRY, *, timeout: float = HTTP_TIMEOUT) -> dict[str, str]:
    """GDAL configuration options that make each HTTP range request retry 429 / 5xx answers, time-outs and
    resets ``retry.retries`` times (GDAL's own backoff from ``retry.backoff`` seconds), and time out after
    ``timeout`` seconds (connecting: at most 10 s)."""
    return {
        "GDAL_HTTP_MAX_RETRY": str(retry.retries),
        "GDAL_HTTP_RETRY_DELAY": f"{retry.backoff:g}",
        "GDAL_HTTP_TIMEOUT": f"{max(1, math.ceil(timeout)):d}",
        "GDAL_HTTP_CONNECTTIMEOUT": f"{max(1, min(10, math.ceil(timeout))):d}",
    }


def retryable_read_error(exc: BaseException) -> bool:
    """Whether a failed open or read of a raster (as stackstac reports it) is worth another attempt: not when
    GDAL already retried an HTTP status, the file does not exist locally, or the asset has several bands."""
    text = f"{exc} {exc.__cause__!r}"
    return not _NOT_RETRIED.search(text)

"""The one retry policy of s2pipe: which layer retries what, how often, and how long until it gives up.

=================  ==========================================  ====================  ==========================
layer              retried failures                            attempts (default)    sleeps after failure k
=================  ==========================================  ====================  ==========================
STAC search        connection errors, time-outs, broken pages   1 + 3 per call        1, 2, 4 s (± 10 %)
(``search_items``) HTTP 429 / 5xx (urllib3, per request,        1 + 3 per request     urllib3's backoff, and
                   honouring ``Retry-After``)                                         ``Retry-After``
asset check        any failure to open or read an asset's       1 + 2 per asset       0.5, 1 s (± 10 %)
(``check_assets``) header (then its scene is left out)
Prefect tasks      none: a task that fails with ``TransientError`` is not tried again, so retries never
                   multiply; a scheduled run is retried by its next run, which resumes the store
=================  ==========================================  ====================  ==========================

So a dead catalog (nothing listening) fails after 4 attempts, within ``RetryPolicy.longest_wait`` = 7.7 s of sleep
plus 4 connect time-outs, with one :class:`~s2pipe.errors.CatalogUnreachableError` naming the URL and the
attempts made.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from s2pipe.errors import InputError

__all__ = ["RetryPolicy", "SEARCH_RETRY", "ASSET_RETRY"]

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

    def call(self, fn: Callable[[], T], *, retry_on: Callable[[BaseException], bool], what: str,
             give_up: Callable[[BaseException, int], BaseException] | None = None) -> T:
        """``fn()``, retried while it raises an exception for which ``retry_on`` is true.

        Parameters
        ----------
        fn
            The call; it takes no argument.
        retry_on
            Whether an exception is transient (retried); any other exception propagates at once.
        what
            What is tried, for the log line of each retry ("opening the catalog at https://...").
        give_up
            ``give_up(exc, attempts)`` -> the exception raised after the last failed attempt (default: ``exc``).
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
                self.sleep(k, what=what, exc=exc)
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

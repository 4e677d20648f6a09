"""Progress lines for long work (search, demo generation, statistics, region writes).

A ``ProgressLine`` is a ``progress(done, total)`` callback: it logs throttled lines such as
``writing cube: 12/48 regions (25%), 8.1 s elapsed, ~24 s left`` through a logger, so the same
lines appear in a terminal, in Prefect's run logs and in a deployment's worker output.
"""
from __future__ import annotations

import logging
import time

__all__ = ["ProgressLine"]


class ProgressLine:
    """Callable ``(done, total)`` that logs at most every ``every`` seconds (always the first and last call)."""

    def __init__(self, label: str, *, unit: str = "", logger: logging.Logger | logging.LoggerAdapter | None = None, every: float = 2.0):
        self.label = label
        self.unit = unit
        self.logger = logger or logging.getLogger("s2pipe")
        self.every = every
        self._t0 = time.monotonic()
        self._last = -1e9

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done not in (0, total) and now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self._t0
        pct = 100.0 * done / total if total else 100.0
        eta = f", ~{elapsed / done * (total - done):.0f} s left" if 0 < done < total else ""
        unit = f" {self.unit}" if self.unit else ""
        self.logger.info(f"{self.label}: {done}/{total}{unit} ({pct:.0f}%), {elapsed:.1f} s elapsed{eta}")

"""Asset hrefs signed just before they are opened: SAS tokens for Azure Blob Storage (Planetary Computer).

A SAS token lasts about an hour, less than a large run. Hrefs signed once, at search time, go stale in the
middle of the cube read. So each reader signs its href again when it opens the file (``cube.PlainReadRioReader``),
from a token cache in each process that renews a token ``renew_before`` seconds before it expires. A read
answered 403 (a token revoked or expired early) drops the cached token, signs again and reads again.

The token service is Planetary Computer's (``GET {token_url}/{account}/{container}`` ->
``{"msft:expiry": ISO time, "token": "se=...&sig=..."}``, the subscription key from ``PC_SDK_SUBSCRIPTION_KEY``);
``synthetic.faulty_server.FaultyCogServer`` serves the same API on 127.0.0.1 for the tests. Tokens are query
strings: ``stac.assets.redact_href`` removes them from every log line, error and attribute.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from s2pipe.errors import SigningError
from s2pipe.runtime.retry import SEARCH_RETRY, RetryPolicy

__all__ = ["PC_TOKEN_URL", "HrefSigner", "forget_tokens", "redact_library_logs", "is_forbidden"]

PC_TOKEN_URL = "https://planetarycomputer.microsoft.com/api/sas/v1/token"
"""Planetary Computer's SAS token service (``PC_SDK_SAS_URL`` overrides it, as in the ``planetary_computer``
package)."""

_TOKENS: dict[str, tuple[str, float, float]] = {}
"""Token request URL -> (token, expiry, time fetched) as Unix times, for this process."""
_LOCK = threading.Lock()


class _RedactingFilter(logging.Filter):
    """Rewrites a log record whose message holds a URL with user info or a query string (a token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from s2pipe.stac.assets import redact_href

        msg = record.getMessage()
        clean = redact_href(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


LIBRARY_LOGGERS = ("rasterio", "rasterio._env", "rasterio._base", "rasterio._io", "rasterio.env",
                   "urllib3.connectionpool", "pystac_client.stac_api_io")
"""Loggers of the libraries below s2pipe that may write a signed href: GDAL's messages through rasterio
("HTTP error code: 429 - https://...?se=...&sig=..."), urllib3's and pystac-client's request lines."""


def redact_library_logs(names: tuple[str, ...] = LIBRARY_LOGGERS) -> None:
    """Make the loggers ``names`` redact URLs (``stac.assets.redact_href``) in every record (idempotent): a
    token or password in a signed href never reaches a log. ``s2pipe.cube`` calls it on import, so each Dask
    worker that reads pixels does too."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())


def forget_tokens() -> None:
    """Empty this process's token cache."""
    with _LOCK:
        _TOKENS.clear()


@dataclass(frozen=True)
class HrefSigner:
    """Signs the hrefs of some hosts with a SAS token from a token service, renewing tokens before they expire.

    Picklable, so Dask workers get it with the readers; each process keeps its own token cache.
    """

    token_url: str | None = None
    """The token service (``GET {token_url}/{account}/{container}``); None: ``PC_SDK_SAS_URL``, else
    ``PC_TOKEN_URL``."""
    hosts: tuple[str, ...] = (".blob.core.windows.net",)
    """Host names (``netloc``) ending with one of these are signed; other hrefs are left as they are."""
    renew_before: float = 300.0
    """Seconds before its expiry at which a cached token is replaced by a new one (at most half its lifetime:
    a token that lives 2 min is renewed after 1)."""
    retry: RetryPolicy = SEARCH_RETRY
    """How a failed token request (connection error, time-out, HTTP 429 / 5xx) is retried."""
    timeout: float = 30.0
    """Seconds a token request may take."""

    def applies(self, href: str) -> bool:
        """Whether ``href`` is one this signer signs."""
        parts = urlsplit(str(href))
        return parts.scheme in ("http", "https") and parts.netloc.endswith(self.hosts)

    def sign(self, href: str) -> str:
        """``href`` with a valid token as its query string (any earlier token replaced); other hrefs unchanged.

        Raises
        ------
        SigningError
            The token service could not be reached after the retries, or answered no token.
        """
        if not self.applies(href):
            return href
        parts = urlsplit(href)
        return urlunsplit(parts._replace(query=self._token(self._request_url(parts)), fragment=""))

    def renew(self, href: str) -> None:
        """Drop the cached token for ``href``'s container (the file answered 403): the next ``sign`` asks for a
        new one."""
        if self.applies(href):
            with _LOCK:
                _TOKENS.pop(self._request_url(urlsplit(href)), None)

    def _request_url(self, parts) -> str:
        base = (self.token_url or os.environ.get("PC_SDK_SAS_URL") or PC_TOKEN_URL).rstrip("/")
        account = parts.hostname.split(".", 1)[0] if parts.hostname else ""
        container = parts.path.lstrip("/").split("/", 1)[0]
        return f"{base}/{account}/{container}"

    def _token(self, url: str) -> str:
        with _LOCK:
            cached = _TOKENS.get(url)
        if cached is not None:
            token, expiry, fetched = cached
            if expiry - time.time() > min(self.renew_before, (expiry - fetched) / 2):
                return token
        fetched = time.time()
        token, expiry = self.retry.call(lambda: self._fetch(url), retry_on=_transient, what="requesting a SAS token",
                                        give_up=lambda exc, n: SigningError(
                                            f"could not get a SAS token from {url} after {n} attempts ({exc}); check "
                                            "the network, or set PC_SDK_SUBSCRIPTION_KEY / the profile's token_url"))
        with _LOCK:
            _TOKENS[url] = (token, expiry, fetched)
        return token

    def _fetch(self, url: str) -> tuple[str, float]:
        headers = {"Accept": "application/json"}
        key = os.environ.get("PC_SDK_SUBSCRIPTION_KEY")
        if key:
            headers["Ocp-Apim-Subscription-Key"] = key
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout) as r:
            body = json.loads(r.read(64 * 1024))
        try:
            token = str(body["token"])
            expiry = dt.datetime.fromisoformat(str(body["msft:expiry"]).replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError) as exc:
            raise SigningError(f"the token service {url} answered no token and expiry ({exc!r})") from None
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=dt.timezone.utc)
        return token, expiry.timestamp()


_FORBIDDEN = re.compile(r"HTTP (?:response code: )?403\b")


def is_forbidden(exc: BaseException) -> bool:
    """Whether opening or reading a file failed with HTTP 403 (a token that expired or was revoked), as GDAL
    ("HTTP response code: 403") or the asset check's own range request ("HTTP 403 Forbidden") reports it."""
    return bool(_FORBIDDEN.search(f"{exc} {exc.__cause__!r}"))


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError))

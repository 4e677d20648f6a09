"""Asset check: find scenes whose COGs are missing, truncated or not valid COGs before the cube reads them.

:func:`check_assets` opens every (item, band) asset, reading headers and metadata only (never pixels, except one
block when the file size cannot be known), and checks that

- the href answers (local file exists; HTTP 2xx; fsspec URLs exist) and starts with a TIFF header;
- the full-resolution image is tiled (TIFF TileWidth/TileOffsets tags; a striped or untiled TIFF is not a COG);
- GDAL opens it as a GeoTIFF whose shape, transform and CRS agree with the asset's ``proj:shape`` and
  ``proj:transform`` and the ``proj:epsg`` of the asset or item, where the item states them;
- it is not truncated: every block of every band, and of every overview, lies inside the file
  (GDAL's ``TIFF`` metadata items ``BLOCK_OFFSET_x_y``/``BLOCK_SIZE_x_y`` against the file size).

A failed check is retried ``retries`` times with exponential backoff (sleep ``backoff * 2**k`` s ± 10 % after failure
k, ``s2pipe.runtime.retry.RetryPolicy``),
for every kind of failure: HTTP 5xx, time-outs and files still being uploaded may pass, and retrying a definite
failure only costs a few header reads. An item any of whose assets fails is left out; :class:`AssetCheck`
records every failed asset (one entry per bad asset, so a scene missing all its files lists each band) for the
output's provenance attributes and the run summary. ``strict=True`` raises :class:`~s2pipe.errors.AssetError` on
the first failure instead. Hrefs and reasons never carry credentials: :func:`redact_href` strips query strings
(signed URLs, SAS tokens) and ``user:password@``; nor do they carry any byte of a file.

Before anything is opened, :func:`confine_href` decides whether s2pipe may open an href at all: remote hrefs that
GDAL reaches through a network file system (``http(s)://``, ``s3://``, ``gs://``, ``az://``, ``/vsicurl/`` of an
HTTP URL), and local files that name their file directly (no ``..`` segment) and lie, symlinks and all resolved,
under the item's allowed folders: ``local_roots`` if given, else the ``s2pipe:local_roots`` that
``stac.items.normalize_item`` stamps from the catalog profile (``CatalogProfile.asset_roots``: the local demo's
folder; none for a remote STAC API). Items without that property (built in-process, e.g.
``synthetic.scenes.make_scenes``) are the caller's own: their local paths are not confined to a folder. Anything
else fails as :class:`HrefNotAllowedError` with 0 attempts, unread. :func:`check_hrefs` is the same guard for the
pixel read (``cube.build_cube``).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import math
import os
import re
import stat
import struct
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac

from s2pipe.errors import AssetError, InputError, NoScenesError
from s2pipe.runtime.objectstore import forget_cached_ranges, gdal_vsi_path
from s2pipe.runtime.retry import ASSET_RETRY, RetryPolicy, http_gdal_options

ASSET_HTTP_RETRY = RetryPolicy(retries=2, backoff=0.5)
"""GDAL's retries of each HTTP request of the asset check (429 / 5xx, time-outs, resets)."""
from s2pipe.stac.items import LOCAL_ROOTS, href_scheme, item_dict
from s2pipe.stac.signing import is_forbidden

__all__ = [
    "HEAD_BYTES", "AssetCheckFailure", "HrefNotAllowedError", "HTTPStatusError", "NotATiffError", "NotTiledError",
    "GridMismatchError", "TruncatedAssetError", "AssetCheck", "redact_href", "confine_href", "item_local_roots",
    "check_hrefs", "check_assets", "check_asset",
]

HEAD_BYTES = 16384
"""Bytes read from the start of each file to parse the TIFF header and first IFD (one request over HTTP)."""

_FIX = "fix or remove the asset, or run without strict (strict=False) to leave the scene out"
_REASON_CHARS = 300


class AssetCheckFailure(Exception):
    """Base of the reasons an asset fails the check (they appear by name in ``AssetCheck.dropped`` reasons)."""


class HrefNotAllowedError(AssetCheckFailure):
    """The href names something s2pipe does not open (another scheme, a local file outside the allowed folders,
    a ``..`` path, a device): refused without reading any of it (:func:`confine_href`)."""


class HTTPStatusError(AssetCheckFailure):
    """The server answered an HTTP error status (4xx/5xx)."""


class NotATiffError(AssetCheckFailure):
    """The file does not start with a TIFF/BigTIFF header, or GDAL reads it with another driver."""


class NotTiledError(AssetCheckFailure):
    """The full-resolution image is striped/untiled: not a Cloud-Optimized GeoTIFF."""


class GridMismatchError(AssetCheckFailure):
    """Shape, transform or CRS of the file disagree with the item's ``proj:*`` metadata."""


class TruncatedAssetError(AssetCheckFailure):
    """A block (tile) of the file lies beyond its end: the file was cut short."""


@dataclass(frozen=True)
class AssetCheck:
    """Outcome of :func:`check_assets`.

    ``items``: the input items (same objects) whose every asset passed, in input order.
    ``dropped``: one dict per failed asset, in input order (item, then band): ``{"id", "asset", "href"
    (redacted), "reason" ("ExceptionType: message", redacted), "attempts"}``.
    ``retried``: the same kind of dict for assets that passed only after a retry (``reason`` of the last failure).
    ``n_items``/``n_assets``: how many items and assets were checked.
    """

    items: list = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    retried: list[dict[str, Any]] = field(default_factory=list)
    n_items: int = 0
    n_assets: int = 0

    @property
    def dropped_ids(self) -> list[str]:
        """Ids of the items left out, unique, in input order."""
        return list(dict.fromkeys(d["id"] for d in self.dropped))

    @property
    def ok(self) -> bool:
        """True when no asset failed."""
        return not self.dropped

    def provenance(self) -> dict[str, Any]:
        """Attributes for the output cube: ``dropped_items`` (list of ids) and ``dropped_assets`` (a JSON string
        of ``dropped``, so that Zarr and NetCDF both store it)."""
        return {"dropped_items": self.dropped_ids, "dropped_assets": json.dumps(self.dropped)}

    def summary(self) -> dict[str, Any]:
        """JSON-ready dict for the run summary: counts, ``dropped`` and ``retried`` entries."""
        return {
            "items_checked": self.n_items,
            "assets_checked": self.n_assets,
            "items_kept": len(self.items),
            "items_dropped": len(self.dropped_ids),
            "dropped": [dict(d) for d in self.dropped],
            "retried": [dict(d) for d in self.retried],
        }

    def leave_out(self, href: str, *, reason: str, attempts: int | None = None) -> str | None:
        """Leave out the kept item with an asset at ``href`` (its pixels could not be read after the check), as
        if it had failed the check: returns its id, or None when no kept item has that href."""
        for i, it in enumerate(self.items):
            plain = item_dict(it, caller="AssetCheck.leave_out")
            for key, asset in plain["assets"].items():
                if asset.get("href") == href:
                    del self.items[i]
                    self.dropped.append({"id": plain["id"], "asset": key, "href": redact_href(href),
                                         "reason": redact_href(reason)[:500], "attempts": attempts})
                    return plain["id"]
        return None


# ------------------------------------------------------------------------------------------------ public


_URL_RE = re.compile(
    # A scheme is at most 32 characters: unbounded, the search backtracked over every suffix of a long word
    # (quadratic: a 40k-character value took 0.8 s, a 5 MB one hours). Bounded, each start costs at most 32 steps.
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{0,31}://)(?P<user>[^/\s@?#'\"<>]*@)?"
    r"(?P<rest>[^\s?#'\"<>]*)(?P<query>[?#][^\s'\"<>]*)?"
)


def redact_href(href: str | os.PathLike) -> str:
    """``href`` (or any text holding URLs) without query strings, fragments and ``user:password@``.

    ``https://u:p@host/a.tif?X-Amz-Signature=...`` -> ``https://host/a.tif``; a query string after a bare name
    (GDAL writes ``B04.tif?se=...&sig=...``) goes too; local paths are returned unchanged. Linear time.
    """
    return _QUERY_RE.sub("", _URL_RE.sub(lambda m: m["scheme"] + m["rest"], os.fspath(href)))


_QUERY_RE = re.compile(r"\?[A-Za-z0-9_.\-]{1,64}=[^\s'\"<>]*")
"""A ``?key=value...`` query string not caught as part of a URL (no scheme before it)."""

_GDAL_NETWORK_PREFIXES = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/")
"""GDAL virtual file systems that reach the network only (``/vsicurl/`` then needs an http(s) URL: curl also
reads ``file://``)."""
_FIX_LOCAL = ("add its folder to the catalog profile's local_roots (or pass local_roots=...) if the file is yours, "
              "or fix the catalog")


def confine_href(href: str | os.PathLike, *, local_roots: Sequence[str | os.PathLike] | None) -> None:
    """Refuse ``href`` unless s2pipe may open it; nothing of it is read.

    Parameters
    ----------
    href
        An asset href as the item gives it (normalized items: made absolute against the item's self link).
    local_roots
        Folders local files must lie in once resolved (``Path.resolve``: symlinks and ``..`` cannot lead out);
        an empty sequence allows no local file; None does not confine local paths to a folder (the caller's own
        items).

    Raises
    ------
    HrefNotAllowedError
        ``href`` is empty or holds control characters; has a scheme other than ``file``, ``http(s)``, ``s3``,
        ``gs``, ``az`` (``s2pipe.runtime.objectstore.gdal_vsi_path``); is a GDAL ``/vsi`` path other than
        ``/vsicurl/`` of an http(s) URL, ``/vsis3/``, ``/vsigs/`` or ``/vsiaz/``; is a ``file://`` URL of another
        host; is a local path with a ``..`` segment (it may name another scene's file), outside ``local_roots``,
        or naming a directory, device or pipe. The message names the href (redacted), never a byte of the file.
    """
    text = os.fspath(href) if isinstance(href, os.PathLike) else href
    if not isinstance(text, str) or not text.strip():
        raise HrefNotAllowedError(f"asset href {text!r:.80} is empty or not text; give a URL or a file path")
    shown = redact_href(text)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise HrefNotAllowedError(f"asset href {shown!r:.200} holds control characters; fix the catalog")
    if text.startswith("/vsi"):
        inner = next((text[len(p):] for p in _GDAL_NETWORK_PREFIXES if text.startswith(p)), None)
        if inner is None or (text.startswith("/vsicurl/") and href_scheme(inner) not in ("http", "https")):
            raise HrefNotAllowedError(
                f"GDAL path {shown!r:.200} is not opened: of GDAL's virtual file systems only /vsicurl/ of an "
                "http(s) URL, /vsis3/, /vsigs/ and /vsiaz/ are; name the file by its URL")
        return
    scheme = href_scheme(text)
    if scheme and scheme != "file":
        if gdal_vsi_path(text) is None:
            raise HrefNotAllowedError(
                f"asset href {shown!r:.200}: scheme {scheme!r} is not opened; asset hrefs are http(s)://, s3://, "
                "gs://, az:// URLs or local files under the catalog's local_roots")
        return
    path = text
    if scheme == "file":
        parts = urllib.parse.urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise HrefNotAllowedError(f"asset href {shown!r:.200} names a file on host {parts.netloc!r}; "
                                      "serve it over http(s) or copy it into the catalog's folder")
        path = urllib.parse.unquote(parts.path)
    if ".." in Path(path).parts:
        raise HrefNotAllowedError(f"local asset href {shown!r:.200} climbs out of its folder with '..' (it may "
                                  "name another scene's file, or any file of the machine); name the file by its "
                                  "own path")
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise HrefNotAllowedError(f"local asset href {shown!r:.200} cannot be resolved (a symlink loop?); "
                                  "fix the file or the catalog") from None
    if local_roots is not None:
        roots = [Path(r) for r in local_roots]
        if not any(resolved.is_relative_to(r) for r in roots):
            where = f" (resolved: {str(resolved)!r:.120})" if str(resolved) != path else ""
            allowed = ", ".join(str(r) for r in roots) or "none: the catalog's assets are remote"
            raise HrefNotAllowedError(f"local asset href {shown!r:.200}{where} lies outside the folders the "
                                      f"catalog may name ({allowed:.200}); {_FIX_LOCAL}")
    try:
        mode = os.stat(resolved).st_mode  # metadata only; a missing file is for the check itself to report
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise HrefNotAllowedError(f"local asset href {shown!r:.200} is not a regular file (a directory, device or "
                                  "pipe); fix the catalog")


def item_local_roots(item: pystac.Item | dict[str, Any], local_roots: Sequence[str | os.PathLike] | None = None
                     ) -> tuple[str, ...] | None:
    """The folders ``item``'s local asset files must lie in, resolved: ``local_roots`` if given, else the item's
    ``properties["s2pipe:local_roots"]`` (stamped by ``normalize_item`` from the profile; a malformed value allows
    no local file), else None (an item built in-process: its local paths are not confined to a folder)."""
    if local_roots is not None:
        return _resolved_roots(local_roots)
    stamped = (item_dict(item, caller="item_local_roots").get("properties") or {}).get(LOCAL_ROOTS)
    if stamped is None:
        return None
    if not isinstance(stamped, (list, tuple)) or not all(isinstance(r, str) and r for r in stamped):
        return ()
    return _resolved_roots(stamped)


def _resolved_roots(roots: Sequence[str | os.PathLike] | str | os.PathLike) -> tuple[str, ...]:
    """Folders as absolute paths with symlinks resolved (relative ones: from the working directory)."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    return tuple(str(Path(os.fspath(r)).expanduser().resolve()) for r in roots)


def _refusal(href: str, roots: tuple[str, ...] | None) -> dict[str, Any] | None:
    """The result of an href :func:`confine_href` refuses (0 attempts), None when it may be opened."""
    try:
        confine_href(href, local_roots=roots)
    except HrefNotAllowedError as exc:
        return {"ok": False, "attempts": 0, "href": href, "reason": _reason(exc)}
    return None


def check_hrefs(
    items: Iterable[pystac.Item | dict[str, Any]],
    bands: Sequence[str],
    *,
    local_roots: Sequence[str | os.PathLike] | None = None,
) -> None:
    """Raise :class:`AssetError` for the first ``bands`` asset href of ``items`` that :func:`confine_href`
    refuses: the pixel read's guard (``build_cube``), which reads every asset it is given.

    ``local_roots``: as in :func:`check_assets` (None: each item's own ``s2pipe:local_roots``). Assets missing from
    an item are not this function's to report. The error names the item, the asset and the href (redacted).
    """
    if isinstance(bands, str):
        bands = [bands]
    for it in items:
        item = item_dict(it, caller="check_hrefs")
        roots = item_local_roots(item, local_roots)
        for band in bands:
            asset = (item.get("assets") or {}).get(band) or {}
            if asset.get("href"):
                res = _refusal(str(asset["href"]), roots)
                if res is not None:
                    _raise_strict(item, band, res)


def check_assets(
    items: Iterable[pystac.Item | dict[str, Any]],
    bands: Sequence[str],
    *,
    retries: int = ASSET_RETRY.retries,
    backoff: float = ASSET_RETRY.backoff,
    strict: bool = False,
    client: Any = None,
    timeout: float = 30.0,
    max_workers: int = 8,
    local_roots: Sequence[str | os.PathLike] | None = None,
    signer: Any = None,
) -> AssetCheck:
    """Check every ``bands`` asset of every item and leave out the items with a bad asset.

    ``items``: STAC item dicts or ``pystac.Item`` (normalized items: asset ``proj:shape``/``proj:transform``,
    ``proj:epsg`` on the asset or item). ``bands``: asset keys to check (spectral bands and ``"SCL"``).
    ``retries``: extra attempts per asset after a failure; ``backoff``: seconds, the sleep after failure k is
    ``backoff * 2**k``. ``strict``: raise :class:`AssetError` on the first failed asset instead of dropping.
    ``client``: a ``distributed.Client``: the checks run as tasks on its cluster; else in a local thread pool
    of ``max_workers`` threads. ``timeout``: seconds per HTTP request. ``local_roots``: the folders local asset
    files must lie in (an empty sequence: no local file); None (default): each item's ``s2pipe:local_roots``
    (``normalize_item`` stamps the profile's ``asset_roots``), and no folder confinement for items without it.
    ``signer``: an ``s2pipe.stac.signing.HrefSigner`` that signs each href afresh before each attempt (a 403
    drops its token); None: hrefs are opened as they are.

    An item lacking a ``bands`` key, or whose href :func:`confine_href` refuses (``HrefNotAllowedError``), fails
    that asset without retry and without a read (attempts 0). Empty ``items`` give an empty result. Raises
    :class:`NoScenesError` when every item fails, naming a few reasons.
    """
    if isinstance(bands, str):
        bands = [bands]
    bands = list(dict.fromkeys(bands))
    if not bands:
        raise InputError("check_assets: bands is empty; pass the asset keys to check, e.g. ['B02', ..., 'SCL']")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise InputError(f"check_assets: retries={retries!r} must be an int >= 0 (argument: retries)")
    if not (isinstance(backoff, (int, float)) and math.isfinite(backoff) and backoff >= 0):
        raise InputError(f"check_assets: backoff={backoff!r} must be a number of seconds >= 0 (argument: backoff)")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise InputError(f"check_assets: timeout={timeout!r} must be a positive number of seconds (argument: timeout)")

    originals = list(items)
    plain = [item_dict(it, caller="check_assets") for it in originals]
    # one task per asset; results[i][band] = result dict
    tasks: list[tuple[int, str, dict[str, Any]]] = []
    results: dict[tuple[int, str], dict[str, Any]] = {}
    for i, item in enumerate(plain):
        roots = item_local_roots(item, local_roots)
        for band in bands:
            asset = (item.get("assets") or {}).get(band)
            if not asset or not asset.get("href"):
                offered = sorted(item.get("assets") or {})
                res = {"ok": False, "attempts": 0, "href": "",
                       "reason": f"KeyError: the item has no asset {band!r} with an href (it offers {offered})"}
                if strict:
                    _raise_strict(item, band, res)
                results[(i, band)] = res
                continue
            refused = _refusal(str(asset["href"]), roots)
            if refused is not None:  # never opened, never retried
                if strict:
                    _raise_strict(item, band, refused)
                results[(i, band)] = refused
                continue
            tasks.append((i, band, {"href": str(asset["href"]), "expect": _expected(item, asset)}))

    def record(task: tuple[int, str, dict[str, Any]], res: dict[str, Any]) -> None:
        i, band, spec = task
        res = dict(res, href=spec["href"])
        if strict and not res["ok"]:
            _raise_strict(plain[i], band, res)
        results[(i, band)] = res

    options = {"retries": retries, "backoff": float(backoff), "timeout": float(timeout), "signer": signer}
    if tasks and client is not None:
        _run_on_client(client, tasks, options, record)
    elif tasks:
        _run_in_threads(tasks, options, record, max_workers=max(1, int(max_workers)))

    kept, dropped, retried = [], [], []
    for i, (orig, item) in enumerate(zip(originals, plain)):
        bad = False
        for band in bands:
            res = results[(i, band)]
            entry = {"id": str(item.get("id")), "asset": band, "href": redact_href(res["href"]),
                     "reason": res["reason"], "attempts": res["attempts"]}
            if not res["ok"]:
                bad = True
                dropped.append(entry)
            elif res["attempts"] > 1:
                retried.append(entry)
        if not bad:
            kept.append(orig)
    check = AssetCheck(items=kept, dropped=dropped, retried=retried, n_items=len(plain),
                       n_assets=len(plain) * len(bands))
    if plain and not kept:
        shown = "; ".join(f"{d['id']}/{d['asset']} ({d['href']}): {d['reason']}" for d in dropped[:3])
        more = f"; and {len(dropped) - 3} more" if len(dropped) > 3 else ""
        raise NoScenesError(
            f"all {len(plain)} scenes failed the asset check ({len(dropped)} bad assets after {retries} retries): "
            f"{shown}{more}; check that the asset files exist and are complete COGs, the network and the "
            "credentials (signed URLs expire: search again), or widen the search to find other scenes"
        )
    return check


# ------------------------------------------------------------------------------------------- execution


def _run_in_threads(tasks, options, record, *, max_workers: int) -> None:
    pool = cf.ThreadPoolExecutor(max_workers=min(max_workers, len(tasks)), thread_name_prefix="s2pipe-assets")
    try:
        futures = {pool.submit(check_asset, task[2]["href"], expect=task[2]["expect"], **options): task
                   for task in tasks}
        for fut in cf.as_completed(futures):
            record(futures[fut], fut.result())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _run_on_client(client, tasks, options, record) -> None:
    from distributed import as_completed

    specs = [(spec["href"], spec["expect"], options) for _, _, spec in tasks]
    futures = client.map(_check_asset_task, specs, pure=False)
    index = {f.key: task for f, task in zip(futures, tasks)}
    try:
        for fut in as_completed(futures):
            record(index[fut.key], fut.result())
    finally:
        client.cancel(futures)


def _check_asset_task(spec: tuple[str, dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    href, expect, options = spec
    return check_asset(href, expect=expect, **options)


def _raise_strict(item: dict[str, Any], band: str, res: dict[str, Any]) -> None:
    href = redact_href(res.get("href") or "")
    how = f"after {res['attempts']} attempt(s)" if res["attempts"] else "without being opened"
    err = AssetError(
        f"asset {band!r} of item {item.get('id')!r} ({href or 'no href'}) failed the asset check {how}: "
        f"{res['reason']}; {_FIX}"
    )
    err.item_id, err.asset, err.href, err.reason, err.attempts = (
        str(item.get("id")), band, href, res["reason"], res["attempts"])
    raise err


# --------------------------------------------------------------------------------------- one asset


def check_asset(
    href: str, *, expect: dict[str, Any] | None = None, retries: int = ASSET_RETRY.retries,
    backoff: float = ASSET_RETRY.backoff, timeout: float = 30.0,
    local_roots: Sequence[str | os.PathLike] | None = None, signer: Any = None,
) -> dict[str, Any]:
    """Check one asset with retries: ``{"ok": bool, "attempts": n, "reason": str | None}``.

    ``expect``: ``{"shape": (rows, cols) | None, "transform": 6 floats | None, "epsg": int | None}``.
    ``reason`` is the redacted ``"ExceptionType: message"`` of the last failure (None if the first try passed).
    ``local_roots``: see :func:`confine_href`; an href it refuses gives attempts 0, unread. ``signer``: see
    :func:`check_assets`.
    """
    refused = _refusal(str(href), _resolved_roots(local_roots) if local_roots is not None else None)
    if refused is not None:
        return {k: refused[k] for k in ("ok", "attempts", "reason")}
    policy = RetryPolicy(retries=retries, backoff=backoff)
    reason = None
    for k in range(policy.attempts):
        url = href
        try:
            url = signer.sign(href) if signer is not None else href
            _check_once(url, expect or {}, timeout)
            return {"ok": True, "attempts": k + 1, "reason": reason}
        except Exception as exc:  # noqa: BLE001 - every failure is a reason to retry, then to drop the scene
            reason = _reason(exc)
            if signer is not None and is_forbidden(exc):
                signer.renew(href)  # a token expired or revoked: the next attempt asks for a new one
        if k < policy.retries:
            forget_cached_ranges(url)  # GDAL keeps a body cut short as if whole: download it again
            policy.sleep(k)
    return {"ok": False, "attempts": policy.attempts, "reason": reason}


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or repr(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "previous exception" in text:  # rasterio: "Read failed. See previous exception"
        text = f"{text} ({type(cause).__name__}: {' '.join(str(cause).split())})"
    text = redact_href(f"{type(exc).__name__}: {text}")
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def _check_once(href: str, expect: dict[str, Any], timeout: float) -> None:
    import rasterio

    size, reader, head = _probe(href, timeout)
    tiled = _tiff_is_tiled(head, reader) if head is not None else None
    if tiled is False:
        raise NotTiledError("the full-resolution image is stored in strips, not tiles: not a Cloud-Optimized GeoTIFF")
    env = dict(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", **http_gdal_options(ASSET_HTTP_RETRY, timeout=timeout))
    with rasterio.Env(**env):
        with rasterio.open(href) as src:
            if src.driver != "GTiff":
                raise NotATiffError(f"GDAL reads it as {src.driver}, not as a GeoTIFF")
            if tiled is None and not _blocks_look_tiled(src):
                raise NotTiledError(f"blocks of {src.block_shapes[0]} px on a {src.height}x{src.width} image: "
                                    "striped, not a Cloud-Optimized GeoTIFF")
            _check_grid(src, expect)
            n_overviews = len(src.overviews(1)) if src.count else 0
            _check_blocks(src, size, "full resolution")
        for level in range(n_overviews):
            with rasterio.open(href, overview_level=level) as ovr:
                _check_blocks(ovr, size, f"overview {level}")


def _check_grid(src, expect: dict[str, Any]) -> None:
    shape = expect.get("shape")
    if shape is not None and (src.height, src.width) != tuple(int(v) for v in shape):
        raise GridMismatchError(f"the file is {src.height}x{src.width} px but proj:shape says {list(shape)}")
    tr = expect.get("transform")
    if tr is not None:
        got = list(src.transform)[:6]
        tol = 1e-3 * max(abs(got[0]), abs(got[4]), 1e-12)
        if any(abs(a - float(b)) > tol for a, b in zip(got, tr)):
            raise GridMismatchError(f"the file's transform {[round(v, 6) for v in got]} differs from "
                                    f"proj:transform {list(tr)}")
    epsg = expect.get("epsg")
    if epsg is not None:
        from rasterio.crs import CRS

        if src.crs is None:
            raise GridMismatchError(f"the file has no CRS but the item says EPSG:{epsg}")
        if src.crs.to_epsg() != epsg and src.crs != CRS.from_epsg(epsg):
            raise GridMismatchError(f"the file's CRS {src.crs.to_string()} differs from the item's EPSG:{epsg}")


def _check_blocks(src, size: int | None, what: str) -> None:
    """Every block of every band ends inside the file (``size`` bytes); unknown size: read the last block."""
    last = None  # (end, band, x, y)
    for bidx in range(1, src.count + 1):
        bh, bw = src.block_shapes[bidx - 1]
        for y in range(math.ceil(src.height / bh)):
            for x in range(math.ceil(src.width / bw)):
                off = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=bidx)
                if not off or int(off) == 0:  # sparse block: GDAL returns nodata, nothing to read
                    continue
                end = int(off) + int(src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=bidx) or 0)
                if size is not None and end > size:
                    raise TruncatedAssetError(
                        f"{what}: block ({x}, {y}) of band {bidx} ends at byte {end} but the file has {size} bytes")
                if last is None or end > last[0]:
                    last = (end, bidx, x, y)
    if size is None and last is not None:
        from rasterio.windows import Window

        _, bidx, x, y = last
        bh, bw = src.block_shapes[bidx - 1]
        src.read(bidx, window=Window(x * bw, y * bh, min(bw, src.width - x * bw), min(bh, src.height - y * bh)))


def _blocks_look_tiled(src) -> bool:
    """Without the TIFF tags: tiles are multiples of 16 px; strips span the width (a one-block image passes)."""
    bh, bw = src.block_shapes[0]
    if bw % 16 or bh % 16:
        return False
    return bw < src.width or bh >= src.height


_NOT_A_TIFF = "not a TIFF (no II*/MM* signature at the start of the file)"


def _tiff_is_tiled(head: bytes, reader: Callable[[int, int], bytes]) -> bool:
    """Whether the first IFD (the full-resolution image) has TileWidth and TileOffsets tags."""
    # No message here quotes a byte of the file: it may be any file (a secret) that is not a TIFF.
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        raise NotATiffError(_NOT_A_TIFF)
    e = "<" if head[:2] == b"II" else ">"
    magic = struct.unpack(e + "H", head[2:4])[0]
    if magic == 42:
        ifd, count_fmt, entry = struct.unpack(e + "I", head[4:8])[0], "H", 12
    elif magic == 43 and len(head) >= 16:
        ifd, count_fmt, entry = struct.unpack(e + "Q", head[8:16])[0], "Q", 20
    else:
        raise NotATiffError(_NOT_A_TIFF)
    count_size = struct.calcsize(count_fmt)

    def read(offset: int, n: int) -> bytes:
        data = head[offset:offset + n] if offset + n <= len(head) else reader(offset, n)
        if len(data) < n:
            raise TruncatedAssetError("the first TIFF directory is cut short (the file ends first)")
        return data

    n_entries = struct.unpack(e + count_fmt, read(ifd, count_size))[0]
    if n_entries > 10000:
        raise NotATiffError("the first TIFF directory claims more than 10000 entries: corrupt header")
    raw = read(ifd + count_size, n_entries * entry)
    tags = {struct.unpack(e + "H", raw[k * entry:k * entry + 2])[0] for k in range(n_entries)}
    return 322 in tags and 324 in tags  # TileWidth, TileOffsets


# ------------------------------------------------------------------------------------------ byte access


def _probe(href: str, timeout: float) -> tuple[int | None, Callable[[int, int], bytes] | None, bytes | None]:
    """(file size in bytes or None, ranged reader or None, the first ``HEAD_BYTES`` or None) of ``href``.

    Local paths and ``file://``: os.stat; http(s): one ranged GET; other URLs: fsspec when it knows the
    protocol; GDAL ``/vsi...`` paths and URLs fsspec cannot open: (None, None, None), GDAL alone checks them.
    """
    parts = urllib.parse.urlsplit(href)
    scheme = parts.scheme.lower() if "://" in href else ""
    if href.startswith("/vsi"):
        return None, None, None
    if scheme in ("", "file"):
        path = urllib.parse.unquote(parts.path) if scheme == "file" else href
        size = os.stat(path).st_size

        def read_local(offset: int, n: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(n)

        return size, read_local, read_local(0, HEAD_BYTES)
    if scheme in ("http", "https"):
        head, size = _http_range(href, 0, HEAD_BYTES, timeout)
        return size, (lambda offset, n: _http_range(href, offset, n, timeout)[0]), head
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(href)
    except (ImportError, ValueError):
        return None, None, None
    size = int(fs.size(path))

    def read_fs(offset: int, n: int) -> bytes:
        return fs.cat_file(path, start=offset, end=min(offset + n, size))

    return size, read_fs, read_fs(0, HEAD_BYTES)


_CONTENT_RANGE = re.compile(r"bytes\s+\d+-\d+/(\d+)")


def _http_range(url: str, offset: int, n: int, timeout: float) -> tuple[bytes, int | None]:
    """(bytes offset..offset+n of ``url``, total size or None) with one GET; HTTPStatusError on 4xx/5xx."""
    req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-{offset + n - 1}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if resp.status == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                return resp.read(n), (int(m.group(1)) if m else None)
            length = resp.headers.get("Content-Length")
            data = resp.read(offset + n)[offset:]  # the server ignored the Range header: skip to offset
            return data, (int(length) if length is not None else None)
    except urllib.error.HTTPError as exc:
        raise HTTPStatusError(f"HTTP {exc.code} {exc.reason}") from None


# ----------------------------------------------------------------------------------------------- items


def _expected(item: dict[str, Any], asset: dict[str, Any]) -> dict[str, Any]:
    """Grid the asset must have: asset-level proj:shape/proj:transform, proj:epsg of the asset or item."""
    props = item.get("properties") or {}
    epsg = asset.get("proj:epsg", props.get("proj:epsg"))
    if epsg is None:
        code = asset.get("proj:code", props.get("proj:code"))
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            epsg = code.split(":", 1)[1]
    tr = asset.get("proj:transform")
    shape = asset.get("proj:shape")
    return {
        "shape": [int(v) for v in shape][:2] if shape is not None else None,
        "transform": [float(v) for v in tr][:6] if tr is not None else None,
        "epsg": int(epsg) if epsg is not None else None,
    }

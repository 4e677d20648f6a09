"""Search stage: region + time window + cloud limit -> normalized STAC items, via pystac-client.

Every input is validated before the first request. The search then runs against any STAC API (Earth
Search, Planetary Computer, or the local demo catalog served by ``rustac serve``) the same way:

- the time window is always sent as a *closed* range ``startT00:00:00Z/endT23:59:59Z`` (both days
  inclusive; rustac answers HTTP 500 to open ranges);
- the cloud limit is sent as ``query={"eo:cloud_cover": {"lte": max_cloud}}`` only to servers that conform
  to the query extension, and is always applied again on the client (so are the window, the region and
  the collection), so results do not depend on which extensions a server implements;
- HTTP 429/5xx answers are retried per request by urllib3 (``Retry`` with exponential backoff and
  ``Retry-After``); connection errors, time-outs and broken pages (invalid JSON) are retried around opening the
  client and around the search as a whole, by ``s2pipe.runtime.retry.RetryPolicy`` (the one retry policy: see
  there which layer retries what). After ``retries`` retries, :class:`CatalogUnreachableError` names the URL and
  the attempts made.

The API URL may carry credentials (``https://user:password@host/?token=...``): it is sent as given, but every log
line and error names it without them (``stac.assets.redact_href``), and the text of the HTTP library's exceptions
is scrubbed of its user info and query string too (requests quotes ``/search?token=...`` without the scheme).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pystac
import requests
import shapely
import shapely.geometry
import shapely.prepared
import shapely.validation
from pystac_client import Client, ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from shapely.geometry.base import BaseGeometry
from urllib3 import Retry

from s2pipe.errors import CatalogUnreachableError, InputError, NoScenesError, short_repr
from s2pipe.runtime.retry import RetryPolicy
from s2pipe.stac.assets import redact_href
from s2pipe.stac.catalog import CatalogProfile, load_profile
from s2pipe.stac.items import item_datetime, normalize_item

__all__ = ["RETRY_STATUS", "PAGE_SIZE", "T", "parse_region", "parse_day", "search_items"]

log = logging.getLogger("s2pipe.search")

RETRY_STATUS: tuple[int, ...] = (429, 500, 502, 503, 504)
"""HTTP statuses retried with backoff (rate limiting and server-side failures)."""

PAGE_SIZE = 100
"""Items per result page requested from the API (``limit``)."""

T = TypeVar("T")


# ------------------------------------------------------------------------------------------ validation


def _bbox_text(bbox: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in bbox) + ")"


def _check_lonlat(west: float, south: float, east: float, north: float, *, what: str, argument: str) -> None:
    for name, v, lim in (("west", west, 180), ("east", east, 180), ("south", south, 90), ("north", north, 90)):
        if not -lim <= v <= lim:
            axis = "longitude" if lim == 180 else "latitude"
            raise InputError(
                f"{what}: {name} {v:g} is outside the {axis} range -{lim}..{lim}; give degrees lon/lat "
                f"(EPSG:4326) in the order (west, south, east, north) (argument: {argument})"
            )


def _parse_bbox(bbox: Any) -> BaseGeometry:
    try:
        vals = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise InputError(
            f"bbox {bbox!r} is not 4 numbers (west, south, east, north) in degrees lon/lat (argument: bbox)"
        ) from None
    if len(vals) != 4:
        raise InputError(
            f"bbox {bbox!r} has {len(vals)} numbers; give 4: (west, south, east, north) in degrees lon/lat "
            "(argument: bbox)"
        )
    if not all(math.isfinite(v) for v in vals):
        raise InputError(f"bbox {bbox!r} holds a NaN or infinite value (argument: bbox)")
    west, south, east, north = vals
    what = f"bbox {_bbox_text(vals)}"
    _check_lonlat(west, south, east, north, what=what, argument="bbox")
    if west > east:
        raise InputError(
            f"{what} is inverted: west {west:g} > east {east:g}; give (west, south, east, north) "
            "(argument: bbox; for a region across the antimeridian pass a MultiPolygon geometry split at 180°)"
        )
    if south > north:
        raise InputError(
            f"{what} is inverted: south {south:g} > north {north:g}; give (west, south, east, north) "
            "(argument: bbox)"
        )
    if west == east or south == north:
        raise InputError(
            f"{what} is empty: it has zero {'width (west == east)' if west == east else 'height (south == north)'}; "
            "give a box with an area (argument: bbox)"
        )
    return shapely.geometry.box(west, south, east, north)


def _parse_geometry(geometry: Any) -> BaseGeometry:
    if isinstance(geometry, BaseGeometry):
        shape = geometry
    else:
        if hasattr(geometry, "__geo_interface__"):
            geometry = geometry.__geo_interface__
        if isinstance(geometry, Mapping) and geometry.get("type") == "Feature":
            geometry = geometry.get("geometry")
        if not isinstance(geometry, Mapping) or "type" not in geometry:
            raise InputError(
                f"geometry {short_repr(geometry)} is not a GeoJSON geometry dict; give "
                '{"type": "Polygon", "coordinates": [...]} in degrees lon/lat (argument: geometry)'
            )
        if geometry["type"] not in ("Polygon", "MultiPolygon"):
            raise InputError(
                f"geometry type {short_repr(geometry['type'])} is not supported; give a Polygon or MultiPolygon "
                "in degrees lon/lat (argument: geometry)"
            )
        try:
            shape = shapely.geometry.shape(geometry)
        except Exception as exc:  # shapely raises several types for malformed coordinates
            raise InputError(
                f"geometry {dict(geometry)!r:.160} is not valid GeoJSON: {exc} (argument: geometry)"
            ) from None
    if shape.geom_type not in ("Polygon", "MultiPolygon"):
        raise InputError(
            f"geometry type {shape.geom_type!r} is not supported; give a Polygon or MultiPolygon (argument: geometry)"
        )
    if shape.is_empty:
        raise InputError("geometry is empty; give a Polygon or MultiPolygon with an area (argument: geometry)")
    coords = shapely.get_coordinates(shape)
    if not math.isfinite(float(coords.sum())):
        raise InputError("geometry holds NaN or infinite coordinates (argument: geometry)")
    west, south, east, north = shape.bounds
    _check_lonlat(west, south, east, north, what=f"geometry with bounds {_bbox_text(shape.bounds)}", argument="geometry")
    if not shape.is_valid:
        raise InputError(
            f"geometry is invalid: {shapely.validation.explain_validity(shape)}; fix it (e.g. shapely "
            "make_valid) (argument: geometry)"
        )
    if shape.area == 0:
        raise InputError(f"geometry with bounds {_bbox_text(shape.bounds)} has zero area (argument: geometry)")
    return shape


def parse_region(bbox: Sequence[float] | None = None, geometry: Any = None) -> BaseGeometry:
    """Validate a search region and return it as a shapely geometry in lon/lat.

    Parameters
    ----------
    bbox
        (west, south, east, north) in degrees lon/lat, west < east and south < north.
    geometry
        a GeoJSON Polygon/MultiPolygon dict (a Feature holding one, or a shapely geometry also work).

    Exactly one of them must be given. Raises :class:`InputError` naming the value and the argument.
    """
    if (bbox is None) == (geometry is None):
        raise InputError(
            "give exactly one region: bbox=(west, south, east, north) or geometry=<GeoJSON Polygon/MultiPolygon>"
            f" (got {'both' if bbox is not None else 'neither'}; arguments: bbox, geometry)"
        )
    return _parse_bbox(bbox) if bbox is not None else _parse_geometry(geometry)


def parse_day(value: str | dt.date | dt.datetime, *, argument: str) -> dt.date:
    """A day from 'YYYY-MM-DD', an ISO datetime string, a date or a datetime (aware ones taken in UTC)."""
    if isinstance(value, dt.datetime):
        return (value.astimezone(dt.timezone.utc) if value.tzinfo else value).date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            pass
        try:
            return parse_day(dt.datetime.fromisoformat(text), argument=argument)
        except ValueError:
            pass
    raise InputError(f"{argument} {value!r} is not a date; give YYYY-MM-DD (argument: {argument})")


def _check_number(value: Any, *, argument: str, low: float, high: float | None = None, integer: bool = False,
                  low_inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        rng = f"{'≥' if low_inclusive else '>'} {low:g}" + (f" and ≤ {high:g}" if high is not None else "")
        kind = "an integer" if integer else "a number"
        raise InputError(f"{argument} {value!r} is not {kind} {rng} (argument: {argument})")


# ---------------------------------------------------------------------------------------------- network


def _scrub(text: str, url: str, limit: int = 300) -> str:
    """``text`` (an exception's text about a request to ``url``) without ``url``'s credentials, at most ``limit``
    characters: URLs redacted (``redact_href``), then the user info, the query string and its values (as written
    and percent-decoded, 3 characters or more) replaced by ``***`` wherever they still appear. Scrubbed before it
    is cut, so no piece of a secret survives at the cut."""
    parts = urllib.parse.urlsplit(url)
    pieces = {parts.query, parts.fragment, parts.netloc.rpartition("@")[0], parts.username or "",
              parts.password or "", *(v for _, v in urllib.parse.parse_qsl(parts.query))}
    pieces |= {urllib.parse.unquote(p) for p in pieces}
    text = redact_href(text)
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):
        text = text.replace(piece, "***")
    return text[:limit]


def _stac_io(retries: int, backoff: float, timeout: float) -> StacApiIO:
    """StacApiIO whose urllib3 ``Retry`` re-sends a request answered with 429/5xx (``retries`` times).

    Connection errors and time-outs are not retried here (connect=read=0) but by :func:`_with_retries`,
    so each kind of failure gets exactly ``retries`` retries.
    """
    retry = Retry(
        total=None,
        connect=0,
        read=0,
        other=0,
        redirect=5,
        status=retries,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,  # also POST /search: searching is idempotent
        backoff_factor=backoff,
        raise_on_status=False,  # hand the last 5xx answer back, so its status reaches the error message
        respect_retry_after_header=True,
    )
    return StacApiIO(timeout=timeout, max_retries=retry)


def _is_connection_failure(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    transient = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    return isinstance(exc, transient) or isinstance(cause, transient)


def _failure_kind(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    if status:
        return f"HTTP {status}"
    return "time-out" if "timed out" in str(exc).lower() else "connection failed"


def _unreachable(url: str, exc: BaseException, attempts: int) -> CatalogUnreachableError:
    detail = _failure_kind(exc)
    return CatalogUnreachableError(
        f"STAC API {redact_href(url)} is unreachable after {attempts} attempts ({detail}: {_scrub(str(exc), url)}); "
        "check the URL (argument: url, or the profile's url), the network, or try again later with more retries "
        "(arguments: retries, backoff, timeout)"
    )


def _with_retries(fn: Callable[[], T], *, url: str, what: str, retries: int, backoff: float) -> T:
    """Run ``fn`` under the search's ``RetryPolicy``: connection errors, time-outs and broken pages (invalid JSON)
    are retried with exponential backoff; API errors are translated into s2pipe's errors. ``url`` is named
    without its credentials."""
    policy = RetryPolicy(retries=retries, backoff=backoff)
    shown = redact_href(url)

    def transient(exc: BaseException) -> bool:
        if isinstance(exc, (APIError, requests.RequestException)):
            return getattr(exc, "status_code", None) is None and _is_connection_failure(exc)
        return isinstance(exc, json.JSONDecodeError)  # a page cut short or garbled on the way

    def give_up(exc: BaseException, attempts: int) -> CatalogUnreachableError:
        if isinstance(exc, json.JSONDecodeError) and not isinstance(exc, requests.RequestException):
            return CatalogUnreachableError(
                f"{what} at STAC API {shown} got a broken page (invalid JSON: {_scrub(str(exc), url, 200)}) after {attempts} "
                "attempts; the server or a proxy in between cuts its answers: try again later or with more retries "
                "(arguments: retries, backoff)")
        return _unreachable(url, exc, attempts)

    try:
        return policy.call(fn, retry_on=transient, what=f"{what} at {shown}", give_up=give_up)
    except CatalogUnreachableError as err:  # give_up's, chained to the last failure
        if _cause(err.__cause__, url) is None:
            raise err from None
        raise
    except (APIError, requests.RequestException) as exc:  # not transient
        status = getattr(exc, "status_code", None)
        if status in RETRY_STATUS:  # urllib3 already retried this one, per request
            raise _unreachable(url, exc, retries + 1) from _cause(exc, url)
        if status is not None and 400 <= status < 500:
            raise InputError(
                f"STAC API {shown} rejected the {what} request with HTTP {status}: {_scrub(str(exc), url)}; "
                "check the url, collection and search arguments"
            ) from _cause(exc, url)
        raise CatalogUnreachableError(
            f"{what} at STAC API {shown} failed: {_scrub(str(exc), url)}") from _cause(exc, url)


def _cause(exc: BaseException | None, url: str) -> BaseException | None:
    """The cause to chain s2pipe's error to: ``exc``, or None when ``url`` carries credentials (the text of the
    HTTP library's exception quotes the query string: a traceback would show it)."""
    return exc if redact_href(url) == url else None


def _open_client(url: str, *, retries: int, backoff: float, timeout: float) -> Client:
    def open_() -> Client:
        return Client.open(url, stac_io=_stac_io(retries, backoff, timeout), timeout=timeout)

    try:
        client = _with_retries(open_, url=url, what="opening the catalog", retries=retries, backoff=backoff)
    except (pystac.STACError, pystac.STACTypeError, ValueError, KeyError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{redact_href(url)} is not a STAC API root ({_scrub(str(exc), url)}); check the URL "
                         "(argument: url)") from _cause(exc, url)
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise InputError(
            f"{redact_href(url)} is a STAC catalog without the item-search API (/search); point url at a STAC API root "
            "(argument: url)"
        )
    return client


def _check_collection(client: Client, collection: str, *, url: str, retries: int, backoff: float) -> None:
    found = _with_retries(lambda: client.get_collection(collection), url=url, what="collection lookup",
                          retries=retries, backoff=backoff)
    if found is None:
        available = _with_retries(lambda: sorted(c.id for c in client.get_collections()), url=url,
                                  what="collection listing", retries=retries, backoff=backoff)
        raise InputError(
            f"collection {collection!r} does not exist at STAC API {redact_href(url)}; available collections: "
            f"{', '.join(available) or 'none'} (fix the profile's collection or the url argument)"
        )


# ---------------------------------------------------------------------------------------------- search


def _checked_arguments(profile, *, bbox, geometry, start, end, max_cloud, max_items, url, retries, backoff, timeout):
    """``search_items``' arguments checked before any request: (profile, region, first day, last day, API URL)."""
    if isinstance(profile, str):
        profile = load_profile(profile)
    elif not isinstance(profile, CatalogProfile):
        raise InputError(f"profile {profile!r:.80} is not a CatalogProfile or a profile name (argument: profile)")
    region = parse_region(bbox=bbox, geometry=geometry)
    start_day = parse_day(start, argument="start")
    end_day = parse_day(end, argument="end")
    if end_day < start_day:
        raise InputError(
            f"end {end_day.isoformat()} is before start {start_day.isoformat()}; swap them or fix the dates "
            "(arguments: start, end)"
        )
    _check_number(max_cloud, argument="max_cloud", low=0.0, high=100.0)
    if max_items is not None:
        _check_number(max_items, argument="max_items", low=1, integer=True)
    _check_number(retries, argument="retries", low=0, integer=True)
    _check_number(backoff, argument="backoff", low=0.0)
    _check_number(timeout, argument="timeout", low=0.0, low_inclusive=False)
    api = url if url is not None else profile.url
    if url is None and profile.is_local_demo:
        raise InputError(
            f"catalog {profile.name!r} is served by a local server that s2pipe starts; pass its address "
            "(argument: url), e.g. from s2pipe.synthetic.demo.demo_server"
        )
    if not isinstance(api, str) or not api.startswith(("http://", "https://")):
        shown = redact_href(api) if isinstance(api, str) else api
        raise InputError(f"STAC API URL {shown!r:.200} must start with http:// or https:// (argument: url)")
    api = api.rstrip("/")

    return profile, region, start_day, end_day, api


MAX_QUERY_VERTICES = 2000
"""A search region with more vertices is sent to the STAC API as its convex hull (the items are then filtered
against the region itself)."""


def _item_filter(collection: str, region, start_day: dt.date, end_day: dt.date, *, max_cloud: float,
                 counts: dict[str, int]) -> Callable[[Mapping[str, Any]], bool]:
    """The client-side check of each returned item: its collection, time, footprint and cloud cover (the same
    whatever extensions the server implements). Items dropped for their cloud cover are counted in
    ``counts["cloudy"]``."""
    t_lo = dt.datetime.combine(start_day, dt.time(0, 0), tzinfo=dt.timezone.utc)
    t_hi = dt.datetime.combine(end_day + dt.timedelta(days=1), dt.time(0, 0), tzinfo=dt.timezone.utc)
    prepared = shapely.prepared.prep(region)

    def keep(d: Mapping[str, Any]) -> bool:
        if d.get("collection") not in (None, collection):
            return False
        when = item_datetime(d)
        if not t_lo <= when < t_hi:
            return False
        if d.get("geometry"):
            try:
                if not prepared.intersects(shapely.geometry.shape(d["geometry"])):
                    return False
            except Exception:  # a malformed footprint: trust the server's spatial match
                pass
        cloud = (d.get("properties") or {}).get("eo:cloud_cover")
        if max_cloud < 100 and (cloud is None or float(cloud) > max_cloud):
            counts["cloudy"] += 1
            return False
        return True

    return keep


def search_items(
    profile: CatalogProfile | str,
    *,
    bbox: Sequence[float] | None = None,
    geometry: Mapping[str, Any] | None = None,
    start: str | dt.date | dt.datetime,
    end: str | dt.date | dt.datetime,
    max_cloud: float = 100.0,
    max_items: int | None = None,
    url: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
) -> list[pystac.Item]:
    """Search the profile's STAC API and return the matching scenes as normalized items, sorted by time.

    Parameters
    ----------
    profile
        A :class:`CatalogProfile` or the name/path of one (see ``catalogs/``).
    bbox
        (west, south, east, north) in degrees lon/lat. Exactly one of ``bbox`` and ``geometry``.
    geometry
        GeoJSON Polygon or MultiPolygon in degrees lon/lat.
    start, end
        First and last day searched, both inclusive: 'YYYY-MM-DD', a date, or a datetime (its UTC day);
        ``end`` not before ``start``.
    max_cloud
        Largest ``eo:cloud_cover`` kept, 0..100 percent. Below 100, items without a cloud cover are dropped.
    max_items
        Keep at most this many matching items (the first ones in the server's order, which is newest first on
        Earth Search, Planetary Computer and rustac), then sort them by time.
    url
        STAC API root overriding ``profile.url`` (required for the local demo catalog: the URL of its running
        server).
    retries
        Retries after a failed request (HTTP 429/5xx, connection error, time-out, broken page): see
        ``s2pipe.runtime.retry``.
    backoff
        Seconds slept after the first failure; the sleeps grow as ``backoff * 2**n``.
    timeout
        Seconds to wait for the server to connect and to answer each request.

    Returns
    -------
    list of pystac.Item
        Normalized items (``docs/architecture.md``), sorted by time and id.

    Raises
    ------
    InputError
        Bad region, dates, cloud limit or arguments (before any request), an unknown collection, or a URL that
        is not a STAC API.
    NoScenesError
        The search matched nothing.
    CatalogUnreachableError
        The API could not be reached after ``retries`` retries.
    """
    profile, region, start_day, end_day, api = _checked_arguments(
        profile, bbox=bbox, geometry=geometry, start=start, end=end, max_cloud=max_cloud, max_items=max_items,
        url=url, retries=retries, backoff=backoff, timeout=timeout)

    window = f"{start_day.isoformat()}T00:00:00Z/{end_day.isoformat()}T23:59:59Z"
    where = f"bbox {_bbox_text(region.bounds)}" if bbox is not None else f"geometry with bounds {_bbox_text(region.bounds)}"
    shown = redact_href(api)  # for the log lines and errors: without credentials
    log.info(f"searching {shown} collection {profile.collection!r}: {where}, {window}, eo:cloud_cover <= {max_cloud:g}")

    client = _open_client(api, retries=int(retries), backoff=float(backoff), timeout=float(timeout))
    _check_collection(client, profile.collection, url=api, retries=int(retries), backoff=float(backoff))

    params: dict[str, Any] = {"collections": [profile.collection], "datetime": window, "limit": PAGE_SIZE}
    if bbox is not None:
        params["bbox"] = list(region.bounds)
    elif shapely.get_num_coordinates(region) > MAX_QUERY_VERTICES:
        # A STAC API takes a request of a few hundred kB at most: ask with the convex hull, then keep the items
        # that meet the region itself (the client-side filter below tests every footprint against it).
        params["intersects"] = shapely.geometry.mapping(region.convex_hull)
    else:
        params["intersects"] = shapely.geometry.mapping(region)
    if max_cloud < 100 and client.conforms_to(ConformanceClasses.QUERY):
        params["query"] = {"eo:cloud_cover": {"lte": float(max_cloud)}}

    counts = {"returned": 0, "cloudy": 0}
    keep = _item_filter(profile.collection, region, start_day, end_day, max_cloud=max_cloud, counts=counts)

    def run_search() -> list[dict[str, Any]]:
        counts.update(returned=0, cloudy=0)
        search = client.search(**params)
        found: dict[str, dict[str, Any]] = {}
        for d in search.items_as_dicts():
            counts["returned"] += 1
            if counts["returned"] % 500 == 0:
                log.info(f"search: {counts['returned']} items read, {len(found)} kept")
            if d.get("id") in found or not keep(d):
                continue
            found[d["id"]] = d
            if max_items is not None and len(found) >= max_items:
                break
        return list(found.values())

    raw = _with_retries(run_search, url=api, what="search", retries=int(retries), backoff=float(backoff))
    if not raw:
        cloudy = (
            f"; {counts['cloudy']} scene(s) matched but had eo:cloud_cover above {max_cloud:g}"
            if counts["cloudy"] else ""
        )
        raise NoScenesError(
            f"no scenes in collection {profile.collection!r} at {shown} for {where}, "
            f"{start_day.isoformat()}..{end_day.isoformat()}, eo:cloud_cover <= {max_cloud:g}{cloudy}; "
            "widen the dates (start, end), the region (bbox, geometry) or the cloud limit (max_cloud)"
        )
    items = [normalize_item(d, profile) for d in raw]
    items.sort(key=lambda it: (item_datetime(it), it.id))
    log.info(f"search: {len(items)} scenes from {shown} ({counts['returned']} returned by the server)")
    return items

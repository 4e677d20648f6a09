"""The one adapter that turns STAC items from any supported catalog into *normalized items*.

Catalogs disagree on item metadata: asset keys (``red`` on Earth Search, ``B04`` on Planetary Computer),
``proj:epsg`` (STAC projection extension v1, read by stackstac 0.5.1) vs ``proj:code`` (v2, written by
pystac >= 1.12 and newer catalogs), 3x3 ``proj:transform`` matrices (Earth Search v0), and where the DN
offset of processing baseline 04.00 comes from. :func:`normalize_item` reduces all of them to the one form
every later stage relies on (docs/architecture.md):

- assets keyed by canonical band names (``B02`` ... ``B12``, ``B8A``, ``SCL``): only bands the profile maps
  and the item has; every other asset is dropped;
- ``properties["proj:epsg"]`` an int, also on each asset that states its own CRS;
- asset-level ``proj:shape`` and 6-element ``proj:transform`` (copied from the item level when the asset
  has none);
- ``raster:bands = [{"scale": s, "offset": o, "nodata": n}]`` on every asset with reflectance = DN*s + o
  (SCL: scale 1, offset 0), decided by the profile's ``offset_rule``;
- ``properties["s2pipe:solar_day"] = "YYYY-MM-DD"``: the date of UTC datetime + centroid longitude / 15 h;
- relative asset hrefs made absolute against the item's ``self`` link (URL rules for a URL, joined paths for a
  local file: ``..`` segments stay, for the asset check to refuse);
- ``properties["s2pipe:local_roots"]``: the local folders its asset hrefs may name, the profile's
  ``asset_roots`` (always the profile's: a value the catalog sent is replaced). ``s2pipe.stac.assets`` opens no
  local file outside them (:func:`s2pipe.stac.assets.confine_href`);
- asset hrefs signed when the profile says so (Planetary Computer SAS tokens).

Normalized items drop the projection extension's schema URI from ``stac_extensions``: pystac's migration
(run by every ``pystac.Item.from_dict``) otherwise moves ``proj:epsg`` to ``proj:code`` and stackstac
0.5.1 would no longer find the CRS. They also drop an unresolved ``root`` link, because ``Item.to_dict()``
(called by stackstac) would fetch it over the network. ``normalize_item`` is idempotent.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from s2pipe.bands import SCL
from s2pipe.errors import CatalogUnreachableError, InputError
from s2pipe.stac.catalog import CatalogProfile

__all__ = [
    "SOLAR_DAY", "LOCAL_ROOTS", "BASELINE_04_DATE", "BOA_OFFSET_FLAGS", "load_item_dicts", "item_dict",
    "item_datetime", "solar_day", "is_normalized", "href_scheme", "normalize_item", "normalize_items",
]

SOLAR_DAY = "s2pipe:solar_day"
"""Property holding the item's local solar date, ``YYYY-MM-DD``."""

LOCAL_ROOTS = "s2pipe:local_roots"
"""Property holding the local folders (absolute, symlinks resolved) the item's asset hrefs may name."""

BASELINE_04_DATE = dt.datetime(2022, 1, 25, tzinfo=dt.timezone.utc)
"""Processing baseline 04.00 (pixels hold DN + 1000) applies to scenes acquired from this instant on."""

BOA_OFFSET_FLAGS: tuple[str, ...] = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
"""Earth Search properties saying the +1000 DN offset was already removed from the pixels (v1, then v0)."""

_PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/"
_RASTER_SCHEMA = "https://stac-extensions.github.io/raster/"


# ---------------------------------------------------------------------------------------------- reading


def load_item_dicts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Item dicts from a JSON file holding one Feature, a FeatureCollection or a list of Features."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read STAC items from {path}: {exc}") from exc
    return _item_dicts(data, source=str(path))


def _item_dicts(data: Any, *, source: str) -> list[dict[str, Any]]:
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        return [dict(f) for f in data.get("features", [])]
    if isinstance(data, Mapping) and data.get("type") == "Feature":
        return [dict(data)]
    if isinstance(data, list) and all(isinstance(f, Mapping) and f.get("type") == "Feature" for f in data):
        return [dict(f) for f in data]
    raise InputError(
        f"{source} holds no STAC items: expected a Feature, a FeatureCollection or a list of Features"
    )


def item_dict(item: pystac.Item | Mapping[str, Any], *, deep: bool = False, caller: str = "normalize_item") -> dict[str, Any]:
    """``item`` as a plain STAC item dict: the one conversion of s2pipe, without network access and without
    pystac's migration.

    Parameters
    ----------
    item
        A ``pystac.Item`` or a STAC item dict.
    deep
        Deep-copy a dict (a ``pystac.Item`` always gives a new dict); False returns the dict itself.
    caller
        The function named in the error for anything else.
    """
    if isinstance(item, pystac.Item):
        # transform_hrefs=False: no root resolution (which may fetch the catalog root over HTTP).
        return item.to_dict(include_self_link=True, transform_hrefs=False)
    if isinstance(item, Mapping):
        return copy.deepcopy(dict(item)) if deep else item if isinstance(item, dict) else dict(item)
    raise InputError(
        f"{caller}: items must be pystac.Item or STAC item dicts, got {type(item).__name__} {item!r:.80} "
        "(argument: items)"
    )


# ------------------------------------------------------------------------------------------------ hrefs


_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}:")


def href_scheme(href: str) -> str:
    """The lower-case URL scheme of ``href`` (``https``, ``file``, ``javascript``), ``""`` for a local path."""
    m = _SCHEME_RE.match(href)
    return m.group(0)[:-1].lower() if m else ""


def _self_href(d: Mapping[str, Any]) -> str | None:
    for link in d.get("links") or []:
        if isinstance(link, Mapping) and link.get("rel") == "self" and isinstance(link.get("href"), str):
            return link["href"]
    return None


def _absolute_href(href: Any, base: str | None) -> Any:
    """``href`` made absolute against ``base`` (the item's self href), as STAC resolves relative asset hrefs:
    against a URL by URL rules, against a local file by joining paths (``..`` segments kept)."""
    if not isinstance(href, str) or not href or not base or href_scheme(href) or href.startswith("/"):
        return href
    scheme = href_scheme(base)
    if scheme and scheme != "file":
        return urllib.parse.urljoin(base, href)
    folder = os.path.dirname(urllib.parse.unquote(urllib.parse.urlsplit(base).path) if scheme else base)
    return os.path.join(folder, href)


# ------------------------------------------------------------------------------------------- metadata


def _item_id(d: Mapping[str, Any]) -> str:
    return str(d.get("id") or "<item without id>")


def item_datetime(item: pystac.Item | Mapping[str, Any]) -> dt.datetime:
    """The item's acquisition time as a timezone-aware UTC datetime; InputError if it has none."""
    if isinstance(item, pystac.Item):
        d: Mapping[str, Any] = {"id": item.id, "properties": {"datetime": item.datetime}}
    else:
        d = item
    value = (d.get("properties") or {}).get("datetime")
    if not value:
        raise InputError(
            f"STAC item {_item_id(d)!r} has no 'datetime' property (value {value!r}); "
            "s2pipe needs the acquisition time of every scene"
        )
    try:
        parsed = pystac.utils.str_to_datetime(value) if isinstance(value, str) else value
        if not isinstance(parsed, dt.datetime):
            raise TypeError(type(value).__name__)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"STAC item {_item_id(d)!r} has an invalid 'datetime' {value!r}: {exc}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def _epsg_of(fields: Mapping[str, Any], *, where: str, item_id: str) -> int | None:
    """EPSG code stated by ``proj:epsg`` or ``proj:code`` in ``fields`` (item properties or an asset)."""
    epsg = fields.get("proj:epsg")
    code = fields.get("proj:code")
    from_epsg = from_code = None
    if epsg is not None:
        try:
            from_epsg = int(epsg)
        except (TypeError, ValueError):
            raise InputError(f"STAC item {item_id!r}: {where} 'proj:epsg' {epsg!r} is not an integer EPSG code") from None
    if code is not None:
        text = str(code).strip()
        if not text.upper().startswith("EPSG:") or not text[5:].strip().isdigit():
            raise InputError(
                f"STAC item {item_id!r}: {where} 'proj:code' {code!r} is not of the form 'EPSG:<n>'; "
                "s2pipe reads only EPSG-coded CRSs"
            )
        from_code = int(text[5:])
    if from_epsg is not None and from_code is not None and from_epsg != from_code:
        raise InputError(
            f"STAC item {item_id!r}: {where} 'proj:epsg' {from_epsg} and 'proj:code' {code!r} disagree; "
            "fix the item metadata"
        )
    return from_epsg if from_epsg is not None else from_code


def _transform6(value: Any, *, where: str, item_id: str) -> list[float] | None:
    if value is None:
        return None
    vals = [float(v) for v in value]
    if len(vals) == 9:
        if not (math.isclose(vals[6], 0.0, abs_tol=1e-12) and math.isclose(vals[7], 0.0, abs_tol=1e-12)
                and math.isclose(vals[8], 1.0)):
            raise InputError(f"STAC item {item_id!r}: {where} 'proj:transform' {value!r} is not an affine 3x3 matrix")
        vals = vals[:6]
    if len(vals) != 6:
        raise InputError(
            f"STAC item {item_id!r}: {where} 'proj:transform' {value!r} has {len(vals)} elements; expected 6 or 9"
        )
    return vals


def _shape2(value: Any, *, where: str, item_id: str) -> list[int] | None:
    if value is None:
        return None
    vals = [int(v) for v in value]
    if len(vals) != 2:
        raise InputError(f"STAC item {item_id!r}: {where} 'proj:shape' {value!r} must be [rows, cols]")
    return vals


def _baseline(value: Any, *, item_id: str) -> tuple[int, ...]:
    """'05.11' -> (5, 11): compared numerically, never as strings."""
    try:
        parts = tuple(int(p) for p in str(value).strip().split("."))
        if not parts or len(parts) > 3:
            raise ValueError
    except ValueError:
        raise InputError(
            f"STAC item {item_id!r} has an unreadable 's2:processing_baseline' {value!r}; expected e.g. '04.00'"
        ) from None
    return parts


def _flag(value: Any, *, key: str, item_id: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InputError(f"STAC item {item_id!r} has a non-boolean {key!r}: {value!r}")


def _baseline_offset(props: Mapping[str, Any], when: dt.datetime, scale: float, *, item_id: str) -> float:
    """-1000 DN in reflectance when processing baseline >= 04.00 (or, without it, acquired >= 2022-01-25)."""
    value = props.get("s2:processing_baseline")
    if value is not None:
        new = _baseline(value, item_id=item_id) >= (4, 0)
    else:
        new = when >= BASELINE_04_DATE
    return -1000.0 * scale if new else 0.0


def _scale_offset(
    asset: Mapping[str, Any], props: Mapping[str, Any], when: dt.datetime, profile: CatalogProfile,
    *, item_id: str, key: str,
) -> tuple[float, float]:
    """(scale, offset) of a spectral asset under the profile's ``offset_rule``."""
    rb = asset.get("raster:bands") or [{}]
    if not isinstance(rb, list) or len(rb) != 1 or not isinstance(rb[0], Mapping):
        raise InputError(
            f"STAC item {item_id!r}: asset {key!r} has {len(rb) if isinstance(rb, list) else rb!r} raster:bands; "
            "s2pipe reads single-band assets only"
        )
    rb0 = rb[0]
    asset_scale = float(rb0["scale"]) if rb0.get("scale") is not None else profile.scale
    rule = profile.offset_rule
    if rule == "raster-bands":
        offset = float(rb0["offset"]) if rb0.get("offset") is not None else 0.0
        return asset_scale, offset
    if rule == "processing-baseline":
        return profile.scale, _baseline_offset(props, when, profile.scale, item_id=item_id)
    if rule == "earthsearch-boa-flag":
        for flag in BOA_OFFSET_FLAGS:
            if props.get(flag) is not None and _flag(props[flag], key=flag, item_id=item_id):
                return asset_scale, 0.0  # offset already removed from the pixels
        return asset_scale, _baseline_offset(props, when, asset_scale, item_id=item_id)
    raise InputError(f"catalog {profile.name!r} has an unknown offset_rule {rule!r}")  # pragma: no cover


def _centroid_lon(d: Mapping[str, Any], *, item_id: str) -> float:
    """Longitude of the footprint's centroid (antimeridian-safe); falls back to the bbox centre."""
    geom = d.get("geometry")
    if geom:
        import shapely
        import shapely.geometry

        try:
            shape = shapely.geometry.shape(geom)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise InputError(f"STAC item {item_id!r} has an invalid 'geometry': {exc}") from None
        if not shape.is_empty:
            minx, _, maxx, _ = shape.bounds
            if maxx - minx > 180.0:  # crosses the antimeridian: take the centroid in 0..360
                shifted = shapely.transform(shape, lambda xy: np.column_stack([xy[:, 0] % 360.0, xy[:, 1]]))
                return ((shifted.centroid.x + 180.0) % 360.0) - 180.0
            return float(shape.centroid.x)
    bbox = d.get("bbox")
    if bbox and len(bbox) >= 4:
        west, east = float(bbox[0]), float(bbox[len(bbox) // 2])
        if east < west:
            east += 360.0
        return (((west + east) / 2.0) + 180.0) % 360.0 - 180.0
    raise InputError(f"STAC item {item_id!r} has neither 'geometry' nor 'bbox'; cannot place it on the globe")


def _solar_day(when: dt.datetime, lon: float) -> dt.date:
    return (when + dt.timedelta(hours=lon / 15.0)).date()


def solar_day(item: pystac.Item | Mapping[str, Any]) -> dt.date:
    """Local solar date of ``item``: the date of its UTC datetime + centroid longitude / 15 hours.

    Normalized items carry it in ``properties["s2pipe:solar_day"]``; other items get it computed.
    """
    props = item.properties if isinstance(item, pystac.Item) else (item.get("properties") or {})
    if props.get(SOLAR_DAY):
        return dt.date.fromisoformat(props[SOLAR_DAY])
    d = item.to_dict(transform_hrefs=False) if isinstance(item, pystac.Item) else item
    return _solar_day(item_datetime(d), _centroid_lon(d, item_id=_item_id(d)))


def is_normalized(item: pystac.Item | Mapping[str, Any]) -> bool:
    """True when ``item`` came out of :func:`normalize_item` (it carries ``s2pipe:solar_day``)."""
    props = item.properties if isinstance(item, pystac.Item) else (item.get("properties") or {})
    return SOLAR_DAY in props


# ------------------------------------------------------------------------------------------ normalize


def normalize_item(
    item: pystac.Item | Mapping[str, Any],
    profile: CatalogProfile,
    *,
    sign: bool | None = None,
) -> pystac.Item:
    """Return the normalized form of ``item`` (see the module docstring); ``item`` is not modified.

    Parameters
    ----------
    item
        a ``pystac.Item`` or a STAC item dict from the catalog ``profile`` describes (any STAC version).
    profile
        the catalog profile: asset-key map, ``offset_rule``, scale, nodata, signing, and the local folders asset
        hrefs may name (``asset_roots``, stamped on the item as ``properties["s2pipe:local_roots"]``).
    sign
        sign asset hrefs (Planetary Computer SAS tokens, a network call per storage container);
        None (default) signs when ``profile.signing`` asks for it, False never signs.

    Raises
    ------
    InputError
        the item lacks a datetime or an EPSG code, or has none of the profile's bands.
    CatalogUnreachableError
        signing was asked for and the token service could not be reached.
    """
    d = item_dict(item, deep=True)
    item_id = _item_id(d)
    props: dict[str, Any] = dict(d.get("properties") or {})
    src_assets: Mapping[str, Any] = d.get("assets") or {}
    when = item_datetime(d)
    already = SOLAR_DAY in props

    # Which source key holds each canonical band.
    if already:
        keymap = {band: band for band in profile.assets if band in src_assets}
    else:
        keymap = {band: key for band, key in profile.assets.items() if key in src_assets}
    if not keymap:
        raise InputError(
            f"STAC item {item_id!r} has none of the assets catalog {profile.name!r} maps "
            f"({', '.join(sorted(set(profile.assets.values())))}); its assets are "
            f"{', '.join(sorted(src_assets)) or 'none'}: choose the profile of the catalog it came from "
            "(argument: profile / catalog)"
        )

    epsg, asset_epsgs = _item_epsg(props, src_assets, keymap, item_id=item_id)
    props.pop("proj:code", None)
    props["proj:epsg"] = int(epsg)
    item_shape = _shape2(props.get("proj:shape"), where="item", item_id=item_id)
    item_transform = _transform6(props.get("proj:transform"), where="item", item_id=item_id)
    if item_shape is not None:
        props["proj:shape"] = item_shape
    if item_transform is not None:
        props["proj:transform"] = item_transform

    assets = {band: _normalized_asset(band, src_assets[key], key, epsg=epsg, asset_epsg=asset_epsgs[band],
                                      item_shape=item_shape, item_transform=item_transform, props=props, when=when,
                                      profile=profile, already=already, item_id=item_id)
              for band, key in keymap.items()}

    props[SOLAR_DAY] = _solar_day(when, _centroid_lon(d, item_id=item_id)).isoformat()
    props[LOCAL_ROOTS] = list(profile.asset_roots)  # the profile decides, never the catalog
    base = _self_href(d)
    for a in assets.values():
        a["href"] = _absolute_href(a.get("href"), base)

    out_dict = _item_out_dict(d, props, assets)
    out = pystac.Item.from_dict(out_dict, migrate=False, preserve_dict=False)
    if isinstance(item, pystac.Item):
        root_link = item.get_root_link()
        if root_link is not None and root_link.is_resolved():
            out.set_root(root_link.target)  # keep an in-memory root (e.g. the pystac-client Client)

    do_sign = (profile.signing != "none") if sign is None else sign
    if do_sign:
        _sign(out, profile)
    return out


def _item_epsg(props: Mapping[str, Any], src_assets: Mapping[str, Any], keymap: Mapping[str, str], *,
               item_id: str) -> tuple[int, dict[str, int | None]]:
    """The item's EPSG code (item level first, else the single one its band assets state) and each band's own."""
    epsg = _epsg_of(props, where="item", item_id=item_id)
    asset_epsgs = {
        band: _epsg_of(src_assets[key], where=f"asset {key!r}", item_id=item_id) for band, key in keymap.items()
    }
    if epsg is None:
        stated = {e for e in asset_epsgs.values() if e is not None}
        if len(stated) == 1 and all(e is not None for e in asset_epsgs.values()):
            epsg = stated.pop()
        else:
            raise InputError(
                f"STAC item {item_id!r} states no EPSG code (no 'proj:epsg' or 'proj:code' on the item"
                + (f"; its assets state {sorted(stated)}" if stated else " or its assets")
                + "): s2pipe cannot place its pixels; fix the catalog metadata or use another catalog"
            )
    return epsg, asset_epsgs


def _normalized_asset(band: str, src: Mapping[str, Any], key: str, *, epsg: int, asset_epsg: int | None, item_shape,
                      item_transform, props: Mapping[str, Any], when, profile: CatalogProfile, already: bool,
                      item_id: str) -> dict[str, Any]:
    """One band's asset in normalized form: its own CRS only when it differs from the item's, ``proj:shape`` and
    ``proj:transform`` (its own, else the item's), and ``raster:bands`` with the scale and offset of its DN."""
    a = {k: copy.deepcopy(v) for k, v in src.items() if k not in ("proj:code", "proj:epsg", "raster:bands")}
    if asset_epsg is not None and asset_epsg != epsg:
        a["proj:epsg"] = asset_epsg
    shape = _shape2(src.get("proj:shape"), where=f"asset {key!r}", item_id=item_id) or item_shape
    transform = _transform6(src.get("proj:transform"), where=f"asset {key!r}", item_id=item_id) or item_transform
    if shape is not None:
        a["proj:shape"] = shape
    if transform is not None:
        a["proj:transform"] = transform
    if band == SCL:
        scale, offset = 1.0, 0.0
    elif already:
        rb0 = (src.get("raster:bands") or [{}])[0]
        scale, offset = float(rb0.get("scale", profile.scale)), float(rb0.get("offset", 0.0))
    else:
        scale, offset = _scale_offset(src, props, when, profile, item_id=item_id, key=key)
    a["raster:bands"] = [{"scale": scale, "offset": offset, "nodata": profile.nodata}]
    return a


def _item_out_dict(d: Mapping[str, Any], props: dict[str, Any], assets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The normalized item as a STAC dict: the raster extension declared, no projection extension, no root link."""
    links = [ln for ln in d.get("links", []) if ln.get("rel") != "root"]
    extensions = [e for e in d.get("stac_extensions", []) if not str(e).startswith(_PROJECTION_SCHEMA)]
    if not any(str(e).startswith(_RASTER_SCHEMA) for e in extensions):
        extensions.append(_RASTER_SCHEMA + "v1.1.0/schema.json")
    out_dict = {
        "type": "Feature",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": extensions,
        "id": d.get("id"),
        "geometry": d.get("geometry"),
        "bbox": d.get("bbox"),
        "properties": props,
        "links": links,
        "assets": assets,
    }
    if d.get("collection") is not None:
        out_dict["collection"] = d["collection"]
    return out_dict


def _sign(item: pystac.Item, profile: CatalogProfile) -> None:
    """Sign asset hrefs in place with ``profile.signer`` (the readers sign them again when they open them)."""
    from s2pipe.errors import SigningError

    signer = profile.signer
    try:
        for asset in item.assets.values():
            asset.href = signer.sign(asset.href)
    except SigningError as exc:
        raise CatalogUnreachableError(
            f"could not sign the asset hrefs of STAC item {item.id!r} for catalog {profile.name!r}: {exc}; or "
            "normalise with sign=False and sign later"
        ) from None


def normalize_items(
    items: Iterable[pystac.Item | Mapping[str, Any]] | pystac.ItemCollection | Mapping[str, Any],
    profile: CatalogProfile,
    *,
    sign: bool | None = None,
) -> list[pystac.Item]:
    """Normalize every item (see :func:`normalize_item`) and sort them by datetime (then id).

    ``items`` may also be a ``pystac.ItemCollection`` or a GeoJSON FeatureCollection dict.
    """
    if isinstance(items, Mapping):
        items = _item_dicts(items, source="argument items")
    out = [normalize_item(it, profile, sign=sign) for it in items]
    out.sort(key=lambda it: (item_datetime(it), it.id))
    return out

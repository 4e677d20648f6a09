"""Run configuration: one validated, frozen model that `s2pipe run CONFIG.yaml` and the flow share.

Everything is checked up front (region, dates, bands, catalog, modes, the size of the planned grid) so a bad
value fails before any request is sent or any byte is written.

Hostile or careless input is bounded before it can cost memory or time: a configuration file is at most
``MAX_CONFIG_BYTES``; its YAML may not use aliases (``*name``, also in merge keys ``<<: *name``: a few hundred
bytes of them can expand to gigabytes, and a run configuration has no need for them), hold more than
``MAX_YAML_NODES`` values, nest deeper than ``MAX_YAML_DEPTH`` or hold a value longer than ``MAX_SCALAR_CHARS``;
``geometry`` has at most ``MAX_VERTICES`` vertices; the planned grid at most ``RunConfig.max_grid_values`` values per
date. Error messages repeat a bad value only as a short, truncated repr, and stay under ``MAX_MESSAGE_CHARS``.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from s2pipe.bands import (
    BANDS,
    DEFAULT_CLEAR_CLASSES,
    SCL_CLASSES,
    SPECTRAL_10,
    check_bands,
)
from s2pipe.errors import InputError
from s2pipe.errors import clip_text as _clip
from s2pipe.errors import short_repr as _short
from s2pipe.runtime.files import (
    MAX_CONFIG_BYTES,
    MAX_SCALAR_CHARS,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    read_yaml,
)

__all__ = [
    "DaskConfig", "GapfillConfig", "NormalizeConfig", "StorageConfig", "RunConfig", "RUN_POLICY", "load_config",
    "read_yaml", "MAX_CONFIG_BYTES", "MAX_YAML_NODES", "MAX_YAML_DEPTH", "MAX_SCALAR_CHARS", "MAX_VERTICES",
    "MAX_OUTPUT_DATES", "RESOLUTION_RANGE_M", "DEFAULT_MAX_GRID_VALUES", "MAX_MESSAGE_CHARS", "MAX_FILE_VERTICES",
    "MAX_GEOMETRY_FILE_BYTES",
]

MAX_VERTICES = 10_000
"""Most vertices of a ``geometry`` written in the configuration."""
MAX_FILE_VERTICES = 1_000_000
"""Most vertices of a ``geometry`` given as the path of a GeoJSON file (read when needed: by reference)."""
MAX_GEOMETRY_FILE_BYTES = 64 << 20
"""Largest GeoJSON file a ``geometry`` path may name (64 MiB)."""
MAX_OUTPUT_DATES = 10_000
"""Most output dates of the gap-filled cube (``gapfill.times`` over start..end)."""
RESOLUTION_RANGE_M = (1.0, 10_000.0)
"""Accepted output pixel size, in metres on the ground (degrees of a geographic CRS are taken as 111.32 km)."""
DEFAULT_MAX_GRID_VALUES = 10_000_000_000
"""Default ``RunConfig.max_grid_values``: ~7 full Sentinel-2 tiles (10980 x 10980 px at 10 m) x 11 bands (10 + SCL)."""
MAX_MESSAGE_CHARS = 2000
"""Longest error message ``load_config`` raises."""

_MAX_ERROR_LINES = 8
_FIRST_DAY, _LAST_DAY = dt.date(1678, 1, 1), dt.date(2261, 12, 31)  # the datetime64[ns] range of the time axis
_M_PER_DEGREE = 111_320.0
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_SIZE = re.compile(r"\s*(\d+\.?\d*|\.\d+)\s*([kmgtp]i?b?|b)\s*", re.IGNORECASE)


class DaskConfig(BaseModel):
    """Where the array work runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(None, description="Scheduler address (tcp://host:8786) of an existing cluster; None starts a LocalCluster.")
    spec: str | None = Field(None, description="Path of a cluster spec YAML (see deploy/dask/ and s2pipe.runtime.cluster) that starts the cluster for the run; exclusive with address.")
    n_workers: int = Field(2, ge=1, le=1024, description="LocalCluster only: worker processes (1..1024).")
    threads_per_worker: int = Field(1, ge=1, le=1024, description="LocalCluster only: threads per worker (1..1024).")
    memory_limit: str = Field("4GiB", description="LocalCluster only: memory limit per worker (Dask spills, then pauses, above it): a size with its unit ('4GiB', '512MB') or 'auto'.")
    processes: bool = Field(True, description="LocalCluster only: worker processes (True) or threads in this process (False).")

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, str) and _SIZE.fullmatch(v)):
            return v
        if isinstance(v, (int, float, str)) and not isinstance(v, bool) and _NUMBER.fullmatch(str(v)):
            raise ValueError(f"dask.memory_limit {_short(v)} has no unit (Dask would read it as bytes); write it "
                             "with its unit, e.g. '4GiB' or '512MiB', or 'auto'")
        raise ValueError(f"dask.memory_limit {_short(v)} is not a size; write e.g. '4GiB', '512MB' or 'auto'")

    @model_validator(mode="after")
    def _one_cluster(self) -> "DaskConfig":
        if self.address and self.spec:
            raise ValueError(f"dask.address {self.address!r} and dask.spec {self.spec!r} are both set; keep address to "
                             "use a running cluster, or spec to start one for the run")
        return self


class GapfillConfig(BaseModel):
    """Cressman temporal interpolation (s2pipe.gapfill.cressman)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    radius: str = Field("10D", description="Influence radius R: a time span with its unit, e.g. '10D', '240h' or '10 days' (the paper: 10 days), from 1 hour to 10 years; a bare number is refused.")
    kernel: Literal["gaussian", "cressman"] = Field("gaussian", description="Weight function of the distance d in days.")
    times: str | None = Field("5D", description=f"Output time axis: a frequency with its unit such as '5D' (regular grid, at most {MAX_OUTPUT_DATES:,} dates over start..end) or null to keep the acquisition dates.")

    @field_validator("radius", mode="before")
    @classmethod
    def _radius(cls, v: Any) -> str:
        return _duration(v, field="gapfill.radius", low=pd.Timedelta(hours=1), high=pd.Timedelta(days=3660))

    @field_validator("times", mode="before")
    @classmethod
    def _times(cls, v: Any) -> str | None:
        if v is None:
            return v
        if _is_bare_number(v):
            raise ValueError(f"gapfill.times {_short(v)} has no unit; write '{str(v).strip()}D' for every "
                             f"{str(v).strip()} days, e.g. '5D', or null to keep the acquisition dates")
        step = _step_days(v) if isinstance(v, str) and len(v) <= 64 else None
        if step is None:
            raise ValueError(f"gapfill.times {_short(v)} is not a pandas frequency; write e.g. '5D' or null")
        if not step > 0:
            raise ValueError(f"gapfill.times {_short(v)} does not step forwards; write a positive frequency, e.g. '5D'")
        return v


class NormalizeConfig(BaseModel):
    """Scaling of the gap-filled reflectance (s2pipe.normalize)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["global_max_by_resolution", "global_max", "per_band_max", "per_band_percentile"] = Field(
        "global_max_by_resolution",
        description="The paper's global maximum per 10 m / 20 m band group, one global maximum, per band, or a per-band percentile.",
    )
    percentile: float = Field(99.0, gt=0, le=100, description="per_band_percentile only: the percentile (0-100].")


class StorageConfig(BaseModel):
    """Object-store settings for ``s3://``, ``gs://``, ``az://`` outputs and inputs (s2pipe.runtime.objectstore). Not secret:
    credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
    GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN, ...)
    or the named profile, and are never stored in the config, the output or the run summary."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: str | None = Field(None, description="s3:// only: AWS profile name (a section of ~/.aws/credentials / ~/.aws/config); None: the environment or the default profile.")
    endpoint_url: str | None = Field(None, description="s3:// only: endpoint of an S3-compatible service, e.g. 'http://minio:9000' (also given to GDAL as AWS_S3_ENDPOINT, path-style addressing); gs://: a custom GCS endpoint. None: the provider's own.")
    region: str | None = Field(None, description="s3:// only: bucket region, e.g. 'eu-central-1'; None: the environment (AWS_REGION / AWS_DEFAULT_REGION) or the profile.")
    anon: bool = Field(False, description="Unsigned (anonymous) requests, for public buckets: no credentials are looked up.")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import urllib.parse

        parts = urllib.parse.urlsplit(v if "://" in v else f"https://{v}")
        if parts.username or parts.password or parts.query:
            raise ValueError("storage.endpoint_url must not carry credentials or a query string; put credentials "
                             "in the environment or a profile (storage.profile)")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("storage.endpoint_url must be an http(s)://host[:port] address, e.g. 'http://minio:9000'")
        return v.rstrip("/")


class RunConfig(BaseModel):
    """One regional datacube job: where, when, what, and where the Zarr store goes."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)  # inputs may hold secrets

    catalog: str = Field("local-demo", max_length=MAX_SCALAR_CHARS, description="Catalog profile name (see `s2pipe catalogs`) or path to a profile YAML.")
    bbox: tuple[float, float, float, float] | None = Field(None, description="Region as (west, south, east, north) in degrees lon/lat.")
    geometry: dict[str, Any] | str | None = Field(None, description=f"Region as a GeoJSON Polygon/MultiPolygon in lon/lat (instead of bbox), at most {MAX_VERTICES:,} vertices; or the path of a GeoJSON file holding one (a Feature or a FeatureCollection of one also do), at most {MAX_FILE_VERTICES:,} vertices, read where needed (so a large region reaches the flow by reference, not as a parameter). The grid covers its bounds.")
    start: dt.date = Field(description="First day of the time window (inclusive), YYYY-MM-DD.")
    end: dt.date = Field(description="Last day of the time window (inclusive), YYYY-MM-DD; 'today' means the UTC date when the run starts (scheduled runs).")
    max_cloud: float = Field(100.0, ge=0, le=100, description="Keep scenes whose eo:cloud_cover is at most this percentage.")
    bands: tuple[str, ...] = Field(SPECTRAL_10, description="Spectral bands of the cube (canonical names B02..B12, B8A).")
    epsg: int | None = Field(None, description="Output CRS (a projected or geographic EPSG code); None takes the most common EPSG of the scenes (their UTM zone).")
    resolution: float = Field(10.0, gt=0, allow_inf_nan=False, description="Output pixel size in CRS units (metres; degrees for a geographic epsg), 1 m to 10 km on the ground; 20 m bands are resampled cubically.")
    max_grid_values: int = Field(DEFAULT_MAX_GRID_VALUES, gt=0, description="Largest planned grid per date, in values: x pixels x y pixels x (bands + SCL), estimated from the region, epsg and resolution before anything is read. The default, 1e10, is ~7 full Sentinel-2 tiles at 10 m with 10 bands; raise it for larger regions.")
    chunk_size: int | None = Field(None, gt=0, le=16384, description="Spatial chunk/region size in pixels (at most 16384); None aligns with the catalog's COG blocks.")
    clear_classes: tuple[int, ...] = Field(DEFAULT_CLEAR_CLASSES, description="SCL classes counted as clear (default 4 vegetation, 5 bare, 6 water, 7 unclassified; add 11 for snow).")
    gapfill: GapfillConfig = Field(default_factory=GapfillConfig, description="Cressman interpolation settings.")
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig, description="Normalisation settings.")
    output: Path | str = Field(Path("out/cube.zarr"), description="Zarr store written (format 2, consolidated, GIS-readable): a local path, or an object-store URL (s3://bucket/cube.zarr, gs://..., az://container/...) read and written through fsspec with the storage settings.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Object-store settings (profile, endpoint, region, anonymous access) for URL outputs and s3://, gs://, az:// asset hrefs; no secrets (those come from the environment or the profile).")
    overwrite: bool = Field(False, description="Replace an existing store built from a different grid or inputs (otherwise: an error).")
    append: bool = Field(False, description="Extend an existing store with the acquisitions after its last date (scheduled runs) without rewriting it; its grid, bands and parameters must match (otherwise: an error). Creates the store when there is none.")
    strict: bool = Field(False, description="Fail when an asset is missing, truncated or not a valid COG, instead of leaving its scene out (recorded in the store's dropped_items / dropped_assets attributes and the run summary).")
    quicklook: bool = Field(True, description="Also save a quick-look PNG beside the store.")
    overviews: bool = Field(True, description="Also write the multiscale overview levels of the cube (overviews/1, overviews/2, ... each 2x coarser, until the smaller side is under 256 px; GeoZarr multiscales), for GIS browsing. A store keeps the levels it was created with.")
    zarr_format: Literal[2, 3] = Field(2, description="Zarr format of a new store: 2 (GDAL >= 3.4, QGIS 3.22+) or 3 (GDAL >= 3.12). A store keeps the format it was created with.")
    dask: DaskConfig = Field(default_factory=DaskConfig, description="Dask cluster settings.")

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, v: Any) -> Any:
        """A local path stays a ``Path``; a URL is validated (never echoing credentials) and kept as text."""
        from s2pipe.runtime.objectstore import check_url, is_url

        text = os.fspath(v) if isinstance(v, (str, os.PathLike)) else None
        if isinstance(text, str) and (len(text) > MAX_SCALAR_CHARS or "\0" in text):
            raise ValueError(f"output must be a path or URL of at most {MAX_SCALAR_CHARS} characters without NUL "
                             "bytes, e.g. out/cube.zarr")
        if isinstance(v, (str, os.PathLike)) and is_url(v):
            try:
                return check_url(str(v), what="output")
            except InputError as exc:
                raise ValueError(str(exc)) from None
        if isinstance(v, str):
            return Path(v[len("file://"):] if v.startswith("file://") else v)
        return v

    @field_validator("start", "end", mode="before")
    @classmethod
    def _day(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name == "end" and isinstance(v, str) and v.strip().lower() == "today":
            return dt.datetime.now(dt.timezone.utc).date()
        if _is_bare_number(v):  # pydantic would read 20210101 as seconds since 1970
            raise ValueError(f"{info.field_name} {_short(v)} is a number, not a date; write YYYY-MM-DD, e.g. 2021-01-01")
        return v

    @field_validator("start", "end")
    @classmethod
    def _day_range(cls, v: dt.date, info: ValidationInfo) -> dt.date:
        if not _FIRST_DAY <= v <= _LAST_DAY:
            raise ValueError(f"{info.field_name} {v} is outside {_FIRST_DAY.year}..{_LAST_DAY.year}, the years the "
                             "cube's time axis holds; give a date in the Sentinel-2 era (2015 on)")
        return v

    @field_validator("bands", mode="before")
    @classmethod
    def _bands(cls, v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [b.strip() for b in v.split(",") if b.strip()]
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"bands {_short(v)} is not a list of band names; write e.g. [B02, B03, B04, B08]")
        if len(v) > len(BANDS):
            raise ValueError(f"bands lists {len(v):,} names; Sentinel-2 has {len(BANDS)} bands (with SCL): list each "
                             "at most once, e.g. [B02, B03, B04, B08]")
        bad = [b for b in v if not isinstance(b, str) or len(b) > 8]
        if bad:
            raise ValueError(f"bands entry {_short(bad[0])} is not a band name; choose from {', '.join(BANDS)}")
        bands = check_bands(list(v), argument="bands")
        if "SCL" in bands:
            raise ValueError("bands must list spectral bands only; SCL is read automatically for the cloud mask")
        if not bands:
            raise ValueError("bands is empty; list at least one band, e.g. B04")
        return bands

    @field_validator("clear_classes", mode="before")
    @classmethod
    def _clear_list(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)) and len(v) > len(SCL_CLASSES):
            raise ValueError(f"clear_classes lists {len(v):,} codes; there are {len(SCL_CLASSES)} SCL classes "
                             "(0..11): list each at most once, e.g. [4, 5, 6, 7]")
        return v

    @field_validator("clear_classes")
    @classmethod
    def _clear(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [c for c in v if c not in SCL_CLASSES]
        if bad or not v:
            raise ValueError(f"clear_classes {_short(list(v))} must be non-empty SCL codes 0..11 (e.g. [4, 5, 6, 7])")
        return tuple(sorted(set(v)))

    @field_validator("geometry", mode="before")
    @classmethod
    def _vertices(cls, v: Any) -> Any:
        if isinstance(v, Mapping) and _vertex_count(v, limit=MAX_VERTICES) > MAX_VERTICES:
            raise ValueError(f"geometry has more than {MAX_VERTICES:,} vertices; simplify it (e.g. shapely's "
                             "simplify(tolerance), or ogr2ogr -simplify), pass a bbox, or give the path of a "
                             "GeoJSON file holding it (geometry: region.geojson)")
        if isinstance(v, (str, os.PathLike)):
            v = os.fspath(v)
            if len(v) > MAX_SCALAR_CHARS or "\0" in v:
                raise ValueError(f"geometry {_short(v)} is not a GeoJSON file path; give one, or a GeoJSON mapping")
            geometry_file(v)  # readable, bounded, a geometry: checked now, read again where needed
        return v

    @field_validator("epsg")
    @classmethod
    def _epsg(cls, v: int | None) -> int | None:
        if v is not None:
            _crs_unit(v)
        return v

    @model_validator(mode="after")
    def _region_and_dates(self) -> "RunConfig":
        from s2pipe.search import parse_region  # one place validates regions
        from s2pipe.stac.catalog import load_profile

        try:
            profile = load_profile(self.catalog)  # an unknown catalog fails here, before Prefect or Dask start
        except OSError as exc:  # a name too long, ...
            raise ValueError(f"catalog {_short(self.catalog)} cannot be read ({exc.strerror}); give a profile name "
                             "(see `s2pipe catalogs`) or the path of a profile YAML") from None
        missing = [b for b in (*self.bands, "SCL") if b not in profile.assets]
        if missing:  # before the search, not after it and the asset check
            raise ValueError(f"catalog {profile.name!r} has no asset for {', '.join(missing)}; choose bands among "
                             f"{', '.join(b for b in profile.assets if b != 'SCL')}, or another catalog")

        if (self.bbox is None) == (self.geometry is None):
            raise ValueError("give exactly one of bbox (west, south, east, north) or geometry (GeoJSON)")
        if self.append and self.overwrite:
            raise ValueError("append and overwrite exclude each other: append extends the store, overwrite replaces it")
        region = parse_region(bbox=self.bbox, geometry=self.region_geometry())
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}; swap them or fix the dates")
        _check_grid(self, region.bounds)
        _check_dates(self)
        return self

    def region_geometry(self) -> dict[str, Any] | None:
        """The region's GeoJSON geometry: ``geometry`` itself, or the content of the file it names (read once
        per process and file version); None with a bbox."""
        return geometry_file(self.geometry) if isinstance(self.geometry, str) else self.geometry

    def parameters(self) -> dict[str, Any]:
        """JSON-serialisable parameters (stored as provenance in the output). A geometry file appears as the
        SHA-256 of its geometry, not its path: the same region from a moved file is the same parameters."""
        out = json.loads(self.model_dump_json(exclude=set(RUN_POLICY)))
        if isinstance(self.geometry, str):
            text = json.dumps(self.region_geometry(), sort_keys=True, separators=(",", ":"))
            out["geometry"] = {"geojson_sha256": hashlib.sha256(text.encode()).hexdigest()}
        return out


RUN_POLICY = ("dask", "overwrite", "quicklook", "append", "strict", "storage", "max_grid_values", "overviews",
              "zarr_format")
"""RunConfig fields that say how a run goes, not what the output holds: left out of ``parameters()``."""


def load_config(source: str | os.PathLike | dict[str, Any] | RunConfig, **overrides: Any) -> RunConfig:
    """Build a RunConfig from a YAML path, a dict or a RunConfig, applying ``overrides`` (None values ignored).

    Parameters
    ----------
    source : str, os.PathLike, dict or RunConfig
        Path of a YAML run configuration (a mapping of ``RunConfig`` fields, read with ``read_yaml`` and its
        bounds), the fields as a dict, or a ``RunConfig`` to start from.
    **overrides
        Fields that replace those of ``source``; None values are ignored. ``dask_address`` sets ``dask.address``.

    Returns
    -------
    RunConfig
        The validated configuration.

    Raises
    ------
    InputError
        The file does not exist, is too large, is not valid YAML (or uses aliases, or is too large or deep) or does
        not hold a mapping, or the settings fail validation (the message lists each invalid setting, at most
        ``MAX_MESSAGE_CHARS`` characters in all).
    """
    if isinstance(source, RunConfig):
        data = source.model_dump()
    elif isinstance(source, dict):
        data = dict(source)
    else:
        data = read_yaml(source, what="config file")
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise InputError(f"config file {_clip(str(source), 200)} must hold a mapping of settings, "
                             f"got {type(data).__name__}")
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "dask_address":
            dask = data.get("dask")
            data["dask"] = {**dask, "address": value} if isinstance(dask, Mapping) else dask or {"address": value}
        else:
            data[key] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(_describe(exc)) from None


def _is_bare_number(value: Any) -> bool:
    """A number, or text that is only a number (a duration or a date without its unit or form)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= 64 and _NUMBER.fullmatch(value) is not None


def _duration(value: Any, *, field: str, low: pd.Timedelta, high: pd.Timedelta) -> str:
    """``value`` if it is a time span with a unit ('10D', '240h', '10 days') within [low, high]; else ValueError."""
    if _is_bare_number(value):
        n = str(value).strip()
        raise ValueError(f"{field} {_short(value)} has no unit (pandas would read it as {n} nanoseconds); write "
                         f"'{n}D' for {n} days, or e.g. '240h' or '10 days'")
    try:
        td = pd.Timedelta(value) if isinstance(value, str) and len(value) <= 64 else None
    except (ValueError, OverflowError):
        td = None
    if td is None or td is pd.NaT:
        raise ValueError(f"{field} {_short(value)} is not a time span; write e.g. '10D', '240h' or '10 days'")
    if not low <= td <= high:
        raise ValueError(f"{field} {_short(value)} is {td}, outside {low} .. {high}; write e.g. '10D'")
    return value


def _step_days(freq: str) -> float | None:
    """The mean step in days of the pandas frequency ``freq`` (month, year, business offsets too); None if it is
    not one."""
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError, OverflowError):
        return None
    ref = pd.Timestamp("2000-01-01")
    try:
        return (ref + 4 * offset - ref) / pd.Timedelta(days=4)
    except (OverflowError, ValueError):  # beyond the datetime64[ns] range: a step of centuries
        return math.inf


@functools.lru_cache(maxsize=64)
def _crs_unit(epsg: int) -> tuple[str, float]:
    """(unit name, metres per unit on the ground) of a projected or geographic EPSG code; else ValueError."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_epsg(epsg)
    except (CRSError, OverflowError, TypeError, ValueError):
        raise ValueError(f"epsg {_short(epsg)} is not an EPSG code pyproj knows; give e.g. 32633 (UTM 33N), or null "
                         "for the scenes' UTM zone") from None
    if not (crs.is_projected or crs.is_geographic) or not crs.axis_info:
        raise ValueError(f"epsg {epsg} ({_clip(crs.name, 60)}) is not a horizontal CRS; give a projected one such as "
                         "32633 (UTM 33N), or null for the scenes' UTM zone")
    axis = crs.axis_info[0]
    if crs.is_geographic:  # unit_conversion_factor: radians per unit
        return axis.unit_name, axis.unit_conversion_factor / math.radians(1.0) * _M_PER_DEGREE
    return axis.unit_name, axis.unit_conversion_factor


def _planned_extent(bounds: tuple[float, float, float, float], epsg: int | None) -> tuple[float, float]:
    """Width and height, in units of ``epsg``, of the lon/lat ``bounds`` on the output grid (as ``s2pipe.cube``
    reprojects them); with ``epsg`` None (the scenes' UTM zone), the extent in metres of the widest parallel."""
    west, south, east, north = bounds
    if epsg is None:
        lat = 0.0 if south <= 0 <= north else min(abs(south), abs(north))
        return (east - west) * _M_PER_DEGREE * math.cos(math.radians(lat)), (north - south) * 110_574.0
    from pyproj import Transformer

    try:
        x0, y0, x1, y1 = Transformer.from_crs(4326, epsg, always_xy=True).transform_bounds(*bounds, densify_pts=21)
    except Exception:  # noqa: BLE001 - pyproj raises ProjError and others for a region outside the CRS area
        x0 = y0 = x1 = y1 = math.nan
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"the region {_bbox_text(bounds)} cannot be projected to EPSG:{epsg}; give the epsg of the "
                         "region's UTM zone, or null")
    return x1 - x0, y1 - y0


def _bbox_text(bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def _check_grid(cfg: RunConfig, bounds: tuple[float, float, float, float]) -> None:
    """Refuse a resolution outside ``RESOLUTION_RANGE_M`` or a planned grid of more than ``cfg.max_grid_values`` values."""
    unit, metres = _crs_unit(cfg.epsg) if cfg.epsg is not None else ("metre", 1.0)
    low, high = RESOLUTION_RANGE_M
    ground = cfg.resolution * metres
    if not low <= ground <= high:
        crs = f"EPSG:{cfg.epsg}" if cfg.epsg is not None else "the scenes' UTM zone"
        raise ValueError(f"resolution {cfg.resolution:g} (unit: {unit}, {crs}) is {ground:.3g} m on the ground, outside "
                         f"{low:g} m .. {high / 1000:g} km; give e.g. resolution: {10 / metres:.3g} for 10 m, the finest "
                         "Sentinel-2 bands")
    width, height = _planned_extent(bounds, cfg.epsg)
    nx, ny = math.ceil(width / cfg.resolution), math.ceil(height / cfg.resolution)
    values = nx * ny * (len(cfg.bands) + 1)
    if values > cfg.max_grid_values:
        raise ValueError(
            f"the planned grid is {nx:,} x {ny:,} px x {len(cfg.bands) + 1} bands ({len(cfg.bands)} + SCL) = "
            f"{values:,} values per date (region {_bbox_text(bounds)} at resolution {cfg.resolution:g}), over "
            f"max_grid_values {cfg.max_grid_values:,}; pass a smaller bbox or geometry, a coarser resolution or fewer bands, "
            "or raise max_grid_values"
        )


def _check_dates(cfg: RunConfig) -> None:
    """Refuse a ``gapfill.times`` grid of more than ``MAX_OUTPUT_DATES`` dates over start..end."""
    if cfg.gapfill.times is None:
        return
    n = int((cfg.end - cfg.start).days / _step_days(cfg.gapfill.times)) + 1
    if n > MAX_OUTPUT_DATES:
        raise ValueError(f"gapfill.times {cfg.gapfill.times!r} makes about {n:,} output dates from {cfg.start} to "
                         f"{cfg.end}, more than {MAX_OUTPUT_DATES:,}; give a longer step, a shorter window, or "
                         "times: null to keep the acquisition dates")


def geometry_file(path: str | os.PathLike) -> dict[str, Any]:
    """The GeoJSON geometry in the file ``path`` (a geometry, a Feature, or a FeatureCollection of one feature),
    checked: at most ``MAX_GEOMETRY_FILE_BYTES`` bytes and ``MAX_FILE_VERTICES`` vertices. Cached per file
    version (path, size, modification time)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise InputError(f"geometry file {_short(str(path))} cannot be read ({exc.strerror}); give the path of a "
                         "GeoJSON file, or the geometry itself") from None
    if not stat.S_ISREG(st.st_mode):  # a folder, a device, a pipe (which could block the run): refused unread
        raise InputError(f"geometry file {_short(str(path))} is not a regular file; give the path of a GeoJSON file")
    return _geometry_file(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _geometry_file(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    shown = _short(path)
    if size > MAX_GEOMETRY_FILE_BYTES:
        raise InputError(f"geometry file {shown} has {size:,} bytes, more than {MAX_GEOMETRY_FILE_BYTES:,}; "
                         "simplify the geometry (e.g. ogr2ogr -simplify) or pass a bbox")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_GEOMETRY_FILE_BYTES + 1))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"geometry file {shown} is not GeoJSON ({_clip(type(exc).__name__ + ': ' + str(exc), 120)}); "
                         "give a GeoJSON Polygon/MultiPolygon file") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features") or []
        if len(feats) != 1:
            raise InputError(f"geometry file {shown} holds {len(feats)} features; give one (dissolve them first, "
                             "e.g. ogr2ogr -dialect sqlite -sql 'SELECT ST_Union(geometry) FROM layer')")
        data = feats[0]
    if isinstance(data, dict) and data.get("type") == "Feature":
        data = data.get("geometry")
    if not isinstance(data, dict):
        raise InputError(f"geometry file {shown} holds no GeoJSON geometry; give a Polygon/MultiPolygon")
    if _vertex_count(data, limit=MAX_FILE_VERTICES) > MAX_FILE_VERTICES:
        raise InputError(f"geometry file {shown} has more than {MAX_FILE_VERTICES:,} vertices; simplify it "
                         "(e.g. ogr2ogr -simplify) or pass a bbox")
    return data


def _vertex_count(geometry: Mapping, *, limit: int) -> int:
    """Positions (lists of numbers) in ``geometry``, a GeoJSON mapping walked whole, counted up to just past
    ``limit`` (then ``limit + 1``); ValueError when it nests deeper than a Feature holding a MultiPolygon."""
    count = visited = 0
    stack = [(geometry, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, Mapping):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            if obj and not isinstance(obj[0], (list, tuple, Mapping)):  # a position (x, y)
                count += 1
                if count > limit:
                    return count
                continue
            children = obj
        else:
            continue
        visited += 1
        if len(children) > limit or visited > 2 * limit + 8:
            return limit + 1
        if depth > 8:  # Feature > geometry > coordinates > polygons > rings > positions, and some properties
            raise ValueError("geometry nests deeper than GeoJSON does; give "
                             '{"type": "Polygon", "coordinates": [[[lon, lat], ...]]} (or a MultiPolygon)')
        stack.extend((o, depth + 1) for o in children)
    return count


def _describe(exc: ValidationError) -> str:
    """One message for all the errors (at most ``_MAX_ERROR_LINES`` of them, each value a short repr), clipped
    to ``MAX_MESSAGE_CHARS``."""
    from s2pipe.stac.assets import redact_href

    errors = exc.errors(include_url=False)
    lines = ["invalid run configuration:"]
    for err in errors[:_MAX_ERROR_LINES]:
        where = _clip(".".join(str(p) for p in err["loc"]), 80) or "config"
        msg = _clip(err["msg"].removeprefix("Value error, "), 500)
        got = err.get("input")
        if isinstance(got, str):  # URLs may carry credentials (refused, never repeated)
            got = redact_href(got[:10_000])
        lines.append(f"  {where}: {msg} (got {_short(got)})" if where != "config" else f"  {msg}")
    if len(errors) > _MAX_ERROR_LINES:
        lines.append(f"  ... and {len(errors) - _MAX_ERROR_LINES} more")
    return _clip("\n".join(lines), MAX_MESSAGE_CHARS)

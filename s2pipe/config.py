"""Run configuration: one validated, frozen model that `s2pipe run CONFIG.yaml` and the flow share.

Everything is checked up front (region, dates, bands, catalog, modes) so a bad value fails before any
request is sent or any byte is written.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from s2pipe.bands import DEFAULT_CLEAR_CLASSES, SCL_CLASSES, SPECTRAL_10, check_bands
from s2pipe.errors import InputError

__all__ = [
    "DaskConfig", "GapfillConfig", "NormalizeConfig", "StorageConfig", "RunConfig", "RUN_POLICY", "load_config",
]


class DaskConfig(BaseModel):
    """Where the array work runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(None, description="Scheduler address (tcp://host:8786) of an existing cluster; None starts a LocalCluster.")
    spec: str | None = Field(None, description="Path of a cluster spec YAML (see deploy/dask/ and s2pipe.runtime.cluster) that starts the cluster for the run; exclusive with address.")
    n_workers: int = Field(2, ge=1, description="LocalCluster only: worker processes.")
    threads_per_worker: int = Field(1, ge=1, description="LocalCluster only: threads per worker.")
    memory_limit: str = Field("4GiB", description="LocalCluster only: memory limit per worker (Dask spills, then pauses, above it).")
    processes: bool = Field(True, description="LocalCluster only: worker processes (True) or threads in this process (False).")

    @model_validator(mode="after")
    def _one_cluster(self) -> "DaskConfig":
        if self.address and self.spec:
            raise ValueError(f"dask.address {self.address!r} and dask.spec {self.spec!r} are both set; keep address to "
                             "use a running cluster, or spec to start one for the run")
        return self


class GapfillConfig(BaseModel):
    """Cressman temporal interpolation (s2pipe.gapfill.cressman)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    radius: str = Field("10D", description="Influence radius R as a pandas timedelta string (the paper: 10 days).")
    kernel: Literal["gaussian", "cressman"] = Field("gaussian", description="Weight function of the distance d in days.")
    times: str | None = Field("5D", description="Output time axis: a frequency such as '5D' (regular grid) or null to keep the acquisition dates.")

    @field_validator("radius")
    @classmethod
    def _radius(cls, v: str) -> str:
        try:
            td = pd.Timedelta(v)
        except ValueError:
            raise ValueError(f"gapfill.radius {v!r} is not a time span; write e.g. '10D'") from None
        if td <= pd.Timedelta(0):
            raise ValueError(f"gapfill.radius {v!r} must be positive")
        return v

    @field_validator("times")
    @classmethod
    def _times(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                pd.tseries.frequencies.to_offset(v)
            except ValueError:
                raise ValueError(f"gapfill.times {v!r} is not a pandas frequency; write e.g. '5D' or null") from None
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

    catalog: str = Field("local-demo", description="Catalog profile name (see `s2pipe catalogs`) or path to a profile YAML.")
    bbox: tuple[float, float, float, float] | None = Field(None, description="Region as (west, south, east, north) in degrees lon/lat.")
    geometry: dict[str, Any] | None = Field(None, description="Region as a GeoJSON Polygon/MultiPolygon in lon/lat (instead of bbox).")
    start: dt.date = Field(description="First day of the time window (inclusive).")
    end: dt.date = Field(description="Last day of the time window (inclusive); 'today' means the UTC date when the run starts (scheduled runs).")
    max_cloud: float = Field(100.0, ge=0, le=100, description="Keep scenes whose eo:cloud_cover is at most this percentage.")
    bands: tuple[str, ...] = Field(SPECTRAL_10, description="Spectral bands of the cube (canonical names B02..B12, B8A).")
    epsg: int | None = Field(None, description="Output CRS; None takes the most common EPSG of the scenes (their UTM zone).")
    resolution: float = Field(10.0, gt=0, description="Output pixel size in CRS units (metres); 20 m bands are resampled cubically.")
    chunk_size: int | None = Field(None, gt=0, description="Spatial chunk/region size in pixels; None aligns with the catalog's COG blocks.")
    clear_classes: tuple[int, ...] = Field(DEFAULT_CLEAR_CLASSES, description="SCL classes counted as clear (default 4 vegetation, 5 bare, 6 water, 7 unclassified; add 11 for snow).")
    gapfill: GapfillConfig = Field(default_factory=GapfillConfig, description="Cressman interpolation settings.")
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig, description="Normalisation settings.")
    output: Path | str = Field(Path("out/cube.zarr"), description="Zarr store written (format 2, consolidated, GIS-readable): a local path, or an object-store URL (s3://bucket/cube.zarr, gs://..., az://container/...) read and written through fsspec with the storage settings.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Object-store settings (profile, endpoint, region, anonymous access) for URL outputs and s3://, gs://, az:// asset hrefs; no secrets (those come from the environment or the profile).")
    overwrite: bool = Field(False, description="Replace an existing store built from a different grid or inputs (otherwise: an error).")
    append: bool = Field(False, description="Extend an existing store with the acquisitions after its last date (scheduled runs) without rewriting it; its grid, bands and parameters must match (otherwise: an error). Creates the store when there is none.")
    strict: bool = Field(False, description="Fail when an asset is missing, truncated or not a valid COG, instead of leaving its scene out (recorded in the store's dropped_items / dropped_assets attributes and the run summary).")
    quicklook: bool = Field(True, description="Also save a quick-look PNG beside the store.")
    dask: DaskConfig = Field(default_factory=DaskConfig, description="Dask cluster settings.")

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, v: Any) -> Any:
        """A local path stays a ``Path``; a URL is validated (never echoing credentials) and kept as text."""
        from s2pipe.runtime.objectstore import check_url, is_url

        if isinstance(v, (str, os.PathLike)) and is_url(v):
            try:
                return check_url(str(v), what="output")
            except InputError as exc:
                raise ValueError(str(exc)) from None
        if isinstance(v, str):
            return Path(v[len("file://"):] if v.startswith("file://") else v)
        return v

    @field_validator("end", mode="before")
    @classmethod
    def _today(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "today":
            return dt.datetime.now(dt.timezone.utc).date()
        return v

    @field_validator("bands", mode="before")
    @classmethod
    def _bands(cls, v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [b.strip() for b in v.split(",") if b.strip()]
        bands = check_bands(list(v), argument="bands")
        if "SCL" in bands:
            raise ValueError("bands must list spectral bands only; SCL is read automatically for the cloud mask")
        if not bands:
            raise ValueError("bands is empty; list at least one band, e.g. B04")
        return bands

    @field_validator("clear_classes")
    @classmethod
    def _clear(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [c for c in v if c not in SCL_CLASSES]
        if bad or not v:
            raise ValueError(f"clear_classes {list(v)} must be non-empty SCL codes 0..11 (e.g. [4, 5, 6, 7])")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _region_and_dates(self) -> "RunConfig":
        from s2pipe.search import parse_region  # one place validates regions
        from s2pipe.stac.catalog import load_profile

        load_profile(self.catalog)  # an unknown catalog fails here, before Prefect or Dask start

        if (self.bbox is None) == (self.geometry is None):
            raise ValueError("give exactly one of bbox (west, south, east, north) or geometry (GeoJSON)")
        if self.append and self.overwrite:
            raise ValueError("append and overwrite exclude each other: append extends the store, overwrite replaces it")
        parse_region(bbox=self.bbox, geometry=self.geometry)
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}; swap them or fix the dates")
        return self

    def parameters(self) -> dict[str, Any]:
        """JSON-serialisable parameters (stored as provenance in the output)."""
        return json.loads(self.model_dump_json(exclude=set(RUN_POLICY)))


RUN_POLICY = ("dask", "overwrite", "quicklook", "append", "strict", "storage")
"""RunConfig fields that say how a run goes, not what the output holds: left out of ``parameters()``."""


def load_config(source: str | os.PathLike | dict[str, Any] | RunConfig, **overrides: Any) -> RunConfig:
    """Build a RunConfig from a YAML path, a dict or a RunConfig, applying ``overrides`` (None values ignored).

    Parameters
    ----------
    source : str, os.PathLike, dict or RunConfig
        Path of a YAML run configuration (a mapping of ``RunConfig`` fields), the fields as a dict, or a
        ``RunConfig`` to start from.
    **overrides
        Fields that replace those of ``source``; None values are ignored. ``dask_address`` sets ``dask.address``.

    Returns
    -------
    RunConfig
        The validated configuration.

    Raises
    ------
    InputError
        The file does not exist, is not valid YAML or does not hold a mapping, or the settings fail validation
        (the message lists each invalid setting).
    """
    if isinstance(source, RunConfig):
        data = source.model_dump()
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist; pass the path of a YAML run configuration")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "dask_address":
            data["dask"] = {**dict(data.get("dask") or {}), "address": value}
        else:
            data[key] = value
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        raise InputError(_describe(exc)) from None
    except InputError:
        raise


def _describe(exc: ValidationError) -> str:
    lines = ["invalid run configuration:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        if isinstance(got, str):  # URLs may carry credentials (refused, never repeated)
            from s2pipe.stac.assets import redact_href

            got = redact_href(got)
        lines.append(f"  {where}: {msg} (got {got!r})" if where != "config" else f"  {msg}")
    return "\n".join(lines)

"""Catalog profiles: one YAML file per STAC source, built in (the repository's ``catalogs/`` folder, installed as
package data ``s2pipe/catalogs/``) or given by path.

A profile says where the STAC API is, which collection to search, how the source names its assets
(``B04`` vs ``red``), how to turn DN into reflectance, and whether asset URLs must be signed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from s2pipe.bands import BANDS
from s2pipe.errors import InputError

__all__ = ["CATALOG_DIR", "LOCAL_DEMO_URL", "CatalogProfile", "list_profiles", "load_profile"]


def _builtin_catalog_dir() -> Path:
    """The built-in profiles: ``S2PIPE_CATALOGS`` if set, else the installed package data, else the checkout's."""
    if "S2PIPE_CATALOGS" in os.environ:
        return Path(os.environ["S2PIPE_CATALOGS"])
    package = Path(__file__).resolve().parents[1]  # s2pipe/
    installed = package / "catalogs"  # a wheel or `pip install .`
    return installed if installed.is_dir() else package.parent / "catalogs"  # an editable checkout


CATALOG_DIR = _builtin_catalog_dir()
"""Folder of the built-in profiles (override with the S2PIPE_CATALOGS environment variable)."""

LOCAL_DEMO_URL = "local-demo"


class CatalogProfile(BaseModel):
    """How to search and read one STAC source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Short identifier, e.g. 'earth-search-v1-l2a'.")
    description: str = Field("", description="One line shown by `s2pipe catalogs`.")
    url: str = Field(description="STAC API root URL, or 'local-demo' for the generated demo region.")
    collection: str = Field(description="Collection id searched, e.g. 'sentinel-2-l2a'.")
    signing: Literal["none", "planetary-computer"] = Field(
        "none", description="How asset hrefs are made readable: not at all, or Planetary Computer SAS tokens."
    )
    offset_rule: Literal["raster-bands", "processing-baseline", "earthsearch-boa-flag"] = Field(
        description=(
            "Where the DN offset comes from: the items' `raster:bands` offset; -1000 DN when "
            "`s2:processing_baseline` >= 04.00; or Earth Search's `earthsearch:boa_offset_applied` flag "
            "(true: already removed from the pixels) falling back to the baseline."
        )
    )
    block_size: int = Field(1024, gt=0, description="Internal COG tile size in pixels; cube chunks are multiples.")
    scale: float = Field(1e-4, gt=0, description="Reflectance per DN (1/QUANTIFICATION_VALUE).")
    nodata: int = Field(0, description="DN that marks missing pixels.")
    assets: dict[str, str] = Field(description="Canonical band name (B02, SCL, ...) -> the source's asset key.")
    demo_root: str | None = Field(None, description="local-demo only: folder the demo region is generated in.")
    read_retries: int = Field(3, ge=0, le=10, description=(
        "Retries of a failed pixel read: GDAL retries each HTTP range request answered 429/5xx, timed out or reset "
        "this often, and s2pipe reads a window again this often after any other failure (s2pipe.runtime.retry)."))
    read_backoff: float = Field(0.5, ge=0, le=60, description="Seconds before the first read retry; doubles after each.")
    http_timeout: float = Field(30.0, gt=0, le=600, description="Seconds GDAL waits for an HTTP answer.")

    @property
    def read_retry(self):
        """The ``RetryPolicy`` of pixel reads from this source."""
        from s2pipe.runtime.retry import RetryPolicy

        return RetryPolicy(retries=self.read_retries, backoff=self.read_backoff)

    def asset_key(self, band: str) -> str:
        """The source's asset key for canonical band ``band``; InputError if the source lacks it."""
        try:
            return self.assets[band]
        except KeyError:
            raise InputError(
                f"band {band!r} is not offered by catalog {self.name!r}; "
                f"choose from {', '.join(self.assets)} (argument: bands)"
            ) from None

    @property
    def is_local_demo(self) -> bool:
        return self.url == LOCAL_DEMO_URL


def list_profiles() -> list[str]:
    """Names of the built-in profiles.

    Returns
    -------
    list of str
        Sorted stems of the ``*.yaml`` files in ``CATALOG_DIR`` (the ``S2PIPE_CATALOGS`` environment variable,
        read at import, overrides that folder).
    """
    return sorted(p.stem for p in CATALOG_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | os.PathLike) -> CatalogProfile:
    """Load a built-in profile by name, or any profile YAML by path.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A built-in profile name (no file suffix: ``CATALOG_DIR / "<name>.yaml"``, see ``list_profiles``), or the
        path of a profile YAML.

    Returns
    -------
    CatalogProfile
        The validated profile.

    Raises
    ------
    InputError
        The profile file does not exist, is not valid YAML or does not match ``CatalogProfile``, or its ``assets``
        map band names that are not Sentinel-2 bands.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = CATALOG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise InputError(
            f"unknown catalog {str(name_or_path)!r}: no file {path}; "
            f"use one of {', '.join(list_profiles())} or a path to a profile YAML (argument: catalog)"
        )
    try:
        data = yaml.safe_load(path.read_text())
        profile = CatalogProfile(**data)
    except (yaml.YAMLError, TypeError, ValidationError) as exc:
        raise InputError(f"catalog profile {path} is invalid: {exc}") from exc
    unknown = [b for b in profile.assets if b not in BANDS]
    if unknown:
        raise InputError(f"catalog profile {path} maps unknown band names {unknown}; use {', '.join(BANDS)}")
    return profile

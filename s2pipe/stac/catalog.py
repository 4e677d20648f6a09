"""Catalog profiles: one YAML file per STAC source, built in (the repository's ``catalogs/`` folder, installed as
package data ``s2pipe/catalogs/``) or given by path.

A profile says where the STAC API is, which collection to search, how the source names its assets
(``B04`` vs ``red``), how to turn DN into reflectance, whether asset URLs must be signed, and which local
folders asset hrefs may name (``local_roots``).

A profile's ``url`` may carry credentials (``https://user:password@host/?token=...``): only
:attr:`CatalogProfile.public_url` (without them) belongs in log lines, errors and output attributes, and the
errors of :func:`load_profile` never repeat a value of the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from s2pipe.bands import BANDS
from s2pipe.errors import InputError
from s2pipe.runtime.files import read_yaml

__all__ = ["CATALOG_DIR", "LOCAL_DEMO_URL", "DEFAULT_DEMO_ROOT", "CatalogProfile", "list_profiles", "load_profile"]


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

DEFAULT_DEMO_ROOT = "out/demo"
"""Folder of the local demo region when its profile sets no ``demo_root`` (relative: to the working directory)."""


class CatalogProfile(BaseModel):
    """How to search and read one STAC source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Short identifier, e.g. 'earth-search-v1-l2a'.")
    description: str = Field("", description="One line shown by `s2pipe catalogs`.")
    url: str = Field(description="STAC API root URL, or 'local-demo' for the generated demo region.")
    collection: str = Field(description="Collection id searched, e.g. 'sentinel-2-l2a'.")
    signing: Literal["none", "planetary-computer"] = Field(
        "none", description=("How asset hrefs are made readable: not at all, or with SAS tokens from Planetary "
                              "Computer's token service, signed at search time and again each time a file is "
                              "opened (s2pipe.stac.signing).")
    )
    token_url: str | None = Field(None, description=(
        "signing only: the SAS token service (GET {token_url}/{account}/{container}); default: PC_SDK_SAS_URL, "
        "else Planetary Computer's."))
    sign_hosts: tuple[str, ...] = Field((".blob.core.windows.net",), description=(
        "signing only: hosts (host[:port]) whose hrefs are signed; a host ending with one of these counts."))
    token_renew_s: float = Field(300.0, ge=0, le=3600, description=(
        "signing only: seconds before its expiry at which a cached token is replaced by a new one."))
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
    local_roots: tuple[str, ...] | None = Field(None, description=(
        "Local folders whose files asset hrefs may name (relative ones: from the working directory); any other "
        "local path is refused unread. Default: the catalog's own root (the local demo: demo_root; a remote "
        "STAC API: none). Remote hrefs (http(s)://, s3://, gs://, az://) are not affected."))

    @field_validator("local_roots")
    @classmethod
    def _local_roots(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        bad = [r for r in v if not r.strip() or "://" in r]
        if bad:
            raise ValueError(f"local_roots {bad} are not local folders; list folder paths such as /data/scenes")
        return v

    @property
    def signer(self):
        """The ``s2pipe.stac.signing.HrefSigner`` of ``signing`` (None: hrefs are opened as they are)."""
        if self.signing == "none":
            return None
        from s2pipe.stac.signing import HrefSigner

        return HrefSigner(token_url=self.token_url, hosts=self.sign_hosts, renew_before=self.token_renew_s,
                          timeout=self.http_timeout)

    @property
    def public_url(self) -> str:
        """``url`` without ``user:password@``, query string and fragment: the form for logs, errors and output
        attributes (``s2pipe.stac.assets.redact_href``)."""
        # imported here: s2pipe.stac.assets imports s2pipe.stac.items, which imports this module
        from s2pipe.stac.assets import redact_href

        return redact_href(self.url)

    @property
    def demo_folder(self) -> str:
        """The local demo region's folder: ``demo_root``, else ``DEFAULT_DEMO_ROOT``."""
        return self.demo_root or DEFAULT_DEMO_ROOT

    @property
    def asset_roots(self) -> tuple[str, ...]:
        """The local folders asset hrefs may name, as absolute paths with symlinks resolved: ``local_roots``,
        else the catalog's own root (``demo_folder`` for the local demo; none for a remote STAC API).

        Relative folders are taken from the working directory at the time of the call."""
        if self.local_roots is not None:
            roots: tuple[str, ...] = self.local_roots
        else:
            roots = (self.demo_folder,) if self.is_local_demo else ()
        return tuple(str(Path(r).expanduser().resolve()) for r in roots)

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
    # The messages below never repeat a value of the file: a url or a header there may hold a secret.
    # ``from None``: neither does the traceback (pydantic's and PyYAML's messages quote the input).
    data = read_yaml(path, what="catalog profile")
    if not isinstance(data, dict):
        raise InputError(f"catalog profile {path} is invalid: it holds a YAML {type(data).__name__}, not a "
                         f"mapping of the fields {', '.join(CatalogProfile.model_fields)}")
    try:
        profile = CatalogProfile.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"catalog profile {path} is invalid: {_field_problems(exc)}") from None
    unknown = [b for b in profile.assets if b not in BANDS]
    if unknown:
        raise InputError(f"catalog profile {path} maps unknown band names {unknown}; use {', '.join(BANDS)}")
    return profile


_FIELD_FIX: dict[str, str] = {
    "extra_forbidden": "not a profile field: remove it",
    "missing": "required: add it",
}


def _field_problems(exc: ValidationError) -> str:
    """Every field pydantic rejected, with what is wrong and the fix, but never the value given."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"]) or "the profile"
        problems.append(f"field {loc!r}: {_FIELD_FIX.get(err['type'], err['msg'])}")
    return "; ".join(problems) + f" (the fields of a profile: {', '.join(CatalogProfile.model_fields)})"

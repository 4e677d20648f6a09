"""Object-store locations: outputs and inputs as ``s3://``, ``gs://``, ``az://`` (``abfs://``) URLs through fsspec.

A location is a local path (``pathlib.Path``, handled by the standard library as before) or an object-store URL,
handled by :class:`ObjectPath`: the subset of the ``pathlib.Path`` API the store's bookkeeping uses (``/``,
``exists``, ``read_text``, ``touch``, ``unlink``, ...) on the URL's fsspec filesystem
(``fsspec.core.url_to_fs(url, **storage_options(url, storage))``). ``memory://`` URLs work as well (tests).

Credentials never pass through s2pipe: they come from the environment or a profile, read by the filesystem
libraries and GDAL themselves (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` /
``AWS_PROFILE`` or ``~/.aws/credentials``; ``GOOGLE_APPLICATION_CREDENTIALS`` or the gcloud default; the
``AZURE_STORAGE_ACCOUNT_NAME`` / ``AZURE_STORAGE_KEY`` / ``AZURE_STORAGE_SAS_TOKEN`` / ... variables). The
``storage`` settings (``s2pipe.config.StorageConfig``: ``profile``, ``endpoint_url``, ``region``, ``anon``) are
not secret; URLs embedding credentials (``s3://KEY:SECRET@bucket/...``, SAS or signed query strings) are refused
by :func:`check_url` without repeating them.
"""
from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from s2pipe.errors import InputError

__all__ = [
    "gdal_vsi_path", "forget_cached_ranges",
    "OBJECT_PROTOCOLS", "ATOMIC_CREATE", "is_url", "check_url", "storage_options", "gdal_options", "location",
    "ObjectPath", "rmtree", "zarr_target", "zarr_store", "storage_environment",
]

OBJECT_PROTOCOLS = {
    "s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az", "abfss": "az", "adl": "az",
    "memory": "memory",
}
"""URL schemes accepted for outputs -> the storage family whose settings apply."""

ATOMIC_CREATE = frozenset({"s3", "gs", "az"})
"""Families whose fsspec ``pipe_file(..., mode="create")`` is an exclusive create on the server (S3
``If-None-Match: *``, GCS ``ifGenerationMatch=0``, Azure ``overwrite=False``): the lock is safe there. Elsewhere
(``memory://``, other fsspec filesystems) it is advisory: a check, then a write."""


def is_url(location: str | os.PathLike | "ObjectPath") -> bool:
    """True for ``scheme://...`` text other than ``file://`` (a local path)."""
    if isinstance(location, ObjectPath):
        return True
    text = os.fspath(location) if isinstance(location, os.PathLike) else str(location)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    return bool(scheme) and scheme != "file"


def _redacted(url: str) -> str:
    from s2pipe.stac.assets import redact_href

    return redact_href(url)


def check_url(url: str, *, what: str = "output") -> str:
    """Validate an object-store URL for ``what``; return it without a trailing ``/``.

    Raises ``InputError`` (never repeating a secret) for an unknown scheme, a URL without a bucket and key
    (``s3://bucket/cube.zarr``), or one embedding credentials: a ``user:password@`` part, or any query string
    (SAS tokens, ``?sig=``, signed URLs).
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    fix_creds = ("credentials come from the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                 "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_KEY/AZURE_STORAGE_SAS_TOKEN) "
                 "or a profile (storage.profile): remove them from the URL")
    if parts.query or "?" in url:
        raise InputError(f"{what} URL {_redacted(url)} carries a query string (a SAS token or signature?); {fix_creds}")
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if userinfo and (":" in userinfo or OBJECT_PROTOCOLS.get(scheme) != "az"):
        raise InputError(f"{what} URL {_redacted(url)} embeds credentials before '@'; {fix_creds}")
    if scheme not in OBJECT_PROTOCOLS:
        raise InputError(f"{what} URL {_redacted(url)}: scheme {scheme!r} is not supported; use a local path or "
                         f"one of {', '.join(sorted(OBJECT_PROTOCOLS))}://bucket/path")
    key = parts.path.strip("/")
    if not parts.netloc or not key:
        raise InputError(f"{what} URL {_redacted(url)} names no object inside a bucket; write e.g. "
                         f"{scheme}://bucket/cubes/cube.zarr")
    return url.rstrip("/")


def storage_options(url: str, storage: Any = None) -> dict[str, Any]:
    """fsspec storage options for ``url`` from the non-secret ``storage`` settings (StorageConfig, a mapping
    or None); credentials are left to the filesystem libraries (environment, profile)."""
    s = _settings(storage)
    family = OBJECT_PROTOCOLS.get(urllib.parse.urlsplit(url).scheme.lower())
    opts: dict[str, Any] = {}
    if family == "s3":
        if s["profile"]:
            opts["profile"] = s["profile"]
        if s["endpoint_url"]:
            opts["endpoint_url"] = s["endpoint_url"]
        if s["region"]:
            opts["client_kwargs"] = {"region_name": s["region"]}
        if s["anon"]:
            opts["anon"] = True
    elif family == "gs":
        if s["anon"]:
            opts["token"] = "anon"
        if s["endpoint_url"]:
            opts["endpoint_url"] = s["endpoint_url"]
    elif family == "az":
        if s["anon"]:
            opts["anon"] = True
    return opts


def gdal_options(storage: Any = None) -> dict[str, str]:
    """GDAL configuration options for reading ``s3://`` / ``gs://`` / ``az://`` hrefs (``/vsis3/`` ...) with the
    ``storage`` settings: ``AWS_S3_ENDPOINT`` (host[:port]), ``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``,
    ``AWS_PROFILE``, ``AWS_REGION``, ``AWS_NO_SIGN_REQUEST`` / ``GS_NO_SIGN_REQUEST`` / ``AZURE_NO_SIGN_REQUEST``.
    Empty without settings (GDAL then reads the environment alone). Never holds a secret."""
    s = _settings(storage)
    env: dict[str, str] = {}
    if s["endpoint_url"]:
        ep = urllib.parse.urlsplit(s["endpoint_url"] if "://" in s["endpoint_url"] else f"https://{s['endpoint_url']}")
        env["AWS_S3_ENDPOINT"] = ep.netloc + ep.path.rstrip("/")
        env["AWS_HTTPS"] = "NO" if ep.scheme == "http" else "YES"
        env["AWS_VIRTUAL_HOSTING"] = "FALSE"  # S3-compatible servers: path-style bucket addressing
    if s["profile"]:
        env["AWS_PROFILE"] = s["profile"]
    if s["region"]:
        env["AWS_REGION"] = s["region"]
    if s["anon"]:
        env.update(AWS_NO_SIGN_REQUEST="YES", GS_NO_SIGN_REQUEST="YES", AZURE_NO_SIGN_REQUEST="YES")
    return env


_VSI_PREFIX = {"http": "/vsicurl/http", "https": "/vsicurl/https", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/",
               "abfs": "/vsiaz/"}


def gdal_vsi_path(href: str) -> str | None:
    """The GDAL virtual path of an HTTP(S) or object-store href (``/vsicurl/https://...``, ``/vsis3/bucket/key``),
    None for a local path."""
    scheme, sep, rest = str(href).partition("://")
    if not sep or scheme.lower() not in _VSI_PREFIX:
        return None
    prefix = _VSI_PREFIX[scheme.lower()]
    return prefix + ("://" + rest if prefix.startswith("/vsicurl/") else rest)


@functools.lru_cache(maxsize=1)
def _gdal_clear_cache():
    """GDAL's ``VSICurlPartialClearCache`` from rasterio's libgdal, or None. Looked up through rasterio's own
    extension module (its dependencies are searched), not the first libgdal loaded: pyogrio loads another."""
    import ctypes

    import rasterio._base

    try:
        fn = ctypes.CDLL(rasterio._base.__file__).VSICurlPartialClearCache
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_char_p], None
    return fn


def forget_cached_ranges(href: str) -> bool:
    """Drop what GDAL cached of ``href``'s byte ranges (``/vsicurl/`` and the object-store file systems), so that
    a read after a failure downloads them again. GDAL keeps a body that was cut short as if it were whole: without
    this, every retry of the read fails the same way. Returns whether GDAL's cache could be reached."""
    vsi, fn = gdal_vsi_path(href), _gdal_clear_cache()
    if vsi is None or fn is None:
        return False
    fn(vsi.encode())
    return True


def _settings(storage: Any) -> dict[str, Any]:
    keys = ("profile", "endpoint_url", "region", "anon")
    if storage is None:
        return dict.fromkeys(keys)
    if isinstance(storage, Mapping):
        return {k: storage.get(k) for k in keys}
    return {k: getattr(storage, k, None) for k in keys}


def location(path: str | os.PathLike | "ObjectPath", storage: Any = None) -> "Path | ObjectPath":
    """``path`` as a ``pathlib.Path`` (local) or an :class:`ObjectPath` (validated object-store URL)."""
    if isinstance(path, ObjectPath):
        return path
    if is_url(path):
        url = check_url(str(path))
        return ObjectPath(url, storage_options(url, storage))
    text = os.fspath(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


class ObjectPath:
    """An object (or key prefix) of an fsspec filesystem with the ``pathlib.Path`` calls the store uses.

    ``url``: ``scheme://bucket/key`` (no trailing ``/``); ``options``: fsspec storage options (non-secret).
    Object stores have no folders: ``mkdir`` does nothing, a "folder" exists while a key lies under it.
    Listings are never served from fsspec's cache (other processes write the same store).
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.options = dict(options or {})

    # -- naming
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPath({self.url!r})"

    def __fspath__(self) -> str:  # lets str-accepting code (logs, f-strings, os.fspath) use it as text
        return self.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, name: str) -> "ObjectPath":
        return ObjectPath(f"{self.url}/{str(name).strip('/')}", self.options)

    @property
    def name(self) -> str:
        return posixpath.basename(self.url)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> "ObjectPath":
        return ObjectPath(self.url.rsplit("/", 1)[0], self.options)

    def with_name(self, name: str) -> "ObjectPath":
        return self.parent / name

    def with_suffix(self, suffix: str) -> "ObjectPath":
        return self.with_name(self.stem + suffix)

    # -- filesystem
    @property
    def fs(self):
        """The fsspec filesystem (instances are cached by fsspec per options)."""
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.options)[0]

    @property
    def key(self) -> str:
        """The path inside the filesystem (``bucket/key``)."""
        return self.fs._strip_protocol(self.url)

    @property
    def atomic_create(self) -> bool:
        """Whether ``create`` is an exclusive create on the server (see ``ATOMIC_CREATE``)."""
        return OBJECT_PROTOCOLS.get(self.url.split("://", 1)[0].lower()) in ATOMIC_CREATE

    def _fresh(self):
        fs = self.fs
        fs.invalidate_cache()
        return fs

    def exists(self) -> bool:
        return self._fresh().exists(self.key)

    def is_file(self) -> bool:
        return self._fresh().isfile(self.key)

    def is_dir(self) -> bool:
        fs = self._fresh()
        return fs.isdir(self.key)

    def is_symlink(self) -> bool:
        return False

    def iterdir(self) -> Iterator["ObjectPath"]:
        fs = self._fresh()
        try:
            names = fs.ls(self.key, detail=False)
        except FileNotFoundError:
            return
        for name in names:
            yield self / posixpath.basename(name.rstrip("/"))

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.key)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> int:
        self.fs.pipe_file(self.key, data)
        return len(data)

    def write_text(self, text: str) -> int:
        return self.write_bytes(text.encode())

    def create(self, data: bytes) -> None:
        """Write ``data`` only if the object does not exist, else ``FileExistsError`` (exclusive where
        ``atomic_create``, a check-then-write elsewhere)."""
        fs = self.fs
        try:
            fs.pipe_file(self.key, data, mode="create")
        except TypeError:  # a filesystem without create mode
            if fs.exists(self.key):
                raise FileExistsError(self.url) from None
            fs.pipe_file(self.key, data)

    def touch(self, exist_ok: bool = True) -> None:
        self.fs.pipe_file(self.key, b"")

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do on an object store (keys need no folders)."""

    def rmtree(self) -> None:
        """Delete every object under this prefix."""
        fs = self._fresh()
        try:
            fs.rm(self.key, recursive=True)
        except FileNotFoundError:
            pass
        fs.invalidate_cache()


def rmtree(path: "Path | ObjectPath") -> None:
    """Delete the folder (local) or every object under the prefix (object store)."""
    if isinstance(path, ObjectPath):
        path.rmtree()
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def zarr_target(path: "Path | ObjectPath") -> tuple[str, dict[str, Any] | None]:
    """(store argument, storage_options) for ``xarray.to_zarr`` / ``open_zarr`` / ``zarr.open_group``."""
    if isinstance(path, ObjectPath):
        return path.url, path.options
    return str(path), None


def zarr_store(path: "Path | ObjectPath", *, read_only: bool = False):
    """A zarr store object for ``zarr.consolidate_metadata`` and friends (a path string when local)."""
    if isinstance(path, ObjectPath):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(path.url, storage_options=path.options, read_only=read_only)
    return str(path)


@contextlib.contextmanager
def storage_environment(storage: Any = None, *, client: Any = None) -> Iterator[dict[str, str]]:
    """Apply the ``storage`` settings to fsspec (``fsspec.config.conf``) and GDAL (environment variables) in this
    process and, with a ``distributed.Client``, on its workers; restore the previous values on exit.

    For code that opens hrefs itself (the asset check): fsspec filesystems and ``rasterio.open`` then reach the
    configured endpoint / profile. Only non-secret settings are applied (credentials stay where they are).
    Yields the GDAL options applied.
    """
    env = gdal_options(storage)
    conf = {"s3": storage_options("s3://b/k", storage), "gs": storage_options("gs://b/k", storage),
            "az": storage_options("az://b/k", storage)}
    conf = {k: v for k, v in conf.items() if v}
    if not env and not conf:
        yield env
        return
    saved = _apply_environment(env, conf)
    saved_workers = client.run(_apply_environment, env, conf) if client is not None else {}
    try:
        yield env
    finally:
        if client is not None:
            for worker, prev in saved_workers.items():
                with contextlib.suppress(Exception):
                    client.run(_restore_environment, prev, workers=[worker])
        _restore_environment(saved)


def _apply_environment(env: dict[str, str], conf: dict[str, dict]) -> dict[str, Any]:
    import fsspec.config

    saved = {"env": {k: os.environ.get(k) for k in env}, "conf": {k: fsspec.config.conf.get(k) for k in conf}}
    os.environ.update(env)
    for protocol, opts in conf.items():
        fsspec.config.conf[protocol] = {**(fsspec.config.conf.get(protocol) or {}), **opts}
    return saved


def _restore_environment(saved: dict[str, Any]) -> None:
    import fsspec.config

    for k, v in saved["env"].items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    for protocol, opts in saved["conf"].items():
        if opts is None:
            fsspec.config.conf.pop(protocol, None)
        else:
            fsspec.config.conf[protocol] = opts

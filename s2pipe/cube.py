"""Cube stage: normalized STAC items -> a lazy raw datacube ``"dn"`` (time, band, y, x) uint16 on one exact grid.

stackstac 0.5.1 reads the COGs: spectral bands resampled with cubic convolution, SCL with nearest neighbour,
two calls on the identical grid concatenated over ``band``. Scenes of the same solar day (neighbouring
tiles of one overpass) are merged into one date, the first valid (non-zero) pixel winning. Nothing is read
until the Dask array is computed.

Grid: the output CRS is ``epsg`` or the most common item EPSG; pixel edges lie on multiples of
``resolution`` (a ``bbox`` is snapped outwards), so ``x``/``y`` pixel centres and the ``transform``
attribute are exact. Chunks are ``(1 date, 1 band, chunk_size, chunk_size)`` with chunk edges on the COG
block grid of the first item (the first row/column of chunks is shorter when a ``bbox`` cuts a tile).
"""
from __future__ import annotations

import datetime as dt
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Literal, NamedTuple, get_args

import dask.array as da
import numpy as np
import pandas as pd
import pystac
import rioxarray  # noqa: F401  (registers the .rio accessor)
import stackstac
import xarray as xr
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.windows import Window
from stackstac.nodata_reader import NodataReader, exception_matches, nodata_for_window
from stackstac.rio_reader import (
    MULTITHREADED_DRIVER_ALLOWLIST,
    AutoParallelRioReader,
    SelfCleaningDatasetReader,
    SingleThreadedRioDataset,
    ThreadLocalRioDataset,
)

from s2pipe.bands import SCL, SPECTRAL_10, check_bands
from s2pipe.errors import AssetReadError, InputError, NoScenesError
from s2pipe.grid import Grid, grid_of  # noqa: F401  (re-exported: the grid of a cube)
from s2pipe.runtime.objectstore import forget_cached_ranges
from s2pipe.runtime.retry import (
    HTTP_TIMEOUT,
    READ_RETRY,
    RetryPolicy,
    http_gdal_options,
    retryable_read_error,
)
from s2pipe.stac.assets import check_hrefs, redact_href
from s2pipe.stac.items import item_dict
from s2pipe.stac.signing import HrefSigner, is_forbidden, redact_library_logs

__all__ = [
    "DEFAULT_CHUNK_SIZE", "SOLAR_DAY", "ReadPath", "READ_PATHS", "TimeChunks", "TIME_CHUNKS", "Grid",
    "build_cube", "grid_of", "PlainReadRioReader", "direct_plan", "DirectReadRioReader", "default_chunk_size",
]

DEFAULT_CHUNK_SIZE = 2048
"""Default spatial chunk (pixels): a multiple of the 256/512/1024-px blocks of Sentinel-2 COGs (a chunk smaller
than a block decodes that block several times: 0.5x the speed in benchmarks/bench_cube.py). One 2048² uint16
chunk (one date, one band) is 8 MiB; 2048 read ~10 % faster than 1024 here and makes 4x fewer tasks."""

SOLAR_DAY = "s2pipe:solar_day"

redact_library_logs()  # GDAL's HTTP messages name the signed href: its token must not reach a log

ReadPath = Literal["auto", "warp"]
READ_PATHS: tuple[str, ...] = get_args(ReadPath)
TimeChunks = Literal["date", "all"]
TIME_CHUNKS: tuple[str, ...] = get_args(TimeChunks)

_SNAP_TOL = 1e-6


def build_cube(
    items: Iterable[pystac.Item | dict[str, Any]],
    *,
    bands: Sequence[str] = SPECTRAL_10,
    include_scl: bool = True,
    bbox: Sequence[float] | None = None,
    epsg: int | None = None,
    resolution: float = 10.0,
    chunk_size: int | None = None,
    storage: Any = None,
    read: ReadPath = "auto",
    time_chunks: TimeChunks = "date",
    read_retry: RetryPolicy = READ_RETRY,
    http_timeout: float = HTTP_TIMEOUT,
    signer: HrefSigner | None = None,
) -> xr.DataArray:
    """Build the lazy raw cube ``"dn"`` (time, band, y, x) uint16, 0 = nodata, one date per solar day.

    Nothing is read until the Dask array is computed. Within a solar day, scenes are taken in acquisition order
    (the first valid, non-zero pixel wins); if they state different offsets, the later scenes' DN are shifted by
    (their offset - the day's offset) / scale so one offset holds for the day.

    Parameters
    ----------
    items : iterable of pystac.Item or dict
        Normalized STAC items (docs/architecture.md).
    bands : sequence of str, default ``SPECTRAL_10``
        Spectral bands of the cube in cube order (canonical names, case-insensitive); SCL is not one of them.
    include_scl : bool, default True
        Append the SCL band (nearest-neighbour resampling; the spectral bands use cubic convolution) last.
    bbox : sequence of float, optional
        (west, south, east, north) in degrees, snapped outwards to multiples of ``resolution``; None covers all
        items.
    epsg : int, optional
        Output CRS (default: the most common item EPSG).
    resolution : float, default 10.0
        Pixel size in metres (CRS units).
    chunk_size : int, optional
        Spatial chunk in pixels (default ``DEFAULT_CHUNK_SIZE``); chunk edges lie on the COG block grid of the
        first item.
    storage : s2pipe.config.StorageConfig or mapping, optional
        Non-secret object-store settings (``s2pipe.config.StorageConfig`` or a mapping) for ``s3://``, ``gs://``,
        ``az://`` hrefs, given to GDAL as configuration options (``s2pipe.runtime.objectstore.gdal_options``: S3
        endpoint, profile, region, unsigned requests) through stackstac's ``gdal_env``; credentials stay in the
        environment.
    read : {"auto", "warp"}, default "auto"
        "auto" reads assets already on the output pixel lattice directly with GDAL's resampling on read
        (``DirectReadRioReader``) and warps the others; "warp" warps every asset (stackstac's ``WarpedVRT``).
    time_chunks : {"date", "all"}, default "date"
        "date" gives (1 date, 1 band, chunk, chunk) chunks; "all" gives time-whole (all dates, 1 band, chunk,
        chunk) chunks, each read by one task straight from the COGs: the blocks Cressman gap filling needs,
        without a rechunk of the raw cube.
    read_retry : RetryPolicy, default ``s2pipe.runtime.retry.READ_RETRY``
        How a failed read is retried: GDAL retries each HTTP range request answered 429 / 5xx, timed out or
        reset ``read_retry.retries`` times; any other failure of a window (a body cut short, a broken
        connection) opens the file again and reads the window again, as often, with exponential backoff.
    http_timeout : float, default 30
        Seconds GDAL waits for an HTTP answer before the request counts as failed.
    signer : s2pipe.stac.signing.HrefSigner, optional
        Signs (or re-signs) each href it applies to just before the file is opened, with a token from a cache
        that renews it before it expires; a read answered 403 is signed again and read again. None: hrefs are
        opened as they are.

    Returns
    -------
    xarray.DataArray
        ``"dn"`` (time, band, y, x) uint16, Dask-backed, 0 = nodata. Coordinates: ``time`` (solar day 00:00,
        datetime64[ns]), ``band`` (SCL last), ``x``/``y`` pixel centres, ``scale`` and ``offset`` (time, band)
        float64 with reflectance = DN * scale + offset, ``spatial_ref``. Attributes: ``crs``, ``transform``
        (6 floats, rasterio order), ``resolution``, ``stac_items``, ``catalog``, ``catalog_url``.

    Raises
    ------
    NoScenesError
        ``items`` is empty.
    InputError
        ``read``, ``time_chunks``, ``resolution`` or ``chunk_size`` is invalid; a band name is unknown or repeated,
        ``bands`` lists SCL, the cube would have no band, or a band is missing from some items; ``bbox`` is
        malformed or meets no item; ``epsg`` is None and no item states one; an item has no datetime; or scenes of
        one solar day state different scales, or offsets that differ by a fractional number of DN.
    AssetError
        An asset href is not one the pipeline may open (``stac.assets.confine_href``: another scheme, a local
        file outside the catalog's folders, a ``..`` path).
    """
    if read not in READ_PATHS:
        raise InputError(f"read={read!r} is not a read path; pass one of {list(READ_PATHS)} (argument: read)")
    if time_chunks not in TIME_CHUNKS:
        raise InputError(f"time_chunks={time_chunks!r}; pass one of {list(TIME_CHUNKS)} (argument: time_chunks)")
    plain = [item_dict(it, caller="build_cube") for it in items]
    if not plain:
        raise NoScenesError(
            "build_cube got an empty item list; widen the search region, the dates or the cloud-cover "
            "limit (arguments bbox, start/end, max_cloud) so that scenes are found"
        )
    spectral = check_bands(list(bands), argument="bands")
    if SCL in spectral:
        raise InputError(f"bands={list(bands)} lists SCL; leave it out and use include_scl=True (SCL is appended last)")
    if not spectral and not include_scl:
        raise InputError("bands is empty and include_scl=False: the cube would have no band; give bands=[...]")
    all_bands = spectral + ((SCL,) if include_scl else ())
    _check_assets(plain, all_bands)
    check_hrefs(plain, all_bands)
    resolution = float(resolution)
    if not math.isfinite(resolution) or resolution <= 0:
        raise InputError(f"resolution={resolution!r} must be a positive number of metres (argument: resolution)")
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    if chunk <= 0:
        raise InputError(f"chunk_size={chunk_size!r} must be a positive number of pixels (argument: chunk_size)")

    out_epsg, bounds, width, height, transform = _output_grid(plain, all_bands, bbox=bbox, epsg=epsg,
                                                              resolution=resolution)

    # one date per solar day, scenes in acquisition order within the day
    days = [_solar_day(it) for it in plain]
    order = sorted(range(len(plain)), key=lambda i: (days[i], _datetime(plain[i])))
    plain = [plain[i] for i in order]
    days = [days[i] for i in order]
    day_keys = list(dict.fromkeys(days))
    group_sizes = tuple(days.count(d) for d in day_keys)
    scale, offset, shift = _scales_offsets(plain, days, day_keys, all_bands)

    ref_x, ref_y = _block_origin(plain[0], all_bands, out_epsg)
    y_chunks = _block_aligned_chunks(height, round((ref_y - bounds[3]) / resolution), chunk)
    x_chunks = _block_aligned_chunks(width, round((bounds[0] - ref_x) / resolution), chunk)

    common = dict(
        epsg=out_epsg, resolution=resolution, bounds=bounds, snap_bounds=False,
        chunksize=(group_sizes if time_chunks == "date" else len(plain), 1, y_chunks, x_chunks), dtype="uint16",
        fill_value=np.uint16(0), rescale=False,
        sortby_date=False, xy_coords="center", properties=False, band_coords=False,
        reader=partial(DirectReadRioReader if read == "auto" else PlainReadRioReader, retry=read_retry, signer=signer),
    )
    from s2pipe.runtime.objectstore import gdal_options

    common["gdal_env"] = stackstac.DEFAULT_GDAL_ENV.updated(
        always={**http_gdal_options(read_retry, timeout=http_timeout), **gdal_options(storage)})
    raw = _stack(plain, spectral, include_scl=include_scl, shape=(height, width), **common)

    if len(day_keys) != len(plain) or shift.any():
        out_chunks = ((1,) * len(day_keys) if time_chunks == "date" else (len(day_keys),),) + raw.chunks[1:]
        raw = da.map_blocks(partial(_merge_days, sizes=group_sizes, shift=shift), raw, chunks=out_chunks,
                            dtype=np.uint16, name="merge-solar-day-" + _token(raw, shift))

    return _labelled(raw, plain, day_keys, all_bands, scale=scale, offset=offset, bounds=bounds,
                     resolution=resolution, epsg=out_epsg, transform=transform)


def _output_grid(plain: list[dict], bands: tuple[str, ...], *, bbox, epsg, resolution: float):
    """The output grid: (EPSG, bounds snapped to the resolution, width, height, affine of the top-left corner).
    ``bbox`` (lon/lat) must meet an item; without it the grid covers all items."""
    out_epsg = int(epsg) if epsg is not None else _common_epsg(plain)
    item_bounds = [_item_bounds(it, bands, out_epsg) for it in plain]
    if bbox is not None:
        bbox_proj = _bbox_to_crs(bbox, out_epsg)
        if not any(_overlap(bbox_proj, b) for b in item_bounds):
            lon = [_item_lonlat(it) for it in plain]
            ext = (min(b[0] for b in lon), min(b[1] for b in lon), max(b[2] for b in lon), max(b[3] for b in lon))
            raise InputError(
                f"bbox={tuple(bbox)} does not intersect any of the {len(plain)} items (they cover lon/lat "
                f"{tuple(round(v, 5) for v in ext)}); pass a bbox inside that extent (argument: bbox)"
            )
        bounds = bbox_proj
    else:
        bounds = (min(b[0] for b in item_bounds), min(b[1] for b in item_bounds),
                  max(b[2] for b in item_bounds), max(b[3] for b in item_bounds))
    bounds = _snap(bounds, resolution)
    width = round((bounds[2] - bounds[0]) / resolution)
    height = round((bounds[3] - bounds[1]) / resolution)
    transform = Affine(resolution, 0.0, bounds[0], 0.0, -resolution, bounds[3])

    return out_epsg, bounds, width, height, transform


def _stack(plain: list[dict], spectral: tuple[str, ...], *, include_scl: bool, shape: tuple[int, int],
           **common) -> da.Array:
    """stackstac's (time, band, y, x) uint16 array of the spectral bands (cubic resampling) and SCL (nearest)."""
    parts = []
    with warnings.catch_warnings():  # stackstac 0.5.1 multiplies Affine * tuple, which affine >= 2.4 deprecates
        warnings.filterwarnings("ignore", message="Use `@` matmul", category=PendingDeprecationWarning)
        if spectral:
            parts.append(stackstac.stack(plain, assets=list(spectral), resampling=Resampling.cubic, **common).data)
        if include_scl:
            parts.append(stackstac.stack(plain, assets=[SCL], resampling=Resampling.nearest, **common).data)
    raw = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=1)
    if raw.shape[2:] != tuple(shape):  # stackstac computes the shape itself: make sure the grids agree
        raise AssertionError(f"stackstac grid {raw.shape[2:]} != expected {tuple(shape)}")
    return raw


def _labelled(raw: da.Array, plain: list[dict], day_keys: list, all_bands: tuple[str, ...], *, scale, offset,
              bounds, resolution: float, epsg: int, transform: Affine) -> xr.DataArray:
    """``raw`` as the ``"dn"`` DataArray: coordinates, CRS and the provenance attributes."""
    width = round((bounds[2] - bounds[0]) / resolution)
    height = round((bounds[3] - bounds[1]) / resolution)
    out_epsg = epsg
    x = bounds[0] + (np.arange(width) + 0.5) * resolution
    y = bounds[3] - (np.arange(height) + 0.5) * resolution
    time = pd.DatetimeIndex([pd.Timestamp(d) for d in day_keys]).values.astype("datetime64[ns]")
    cube = xr.DataArray(
        raw,
        dims=("time", "band", "y", "x"),
        coords={
            "time": time,
            "band": list(all_bands),
            "y": y,
            "x": x,
            "scale": (("time", "band"), scale),
            "offset": (("time", "band"), offset),
        },
        name="dn",
    )
    # rioxarray drops `crs`/`transform` attributes when it writes spatial_ref: set them afterwards
    cube = cube.rio.write_crs(f"EPSG:{out_epsg}").rio.write_transform(transform)
    catalog, catalog_url = _catalog(plain)
    cube.attrs.update(
        crs=f"EPSG:{out_epsg}",
        transform=[float(v) for v in list(transform)[:6]],
        resolution=resolution,
        stac_items=[it["id"] for it in plain],
        catalog=catalog,
        catalog_url=catalog_url,
    )
    return cube


# ---------------------------------------------------------------------------------------------- helpers


class PlainReadRioReader(AutoParallelRioReader):
    """stackstac's reader, minus the masked read where it cannot change the result, and with a read that retries.

    stackstac reads every window as a masked array, then fills the mask with ``fill_value``. When the file
    (or its warped VRT) declares nodata equal to ``fill_value`` and no rescaling applies, the plain read gives
    the same pixels (nodata pixels already hold ``fill_value``) without computing a mask band and copying:
    ~10 % less CPU per chunk. Everything else (open, warp, errors_as_nodata) is stackstac's own code.

    A failed open or read is retried under ``retry`` (``s2pipe.runtime.retry.READ_RETRY``: 1 + 3 attempts,
    0.5, 1, 2 s apart): the dataset is closed, GDAL's cache of the file's byte ranges dropped, and the file opened again, so a connection cut mid-body, a truncated body
    or a stalled request costs one more read of the window, not the run. HTTP 429/5xx answers are retried by
    GDAL itself, per request (``http_gdal_options``), and not again here. A read that still fails raises
    :class:`~s2pipe.errors.AssetReadError`, naming the href without its query string (``href``: as given).

    With a ``signer`` (``s2pipe.stac.signing.HrefSigner``) the href is signed afresh each time the file is
    opened; an open file whose token is due for renewal is opened again with the new one before the next
    window, and a read answered 403 is retried with a new token.
    """

    def __init__(self, *, retry: RetryPolicy = READ_RETRY, signer: HrefSigner | None = None, **kwargs):
        super().__init__(**kwargs)
        self.retry, self.signer, self.href = retry, signer, self.url

    def __getstate__(self):  # stackstac's pickles only its own arguments (a Dask worker would lose these)
        return {**super().__getstate__(), "url": self.href, "retry": self.retry, "signer": self.signer}

    def _sign(self) -> None:
        """Sign the href afresh just before it is opened (a token from the cache, renewed before it expires)."""
        if self.signer is not None:
            self.url = self.signer.sign(self.href)

    def _open(self):
        self._sign()
        return super()._open()

    def read(self, window, **kwargs):
        if self.signer is not None and self._dataset is not None and self.signer.sign(self.href) != self.url:
            self.close()  # its token is due for renewal: open the file again with the new one, before a 403
        try:
            return self.retry.call(lambda: self._read_once(window, **kwargs), retry_on=self._retryable,
                                   what=lambda: f"reading {redact_href(self.url)}", before_retry=self._reopen)
        except Exception as exc:  # noqa: BLE001 - every failure that is left is this asset's
            failure = f"could not read {redact_href(self.href)}: {redact_href(str(exc))[:500]}"
        # raised outside the handler, with no cause or context: their text holds the signed href, and rasterio's
        # CPLE errors do not survive the pickling back from a Dask worker (the client would get a bare Exception)
        raise AssetReadError(failure, self.href)

    def _retryable(self, exc: BaseException) -> bool:
        return retryable_read_error(exc) or (self.signer is not None and is_forbidden(exc))

    def _reopen(self, exc: BaseException) -> None:
        """After a failed read: open the file again (a broken connection) and download its ranges again (GDAL
        keeps a body cut short as if whole); after a 403, with a new token."""
        self.close()
        forget_cached_ranges(self.url)
        if self.signer is not None and is_forbidden(exc):
            self.signer.renew(self.href)

    def _read_once(self, window, **kwargs):
        reader = self.dataset
        if isinstance(reader, ThreadLocalRioDataset) and tuple(self.scale_offset) == (1, 0) and not kwargs:
            try:
                ds = reader.dataset
                if ds.count == 1 and ds.nodata is not None and ds.nodata == self.fill_value:
                    return reader.read(window, indexes=1, out_dtype=self.dtype)
            except Exception:  # noqa: BLE001 - stackstac's own path below reports or masks the error
                pass
        return AutoParallelRioReader.read(self, window, **kwargs)


class _DirectPlan(NamedTuple):
    """Where an aligned asset lies on the output grid (output pixels) and its pixel size ratio."""

    col0: int
    """Output column of the asset's left edge."""
    row0: int
    """Output row of the asset's top edge."""
    width: int
    """Asset width in output pixels."""
    height: int
    """Asset height in output pixels."""
    ratio: float
    """Asset pixel size / output pixel size (2.0: a 20 m asset on a 10 m grid; 0.5: a 10 m asset on 20 m)."""


_ALIGN_TOL = 1e-6
"""Tolerance (in output pixels) of the lattice test of ``direct_plan``."""


def direct_plan(src_crs, src_transform: Affine, src_shape: tuple[int, int], *, crs, transform: Affine,
                ) -> _DirectPlan | None:
    """How to read an asset without warping onto an output grid, or None when it must be warped.

    An asset is read directly when it has the output CRS, no rotation, north-up, a pixel size that is an integer
    multiple or divisor of the output's, and its edges on the output pixel lattice (then every output pixel is
    a whole number of asset pixels, or the reverse, and GDAL's resampling on read computes the same values as the
    warper, see ``DirectReadRioReader``).

    Parameters
    ----------
    src_crs, crs : rasterio CRS, EPSG code or string
        CRS of the asset and of the output grid.
    src_transform, transform : affine.Affine
        Top-left affines of the asset and of the output grid.
    src_shape : (rows, cols)
        Asset size in its own pixels.
    """
    from rasterio.crs import CRS

    try:
        same = CRS.from_user_input(src_crs) == CRS.from_user_input(crs)
    except Exception:  # noqa: BLE001 - an unreadable CRS is warped (stackstac reports it)
        return None
    s, t = src_transform, transform
    if not same or s.b or s.d or t.b or t.d or s.a <= 0 or s.e >= 0 or t.a <= 0 or t.e >= 0:
        return None
    if not math.isclose(s.a, -s.e, rel_tol=1e-9) or not math.isclose(t.a, -t.e, rel_tol=1e-9):
        return None
    ratio = s.a / t.a
    whole = round(ratio) if ratio >= 1 else round(1 / ratio)
    if whole < 1 or not math.isclose(ratio if ratio >= 1 else 1 / ratio, whole, rel_tol=1e-9):
        return None
    ratio = float(whole) if ratio >= 1 else 1.0 / whole

    def on_lattice(v: float) -> int | None:
        r = round(v)
        return int(r) if abs(v - r) < _ALIGN_TOL else None

    col0, row0 = on_lattice((s.c - t.c) / t.a), on_lattice((s.f - t.f) / t.e)
    width, height = on_lattice(src_shape[1] * ratio), on_lattice(src_shape[0] * ratio)
    if None in (col0, row0, width, height):
        return None
    return _DirectPlan(col0, row0, width, height, ratio)


class DirectReadRioReader(PlainReadRioReader):
    """stackstac's reader with a direct path for assets already on the output pixel lattice.

    stackstac reads every asset through a ``WarpedVRT`` unless its grid *is* the output grid. When an asset has
    the output CRS, a pixel size that is an integer multiple or divisor of the output's and its edges on the
    output lattice (``direct_plan``: the Sentinel-2 10 m and 20 m bands of a tile on a 10 m grid of the same UTM
    zone), the window is read from the file itself with GDAL's resampling on read (``out_shape`` and a
    fractional source window), 5–10× less CPU than the warper. Values equal the warped read for nearest
    neighbour (SCL) everywhere and for cubic/bilinear away from the asset's outer edge; within 2 output pixels
    of the asset's edge, where the warper and GDAL's resampler treat the missing neighbours differently, cubic
    values differ by at most ~1 % of the local contrast (``tests/test_cube.py``). Everything else (opening,
    errors, ``errors_as_nodata``, non-aligned assets) is stackstac's own code.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._plan: _DirectPlan | None = None

    def _open(self):
        if tuple(self.scale_offset) != (1, 0):
            return super()._open()
        self._sign()
        with self.gdal_env.open:
            try:
                ds = SelfCleaningDatasetReader(self.url, sharing=False)
            except Exception as e:  # noqa: BLE001 - reported (or masked) as stackstac does
                if exception_matches(e, self.errors_as_nodata):
                    warnings.warn(f"Error opening {self.url!r}: {e!r}")
                    return NodataReader(dtype=self.dtype, fill_value=self.fill_value)
                raise RuntimeError(f"Error opening {self.url!r}: {e!r}") from e
        plan = None
        if ds.count == 1 and (ds.nodata is None or ds.nodata == self.fill_value):
            plan = direct_plan(ds.crs, ds.transform, (ds.height, ds.width),
                               crs=f"EPSG:{self.spec.epsg}", transform=self.spec.transform)
        if plan is None:
            ds.close()
            return super()._open()
        self._plan = plan
        if ds.driver in MULTITHREADED_DRIVER_ALLOWLIST:
            return ThreadLocalRioDataset(self.gdal_env, ds)
        return SingleThreadedRioDataset(self.gdal_env, ds)

    def _read_once(self, window, **kwargs):
        reader = self.dataset
        plan = self._plan
        if plan is None or kwargs:
            return super()._read_once(window, **kwargs)
        out = np.full((int(window.height), int(window.width)), self.fill_value, dtype=self.dtype)
        r0, c0 = int(window.row_off), int(window.col_off)
        top, left = max(r0, plan.row0), max(c0, plan.col0)
        bottom = min(r0 + int(window.height), plan.row0 + plan.height)
        right = min(c0 + int(window.width), plan.col0 + plan.width)
        if bottom <= top or right <= left:
            return out
        src_window = Window((left - plan.col0) / plan.ratio, (top - plan.row0) / plan.ratio,
                            (right - left) / plan.ratio, (bottom - top) / plan.ratio)
        try:
            data = reader.read(window=src_window, indexes=1, out_shape=(bottom - top, right - left),
                               resampling=self.resampling, out_dtype=self.dtype)
        except Exception as e:  # noqa: BLE001 - as stackstac's read
            msg = f"Error reading {window} from {self.url!r}: {e!r}"
            if exception_matches(e, self.errors_as_nodata):
                warnings.warn(msg)
                return nodata_for_window(window, self.fill_value, self.dtype)
            raise RuntimeError(msg) from e
        if plan.ratio > 1 and self.resampling != Resampling.nearest:
            # GDAL's resampler fills output pixels inside a nodata pixel from its valid neighbours; the warper
            # (and so the footprint of the data) keeps them nodata: mask by the nearest asset pixel, found in the
            # asset's own pixels (the blocks are in GDAL's cache) and only where the window holds nodata at all.
            k = int(plan.ratio)
            rows = (np.arange(top, bottom) - plan.row0) // k
            cols = (np.arange(left, right) - plan.col0) // k
            native = reader.read(window=Window(int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                                               int(rows[-1] - rows[0] + 1)), indexes=1, out_dtype=self.dtype)
            hole = native == self.fill_value
            if hole.any():
                data[hole[(rows - rows[0])[:, None], (cols - cols[0])[None, :]]] = self.fill_value
        out[top - r0:bottom - r0, left - c0:right - c0] = data
        return out


def _check_assets(items: list[dict], bands: tuple[str, ...]) -> None:
    for band in bands:
        missing = [it["id"] for it in items if band not in it.get("assets", {})]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise InputError(
                f"band {band!r} is missing from {len(missing)} of {len(items)} items ({', '.join(missing[:5])}{more}); "
                f"the items offer {sorted(items[0].get('assets', {}))}; drop it from bands (argument: bands) "
                "or normalize the items with s2pipe.stac.items.normalize_item"
            )


def _item_epsg(item: dict) -> int | None:
    epsg = item.get("properties", {}).get("proj:epsg")
    return int(epsg) if epsg is not None else None


def _common_epsg(items: list[dict]) -> int:
    counts = Counter(e for e in (_item_epsg(it) for it in items) if e is not None)
    if not counts:
        raise InputError(
            f"none of the {len(items)} items has properties['proj:epsg']; pass epsg=... (argument: epsg) or "
            "normalize the items with s2pipe.stac.items.normalize_item"
        )
    return counts.most_common(1)[0][0]


def _reproject_bounds(bounds, src: int, dst: int) -> tuple[float, float, float, float]:
    if src == dst:
        return tuple(float(v) for v in bounds)
    t = Transformer.from_crs(src, dst, always_xy=True)
    return tuple(float(v) for v in t.transform_bounds(*bounds, densify_pts=21))


def _item_bounds(item: dict, bands: tuple[str, ...], epsg: int) -> tuple[float, float, float, float]:
    """Union of the item's asset footprints in ``epsg`` (from proj:transform/proj:shape, else the lon/lat bbox)."""
    boxes = []
    src = _item_epsg(item)
    for band in bands:
        asset = item["assets"][band]
        tr, shape = asset.get("proj:transform"), asset.get("proj:shape")
        a_epsg = asset.get("proj:epsg", src)
        if tr is not None and shape is not None and a_epsg is not None:
            af = Affine(*tr[:6])
            x0, y0 = af @ (0, 0)
            x1, y1 = af @ (shape[1], shape[0])
            boxes.append(_reproject_bounds((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), int(a_epsg), epsg))
    if not boxes:
        return _reproject_bounds(_item_lonlat(item), 4326, epsg)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _item_lonlat(item: dict) -> tuple[float, float, float, float]:
    if item.get("bbox"):
        b = item["bbox"]
        return (b[0], b[1], b[-3] if len(b) == 6 else b[2], b[-2] if len(b) == 6 else b[3])
    from shapely.geometry import shape

    return tuple(shape(item["geometry"]).bounds)


def _bbox_to_crs(bbox: Sequence[float], epsg: int) -> tuple[float, float, float, float]:
    try:
        w, s, e, n = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InputError(f"bbox={bbox!r} must be 4 numbers (west, south, east, north) in degrees (argument: bbox)") from None
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise InputError(
            f"bbox={tuple(bbox)} is empty, inverted or outside lon/lat range; give (west, south, east, north) "
            "degrees with west < east and south < north (argument: bbox)"
        )
    return _reproject_bounds((w, s, e, n), 4326, epsg)


def _overlap(a, b) -> bool:
    return max(a[0], b[0]) < min(a[2], b[2]) and max(a[1], b[1]) < min(a[3], b[3])


def _snap(bounds, res: float) -> tuple[float, float, float, float]:
    """Snap outwards so every edge is a whole multiple of ``res`` (tolerating float noise)."""
    xmin, ymin, xmax, ymax = bounds
    return (
        math.floor(xmin / res + _SNAP_TOL) * res,
        math.floor(ymin / res + _SNAP_TOL) * res,
        math.ceil(xmax / res - _SNAP_TOL) * res,
        math.ceil(ymax / res - _SNAP_TOL) * res,
    )


def _block_origin(item: dict, bands: tuple[str, ...], epsg: int) -> tuple[float, float]:
    """Top-left corner (in ``epsg``) of the first item's assets: the COG block grid starts there."""
    for band in bands:
        tr = item["assets"][band].get("proj:transform")
        if tr is not None:
            x0, y0 = float(tr[2]), float(tr[5])
            src = item["assets"][band].get("proj:epsg", _item_epsg(item))
            if src is not None and int(src) != epsg:
                x0, y0 = Transformer.from_crs(int(src), epsg, always_xy=True).transform(x0, y0)
            return x0, y0
    return 0.0, 0.0


def default_chunk_size(block_size: int) -> int:
    """The cube's spatial chunk (px) for COGs of internal tiles of ``block_size`` px: a multiple of the block
    size near 512 px, so that a read never splits a COG tile and a time-whole block stays a bounded size."""
    b = int(block_size)
    return b * max(1, round(512 / b)) if b <= 512 else b


def _block_aligned_chunks(n: int, offset_px: int, chunk: int) -> tuple[int, ...]:
    """Chunk lengths covering ``n`` pixels with edges at ``offset_px`` + k * ``chunk`` from the block origin."""
    first = chunk - (offset_px % chunk)
    out = [min(first, n)]
    while sum(out) < n:
        out.append(min(chunk, n - sum(out)))
    return tuple(out)


def _datetime(item: dict) -> pd.Timestamp:
    props = item.get("properties", {})
    value = props.get("datetime") or props.get("start_datetime")
    if value is None:
        raise InputError(f"item {item.get('id')!r} has no properties['datetime']; normalize the items first")
    ts = pd.Timestamp(value)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def _solar_day(item: dict) -> str:
    day = item.get("properties", {}).get(SOLAR_DAY)
    if day:
        return str(day)[:10]
    lon = sum(_item_lonlat(item)[0::2]) / 2
    return (_datetime(item).to_pydatetime() + dt.timedelta(hours=lon / 15.0)).date().isoformat()


def _scale_offset(item: dict, band: str) -> tuple[float, float]:
    rb = item["assets"][band].get("raster:bands") or [{}]
    return float(rb[0].get("scale", 1.0) or 1.0), float(rb[0].get("offset", 0.0) or 0.0)


def _scales_offsets(items, days, day_keys, bands):
    """Per-date (scale, offset) and per-item DN shift (n_items, n_bands) aligning each item to its day's offset."""
    nd, nb = len(day_keys), len(bands)
    scale = np.ones((nd, nb))
    offset = np.zeros((nd, nb))
    shift = np.zeros((len(items), nb), dtype=np.int32)
    first: dict[str, int] = {}
    for i, (item, day) in enumerate(zip(items, days)):
        k = day_keys.index(day)
        for j, band in enumerate(bands):
            s, o = _scale_offset(item, band)
            if day not in first:
                scale[k, j], offset[k, j] = s, o
                continue
            if not math.isclose(s, scale[k, j], rel_tol=1e-9):
                raise InputError(
                    f"items of solar day {day} state different scales for {band}: {items[first[day]]['id']} "
                    f"{scale[k, j]} vs {item['id']} {s}; normalize the items with one catalog profile"
                )
            d = (o - offset[k, j]) / s
            if abs(d - round(d)) > 1e-6:
                raise InputError(
                    f"items of solar day {day} state offsets for {band} that differ by {o - offset[k, j]} "
                    f"({d} DN, not a whole number): {items[first[day]]['id']} vs {item['id']}"
                )
            shift[i, j] = round(d)
        first.setdefault(day, i)
    return scale, offset, shift


def _merge_days(block: np.ndarray, *, sizes: tuple[int, ...], shift: np.ndarray, block_info=None) -> np.ndarray:
    """Mosaic the scenes of each solar day in ``block`` (axis 0: the scenes of whole days, ``sizes`` scenes per
    day over the cube): first non-zero DN wins; DN shifted to the day's offset. One output date per day."""
    (t0, t1), (b0, b1) = block_info[0]["array-location"][:2]
    sh = shift[t0:t1, b0:b1]
    if block.shape[0] == 1 and not sh.any():
        return block
    starts = np.concatenate([[0], np.cumsum(sizes)])
    days = [(a, b) for a, b in zip(starts[:-1], starts[1:]) if t0 <= a and b <= t1]
    out = np.zeros((len(days),) + block.shape[1:], dtype=np.uint16)
    for d, (a, b) in enumerate(days):
        target = out[d]
        for i in range(a - t0, b - t0):
            layer = block[i]
            if sh[i].any():
                layer = layer.astype(np.int32)
                valid = layer > 0
                layer = np.where(valid, np.clip(layer + sh[i][:, None, None], 1, 65535), 0).astype(np.uint16)
            empty = target == 0
            if not empty.any():
                break
            np.copyto(target, layer, where=empty)
    return out


def _token(*args) -> str:
    from dask.base import tokenize

    return tokenize(*args)


def _catalog(items: list[dict]) -> tuple[str, str]:
    """(catalog, catalog_url) recorded on the items, else ('', the root link of the first item, if any)."""
    props = items[0].get("properties", {})
    url = props.get("s2pipe:catalog_url", "")
    if not url:
        for link in items[0].get("links", []):
            if link.get("rel") == "root":
                url = link.get("href", "")
                break
    return str(props.get("s2pipe:catalog", "")), redact_href(str(url))

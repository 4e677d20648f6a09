"""Write single-band Cloud-Optimized GeoTIFFs: the one COG writer of s2pipe (demo scenes, class maps, change
maps, uncertainty layers)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from s2pipe.runtime.files import atomic_path

__all__ = ["write_cog", "cog_blocksize"]


def cog_blocksize(shape: tuple[int, ...]) -> int:
    """COG tile side (px) for a raster of ``shape``: 512, halved down to 128 so that a small raster still has an
    overview."""
    size = 512
    while size > 128 and max(shape) <= size:
        size //= 2
    return size


def write_cog(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    transform: Affine | tuple[float, ...],
    epsg: int | None = None,
    crs: str | None = None,
    nodata: float | int | None = 0,
    blocksize: int = 256,
    compress: str = "DEFLATE",
    overviews: bool = False,
    overview_resampling: str | None = None,
    colormap: Mapping[int, tuple[int, ...]] | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    band_tags: Mapping[str, str] | None = None,
) -> Path:
    """Write ``array`` (y, x) as a tiled single-band COG with internal ``blocksize`` tiles; return the path.

    ``transform`` is the affine of the top-left pixel corner (rasterio order a, b, c, d, e, f); the CRS is
    ``EPSG:<epsg>``, or ``crs`` (any CRS text) when ``epsg`` is None. DEFLATE compression uses the horizontal
    predictor for integers (2) and the floating-point predictor for floats (3). ``overviews``: internal
    overviews (``overview_resampling``: e.g. "NEAREST", "MODE", "AVERAGE"; None: GDAL's default).
    ``colormap`` ({value: (r, g, b, a)}), ``description`` (band description), ``tags`` (dataset metadata) and
    ``band_tags`` (band metadata) are written when given.
    The file is written under a unique temporary name beside ``path`` and renamed, so a reader never sees half
    a file; the parent folder is created.
    """
    path = Path(path)
    if array.ndim != 2:
        raise ValueError(f"write_cog expects a 2-D (y, x) array, got shape {array.shape}")
    if epsg is None and crs is None:
        raise ValueError("write_cog needs epsg= or crs=")
    if not isinstance(transform, Affine):
        transform = Affine(*transform[:6])
    profile = dict(
        driver="COG",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype,
        crs=f"EPSG:{epsg}" if epsg is not None else crs,
        transform=transform,
        nodata=nodata,
        blocksize=blocksize,
        compress=compress,
        overviews="AUTO" if overviews else "NONE",
        BIGTIFF="IF_SAFER",
    )
    if overview_resampling:
        profile["overview_resampling"] = overview_resampling.upper()
    if compress.upper() == "DEFLATE" and array.dtype.kind in "iuf":
        profile["predictor"] = 3 if array.dtype.kind == "f" else 2
    with atomic_path(path) as tmp, rasterio.Env(GDAL_NUM_THREADS="1"):
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array, 1)
            if colormap is not None:
                dst.write_colormap(1, dict(colormap))
            if description is not None:
                dst.set_band_description(1, description)
            if tags:
                dst.update_tags(**tags)
            if band_tags:
                dst.update_tags(1, **band_tags)
    return path

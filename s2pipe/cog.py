"""Write single-band Cloud-Optimized GeoTIFFs (the demo region, and later the class maps)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine


def write_cog(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    transform: Affine | tuple[float, ...],
    epsg: int,
    nodata: float | int | None = 0,
    blocksize: int = 256,
    compress: str = "DEFLATE",
    overviews: bool = False,
) -> Path:
    """Write ``array`` (y, x) as a tiled single-band COG with internal ``blocksize`` tiles.

    ``transform`` is the affine of the top-left pixel corner (rasterio order a, b, c, d, e, f).
    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    if array.ndim != 2:
        raise ValueError(f"write_cog expects a 2-D (y, x) array, got shape {array.shape}")
    if not isinstance(transform, Affine):
        transform = Affine(*transform[:6])
    tmp = path.with_name(path.name + ".part")
    profile = dict(
        driver="COG",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype,
        crs=f"EPSG:{epsg}",
        transform=transform,
        nodata=nodata,
        blocksize=blocksize,
        compress=compress,
        overviews="AUTO" if overviews else "NONE",
        BIGTIFF="IF_SAFER",
    )
    if array.dtype.kind in "iu" and compress.upper() == "DEFLATE":
        profile["predictor"] = 2
    with rasterio.Env(GDAL_NUM_THREADS="1"):
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array, 1)
    os.replace(tmp, path)
    return path

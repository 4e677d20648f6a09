"""Tiny synthetic Sentinel-2 scenes for tests and benchmarks: real COGs on disk, normalized STAC items.

``make_scenes`` writes one single-band tiled COG per band and scene (10 m bands, 20 m bands and SCL at
20 m, as Sentinel-2 L2A ships them) and returns *normalized* ``pystac.Item`` objects in the form
``docs/architecture.md`` defines (assets keyed by canonical band names, ``raster:bands`` scale/offset,
``proj:epsg``, asset ``proj:shape``/``proj:transform``, ``s2pipe:solar_day``). Pixel values follow
``synthetic_reflectance``, a smooth field, so resampling can be checked against the truth.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pystac
from affine import Affine

from s2pipe.bands import BANDS, SCL, SPECTRAL_10
from s2pipe.products.cog import write_cog
from s2pipe.synthetic.items import BASELINE_CHANGE, footprint_lonlat

__all__ = [
    "SCALE", "BASELINE_OFFSET_DN", "TILE_BIAS_DN", "SCL_CHOICES", "synthetic_reflectance", "solar_day",
    "make_scenes", "read_cog", "romania_raw_cube",
]

SCALE = 1e-4
"""Reflectance per DN of the synthetic scenes."""
BASELINE_OFFSET_DN = 1000
"""DN added to valid pixels of scenes on or after 2022-01-25 (their ``raster:bands`` offset is -0.1)."""
TILE_BIAS_DN = 200
"""DN added per tile index, so the tiles of a pair are distinguishable in their overlap."""
SCL_CHOICES = np.array([3, 4, 5, 6, 8, 9], dtype=np.uint8)

_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]


def synthetic_reflectance(band: str, date_index: int, x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Smooth reflectance field (unitless, 0.05-0.45) of ``band`` on date ``date_index`` at projected ``x``, ``y`` (m).

    Wavelength ~ 1.3-2 km, so a 20 m grid samples it finely and cubic upsampling is close to the truth.
    """
    rng = np.random.default_rng([seed, date_index, list(BANDS).index(band)])
    phase_x, phase_y = rng.uniform(0, 2 * np.pi, 2)
    lx, ly = rng.uniform(1300.0, 2000.0, 2)
    base = 0.25 + 0.02 * np.sin(2 * np.pi * date_index / 73.0)
    return base + 0.15 * np.sin(2 * np.pi * x / lx + phase_x) * np.cos(2 * np.pi * y / ly + phase_y)


def solar_day(when: dt.datetime, lon: float) -> str:
    """Local solar day ``YYYY-MM-DD`` of a UTC acquisition time at longitude ``lon`` (degrees east)."""
    return (when + dt.timedelta(hours=lon / 15.0)).date().isoformat()


def make_scenes(
    root: str | os.PathLike,
    *,
    n_dates: int = 2,
    tiles: Literal[1, 2] = 1,
    size: int = 64,
    epsg: int = 32633,
    block_size: int = 32,
    seed: int = 0,
    start: str | dt.date = "2021-06-01",
    step_days: int = 5,
    bands: tuple[str, ...] = SPECTRAL_10,
    include_scl: bool = True,
    origin: tuple[float, float] = (399960.0, 5000040.0),
    overlap: int | None = None,
    nodata_cols: int = 0,
) -> list[pystac.Item]:
    """Write synthetic single-band COGs under ``root`` and return their normalized items, sorted by time.

    ``size`` is the tile width/height in 10 m pixels (even; 20 m assets are ``size // 2``). ``tiles=2``
    adds an eastern neighbour acquired 5 s later on the same solar day, overlapping the first tile by
    ``overlap`` 10 m pixels (default ``size // 4``, even) and carrying ``TILE_BIAS_DN`` more DN.
    ``nodata_cols`` sets that many eastern 10 m columns of the first tile to nodata (0) in every band.
    Dates start at ``start`` every ``step_days`` days, 10:00 UTC; scenes on or after 2022-01-25 hold
    DN + 1000 with ``raster:bands`` offset -0.1 (processing baseline 04.00), earlier ones offset 0.
    DN = round(synthetic_reflectance / 1e-4) (+ offsets) at each pixel centre; SCL draws classes from
    ``SCL_CHOICES`` per 20 m pixel.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if size % 2 or size < 4:
        raise ValueError(f"make_scenes: size must be an even number >= 4, got {size}")
    overlap = size // 4 if overlap is None else overlap
    if overlap % 2 or not 0 <= overlap < size:
        raise ValueError(f"make_scenes: overlap must be even and in [0, size), got {overlap}")
    if tiles not in (1, 2):
        raise ValueError(f"make_scenes: tiles must be 1 or 2, got {tiles}")
    start = dt.date.fromisoformat(start) if isinstance(start, str) else start
    all_bands = tuple(bands) + ((SCL,) if include_scl else ())
    rng = np.random.default_rng(seed)
    items: list[pystac.Item] = []
    for d in range(n_dates):
        day = start + dt.timedelta(days=d * step_days)
        for t in range(tiles):
            when = dt.datetime(day.year, day.month, day.day, 10, 0, 5 * t, tzinfo=dt.timezone.utc)
            new_baseline = when >= BASELINE_CHANGE
            x0 = origin[0] + t * (size - overlap) * 10.0
            y0 = origin[1]
            bounds = (x0, y0 - size * 10.0, x0 + size * 10.0, y0)
            item_id = f"S2A_T{t}_{day:%Y%m%d}_L2A"
            folder = root / item_id
            folder.mkdir(exist_ok=True)
            assets: dict[str, pystac.Asset] = {}
            for band in all_bands:
                res = BANDS[band].resolution
                if res not in (10, 20):
                    raise ValueError(f"make_scenes: band {band} at {res} m is not supported (10 m and 20 m only)")
                n = size * 10 // res
                transform = Affine(res, 0.0, x0, 0.0, -res, y0)
                if band == SCL:
                    arr = rng.choice(SCL_CHOICES, size=(n, n)).astype(np.uint8)
                    scale, offset = 1.0, 0.0
                else:
                    xc = x0 + (np.arange(n) + 0.5) * res
                    yc = y0 - (np.arange(n) + 0.5) * res
                    refl = synthetic_reflectance(band, d, xc[None, :], yc[:, None], seed=seed)
                    dn = np.rint(refl / SCALE) + t * TILE_BIAS_DN + (BASELINE_OFFSET_DN if new_baseline else 0)
                    arr = np.clip(dn, 1, 65535).astype(np.uint16)
                    scale, offset = SCALE, (-0.1 if new_baseline else 0.0)
                if t == 0 and nodata_cols:
                    arr[:, n - nodata_cols * 10 // res:] = 0
                href = folder / f"{band}.tif"
                write_cog(href, arr, transform=transform, epsg=epsg, nodata=0, blocksize=min(block_size, 512))
                assets[band] = pystac.Asset(
                    href=str(href),
                    media_type="image/tiff; application=geotiff; profile=cloud-optimized",
                    title=band,
                    roles=["data"] if band == SCL else ["data", "reflectance"],
                    extra_fields={
                        "proj:shape": [n, n],
                        "proj:transform": list(transform)[:6],
                        "raster:bands": [{"scale": scale, "offset": offset, "nodata": 0,
                                          "data_type": str(arr.dtype), "spatial_resolution": res}],
                    },
                )
            geometry = footprint_lonlat(epsg, bounds)
            lons = [c[0] for c in geometry["coordinates"][0]]
            lats = [c[1] for c in geometry["coordinates"][0]]
            centroid_lon = (min(lons) + max(lons)) / 2
            item = pystac.Item(
                id=item_id,
                geometry=geometry,
                bbox=[min(lons), min(lats), max(lons), max(lats)],
                datetime=when,
                properties={
                    "platform": "sentinel-2a",
                    "constellation": "sentinel-2",
                    "eo:cloud_cover": 10.0,
                    "proj:epsg": int(epsg),
                    "grid:code": f"MGRS-T{t}",
                    "s2:processing_baseline": "04.00" if new_baseline else "02.14",
                    "s2pipe:solar_day": solar_day(when, centroid_lon),
                },
                stac_extensions=list(_EXTENSIONS),
                collection="sentinel-2-l2a",
            )
            for key, asset in assets.items():
                item.add_asset(key, asset)
            items.append(item)
    return items


def read_cog(href: str | os.PathLike) -> tuple[np.ndarray, Affine]:
    """(array, transform) of band 1 of a raster file, read with rasterio."""
    import rasterio

    with rasterio.open(href) as src:
        return src.read(1), src.transform


def romania_raw_cube(npz_path) -> "xr.DataArray":
    """The real Romania L2A cube (../shared/data/nrt-romania-s2l2a/*.npz) in the raw-cube layout of
    docs/architecture.md: "dn" uint16 (time, band, y, x) with SCL last, scale 1e-4 / offset 0 coords."""
    import pandas as pd
    import xarray as xr

    with np.load(npz_path, allow_pickle=False) as z:
        z = {k: z[k] for k in z.files}
    dn = np.concatenate([z["reflectance_dn"], z["scl"][:, None].astype(np.uint16)], axis=1)
    bands = [str(b) for b in z["band_names"]] + ["SCL"]
    nt = dn.shape[0]
    scale = np.full((nt, len(bands)), 1e-4)
    scale[:, -1] = 1.0
    return xr.DataArray(
        dn, dims=("time", "band", "y", "x"),
        coords={"time": pd.to_datetime(z["dates"]), "band": bands, "y": z["y"], "x": z["x"],
                "scale": (("time", "band"), scale), "offset": (("time", "band"), np.zeros((nt, len(bands))))},
        name="dn",
        attrs={"crs": str(z["crs"]), "transform": [float(v) for v in z["transform"]],
               "resolution": float(abs(z["transform"][0]))},
    )

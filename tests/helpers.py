"""Independent reference implementations for the tests (plain NumPy / rasterio, none of s2pipe's stage code).

``brute_force``: Cressman / Gaussian gap filling as a loop written straight from the contract.
``make_dataset``, ``arrays``, ``chunk_mtimes``: a small output-store Dataset and what a written store holds.
``flow_config``, ``FLOW_DEMO``: the run configuration of the flow tests on their tiny demo region.
``reference_chain``: the whole regional-cube chain (read the source COGs onto the output grid, merge the
scenes of a solar day, mask with SCL, gap-fill with ``brute_force``, normalise by the global maximum of each
band group) from the item JSON of a region, to compare with a flow's store value by value.
"""
from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from s2pipe.config import load_config
from s2pipe.synthetic.demo import DemoConfig

DAY = pd.Timedelta(days=1)

BANDS_10M = ("B02", "B03", "B04", "B08")
"""Sentinel-2 bands delivered at 10 m (the 10 m group of ``global_max_by_resolution``); the others are 20 m."""


def brute_force(values, t_in, t_out, radius_days, kernel):
    """Gap filling straight from the contract, looping over output and input dates. values: (T_in, N) float64.

    For each output date and pixel: the weighted mean of the pixel's observations (NaN = missing) with weight
    ``exp(-d²/2R²)`` (d <= 3R, ``kernel="gaussian"``) or ``(R²-d²)/(R²+d²)`` (d < R, ``"cressman"``), d in days;
    an observation on the output date itself is kept unchanged; NaN where no weight reaches the pixel. Returns
    (filled, weight), both (T_out, N) float64. The arithmetic per pixel is the scalar loop's (sums in input-date
    order), vectorised over pixels only, so whole cubes stay cheap.
    """
    t_in = pd.DatetimeIndex(t_in)
    t_out = pd.DatetimeIndex(t_out)
    r = float(radius_days)
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[1]
    filled = np.full((len(t_out), n), np.nan)
    weight = np.zeros((len(t_out), n))
    valid = ~np.isnan(values)
    for k, to in enumerate(t_out):
        num = np.zeros(n)
        den = np.zeros(n)
        kept = np.full(n, np.nan)
        for i, ti in enumerate(t_in):
            d = abs((to - ti) / DAY)
            if ti == to:
                kept = np.where(valid[i], values[i], kept)
            if kernel == "gaussian":
                w = math.exp(-d * d / (2 * r * r)) if d <= 3 * r else 0.0
            else:
                w = (r * r - d * d) / (r * r + d * d) if d < r else 0.0
            num = np.where(valid[i], num + w * np.where(valid[i], values[i], 0.0), num)
            den = np.where(valid[i], den + w, den)
        weight[k] = den
        filled[k] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        filled[k] = np.where(np.isnan(kept), filled[k], kept)
    return filled, weight


def snapped_grid(bbox_lonlat, epsg: int, resolution: float = 10.0):
    """(transform 6-tuple, (rows, cols)) of the grid covering a lon/lat bbox in ``epsg``, edges snapped outwards to
    multiples of ``resolution`` (the contract of ``s2pipe.cube.build_cube``)."""
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = Transformer.from_crs(4326, epsg, always_xy=True).transform_bounds(*bbox_lonlat, densify_pts=21)
    x0, y0 = math.floor(xmin / resolution) * resolution, math.floor(ymin / resolution) * resolution
    x1, y1 = math.ceil(xmax / resolution) * resolution, math.ceil(ymax / resolution) * resolution
    shape = (round((y1 - y0) / resolution), round((x1 - x0) / resolution))
    return (resolution, 0.0, x0, 0.0, -resolution, y1), shape


def read_on_grid(href, transform, shape, *, resampling) -> np.ndarray:
    """The asset ``href`` on the output grid (``transform`` 6-tuple, ``shape``) as uint16, 0 outside it.

    The asset must lie on the grid's pixel lattice (same CRS, pixel size a whole multiple of the grid's): the
    whole file is read with rasterio, resampled on read with ``out_shape`` (``resampling``), then pasted at its
    place. Output pixels whose nearest asset pixel is nodata (0) stay 0 (the warper's footprint).
    """
    import rasterio

    res = transform[0]
    out = np.zeros(shape, dtype=np.uint16)
    with rasterio.open(href) as src:
        st = src.transform
        k = round(st.a / res)
        assert k >= 1 and st.a == k * res and st.e == -k * res, (href, st)
        col0, row0 = (st.c - transform[2]) / res, (transform[5] - st.f) / res
        assert col0 == round(col0) and row0 == round(row0), f"{href} is not on the output pixel lattice"
        col0, row0 = int(col0), int(row0)
        native = src.read(1)
        if k == 1:
            data = native
        else:
            data = src.read(1, out_shape=(src.height * k, src.width * k), resampling=resampling)
            data[np.repeat(np.repeat(native == 0, k, axis=0), k, axis=1)] = 0
    h, w = data.shape
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + h, shape[0]), min(col0 + w, shape[1])
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = data[r0 - row0:r1 - row0, c0 - col0:c1 - col0]
    return out


def solar_day(item: dict) -> str:
    """Local solar day of an Earth Search item: UTC time + longitude of its bbox centre / 15 h."""
    when = pd.Timestamp(item["properties"]["datetime"]).tz_convert("UTC").tz_localize(None).to_pydatetime()
    b = item["bbox"]
    lon = (b[0] + b[2]) / 2
    return (when + dt.timedelta(hours=lon / 15.0)).date().isoformat()


def reference_chain(items, *, assets, bands, transform, shape, clear_classes, radius_days, kernel, freq):
    """The regional-cube chain in plain NumPy from Earth Search item dicts (any order).

    ``assets``: canonical band name -> the items' asset key (the catalog profile's mapping), SCL included.
    Scenes of one solar day are mosaicked band by band in acquisition order (first non-zero DN wins); DN become
    reflectance ``DN * scale + offset`` of each scene's ``raster:bands`` (float64, then float32); NaN where DN is
    0 or SCL not in ``clear_classes``; ``brute_force`` gap fill onto ``pd.date_range(first, last, freq)``;
    division by the maximum of the clear observations over each band group (10 m, 20 m).

    Returns a dict: ``time_in``, ``time`` (datetime64[ns]), ``reflectance`` (T_out, B, Y, X) float32,
    ``weight`` (T_out, Y, X) float32 (the first band's), ``observed`` (T_out, Y, X) uint8, ``scale`` (B,) float32,
    ``items`` (ids in acquisition order).
    """
    from rasterio.enums import Resampling

    items = sorted(items, key=lambda it: pd.Timestamp(it["properties"]["datetime"]))
    days = sorted({solar_day(it) for it in items})
    nt, nb = len(days), len(bands)
    refl = np.full((nt, nb) + tuple(shape), np.nan, dtype=np.float32)
    scl = np.zeros((nt,) + tuple(shape), dtype=np.uint16)
    b02_dn = np.zeros((nt,) + tuple(shape), dtype=np.uint16)
    have = np.zeros((nt, nb) + tuple(shape), dtype=bool)
    for it in items:
        t = days.index(solar_day(it))
        s = read_on_grid(it["assets"][assets["SCL"]]["href"], transform, shape, resampling=Resampling.nearest)
        np.copyto(scl[t], s, where=scl[t] == 0)
        for j, band in enumerate(bands):
            asset = it["assets"][assets[band]]
            dn = read_on_grid(asset["href"], transform, shape, resampling=Resampling.cubic)
            rb = asset["raster:bands"][0]
            value = (dn.astype(np.float64) * rb.get("scale", 1.0) + rb.get("offset", 0.0)).astype(np.float32)
            new = (dn > 0) & ~have[t, j]
            refl[t, j][new] = value[new]
            if band == bands[0]:
                b02_dn[t][new] = dn[new]
            have[t, j] |= new
    clear = np.isin(scl, list(clear_classes))
    refl[~np.broadcast_to(clear[:, None], refl.shape)] = np.nan
    t_in = pd.DatetimeIndex(days)
    t_out = pd.date_range(t_in[0], t_in[-1], freq=freq)
    flat = refl.reshape(nt, -1).astype(np.float64)
    filled, weight = brute_force(flat, t_in, t_out, radius_days, kernel)
    filled = filled.astype(np.float32).reshape((len(t_out), nb) + tuple(shape))
    weight = weight.reshape((len(t_out), nb) + tuple(shape))[:, 0].astype(np.float32)
    group = np.array([b in BANDS_10M for b in bands])
    scale = np.empty(nb, dtype=np.float32)
    for g in (True, False):
        if (group == g).any():
            scale[group == g] = np.nanmax(refl[:, group == g])
    observed = np.zeros((len(t_out),) + tuple(shape), dtype=np.uint8)
    obs_in = (clear & (b02_dn > 0)).astype(np.uint8)
    for k, to in enumerate(t_out):
        if to in t_in:
            observed[k] = obs_in[t_in.get_loc(to)]
    return {
        "time_in": t_in.values.astype("datetime64[ns]"),
        "time": t_out.values.astype("datetime64[ns]"),
        "reflectance": filled / scale[None, :, None, None],
        "weight": weight,
        "observed": observed,
        "scale": scale,
        "items": [it["id"] for it in items],
    }


# ------------------------------------------------------------------------------------------ tiny model inputs
def class_images(ny=64, nx=64, T=4, seed=0):
    """(time, band, y, x) float32 reflectance of a 2-class 8-px checkerboard, and its (y, x) int64 labels."""
    rng = np.random.default_rng(seed)
    cls = (np.add.outer(np.arange(ny) // 8, np.arange(nx) // 8) % 2).astype(np.int64)
    spectra = np.array([[0.05, 0.08, 0.06, 0.30], [0.12, 0.14, 0.17, 0.16]])
    v = spectra[cls].transpose(2, 0, 1)[None].repeat(T, 0) + 0.02 * rng.standard_normal((T, 4, ny, nx))
    coords = {"time": pd.date_range("2021-05-01", periods=T, freq="5D"), "band": ["B02", "B03", "B04", "B08"],
              "y": 5_000_000.0 - 10.0 * np.arange(ny), "x": 400_000.0 + 10.0 * np.arange(nx)}
    img = xr.DataArray(v.astype(np.float32), dims=("time", "band", "y", "x"), coords=coords, name="reflectance")
    return img, xr.DataArray(cls, dims=("y", "x"), coords={"y": coords["y"], "x": coords["x"]})


def periodic_cube(ny=16, nx=16, n_t=30, seed=0):
    """(time, band, y, x) float32 series: 4 band levels plus a 100-day sine with a per-pixel phase."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_t)
    phase = rng.uniform(0, 2 * np.pi, size=(ny, nx))
    v = np.linspace(0.1, 0.4, 4)[None, :, None, None] + 0.05 * np.sin(2 * np.pi * t[:, None, None, None] / 20 + phase)
    return xr.DataArray(v.astype("float32"), dims=("time", "band", "y", "x"),
                        coords={"time": pd.date_range("2020-01-01", periods=n_t, freq="5D"),
                                "band": ["B02", "B03", "B04", "B08"], "y": 100.0 - 10 * np.arange(ny),
                                "x": 10.0 * np.arange(nx)})


# ------------------------------------------------------------------------------------------ store datasets
NT, NB, NY, NX = 4, 3, 40, 56
TRANSFORM = [10.0, 0.0, 399960.0, 0.0, -10.0, 5000040.0]


def make_dataset(*, backing: str = "dask", ny: int = NY, nx: int = NX, items=("A", "B"), fail_at=None) -> xr.Dataset:
    """Reflectance (time, band, y, x) float32 with NaNs, weight (time, y, x) float32, observed uint8.

    ``fail_at=(y, x)``: computing the block containing that pixel raises (a crash in the middle of a write).
    """
    rng = np.random.default_rng(42)
    refl = rng.uniform(0, 1, (NT, NB, ny, nx)).astype("float32")
    refl[refl < 0.05] = np.nan
    weight = rng.uniform(0, 3, (NT, ny, nx)).astype("float32")
    observed = (rng.uniform(0, 1, (NT, ny, nx)) > 0.3).astype("uint8")
    if backing == "dask":
        refl_d = da.from_array(refl, chunks=(NT, NB, 8, 8))  # time-whole blocks, as gap filling produces
        if fail_at is not None:
            def maybe_fail(block, block_info=None):
                (y0, y1), (x0, x1) = block_info[0]["array-location"][2:]
                if y0 <= fail_at[0] < y1 and x0 <= fail_at[1] < x1:
                    raise RuntimeError("simulated worker crash")
                return block
            refl_d = refl_d.map_blocks(maybe_fail, dtype=refl.dtype)
        refl, weight, observed = refl_d, da.from_array(weight, chunks=(NT, 8, 8)), da.from_array(observed, chunks=(NT, 8, 8))
    x = TRANSFORM[2] + (np.arange(nx) + 0.5) * 10.0
    y = TRANSFORM[5] - (np.arange(ny) + 0.5) * 10.0
    coords = {"time": pd.date_range("2021-03-01", periods=NT, freq="5D"), "band": ["B02", "B03", "B8A"], "y": y, "x": x}
    ds = xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), refl, {"long_name": "reflectance", "normalize_scale": [0.5, 0.5, 0.25]}),
            "weight": (("time", "y", "x"), weight, {"units": "1"}),
            "observed": (("time", "y", "x"), observed, {"flag_values": [0, 1]}),
        },
        coords=coords,
        attrs={
            "crs": "EPSG:32633", "transform": TRANSFORM, "resolution": 10.0, "stac_items": list(items),
            "catalog": "local-demo", "catalog_url": "http://127.0.0.1:1234",
            "parameters": {"radius": "10D", "bands": ["B02", "B03", "B8A"], "np": np.float64(1.5)},
        },
    )
    return ds


def arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r", zarr_format=2)
    return {name: np.asarray(arr[...]) for name, arr in g.arrays()}


def chunk_mtimes(path: Path, var: str = "reflectance") -> dict[str, int]:
    """Modification times of the chunks of ``var``; zarr's temporary ``*.partial`` files (a task of an
    interrupted write may still be finishing one on a distributed worker) are not chunks."""
    out = {}
    for p in (path / var).iterdir():
        if p.name.startswith(".") or p.name.endswith(".partial"):
            continue
        try:
            out[p.name] = p.stat().st_mtime_ns
        except FileNotFoundError:  # renamed meanwhile
            continue
    return out


# ------------------------------------------------------------------------------------------ flow runs
FLOW_DEMO = DemoConfig(start="2021-12-01", end="2022-03-01", tile_size=64, overlap=16, block_size=128, seed=3)
"""The tiny demo region of the flow tests (``conftest.tiny_demo``)."""


def flow_config(region, profile, output, **kw):
    """The RunConfig of the flow tests: the tiny demo region's default bbox and window, 5-day output grid,
    32 px chunks, an in-process Dask cluster; ``kw`` replaces any field."""
    data = {
        "catalog": str(profile), "bbox": list(region.default_bbox), "start": region.start, "end": region.end,
        "output": str(output), "gapfill": {"radius": "10D", "times": "5D"}, "chunk_size": 32,
        "dask": {"n_workers": 1, "threads_per_worker": 2, "processes": False},
    }
    data.update(kw)
    return load_config(data)


# ------------------------------------------------------------------------------------- other GDAL readers
GDAL312_PACKAGES = ("rasterio==1.5.2", "numpy", "geozarr-toolkit==0.1.2")
"""The side venv of the GDAL 3.12 reader: rasterio 1.5.2 (GDAL 3.12, Python >= 3.12) and the GeoZarr validator."""
REQUIRE_READERS = os.environ.get("S2PIPE_REQUIRE_READERS") == "1"
"""Set by ``.ci/run``: a missing reader (Debian's gdal-bin, python3.12) fails the reader tests instead of skipping."""


def missing_reader(reason: str) -> None:
    """Skip the calling test for an absent reader, or fail it where the readers are required (CI)."""
    import pytest

    if REQUIRE_READERS:
        pytest.fail(f"{reason} (S2PIPE_REQUIRE_READERS=1: .ci/run installs every reader)")
    pytest.skip(reason)


def python312() -> str | None:
    """A Python 3.12 interpreter: ``$S2PIPE_PYTHON312``, ``python3.12`` on the PATH or pyenv's, else None."""
    import glob
    import shutil
    import subprocess

    roots = dict.fromkeys(r for r in (os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv"), "/root/.pyenv")
                          if r)  # pyenv's own builds: its shims need a PYENV_VERSION to run one
    candidates = [os.environ.get("S2PIPE_PYTHON312"), shutil.which("python3.12"),
                  *[p for r in roots for p in sorted(glob.glob(f"{r}/versions/3.12*/bin/python3.12"), reverse=True)],
                  "/usr/local/bin/python3.12", "/usr/bin/python3.12"]
    for c in candidates:
        if c and os.path.exists(c) and subprocess.run(
                [c, "-c", "import sys, venv; assert sys.version_info[:2] == (3, 12)"], capture_output=True).returncode == 0:
            return c
    return None


def gdal312_python(root: Path) -> Path | None:
    """The Python of a side venv (``root/.venv-gdal312``, git-ignored) holding ``GDAL312_PACKAGES``, built on the
    first call (~15 s from the package index) and kept while its package list is the same; None without Python 3.12."""
    import subprocess

    py = python312()
    if py is None:
        return None
    venv = root / ".venv-gdal312"
    stamp = venv / ".installed"
    want = "\n".join(GDAL312_PACKAGES)
    if not (stamp.exists() and stamp.read_text() == want):
        subprocess.run([py, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *GDAL312_PACKAGES], check=True)
        stamp.write_text(want)
    return venv / "bin" / "python"


def wait_for_api(url: str, proc, *, timeout: float = 60.0) -> None:
    """Wait until the STAC API that the subprocess ``proc`` serves at ``url`` answers ``/collections``; fail with
    the process's stderr if it exits first, or after ``timeout`` seconds."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/collections", timeout=2).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "no answer"
            time.sleep(0.2)

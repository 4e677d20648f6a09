"""write_cube vs writing the same array directly with zarr (target: ratio >= 0.8).

A float32 cube (48 dates x 4 bands x 1024 x 1024, 768 MiB, smooth values with noise and 5 % NaN) in memory
is written to a fresh local store, best of N, interleaved (the machine is shared):

* baseline: ``zarr.create_array(..., zarr_format=2)`` with the chunks and codec write_cube uses
  ((1, 4, 1024, 1024), Blosc lz4 level 5 + byte shuffle, fill NaN) and ``array[...] = data``;
* s2pipe: ``write_cube(ds, path)`` (template, region writes through Dask's threaded scheduler with 2 workers,
  region markers, consolidation).

Prints MB/s of each and ``write_cube_vs_zarr: <ratio>``. Run: ``.venv/bin/python benchmarks/bench_zarr.py``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from s2pipe.store.zarr import write_cube

NT, NB, N = 48, 4, 1024


def make_dataset() -> xr.Dataset:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:N, 0:N].astype(np.float32)
    base = 0.2 + 0.1 * np.sin(xx / 70) * np.cos(yy / 90)
    data = np.empty((NT, NB, N, N), dtype=np.float32)
    for t in range(NT):
        for b in range(NB):
            data[t, b] = base * (1 + 0.1 * b) + rng.normal(0, 0.01, (N, N)).astype(np.float32)
    data[:, :, rng.uniform(size=(N, N)) < 0.05] = np.nan
    x = 399960.0 + (np.arange(N) + 0.5) * 10
    y = 5000040.0 - (np.arange(N) + 0.5) * 10
    return xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), data)},
        coords={"time": pd.date_range("2021-01-01", periods=NT, freq="5D"), "band": ["B02", "B03", "B04", "B08"],
                "y": y, "x": x},
        attrs={"crs": "EPSG:32633", "transform": [10.0, 0.0, 399960.0, 0.0, -10.0, 5000040.0]},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--region", type=int, default=None, help="write_cube region_size (default: its default)")
    args = parser.parse_args()
    ds = make_dataset()
    data = ds["reflectance"].values
    nbytes = data.nbytes
    with tempfile.TemporaryDirectory(prefix="s2pipe-bench-zarr-") as tmp:
        tmp = Path(tmp)
        # the codec and chunks write_cube chose, read back from a small store it wrote
        probe = write_cube(ds.isel(time=slice(0, 1)), tmp / "probe.zarr", region_size=args.region)
        meta = json.loads((probe / "reflectance" / ".zarray").read_text())
        chunks = (1,) + tuple(meta["chunks"][1:])
        compressor = meta["compressor"]
        print(f"cube {data.shape} float32, {nbytes / 2**20:.0f} MiB; chunks {chunks}, compressor {compressor}")
        import numcodecs

        codec = numcodecs.get_codec(compressor)

        def direct() -> None:
            path = tmp / "direct.zarr"
            shutil.rmtree(path, ignore_errors=True)
            arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype="float32", zarr_format=2,
                                    compressors=codec, fill_value=np.nan)
            arr[...] = data

        def s2pipe() -> None:
            path = tmp / "cube.zarr"
            shutil.rmtree(path, ignore_errors=True)
            write_cube(ds, path, region_size=args.region)

        best = {"zarr": float("inf"), "write_cube": float("inf")}
        with dask.config.set(scheduler="threads", num_workers=2):
            for _ in range(args.repeats):
                for name, fn in (("zarr", direct), ("write_cube", s2pipe)):
                    t0 = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t0)
        got = zarr.open_array(str(tmp / "cube.zarr" / "reflectance"), mode="r")[...]
        ref = zarr.open_array(str(tmp / "direct.zarr"), mode="r")[...]
        if not np.array_equal(got, ref, equal_nan=True):
            raise SystemExit("write_cube and zarr stores differ")
        size = lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())  # noqa: E731
        print(f"zarr direct:  {best['zarr']:.2f} s, {nbytes / best['zarr'] / 1e6:.0f} MB/s "
              f"(store {size(tmp / 'direct.zarr') / 2**20:.0f} MiB)")
        print(f"write_cube:   {best['write_cube']:.2f} s, {nbytes / best['write_cube'] / 1e6:.0f} MB/s "
              f"(store {size(tmp / 'cube.zarr') / 2**20:.0f} MiB)")
        print(f"write_cube_vs_zarr: {best['zarr'] / best['write_cube']:.2f}")


if __name__ == "__main__":
    main()

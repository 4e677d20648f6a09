"""The remaining stages against the plain baseline a user would write, measured in the same run.

* search: ``search_items`` (validation, retries, client-side filters, item normalisation) vs a bare
  ``pystac_client`` search of the same real STAC API (``rustac serve`` on 127.0.0.1 serving the 100 real
  Planetary Computer items of ``../shared/data/stac-s2-items``) -> ``search_vs_pystac_client``;
* cloud mask: ``mask_clouds`` (Dask, threaded) vs one NumPy expression on the same in-memory DN cube
  (146 dates x 10 bands + SCL x 512 x 512) -> ``mask_clouds_vs_numpy``;
* normalisation: ``compute_scale`` (global maximum per 10 m / 20 m group, Dask reduction) vs ``np.nanmax``
  per group on the in-memory reflectance -> ``compute_scale_vs_numpy``.

Ratios are baseline time / s2pipe time (1.0 = as fast as the baseline). Best of N, interleaved.
Run: ``.venv/bin/python benchmarks/bench_stages.py`` (``--size 256`` for a quick run).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pystac_client
import xarray as xr

from s2pipe.bands import BANDS_10M, BANDS_20M, SPECTRAL_10
from s2pipe.cloudmask import mask_clouds
from s2pipe.normalize import compute_scale
from s2pipe.search import search_items
from s2pipe.stac.catalog import load_profile
from s2pipe.stac.server import LocalStacServer

SHARED = Path(os.environ.get("S2PIPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def interleaved(plain, ours, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of ``plain`` and ``ours``, alternating so both see the same machine load."""
    t_plain, t_ours = [], []
    for _ in range(repeats):
        for fn, times in ((plain, t_plain), (ours, t_ours)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(t_plain), min(t_ours)


def bench_search(repeats: int) -> float:
    items_file = SHARED / "stac-s2-items" / "planetary-computer" / "rustac_100-items_T13TDE_2024.json"
    profile = load_profile("planetary-computer-l2a").model_copy(update={"signing": "none"})
    bbox, dates = (-105.3, 39.7, -104.9, 40.6), ("2024-03-01", "2024-12-31")
    with LocalStacServer([items_file]) as server:
        def plain():
            client = pystac_client.Client.open(server.url)
            return list(client.search(collections=["sentinel-2-l2a"], bbox=bbox,
                                      datetime=f"{dates[0]}T00:00:00Z/{dates[1]}T23:59:59Z").items())

        def ours():
            return search_items(profile, bbox=bbox, start=dates[0], end=dates[1], url=server.url)

        n_plain, n_ours = len(plain()), len(ours())
        assert n_plain == n_ours, (n_plain, n_ours)
        tp, to = interleaved(plain, ours, repeats)
    print(f"search ({n_ours} items): pystac-client {tp * 1e3:.0f} ms, search_items {to * 1e3:.0f} ms")
    return tp / to


def make_dn(size: int, n_dates: int = 146, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    bands = list(SPECTRAL_10) + ["SCL"]
    dn = rng.integers(200, 5000, size=(n_dates, len(bands), size, size), dtype=np.uint16)
    scl = rng.choice(np.array([4, 4, 4, 5, 6, 8, 9, 3], np.uint16), size=(n_dates, size, size))
    dn[:, -1] = scl
    times = pd.date_range("2021-01-01", periods=n_dates, freq="5D")
    offset = np.where(times >= "2022-01-25", -0.1, 0.0)[:, None].repeat(len(bands), 1)
    offset[:, -1] = 0
    scale = np.full((n_dates, len(bands)), 1e-4)
    scale[:, -1] = 1
    return xr.DataArray(
        dn, dims=("time", "band", "y", "x"),
        coords={"time": times, "band": bands, "scale": (("time", "band"), scale), "offset": (("time", "band"), offset)},
        name="dn",
    )


def bench_mask(cube: xr.DataArray, repeats: int) -> tuple[float, np.ndarray]:
    dn = cube.values
    clear = np.isin(dn[:, -1], [4, 5, 6, 7])

    def plain():
        d = dn[:, :-1]
        refl = d * cube["scale"].values[:, :-1, None, None] + cube["offset"].values[:, :-1, None, None]
        return np.where(clear[:, None] & (d != 0), refl, np.nan).astype(np.float32)

    lazy = cube.chunk({"time": -1, "band": 1, "y": 256, "x": 256})

    def ours():
        return mask_clouds(lazy).values

    ref = plain()
    np.testing.assert_allclose(ours(), ref, rtol=1e-6, equal_nan=True)
    tp, to = interleaved(plain, ours, repeats)
    mpix = dn[:, :-1].size / 1e6
    print(f"cloud mask ({mpix:.0f} Mvalues): numpy {tp:.2f} s, mask_clouds {to:.2f} s ({mpix / to:.0f} Mvalues/s)")
    return tp / to, ref


def bench_scale(refl: np.ndarray, bands: list[str], repeats: int) -> float:
    da = xr.DataArray(refl, dims=("time", "band", "y", "x"), coords={"band": bands})
    lazy = da.chunk({"time": -1, "band": 1, "y": 256, "x": 256})
    i10 = [bands.index(b) for b in BANDS_10M]
    i20 = [bands.index(b) for b in BANDS_20M]

    def plain():
        return np.nanmax(refl[:, i10]), np.nanmax(refl[:, i20])

    def ours():
        return compute_scale(lazy, method="global_max_by_resolution").values

    m10, m20 = plain()
    got = ours()
    assert np.isclose(got[i10[0]], m10) and np.isclose(got[i20[0]], m20)
    tp, to = interleaved(plain, ours, repeats)
    print(f"normalisation statistics: np.nanmax {tp:.2f} s, compute_scale {to:.2f} s")
    return tp / to


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="cube side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with dask.config.set(scheduler="threads", num_workers=2):
        r_search = bench_search(args.repeats * 3)
        cube = make_dn(args.size)
        r_mask, refl = bench_mask(cube, args.repeats)
        del cube
        r_scale = bench_scale(refl, list(SPECTRAL_10), args.repeats)
    print(f"search_vs_pystac_client: {r_search:.2f}")
    print(f"mask_clouds_vs_numpy: {r_mask:.2f}")
    print(f"compute_scale_vs_numpy: {r_scale:.2f}")


if __name__ == "__main__":
    main()

"""The whole regional-cube run on a tile-sized region against the read limit and the notebook glue, one run.

Region: a generated demo tile (``s2pipe.synthetic.demo``, ``--tile`` 2048 px at 10 m, 1 tile, March-May 2022: 19 dates,
``--block`` 512-px COG blocks, all 10 bands + SCL), served by the local STAC API. Everything below runs on
the same ``LocalCluster`` of ``--workers`` worker processes x 1 thread, started once by this script; the flow
joins it through ``dask.address`` (what ``--dask-address`` does), so its start-up is the run's own.

1. **limit**: rasterio with 2 threads reads every input pixel of the output grid at 10 m (20 m bands
   cubic-resampled on read, SCL nearest), every asset of every scene, in 1024² output windows;
2. **s2pipe**: ``s2pipe run CONFIG`` in a subprocess (``gapfill.times: null``, defaults otherwise):
   wall time, the run summary's stage seconds, fixed cost (wall - stage seconds: imports, Prefect, search
   server), peak RSS of each worker process (sampled every 20 ms by a WorkerPlugin);
3. **odc-stac glue**: ``odc.stac.load`` (cubic, SCL nearest, solar-day grouping, 512² chunks) + SCL mask +
   ``interpolate_na(dim="time")`` + ``to_zarr``, what a user writes in a notebook.

Prints ``limit_vs_stages`` (limit seconds / s2pipe stage seconds; 1.0 = as fast as the read limit),
``s2pipe_vs_odc`` (odc-stac glue seconds / s2pipe stage seconds) and the tile-year cost in core-hours
extrapolated from the measured rate (146 dates x 11 bands x 10980² px).

Run: ``.venv/bin/python benchmarks/bench_e2e.py [--json out/bench-e2e/figures.json]`` (the first run generates
the region, ~1 min; ``--no-odc`` skips the slow glue baseline; ``--tile 1024`` for a quick run).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "out" / "bench-e2e"
CLEAR = (4, 5, 6, 7)
TILE_YEAR = {"dates": 146, "bands": 11, "px": 10980 ** 2}

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import PeakRSS, _peaks, _reset_peaks  # noqa: E402


def demo_region(tile: int, block: int):
    from s2pipe.synthetic.demo import DemoConfig, generate_demo

    cfg = DemoConfig(start="2022-03-01", end="2022-05-31", tile_size=tile, n_tiles=1, overlap=64, block_size=block,
                     missing_date_fraction=0.0, seed=0)
    return generate_demo(WORK / "demo", cfg)  # replaced when the configuration changes


def tile_bbox(region, inset_px: int = 8) -> tuple[float, float, float, float]:
    """Lon/lat bbox (inward-rounded) of the tile less ``inset_px`` at each edge (stays inside the scenes)."""
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = region.bounds
    d = 10.0 * inset_px
    tr = Transformer.from_crs(region.epsg, 4326, always_xy=True)
    lon, lat = tr.transform([xmin + d, xmax - d, xmax - d, xmin + d], [ymin + d, ymin + d, ymax - d, ymax - d])
    return (math.ceil(max(lon[0], lon[3]) * 1e5) / 1e5, math.ceil(max(lat[0], lat[1]) * 1e5) / 1e5,
            math.floor(min(lon[1], lon[2]) * 1e5) / 1e5, math.floor(min(lat[2], lat[3]) * 1e5) / 1e5)


def profile_for(region, block: int) -> Path:
    text = (REPO / "catalogs" / "local-demo.yaml").read_text()
    text = text.replace("demo_root: out/demo", f"demo_root: {region.root}").replace("block_size: 128",
                                                                                   f"block_size: {block}")
    path = WORK / f"profile-{block}.yaml"
    path.write_text(text)
    return path


def assets(region, profile_path: Path) -> list[tuple[str, str]]:
    """(band, href) of every asset of every scene in the region's items."""
    import yaml

    keys = yaml.safe_load(profile_path.read_text())["assets"]
    items = json.loads(Path(region.items_path).read_text())["features"]
    return [(band, it["assets"][key]["href"]) for it in items for band, key in keys.items()]


# ------------------------------------------------------------------------------------------ 1. the limit
def read_limit(pairs: list[tuple[str, str]], transform, shape, *, threads: int = 2, window: int = 1024) -> tuple[float, int]:
    """Seconds to read every asset onto the output grid (``transform``, ``shape``) at 10 m; pixels read."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    H, W = shape
    local = threading.local()

    def handle(href):
        cache = getattr(local, "ds", None)
        if cache is None:
            cache = local.ds = {}
        if href not in cache:
            cache[href] = rasterio.open(href)
        return cache[href]

    def job(args):
        band, href, r, c = args
        src = handle(href)
        k = src.transform.a / transform.a  # file pixels are k output pixels wide (1 or 2)
        col0 = (transform.c - src.transform.c) / src.transform.a
        row0 = (transform.f - src.transform.f) / src.transform.e
        h, w = min(window, H - r), min(window, W - c)
        win = Window(col0 + c / k, row0 + r / k, w / k, h / k)
        rs = Resampling.nearest if band == "SCL" or k == 1 else Resampling.cubic
        src.read(1, window=win, out_shape=(h, w), resampling=rs)

    jobs = [(b, h, r, c) for b, h in pairs for r in range(0, H, window) for c in range(0, W, window)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(job, jobs))
    seconds = time.perf_counter() - t0
    return seconds, len(pairs) * H * W


# ------------------------------------------------------------------------------------------ 2. s2pipe run
def run_s2pipe(region, profile_path: Path, bbox, address: str, client, *, overviews: bool = True) -> dict:
    import yaml

    out = WORK / "s2pipe.zarr"
    shutil.rmtree(out, ignore_errors=True)
    cfg = {"catalog": str(profile_path), "bbox": list(bbox), "start": region.start, "end": region.end,
           "output": str(out), "epsg": region.epsg, "gapfill": {"times": None}, "dask": {"address": address},
           "overviews": overviews}
    cfg_path = WORK / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    _reset_peaks(client)
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("s2pipe")), "run", str(cfg_path)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    (WORK / "run.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"s2pipe run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    peaks = _peaks(client)
    from s2pipe.flows.regional_cube import run_summary_path

    summary = json.loads(Path(run_summary_path(out)).read_text())
    return {"wall_s": wall, "summary": summary, "peak_rss_mib": {w: p["peak_mib"] for w, p in peaks.items()},
            "store": out}


# ------------------------------------------------------------------------------------------ write rates
def write_rates(store: Path, *, dates: int = 8, side: int = 1024) -> dict:
    """MB/s (uncompressed bytes) of a bare ``zarr`` write of part of the flow's output, same chunks, 2 threads,
    with the store's compressor and the alternatives (Blosc lz4 / zstd-1, Zstd-1, none; with the compression
    ratio), and of a raw ``os.write`` + ``fsync`` of the same bytes (the disk)."""
    import xarray as xr
    import zarr

    src_arr = zarr.open_array(store / "reflectance", mode="r")
    with xr.open_zarr(store) as ds:
        sample = ds["reflectance"][:dates, :, :side, :side].values
    from numcodecs import Blosc, Zstd

    rates = {}
    for name, comp in [("store", src_arr.compressors), ("blosc-lz4", Blosc("lz4", 5, Blosc.SHUFFLE)),
                       ("blosc-zstd1", Blosc("zstd", 1, Blosc.SHUFFLE)), ("zstd1", Zstd(1)), ("none", None)]:
        out = WORK / "bare.zarr"
        shutil.rmtree(out, ignore_errors=True)
        z = zarr.create_array(out, shape=sample.shape, chunks=(1,) + sample.shape[1:], dtype="f4", zarr_format=2,
                              compressors=comp, fill_value=np.nan)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: z.__setitem__(i, sample[i]), range(sample.shape[0])))
        dt = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        rates[name] = {"mb_s": round(sample.nbytes / dt / 1e6), "ratio": round(sample.nbytes / size, 2)}
        shutil.rmtree(out, ignore_errors=True)
    t_zarr = sample.nbytes / 1e6 / rates["store"]["mb_s"]
    raw = WORK / "raw.bin"
    t0 = time.perf_counter()
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, sample.tobytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    t_disk = time.perf_counter() - t0
    raw.unlink()
    return {"bare_zarr_mb_s": round(sample.nbytes / t_zarr / 1e6), "disk_mb_s": round(sample.nbytes / t_disk / 1e6),
            "compressor": str(src_arr.compressors), "compressors": rates}


# ------------------------------------------------------------------------------------------ 3. odc-stac glue
def run_odc(region, profile_path: Path, bbox, client, *, bands: list[str], epsg: int) -> float:
    import odc.stac
    import pystac
    import xarray as xr
    import yaml

    keys = yaml.safe_load(profile_path.read_text())["assets"]
    items = [pystac.Item.from_dict(f) for f in json.loads(Path(region.items_path).read_text())["features"]]
    out = WORK / "odc.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    ds = odc.stac.load(items, bands=[keys[b] for b in bands] + [keys["SCL"]], crs=f"EPSG:{epsg}", resolution=10,
                       bbox=bbox, chunks={"x": 512, "y": 512}, groupby="solar_day",
                       resampling={"*": "cubic", keys["SCL"]: "nearest"})
    clear = ds[keys["SCL"]].isin(list(CLEAR))
    refl = xr.concat([ds[keys[b]].where(clear & (ds[keys[b]] > 0)).astype("float32") / 1e4 for b in bands],
                     dim="band").assign_coords(band=bands)
    filled = refl.chunk({"time": -1}).interpolate_na(dim="time")
    filled.to_dataset(name="reflectance").to_zarr(out, mode="w", consolidated=True)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tile", type=int, default=2048, help="tile side in 10 m pixels")
    ap.add_argument("--block", type=int, default=512, help="COG block size (px)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GiB", help="per worker")
    ap.add_argument("--no-odc", action="store_true", help="skip the odc-stac glue baseline")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--no-overviews", action="store_true", help="run without the multiscale overview levels")
    a = ap.parse_args(argv)

    import xarray as xr
    from distributed import Client, LocalCluster

    from s2pipe.bands import SPECTRAL_10

    WORK.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    region = demo_region(a.tile, a.block)
    print(f"region: {region.root} ({time.perf_counter() - t:.0f} s), cpu count {os.cpu_count()}", flush=True)
    profile_path = profile_for(region, a.block)
    bbox = tile_bbox(region)
    pairs = assets(region, profile_path)
    fig: dict = {"tile_px": a.tile, "block_px": a.block, "workers": a.workers, "threads_per_worker": 1,
                 "assets": len(pairs), "overviews": not a.no_overviews}
    from s2pipe.runtime.cluster import worker_environment

    with worker_environment():  # the worker processes of s2pipe's own local clusters
        cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                               memory_limit=a.memory_limit, dashboard_address=None)
    with cluster, Client(cluster) as client:
        client.register_plugin(PeakRSS(), name=PeakRSS.name)
        run = run_s2pipe(region, profile_path, bbox, cluster.scheduler_address, client, overviews=not a.no_overviews)
        s = run["summary"]
        stages = {k: float(v) for k, v in s["stage_seconds"].items()}
        stage_total = sum(stages.values())
        with xr.open_zarr(run["store"], decode_coords="all") as ds:
            shape = (ds.sizes["y"], ds.sizes["x"])
            transform = ds.rio.transform()
            dates_in, dates_out = s["dates_in"], s["dates_out"]
        t_limit, npix = read_limit(pairs, transform, shape)
        # every asset of every scene is read by the limit; the flow reads the same (one item per date here)
        fig.update({
            "grid": list(shape), "dates_in": dates_in, "dates_out": dates_out,
            "limit_s": round(t_limit, 2), "limit_mpix_s": round(npix / t_limit / 1e6, 1),
            "s2pipe_wall_s": round(run["wall_s"], 2), "s2pipe_summary_s": s["seconds"],
            "stage_seconds": stages, "stage_total_s": round(stage_total, 2),
            "fixed_s": round(run["wall_s"] - stage_total, 2),
            "peak_rss_mib": {w: round(v, 1) for w, v in run["peak_rss_mib"].items()},
            "limit_vs_stages": round(t_limit / stage_total, 3),
        })
        print(f"limit (rasterio, 2 threads): {t_limit:.2f} s for {len(pairs)} assets x {shape[0]}x{shape[1]} px "
              f"({npix / t_limit / 1e6:.0f} Mpix/s)")
        print(f"s2pipe run: wall {run['wall_s']:.1f} s, stages {stage_total:.1f} s "
              + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + f"; fixed {fig['fixed_s']:.1f} s")
        print("peak RSS per worker: " + ", ".join(f"{v:.0f} MiB" for v in run["peak_rss_mib"].values()))
        print(f"limit_vs_stages: {fig['limit_vs_stages']:.3f}", flush=True)
        out_bytes = sum(v.nbytes for v in xr.open_zarr(run["store"]).data_vars.values())
        rates = write_rates(run["store"])
        fig.update(write=dict(rates, flow_mb_s=round(out_bytes / stages["write"] / 1e6), output_gb=round(out_bytes / 1e9, 2)))
        print(f"write: the flow's write stage {fig['write']['flow_mb_s']} MB/s of output (mask, gap fill and normalisation "
              f"included), a bare zarr write {rates['bare_zarr_mb_s']} MB/s ({rates['compressor']}), the disk "
              f"{rates['disk_mb_s']} MB/s (write + fsync)", flush=True)
        print("bare zarr write by compressor: " + ", ".join(f"{k} {v['mb_s']} MB/s (ratio {v['ratio']})"
                                                         for k, v in rates["compressors"].items()), flush=True)
        if not a.no_odc:
            t_odc = run_odc(region, profile_path, bbox, client, bands=list(SPECTRAL_10), epsg=region.epsg)
            fig.update(odc_s=round(t_odc, 2), s2pipe_vs_odc=round(t_odc / stage_total, 2))
            print(f"odc-stac + mask + interpolate_na + to_zarr: {t_odc:.1f} s")
            print(f"s2pipe_vs_odc: {fig['s2pipe_vs_odc']:.2f}")
    rate = npix / stage_total  # input pixels per second of stage time on `workers` cores
    tile_year_pix = TILE_YEAR["dates"] * TILE_YEAR["bands"] * TILE_YEAR["px"]
    fig["tile_year_core_hours"] = round(tile_year_pix / rate * a.workers / 3600, 2)
    print(f"tile-year cost at this rate: {fig['tile_year_core_hours']:.2f} core-hours "
          f"({TILE_YEAR['dates']} dates x {TILE_YEAR['bands']} bands x 10980² px, {a.workers} cores busy)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(fig, indent=1, default=str))
    return fig


if __name__ == "__main__":
    main()

"""Land-cover mapping inference throughput: ``Mapper.predict`` vs the bare U-Net forward, and the cost of the halo.

A mapper with the default architecture (U-Net base 16, depth 3; ConvLSTM head on the inputs, 1×1
kernels, hidden max(16, K); seq_len 5; ``--architecture paper``: the paper's head on the U-Net's maps)
is trained in a few seconds (1 torch thread) on a 128 x 128 crop of a synthetic scene (4 classes from a smooth random field,
10 bands, per-class spectra + noise + a per-date gain, a few NaN cloud discs); one or two epochs only, since
throughput does not depend on accuracy. ``--model PATH`` loads a saved mapper instead. Prediction runs on a
``--size`` x ``--size`` scene of seq_len + 1 dates (the last seq_len are read), on CPU and, when
``torch.cuda.is_available()``, on CUDA (``--device`` to choose). Torch threads are left at torch's default.

Cases (each warmed up once at full size, then ``--repeats`` interleaved rounds; the median is reported):

* baseline ``fcn``: ``mapper.fcn(z)`` in ``torch.inference_mode`` on the already standardised, padded tensor
  ``z`` already on the device: the last date (1 date) and the seq_len dates in batches of ``--batch-size``;
* ``head``: ``mapper.head`` on its precomputed input sequence (the inputs, and/or the U-Net's softmax maps of the
  seq_len dates; to split the temporal cost);
* ``predict single``: ``predict(img, temporal=False)`` on the NumPy-backed scene (one whole-image pass);
* ``predict temporal``: ``predict(img, temporal=True)``, seq_len dates then the ConvLSTM head;
* ``dask halo`` / ``dask halo=0``: the same scene Dask-chunked ``--chunk`` x ``--chunk`` (time and band whole),
  ``predict(...).compute()`` with the default halo (receptive radius rounded up to 8 px) and with ``halo=0``,
  Dask's synchronous scheduler by default (``--scheduler threads`` for the threaded one, ``--workers``). The
  default head (1×1 kernels on the inputs) has a temporal halo of 0: both cases are then the same.

Throughput is Mpix-dates/s = pixels x dates read / s. Ratios printed: each case's time / its ``fcn``
baseline's time (same dates, same run), halo overhead = time(halo) / time(halo=0) beside the pixel ratios
(theoretical (chunk + 2 halo)^2 / chunk^2 for an interior chunk, and the actual one for this chunk grid,
where border chunks get no outer halo), whole-image NumPy time / chunked halo=0 time, and the CUDA speed-up
(CPU time / CUDA time) when both devices ran. Values are checked: Dask with the default halo equals the
whole-image pass (to float rounding), ``predict single`` equals softmax(fcn(z)).

    .venv/bin/python benchmarks/bench_mapping.py                        # ~2 min on 2 shared cores
    .venv/bin/python benchmarks/bench_mapping.py --size 1024 --chunk 512 --repeats 3   # slow on CPU
    .venv/bin/python benchmarks/bench_mapping.py --device cuda --json out/bench_mapping.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from s2pipe.forecast import resolve_device
from s2pipe.mapping import (
    ARCHITECTURES,
    Mapper,
    _halo_chunks,
    _head_sequence,
    load_mapper,
    train_mapper,
)

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


# ------------------------------------------------------------------------------------------ data
def make_scene(size: int, dates: int, bands: list, *, n_classes: int = 4, seed: int = 0) -> tuple[xr.DataArray,
                                                                                                     xr.DataArray]:
    """(time, band, y, x) float32 reflectance and (y, x) int64 labels of a synthetic land-cover scene."""
    rng = np.random.default_rng(seed)
    B = len(bands)
    # smooth random field: bilinear upsampling of a coarse grid, classes by quantiles
    coarse = rng.standard_normal((size // 32 + 2, size // 32 + 2))
    t = np.linspace(0, coarse.shape[0] - 1.001, size)
    i, f = t.astype(int), (t - t.astype(int))
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    field = rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]
    cls = np.searchsorted(np.quantile(field, np.linspace(0, 1, n_classes + 1)[1:-1]), field).astype(np.int64)
    spectra = rng.uniform(0.02, 0.4, (n_classes, B)).astype(np.float32)
    gain = (0.8 + 0.4 * rng.random(dates)).astype(np.float32)
    v = np.empty((dates, B, size, size), np.float32)
    base = spectra[cls].transpose(2, 0, 1)  # (B, y, x)
    yy, xx = np.ogrid[0:size, 0:size]
    for d in range(dates):
        v[d] = gain[d] * base + rng.normal(0, 0.02, base.shape).astype(np.float32)
        for _ in range(3):  # NaN cloud discs
            cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 32 + 2, size // 8 + 3))]
            v[d][:, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = np.nan
    y = 5_000_000.0 - 10.0 * np.arange(size) - 5.0
    x = 400_000.0 + 10.0 * np.arange(size) + 5.0
    img = xr.DataArray(v, dims=("time", "band", "y", "x"), name="reflectance",
                       coords={"time": pd.date_range("2021-04-01", periods=dates, freq="5D"), "band": list(bands),
                               "y": y, "x": x})
    return img, xr.DataArray(cls, dims=("y", "x"), coords={"y": y, "x": x})


def get_mapper(args) -> Mapper:
    if args.model:
        mapper = load_mapper(args.model, device="cpu")
        print(f"loaded {args.model}: {mapper!r}")
        return mapper
    n = args.train_size
    img, lab = make_scene(n, 6, BANDS, seed=args.seed + 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny patches: 2 threads on a loaded 2-core machine were ~20x slower (OpenMP barriers)
    t0 = time.perf_counter()
    try:
        mapper = train_mapper(img, lab, seq_len=5, fcn_epochs=args.epochs, temporal_epochs=max(1, args.epochs // 2),
                              patch=min(64, n // 8 * 8), device="cpu", seed=args.seed, architecture=args.architecture)
    finally:
        torch.set_num_threads(threads)  # inference runs with torch's default threads
    print(f"trained on {n}x{n} x 6 dates x {len(BANDS)} bands in {time.perf_counter() - t0:.1f} s "
          f"(CPU, 1 thread): {mapper!r}")
    return mapper


# ------------------------------------------------------------------------------------------ timing
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_device(mapper: Mapper, img: xr.DataArray, dev: torch.device, args) -> dict:
    cfg = mapper.config
    n, m, bs = cfg.seq_len, cfg.multiple, args.batch_size
    size = img.sizes["y"]
    halo_t = cfg.halo(temporal=True)
    mapper.predict(img.isel(y=slice(0, 2 * m), x=slice(0, 2 * m)), temporal=False, device=dev)  # move the mapper
    lazy = img.chunk({"time": -1, "band": -1, "y": args.chunk, "x": args.chunk})

    # the baseline's input: standardised as the library does (NaN -> 0), padded to 2**depth, on the device
    mean = np.asarray(cfg.mean, np.float32)[None, :, None, None]
    std = np.asarray(cfg.std, np.float32)[None, :, None, None]
    v = np.asarray(img.sel(band=cfg.bands).isel(time=slice(-n, None)).values)
    z = np.nan_to_num((v - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)
    pad = (-size) % m
    z = torch.from_numpy(np.ascontiguousarray(np.pad(z, ((0, 0), (0, 0), (0, pad), (0, pad))))).to(dev)
    with torch.inference_mode():
        maps = _head_sequence(mapper, z, batch_size=bs)  # what the head reads, (n, 1, C, H, W)

    def fcn_1():
        with torch.inference_mode():
            return mapper.fcn(z[-1:])

    def fcn_n():
        with torch.inference_mode():
            return [mapper.fcn(z[i:i + bs]) for i in range(0, n, bs)]

    def head():
        with torch.inference_mode():
            return mapper.head(maps)

    sched = {"scheduler": args.scheduler}
    if args.scheduler == "threads":
        sched["num_workers"] = args.workers
    cases = {  # name: (callable, dates read, baseline case)
        "fcn 1 date": (fcn_1, 1, None),
        f"fcn {n} dates": (fcn_n, n, None),
        "head": (head, n, None),
        "predict single": (lambda: mapper.predict(img, temporal=False, batch_size=bs).values, 1, "fcn 1 date"),
        "predict temporal": (lambda: mapper.predict(img, temporal=True, batch_size=bs).values, n, f"fcn {n} dates"),
        f"dask halo={halo_t}": (lambda: mapper.predict(lazy, temporal=True, batch_size=bs).compute(**sched).values,
                                n, f"fcn {n} dates"),
        "dask halo=0": (lambda: mapper.predict(lazy, temporal=True, batch_size=bs, halo=0).compute(**sched).values,
                        n, f"fcn {n} dates"),
    }
    if args.dask_single:
        halo_s = cfg.halo(temporal=False)
        cases[f"dask single halo={halo_s}"] = (
            lambda: mapper.predict(lazy, temporal=False, batch_size=bs).compute(**sched).values, 1, "fcn 1 date")
        cases["dask single halo=0"] = (
            lambda: mapper.predict(lazy, temporal=False, batch_size=bs, halo=0).compute(**sched).values, 1,
            "fcn 1 date")

    outputs, times = {}, {k: [] for k in cases}
    for name, (fn, _, _) in cases.items():  # warm-up at full size (oneDNN / cuDNN pick kernels per shape)
        outputs[name] = fn()
        sync(dev)
    for _ in range(args.repeats):  # interleaved rounds: every case sees the same machine load
        for name, (fn, _, _) in cases.items():
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            times[name].append(time.perf_counter() - t0)

    # value checks
    with torch.inference_mode():
        ref_single = torch.softmax(outputs["fcn 1 date"], 1)[0, :, :size, :size].float().cpu().numpy()
    whole, halo_out, nohalo = (outputs["predict temporal"], outputs[f"dask halo={halo_t}"], outputs["dask halo=0"])
    checks = {
        "single_vs_softmax_fcn_max_abs": float(np.abs(outputs["predict single"] - ref_single).max()),
        "dask_halo_vs_whole_max_abs": float(np.abs(halo_out - whole).max()),
        "dask_halo0_vs_whole_max_abs": float(np.abs(nohalo - whole).max()),
        "dask_halo0_argmax_differs_frac": float((nohalo.argmax(0) != whole.argmax(0)).mean()),
    }
    del outputs

    res = {}
    for name, (_, dates, base) in cases.items():
        med = statistics.median(times[name])
        res[name] = {"median_s": med, "times_s": times[name], "dates": dates,
                     "mpix_dates_per_s": size * size * dates / med / 1e6, "baseline": base}
    for r in res.values():
        r["time_vs_baseline"] = r["median_s"] / res[r["baseline"]]["median_s"] if r["baseline"] else None

    # pixel ratios of the halo: an interior chunk, and the actual chunk grid (no halo beyond the image border)
    ch = _halo_chunks(lazy.chunks[2], m, halo_t)
    ext = [c + halo_t * ((i > 0) + (i < len(ch) - 1)) for i, c in enumerate(ch)]
    tn = res[f"dask halo={halo_t}"]["median_s"]
    summary = {
        "halo": halo_t,
        "chunks": list(ch),
        "halo_overhead": tn / res["dask halo=0"]["median_s"],
        "halo_pixels_theoretical": (args.chunk + 2 * halo_t) ** 2 / args.chunk ** 2,
        "halo_pixels_actual": sum(ext) ** 2 / size ** 2,
        "whole_vs_chunked_halo0": res["predict temporal"]["median_s"] / res["dask halo=0"]["median_s"],
        "whole_vs_chunked_halo": res["predict temporal"]["median_s"] / tn,
        "temporal_overhead_vs_fcn_plus_head": res["predict temporal"]["median_s"]
        / (res[f"fcn {n} dates"]["median_s"] + res["head"]["median_s"]),
    }
    return {"cases": res, "summary": summary, "checks": checks}


# ------------------------------------------------------------------------------------------ report
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="scene side (pixels), default 512")
    ap.add_argument("--chunk", type=int, default=256, help="Dask chunk side (pixels), default 256")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (median), default 3")
    ap.add_argument("--batch-size", type=int, default=8, help="dates per U-Net pass (predict's default 8)")
    ap.add_argument("--device", action="append", default=None,
                    help="torch device (repeatable); default: cpu, and cuda when available")
    ap.add_argument("--scheduler", choices=("synchronous", "threads"), default="synchronous",
                    help="Dask scheduler of the chunked cases (default synchronous: torch uses its own threads)")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers with --scheduler threads")
    ap.add_argument("--dask-single", action="store_true", help="also time single-date Dask predictions")
    ap.add_argument("--model", default=None, help="a mapper saved by Mapper.save (default: train a small one)")
    ap.add_argument("--train-size", type=int, default=128, help="side of the training crop (default 128)")
    ap.add_argument("--epochs", type=int, default=2, help="U-Net epochs of the quick training (head: half)")
    ap.add_argument("--architecture", default="inputs", choices=ARCHITECTURES, help="train_mapper architecture")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args()

    devices = [resolve_device(d) for d in (args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])))]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}),"
          f" devices {[str(d) for d in devices]}, Dask scheduler {args.scheduler}"
          + (f" ({args.workers} workers)" if args.scheduler == "threads" else ""))
    mapper = get_mapper(args)
    cfg = mapper.config
    img, _ = make_scene(args.size, cfg.seq_len + 1, cfg.bands, n_classes=len(cfg.classes), seed=args.seed)
    print(f"scene: {args.size}x{args.size}, {img.sizes['time']} dates (last {cfg.seq_len} read), "
          f"{img.sizes['band']} bands, {float(np.isnan(img.values).mean()):.1%} NaN; chunks {args.chunk}; "
          f"halo temporal {cfg.halo(temporal=True)} px, single {cfg.halo(temporal=False)} px; "
          f"median of {args.repeats}")

    results = {}
    for dev in devices:
        t0 = time.perf_counter()
        results[str(dev)] = bench_device(mapper, img, dev, args)
        print(f"{dev}: done in {time.perf_counter() - t0:.0f} s")

    print()
    header = f"{'device':<6} {'case':<24} {'median s':>9} {'Mpix-dates/s':>13} {'time/baseline':>14}  baseline"
    print(header)
    print("-" * len(header))
    for d, r in results.items():
        for name, c in r["cases"].items():
            ratio = f"{c['time_vs_baseline']:.2f}" if c["time_vs_baseline"] else "-"
            print(f"{d:<6} {name:<24} {c['median_s']:9.3f} {c['mpix_dates_per_s']:13.2f} {ratio:>14}  "
                  f"{c['baseline'] or '(baseline)'}")
    print()
    for d, r in results.items():
        s, k = r["summary"], r["checks"]
        print(f"[{d}] chunks {s['chunks']} + halo {s['halo']}: halo_overhead time(halo)/time(halo=0) = "
              f"{s['halo_overhead']:.2f}  (pixels: actual {s['halo_pixels_actual']:.2f}, interior chunk "
              f"(chunk+2*halo)^2/chunk^2 = {s['halo_pixels_theoretical']:.2f})")
        print(f"[{d}] whole-image NumPy / chunked: time ratio {s['whole_vs_chunked_halo0']:.2f} vs halo=0, "
              f"{s['whole_vs_chunked_halo']:.2f} vs default halo")
        print(f"[{d}] predict temporal / (fcn {cfg.seq_len} dates + head): "
              f"{s['temporal_overhead_vs_fcn_plus_head']:.2f}")
        print(f"[{d}] checks: predict single vs softmax(fcn) max|d| {k['single_vs_softmax_fcn_max_abs']:.1e}; "
              f"dask halo vs whole max|d| {k['dask_halo_vs_whole_max_abs']:.1e}; halo=0 vs whole max|d| "
              f"{k['dask_halo0_vs_whole_max_abs']:.2f}, argmax differs on {k['dask_halo0_argmax_differs_frac']:.2%}")
    speedup = {}
    if "cpu" in results and any(d.startswith("cuda") for d in results):
        gd = next(d for d in results if d.startswith("cuda"))
        speedup = {name: results["cpu"]["cases"][name]["median_s"] / c["median_s"]
                   for name, c in results[gd]["cases"].items() if name in results["cpu"]["cases"]}
        print(f"CUDA speed-up (CPU time / {gd} time): "
              + ", ".join(f"{name} {v:.1f}x" for name, v in speedup.items()))
    ok = all(r["checks"]["dask_halo_vs_whole_max_abs"] < 1e-4 and r["checks"]["single_vs_softmax_fcn_max_abs"] < 1e-4
             for r in results.values())
    print(f"values_match: {ok}")
    for d, r in results.items():
        c = r["cases"]
        print(f"[{d}] predict_temporal_mpix_dates_per_s: {c['predict temporal']['mpix_dates_per_s']:.2f}  "
              f"predict_single_vs_fcn: {c['predict single']['time_vs_baseline']:.2f}  "
              f"predict_temporal_vs_fcn: {c['predict temporal']['time_vs_baseline']:.2f}  "
              f"halo_overhead: {r['summary']['halo_overhead']:.2f}")

    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        cfgd = {k: v for k, v in vars(args).items()}
        path.write_text(json.dumps({"args": cfgd, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "mapper": repr(mapper), "results": results, "cuda_speedup": speedup,
                                    "values_match": ok}, indent=1, default=str))
        print(f"wrote {path}")
    if not ok:
        raise SystemExit("value check failed: chunked prediction with the default halo differs from the whole image")


if __name__ == "__main__":
    main()

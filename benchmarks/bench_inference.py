"""Model inference inside the flows, per chunk, against a bare forward pass of the same network.

A synthetic cube (``bench_mapping.make_scene``: 4 classes, 10 bands, a per-date gain, NaN cloud discs, 5-day
steps; ``--size`` px square, ``--dates`` dates) is written with ``write_cube`` (``--chunk`` px regions). A small
U-Net + ConvLSTM mapper (default architecture, 2 epochs on a 128 px crop) and an RK4 forecaster (``--epochs``
on a 24 px crop of the cube) are trained, saved, and run by the ``map-predict`` and ``forecast-predict`` flows
on one ``LocalCluster`` of ``--workers`` processes x 1 thread, started by this script with the worker
environment of s2pipe's own clusters (``cluster.WORKER_MALLOC``; ``--dask-malloc``: Dask's default), which the
flows join through ``dask.address`` (as with ``--dask-address``). Prefect's temporary API starts through
``s2pipe.flows.ephemeral_api`` first.

Per chunk, from the cluster's task stream:

* **flow**: the compute seconds of each chunk's inference tasks (``mapper-predict-…``: standardise, NaN fill,
  pad, U-Net/ConvLSTM, softmax, crop; ``forecast_block-…``: the valid pixels, encoding, RK4 free run,
  decoding, seasonal blend), including the chunk's Zarr read that Dask fuses into them, median over chunks;
* **bare**: the network alone on a tensor of the same shape, in this process with one torch thread (what one
  worker thread has): ``mapper._probabilities`` on the standardised, padded chunk with its halo, and
  ``module.rollout`` of the encoded last state for ``--steps`` steps. Median of ``--repeats``.

Printed: seconds per chunk for both, ``flow_vs_bare`` (bare / flow: 1.0 = no overhead), kpix/s, the flows' wall
times, and the torch threads each worker ran its tasks with. On a machine with CUDA it also times the bare
passes on the GPU (the flows' GPU placement is tested in ``tests/test_cuda.py``).

Run: ``.venv/bin/python benchmarks/bench_inference.py [--size 512 --chunk 128 --dates 80 --json F]``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def task_seconds(stream: list[dict], prefix: str) -> list[float]:
    """Compute seconds per chunk (the last two block indices: y, x) of the 4-d tasks whose name contains
    ``prefix``: the inference task and what Dask fused into it or split off it (the chunk's Zarr read and
    merge, ``rechunk-merge-…-mapper-predict-…``; xarray's ``map_blocks`` input subsets)."""
    per: dict = {}
    for rec in stream:
        key = rec["key"]
        name = str(key[0] if isinstance(key, tuple) else key)
        if prefix in name and isinstance(key, tuple) and len(key) == 5:  # (name, 4 block indices): the chunks
            chunk = tuple(key[-2:])
            per[chunk] = per.get(chunk, 0.0) + sum(s["stop"] - s["start"] for s in rec["startstops"]
                                                   if s["action"] == "compute")
    return list(per.values())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="cube side (px), default 512")
    ap.add_argument("--chunk", type=int, default=128, help="store chunk = Dask chunk side (px), default 128")
    ap.add_argument("--dates", type=int, default=80, help="cube dates (5-day steps), default 80 (> 1 year)")
    ap.add_argument("--steps", type=int, default=73, help="forecast steps (5-day), default 73 (1 year)")
    ap.add_argument("--epochs", type=int, default=3, help="forecaster training epochs (quick), default 3")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--dask-malloc", action="store_true",
                    help="start the workers with Dask's glibc settings instead of s2pipe's (cluster.WORKER_MALLOC)")
    a = ap.parse_args(argv)

    import torch
    from bench_mapping import get_mapper, make_scene
    from distributed import Client, LocalCluster, get_task_stream

    from s2pipe.bands import BANDS
    from s2pipe.config import DaskConfig
    from s2pipe.flows import ephemeral_api
    from s2pipe.forecast import fit_dynamics, load_dynamics
    from s2pipe.mapping import load_mapper
    from s2pipe.runtime.cluster import worker_environment
    from s2pipe.store.zarr import write_cube

    ephemeral_api.start_in_background()
    from s2pipe.flows.forecast import forecast_predict
    from s2pipe.flows.mapping import map_predict

    tmp = Path(tempfile.mkdtemp(prefix="s2pipe-bench-inference-"))
    img, _ = make_scene(a.size, a.dates, list(BANDS), seed=3)
    img = img.fillna(img.mean("time"))  # a gap-filled cube: finite everywhere (clouds were interpolated)
    img.attrs = {"crs": "EPSG:32617"}
    cube = tmp / "cube.zarr"
    write_cube(img.to_dataset(promote_attrs=True), cube, region_size=a.chunk)
    print(f"cube: {a.dates} dates x {len(BANDS)} bands x {a.size}² px, chunks {a.chunk}² px "
          f"({(a.size // a.chunk) ** 2} chunks) -> {cube}", flush=True)

    torch.set_num_threads(1)
    mapper = get_mapper(argparse.Namespace(model=None, train_size=128, epochs=2, architecture="inputs", seed=0))
    mapper_path = mapper.save(tmp / "mapper.pt")
    t = time.perf_counter()
    crop = img.isel(y=slice(0, 24), x=slice(0, 24))
    model = fit_dynamics(crop, epochs=a.epochs, seed=0)
    model_path = model.save(tmp / "forecaster.pt")
    print(f"forecaster: {model.config.scheme}, baseline {model.config.baseline}, trained in "
          f"{time.perf_counter() - t:.1f} s on 24² px", flush=True)

    fig: dict = {"size": a.size, "chunk": a.chunk, "dates": a.dates, "steps": a.steps, "workers": a.workers,
                 "worker_malloc": "dask" if a.dask_malloc else "s2pipe"}
    env = contextlib.nullcontext() if a.dask_malloc else worker_environment()
    with env:  # the glibc settings of s2pipe's own local clusters (``--dask-malloc``: Dask's default)
        cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client, ephemeral_api.api():
        dask_cfg = DaskConfig(address=cluster.scheduler_address)
        client.run(lambda: __import__("s2pipe.mapping") and __import__("s2pipe.forecast") and None)
        runs = {}
        for name, call, prefix in (
            ("mapper", lambda: map_predict(str(cube), str(mapper_path), str(tmp / "maps"), overwrite=True,
                                           dask=dask_cfg), "mapper-predict"),
            ("forecaster", lambda: forecast_predict(str(cube), str(model_path), str(tmp / "forecast.zarr"),
                                                    steps=a.steps, overwrite=True, dask=dask_cfg), "forecast_block"),
        ):
            t = time.perf_counter()
            with get_task_stream(client) as ts:
                call()
            wall = time.perf_counter() - t
            secs = task_seconds(ts.data, prefix)
            if not secs or max(secs) < 1e-3:
                names = sorted({str(r["key"][0] if isinstance(r["key"], tuple) else r["key"]).rsplit("-", 1)[0]
                                for r in ts.data})
                raise SystemExit(f"no {prefix} tasks with compute time in the task stream; prefixes: {names}")
            threads = client.run(lambda: __import__("torch").get_num_threads())
            runs[name] = {"wall_s": round(wall, 2), "chunks": len(secs), "task_s": [round(s, 4) for s in secs],
                          "worker_torch_threads": sorted(threads.values())}
            print(f"{name} flow: wall {wall:.1f} s, {len(secs)} inference tasks, median {statistics.median(secs):.3f} s "
                  f"per chunk; worker torch threads after the run {sorted(threads.values())}", flush=True)

    # ---- bare forward passes of the same networks on tensors of one chunk's shape
    torch.set_num_threads(1)
    mapper = load_mapper(mapper_path, device="cpu")
    cfg = mapper.config
    halo = cfg.halo(temporal=True)
    side = a.chunk + 2 * halo  # an interior chunk with its halo
    side += (-side) % cfg.multiple
    v = np.asarray(img.sel(band=list(cfg.bands)).isel(time=slice(-cfg.seq_len, None), y=slice(0, side),
                                                      x=slice(0, side)).values)
    z = torch.from_numpy(np.ascontiguousarray(mapper._standardize(v)))
    with torch.inference_mode():
        bare_map = median_time(lambda: mapper._probabilities(z, temporal=True, batch_size=8), a.repeats)

    model = load_dynamics(model_path, device="cpu")
    need = model._read_steps()
    px = np.asarray(img.isel(time=slice(-need, None), y=slice(0, a.chunk), x=slice(0, a.chunk)).values)
    series = px.reshape(px.shape[0], px.shape[1], -1).transpose(0, 2, 1)  # (T, P, L)
    x = torch.as_tensor(model.encode(series[-(model.config.order + 1):]), dtype=torch.float32)[-1]
    phase = torch.zeros(x.shape[0])
    with torch.inference_mode():
        bare_fc = median_time(lambda: model.module.rollout(x, a.steps, phase=phase if model.config.season else None),
                              a.repeats)

    out = {}
    for name, bare in (("mapper", bare_map), ("forecaster", bare_fc)):
        r = runs[name]
        flow = statistics.median(r["task_s"])
        kpix = a.chunk ** 2 / 1e3
        out[name] = {**r, "flow_s_per_chunk": round(flow, 4), "bare_s_per_chunk": round(bare, 4),
                     "flow_vs_bare": round(bare / flow, 3), "flow_kpix_s": round(kpix / flow, 2),
                     "bare_kpix_s": round(kpix / bare, 2)}
        print(f"{name}: flow {flow:.3f} s/chunk ({kpix / flow:.1f} kpix/s per worker), bare {bare:.3f} s/chunk "
              f"({kpix / bare:.1f} kpix/s, 1 torch thread) -> flow_vs_bare {bare / flow:.2f}")
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        mapper = load_mapper(mapper_path, device=dev)
        zc = z.to(dev)
        model = load_dynamics(model_path, device=dev)
        xc, pc = x.to(dev), phase.to(dev)
        with torch.inference_mode():
            out["mapper"]["bare_cuda_s_per_chunk"] = median_time(
                lambda: mapper._probabilities(zc, temporal=True, batch_size=8), a.repeats, torch.cuda.synchronize)
            out["forecaster"]["bare_cuda_s_per_chunk"] = median_time(
                lambda: model.module.rollout(xc, a.steps, phase=pc if model.config.season else None), a.repeats,
                torch.cuda.synchronize)
        for name in out:
            c = out[name]["bare_cuda_s_per_chunk"]
            print(f"{name}: bare on CUDA {c:.4f} s/chunk -> cuda_vs_cpu {out[name]['bare_s_per_chunk'] / c:.1f}x")
    fig.update(out)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(fig, indent=1))
    print(f"flow_vs_bare: mapper {out['mapper']['flow_vs_bare']:.2f}, forecaster {out['forecaster']['flow_vs_bare']:.2f}")
    return fig


if __name__ == "__main__":
    main()

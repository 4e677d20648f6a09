"""How the regional-cube pipeline scales: workers, region size, tasks per submitted graph.

Runs the stages of the ``regional-cube`` flow (its own Prefect task functions, ``.fn``: search -> build_cube ->
cloud mask -> Cressman gap fill -> normalisation -> ``write_cube`` region by region) on a synthetic demo region
(``s2pipe.synthetic.demo``, one 1152 px tile, 3 months, served by the local STAC API) on a ``LocalCluster`` of worker
processes (1 thread each):

(a) **speed-up**: the same 512 x 512 px region on 1 and on 2 workers -> wall times and ``speedup_2_vs_1``
    (bounded by the cores: ``os.cpu_count()`` is printed; other processes on the machine compete);
(b) **memory**: the 512 x 512 region and one 4 x its area (1024 x 1024) on 2 workers, streaming (the raw
    cube is not persisted, ``s2pipe.runtime.cluster.PERSIST_FRACTION = 0``, as for a cube larger than 25 % of the cluster memory) ->
    peak RSS per worker process (sampled every 20 ms in each worker by a WorkerPlugin) and the ratio
    big / small, which should stay near 1: memory is bounded by the regions in flight, not by the region;
(c) **tasks per submitted graph**: a SchedulerPlugin counts the tasks of every graph the scheduler receives
    in (b) (``update_graph``); the per-region and statistics-pass graphs are measured, turned into tasks per
    (input date x read chunk) and extrapolated to a whole Sentinel-2 tile-year, printed against 500,000.

Both (b) runs use ``chunk_size`` = 256 px (read chunks = write regions = 256 px) so the small region has
several regions. Ratios are measured in the same run. Run:
``.venv/bin/python benchmarks/bench_scale.py [--json out/bench-scale/figures.json]``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

DEMO_ROOT = Path("out/bench-scale/demo")
WORK = Path("out/bench-scale/runs")
TASK_LIMIT = 500_000

# ------------------------------------------------------------------------------------------ plugins
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin  # noqa: E402


class PeakRSS(WorkerPlugin):
    """Samples the worker process's resident set size every ``interval`` s; keeps the peak since ``reset``."""

    name = "bench-peak-rss"

    def __init__(self, interval: float = 0.02):
        self.interval = interval

    def setup(self, worker):
        import psutil

        self._proc = psutil.Process()
        self.baseline = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-peak-rss")
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            rss = self._proc.memory_info().rss
            if rss > self.peak:
                self.peak = rss

    def reset(self):
        self.baseline = self.peak = self._proc.memory_info().rss

    def teardown(self, worker):
        self._stop.set()


class GraphCounter(SchedulerPlugin):
    """Records the number of tasks of every graph submitted to the scheduler, with its main key prefixes."""

    name = "bench-graph-counter"

    def __init__(self):
        self.graphs: list[dict] = []

    def update_graph(self, scheduler, *, client, keys, tasks, annotations, priority, stimulus_id, **kwargs):
        from dask.utils import key_split

        prefixes = Counter(key_split(k) for k in tasks)
        self.graphs.append({"tasks": len(tasks), "outputs": len(keys), "prefixes": dict(prefixes.most_common(40))})


def _peaks(client) -> dict[str, dict[str, float]]:
    def read(dask_worker):
        p = dask_worker.plugins[PeakRSS.name]
        return {"peak_mib": p.peak / 2**20, "baseline_mib": p.baseline / 2**20}

    return client.run(read)


def _reset_peaks(client) -> None:
    client.run(lambda dask_worker: dask_worker.plugins[PeakRSS.name].reset())


def _graphs(client) -> list[dict]:
    return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins[GraphCounter.name].graphs)


# ------------------------------------------------------------------------------------------ the pipeline
def demo_region():
    from s2pipe.synthetic.demo import DemoConfig, generate_demo

    cfg = DemoConfig(start="2022-01-01", end="2022-03-31", tile_size=1152, n_tiles=1, overlap=64, block_size=128,
                     seed=0)
    return generate_demo(DEMO_ROOT, cfg)  # reused when already there with this configuration


def square_bbox(region, side_px: int) -> tuple[float, float, float, float]:
    """Lon/lat bbox (inward-rounded) of a ``side_px`` x ``side_px`` square of 10 m pixels centred in the tile."""
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = region.bounds
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    h = 5.0 * side_px
    tr = Transformer.from_crs(region.epsg, 4326, always_xy=True)
    lon, lat = tr.transform([cx - h, cx + h, cx + h, cx - h], [cy - h, cy - h, cy + h, cy + h])
    return (math.ceil(min(lon) * 1e5) / 1e5, math.ceil(min(lat) * 1e5) / 1e5,
            math.floor(max(lon) * 1e5) / 1e5, math.floor(max(lat) * 1e5) / 1e5)


def profile_for(region) -> Path:
    base = (Path(__file__).resolve().parents[1] / "catalogs" / "local-demo.yaml").read_text()
    path = WORK.parent / "bench-demo.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(base.replace("demo_root: out/demo", f"demo_root: {region.root}"))
    return path


def run_region(region, profile_path: Path, *, side: int, n_workers: int, chunk: int, persist: bool, tag: str) -> dict:
    """The flow's stages on a fresh LocalCluster; wall time of cube..write, peak RSS per worker, graph sizes."""
    from distributed import Client, LocalCluster

    import s2pipe.flows.regional_cube as rc
    import s2pipe.runtime.cluster as cluster_module
    from s2pipe.config import load_config
    from s2pipe.runtime.cluster import worker_environment
    from s2pipe.stac.catalog import load_profile
    from s2pipe.store import staging
    from s2pipe.synthetic.demo import demo_server

    out = WORK / f"{tag}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config({
        "catalog": str(profile_path), "bbox": list(square_bbox(region, side)), "start": region.start,
        "end": region.end, "output": str(out), "chunk_size": chunk, "epsg": region.epsg, "quicklook": False,
        "overwrite": True,
        "dask": {"n_workers": n_workers, "threads_per_worker": 1, "processes": True, "memory_limit": "4GiB"},
    })
    profile = load_profile(cfg.catalog)
    with demo_server(region) as server:
        items = rc.search_task.fn(cfg, profile, server.url)
    saved = cluster_module.PERSIST_FRACTION
    cluster_module.PERSIST_FRACTION = saved if persist else 0.0
    try:
        with worker_environment():  # the worker processes of s2pipe's own local clusters
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit="4GiB",
                                   dashboard_address=None)
        with cluster, Client(cluster) as client:
            client.register_plugin(PeakRSS(), name=PeakRSS.name)
            client.register_plugin(GraphCounter(), name=GraphCounter.name)
            # warm the workers (imports of the pipeline's modules) before the baseline
            client.run(lambda: __import__("s2pipe.cube") and __import__("s2pipe.gapfill") and None)
            _reset_peaks(client)
            t0 = time.perf_counter()
            cube, persisted = rc.cube_task.fn(items, cfg, profile)
            reflectance, clear = rc.mask_task.fn(cube, cfg)
            ds = rc.output_of(cube, reflectance, clear, cfg, persisted=persisted)  # as the flow does
            _, regions = rc.write_task.fn(ds, cfg)
            staging.remove(cfg.output)
            wall = time.perf_counter() - t0
            peaks = _peaks(client)
            graphs = _graphs(client)
    finally:
        cluster_module.PERSIST_FRACTION = saved
    read_chunk = int(cube.data.chunksize[-1])
    return {
        "tag": tag, "side_px": side, "workers": n_workers, "persist": persist, "wall_s": round(wall, 2),
        "cube_shape": {k: int(v) for k, v in cube.sizes.items()}, "out_dates": int(ds.sizes["time"]),
        "read_chunk_px": read_chunk, "region_px": chunk, "regions": regions["total"],
        "read_chunks": int(math.prod(len(c) for c in cube.data.chunks[2:])),
        "peak_rss_mib": {w: round(v["peak_mib"], 1) for w, v in peaks.items()},
        "baseline_rss_mib": {w: round(v["baseline_mib"], 1) for w, v in peaks.items()},
        "graphs": graphs,
    }


# ------------------------------------------------------------------------------------------ graph classes
def classify(graphs: list[dict]) -> dict[str, list[int]]:
    """Task counts of the submitted graphs by kind: region writes (``fill_block`` gap fill) as "region", the
    statistics pass over the whole cube (the masked DN max of ``clear_band_max``) as "other"; tiny graphs
    (< 10 tasks: reading the scale/offset coordinates) are left out."""
    kinds: dict[str, list[int]] = {"region": [], "other": []}
    for g in graphs:
        if g["tasks"] < 10:
            continue
        names = " ".join(g["prefixes"])
        kinds["region" if "fill_block" in names else "other"].append(g["tasks"])
    return kinds


def tile_year_plan(small: dict, big: dict, *, dates: int = 146, tile_px: int = 10980, read_chunk: int = 1024,
                   region_px: int = 1024, window: int | None = None) -> dict:
    """Tasks per submitted graph for a whole tile-year, extrapolated from the measured graphs.

    The reads are time-whole (one task per band and read chunk, every date inside it); the tasks that grow with
    the dates are the Zarr write tasks (one per date and store chunk) and their in-region rechunk. Each measured
    graph is expressed as tasks per (input date x read chunk it covers), measured at the benchmark's date count;
    at 146 dates the per-chunk part is spread over more dates, so this over-estimates (an upper bound).
    """
    out: dict = {"assumptions": {
        "tile_px": tile_px, "resolution_m": 10, "dates_per_year": dates,
        "dates_note": "2.5-day mean revisit of one MGRS tile (S2A+S2B, overlapping relative orbits), one item "
                      "per date; 10 spectral bands + SCL = 11 bands read",
        "read_chunk_px": read_chunk, "read_chunk_note": "default_chunk_size(profile.block_size): COG block 1024 px of the "
                                                        "Earth Search / Planetary Computer profiles",
        "region_px": region_px, "region_note": "write_cube DEFAULT_REGION_SIZE (chunk_for(1024) = 1024)",
        "analysis_blocks": "time-whole, one band, read-chunk extent", "gapfill_times": "5D"}}
    chunks_side = math.ceil(tile_px / read_chunk)
    regions_side = math.ceil(tile_px / region_px)
    chunks_per_region = max(1, (region_px // read_chunk)) ** 2
    window = window or "2 x worker threads"
    coeffs = {}
    for run in (small, big):
        d = run["cube_shape"]["time"]
        k = classify(run["graphs"])
        per_region_chunks = max(1, (run["region_px"] // run["read_chunk_px"]) ** 2)
        if k["region"]:
            coeffs.setdefault("region", []).append(max(k["region"]) / (d * per_region_chunks))
        if k["other"]:
            coeffs.setdefault("other", []).append(max(k["other"]) / (d * run["read_chunks"]))
    c_region = max(coeffs.get("region", [0.0]))
    c_other = max(coeffs.get("other", [0.0]))
    per_region = c_region * dates * chunks_per_region
    stats = c_other * dates * chunks_side ** 2
    # compute_scale reduces a graph above MAX_GRAPH_TASKS in strips of whole chunk rows (s2pipe.normalize._pieces)
    from s2pipe.normalize import MAX_GRAPH_TASKS

    rows_per_strip = max(1, chunks_side // math.ceil(stats / MAX_GRAPH_TASKS)) if stats > MAX_GRAPH_TASKS else chunks_side
    strips = math.ceil(chunks_side / rows_per_strip)
    per_strip = stats * rows_per_strip / chunks_side
    out.update({
        "read_chunks_per_tile": chunks_side ** 2, "regions_per_tile": regions_side ** 2,
        "read_chunks_per_region": chunks_per_region, "window": window,
        "measured_tasks_per_date_chunk": {"region_graph": round(c_region, 2), "whole_cube_graph": round(c_other, 2)},
        "formula": "tasks(graph) = c x dates x read chunks covered (c measured on the small runs)",
        "tasks_per_region_graph": int(round(per_region)),
        "tasks_statistics_pass": int(round(stats)),
        "statistics_strips": strips, "max_graph_tasks_setting": MAX_GRAPH_TASKS,
        "tasks_per_statistics_graph": int(round(per_strip)),
        "max_tasks_per_submitted_graph": int(round(max(per_region, per_strip))),
        "tasks_total_tile_year": int(round(per_region * regions_side ** 2 + stats)),
        "limit": TASK_LIMIT,
    })
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=512, help="side (px) of the small region")
    ap.add_argument("--chunk", type=int, default=256, help="read chunk = write region (px)")
    ap.add_argument("--json", type=Path, default=None, help="also save the figures as JSON to this path")
    args = ap.parse_args(argv)

    print(f"os.cpu_count() = {os.cpu_count()} (speed-up is bounded by the cores; other processes may compete)")
    t = time.perf_counter()
    region = demo_region()
    print(f"demo region: {region.n_items} scenes, {region.start}..{region.end}, ready in {time.perf_counter() - t:.1f} s")
    profile = profile_for(region)
    s, c = args.small, args.chunk

    # (a) speed-up, same region on 1 and 2 workers (default flow behaviour: a small cube is persisted)
    one = run_region(region, profile, side=s, n_workers=1, chunk=c, persist=True, tag="a-1worker")
    two = run_region(region, profile, side=s, n_workers=2, chunk=c, persist=True, tag="a-2workers")
    speedup = one["wall_s"] / two["wall_s"]
    print(f"\n(a) {s} x {s} px, {one['cube_shape']['time']} dates x {one['cube_shape']['band']} bands: "
          f"1 worker {one['wall_s']:.1f} s, 2 workers {two['wall_s']:.1f} s -> speedup_2_vs_1 = {speedup:.2f} "
          f"(ideal 2.00 on >= 2 free cores)")

    # (b) memory: region and 4x its area, streaming, 2 workers
    small = run_region(region, profile, side=s, n_workers=2, chunk=c, persist=False, tag="b-small")
    big = run_region(region, profile, side=2 * s, n_workers=2, chunk=c, persist=False, tag="b-big")
    pk_s, pk_b = max(small["peak_rss_mib"].values()), max(big["peak_rss_mib"].values())
    print(f"\n(b) streaming, 2 workers, read chunk = region = {c} px")
    for r in (small, big):
        sh = r["cube_shape"]
        print(f"  {sh['y']} x {sh['x']} px ({r['regions']} regions, {sh['time']} dates): {r['wall_s']:.1f} s, "
              f"peak RSS per worker (MiB) {sorted(r['peak_rss_mib'].values())} "
              f"(idle baseline {sorted(r['baseline_rss_mib'].values())})")
    area = (big["cube_shape"]["y"] * big["cube_shape"]["x"]) / (small["cube_shape"]["y"] * small["cube_shape"]["x"])
    print(f"  area ratio {area:.2f}, peak RSS ratio big/small (max over workers) = {pk_b / pk_s:.2f}; "
          f"growth above baseline {max(big['peak_rss_mib'][w] - big['baseline_rss_mib'][w] for w in big['peak_rss_mib']):.0f}"
          f" vs {max(small['peak_rss_mib'][w] - small['baseline_rss_mib'][w] for w in small['peak_rss_mib']):.0f} MiB")

    # (c) tasks per submitted graph
    print("\n(c) tasks per submitted graph (measured by a SchedulerPlugin)")
    for r in (small, big):
        k = classify(r["graphs"])
        print(f"  {r['tag']}: {len(r['graphs'])} graphs; region graphs {len(k['region'])} "
              f"(max {max(k['region'], default=0)} tasks), others {k['other']} tasks; "
              f"total {sum(g['tasks'] for g in r['graphs'])}")
    plan = tile_year_plan(small, big)
    a = plan["assumptions"]
    print(f"  tile-year plan: {a['tile_px']} x {a['tile_px']} px at 10 m, {a['dates_per_year']} dates "
          f"({a['dates_note']}); read chunk {a['read_chunk_px']} px -> {plan['read_chunks_per_tile']} chunks; "
          f"region {a['region_px']} px -> {plan['regions_per_tile']} regions ({plan['read_chunks_per_region']} "
          f"chunk each), window {plan['window']} regions in flight")
    print(f"  {plan['formula']}; c = {plan['measured_tasks_per_date_chunk']}")
    print(f"  -> per region graph {plan['tasks_per_region_graph']:,} tasks; statistics pass "
          f"{plan['tasks_statistics_pass']:,} tasks in {plan['statistics_strips']} strips (graphs) of "
          f"{plan['tasks_per_statistics_graph']:,}; largest submitted graph {plan['max_tasks_per_submitted_graph']:,} "
          f"vs limit {TASK_LIMIT:,} ({plan['max_tasks_per_submitted_graph'] / TASK_LIMIT:.1%}); "
          f"all graphs of the tile-year {plan['tasks_total_tile_year']:,}")

    figures = {"cpu_count": os.cpu_count(), "speedup_2_vs_1": round(speedup, 3), "a": [one, two],
               "b": [small, big], "peak_rss_ratio_big_vs_small": round(pk_b / pk_s, 3), "area_ratio": round(area, 2),
               "tile_year_plan": plan}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1, default=str))
        print(f"\nfigures saved to {args.json}")
    return figures


if __name__ == "__main__":
    main()

"""The ``regional-cube`` flow: region + time window -> cloud-masked, gap-filled, normalized Zarr cube.

One Prefect task per stage (search, cube, cloud mask, gap fill, normalisation, write, quick-look; a cube too
large for the cluster's memory is staged first, see ``s2pipe.store.staging``). The
tasks build and run Dask graphs on a cluster: a ``LocalCluster`` by default, or an existing scheduler
(``dask.address``); Prefect never sees chunks. Bad input raises ``InputError`` before anything is sent or
written; catalog hiccups (``TransientError``) are retried with backoff.

Run it from the CLI (``s2pipe run CONFIG.yaml``), from Python (``regional_cube(load_config(...))``), or as a
deployment (``deploy/prefect.yaml``, ``python -m s2pipe.flows.serve``).
"""

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import xarray as xr
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from s2pipe import __version__
from s2pipe.cloudmask import mask_clouds, observed_mask
from s2pipe.config import RunConfig, load_config
from s2pipe.cube import build_cube, default_chunk_size
from s2pipe.errors import (
    AssetReadError,
    NoScenesError,
    OutputConflictError,
    StoreLockedError,
)
from s2pipe.gapfill import cressman
from s2pipe.normalize import cube_scale, normalize
from s2pipe.runtime import cluster
from s2pipe.runtime.cluster import dask_client, persist_budget
from s2pipe.runtime.objectstore import ObjectPath, is_url, location, storage_environment
from s2pipe.runtime.progress import ProgressLine
from s2pipe.search import search_items
from s2pipe.stac.assets import AssetCheck, check_assets, redact_href
from s2pipe.stac.catalog import CatalogProfile, load_profile
from s2pipe.store import staging
from s2pipe.store.dataset import output_dataset
from s2pipe.store.incremental import (
    extended_attrs,
    new_output_dates,
    plan_append,
    stored_scale,
)
from s2pipe.store.zarr import (
    append_cube,
    check_parameters,
    is_complete,
    store_lock,
    write_cube,
)

__all__ = [
    "run_logger", "demo_data_task", "search_task", "check_assets_task", "cube_task", "mask_task",
    "gapfill_task", "normalize_task", "stage_task", "write_task", "quicklook_task", "stac_task", "run_summary_path",
    "output_of", "regional_cube",
]


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # called outside a run (tests of the library path)
        return logging.getLogger("s2pipe")


@task(name="demo-data", cache_policy=NO_CACHE)
def demo_data_task(root: str):
    """The local demo region at ``root``: reuse the one there (whatever its configuration), else generate the default."""
    from s2pipe.synthetic.demo import generate_demo, load_demo

    if (Path(root) / "manifest.json").is_file():
        return load_demo(Path(root))
    return generate_demo(Path(root), progress=ProgressLine("generating demo scenes", unit="scenes", logger=run_logger()))


@task(name="search", cache_policy=NO_CACHE)  # search_items retries (s2pipe.runtime.retry); Prefect does not
def search_task(cfg: RunConfig, profile: CatalogProfile, url: str | None) -> list:
    log = run_logger()
    log.info(f"searching {redact_href(url) if url else profile.public_url} collection {profile.collection!r} {cfg.start}..{cfg.end}, cloud <= {cfg.max_cloud}%")
    items = search_items(
        profile, bbox=cfg.bbox, geometry=cfg.region_geometry(), start=cfg.start, end=cfg.end, max_cloud=cfg.max_cloud, url=url
    )
    log.info(f"found {len(items)} scenes")
    return items


@task(name="check-assets", cache_policy=NO_CACHE)
def check_assets_task(items: list, cfg: RunConfig, client, profile: CatalogProfile) -> AssetCheck:
    """Header checks of every asset on the cluster; bad scenes are left out (``strict``: the run fails).
    ``s3://`` / ``gs://`` / ``az://`` hrefs are reached with ``cfg.storage`` (fsspec and GDAL settings applied
    here and on the workers for the duration of the check). Retries, backoff and time-out: the profile's."""
    log = run_logger()
    with storage_environment(cfg.storage, client=client):
        check = check_assets(items, [*cfg.bands, "SCL"], strict=cfg.strict, client=client,
                             retries=profile.read_retries, backoff=profile.read_backoff, timeout=profile.http_timeout,
                             signer=profile.signer)
    for d in check.dropped:
        log.warning(f"scene {d['id']} left out: asset {d['asset']} ({d['href']}) failed after {d['attempts']} "
                    f"attempts: {d['reason']}")
    log.info(f"assets checked: {check.n_assets} assets of {check.n_items} scenes, {len(check.dropped_ids)} scenes left out")
    return check


@task(name="cube", cache_policy=NO_CACHE)
def cube_task(items: list, cfg: RunConfig, profile: CatalogProfile) -> tuple[xr.DataArray, bool]:
    """The lazy raw cube, read into cluster memory when it fits in ``runtime.cluster.persist_budget()``; returns it and
    whether it was read (False: it streams region by region, see ``s2pipe.store.staging``)."""
    cube = build_cube(
        items, bands=cfg.bands, include_scl=True, bbox=_bbox(cfg), epsg=cfg.epsg, resolution=cfg.resolution,
        chunk_size=cfg.chunk_size or default_chunk_size(profile.block_size), storage=cfg.storage, time_chunks="all",
        read_retry=profile.read_retry, http_timeout=profile.http_timeout, signer=profile.signer,
    )
    cube.attrs.update(catalog=profile.name, catalog_url=profile.public_url)
    log = run_logger()
    log.info(f"cube: {dict(cube.sizes)} uint16, {cube.nbytes / 2**30:.2f} GiB, chunks {cube.data.chunksize}")
    budget = persist_budget()
    if cube.nbytes > budget:
        log.info(f"the cube exceeds {cluster.PERSIST_FRACTION:.0%} of the cluster memory ({budget / 2**30:.2f} GiB): "
                 "it streams region by region")
        return cube, False
    # Small enough to hold: read every scene once, then the statistics pass and the region writes run from
    # memory. Read blocks are the analysis blocks: whole time series (what Cressman needs), one band, the
    # read chunks' spatial extent, each read by one task (few large tasks keep the scheduler out of the way).
    t0 = time.monotonic()
    cube = cube.persist()
    from distributed import futures_of, wait

    wait(cube.data)
    for future in futures_of(cube):
        if future.status == "error":
            future.result()  # raises the read's error (an AssetReadError names the asset) before any write
    log.info(f"cube read into cluster memory in {time.monotonic() - t0:.1f} s (fits in {cluster.PERSIST_FRACTION:.0%} of it)")
    return cube, True


@task(name="cloud-mask", cache_policy=NO_CACHE)
def mask_task(cube: xr.DataArray, cfg: RunConfig) -> tuple[xr.DataArray, xr.DataArray]:
    return mask_clouds(cube, clear_classes=cfg.clear_classes), observed_mask(cube, clear_classes=cfg.clear_classes)


@task(name="gap-fill", cache_policy=NO_CACHE)
def gapfill_task(reflectance: xr.DataArray, cfg: RunConfig, times=None) -> tuple[xr.DataArray, xr.DataArray]:
    """Cressman gap fill onto ``cfg.gapfill.times``, or onto the given output dates ``times`` (appends)."""
    g = cfg.gapfill
    filled, weight = cressman(reflectance, radius=g.radius, kernel=g.kernel, times=g.times if times is None else times,
                              return_weight=True)
    run_logger().info(f"gap fill: {reflectance.sizes['time']} dates -> {filled.sizes['time']} dates (radius {g.radius}, {g.kernel})")
    return filled, weight


@task(name="normalize", cache_policy=NO_CACHE)
def normalize_task(cube: xr.DataArray, reflectance: xr.DataArray, filled: xr.DataArray, cfg: RunConfig, *,
                   staged: xr.Dataset | None = None) -> xr.DataArray:
    """Scale factors from the clear observations (``normalize.cube_scale``), applied to the gap-filled cube.

    A resumed run reuses the factors stored in the existing output. ``staged``: the staging store of a streamed
    run, whose per-pixel maxima (``staging.band_max``) replace the statistics pass.
    """
    log = run_logger()
    n = cfg.normalize
    scale = stored_scale(cfg.output, filled.band.values, storage=cfg.storage)
    if scale is None:
        t0 = time.monotonic()
        log.info(f"normalisation statistics ({n.method}) over {reflectance.sizes['time']} dates ...")
        band_max = staging.band_max(staged) if staged is not None and n.method != "per_band_percentile" else None
        scale = cube_scale(cube, reflectance, method=n.method, percentile=n.percentile,
                           clear_classes=cfg.clear_classes, band_max=band_max)
        log.info(f"normalisation factors computed in {time.monotonic() - t0:.1f} s: "
                 + ", ".join(f"{b}={float(s):.4f}" for b, s in zip(scale.band.values, scale.values)))
    else:
        log.info("reusing the normalisation factors of the existing output (resumed run)")
    return normalize(filled, method=n.method, percentile=n.percentile, scale=scale)


class _RegionCount:
    """Progress callback that also remembers the regions found done at the start and at the end."""

    def __init__(self, inner):
        self.inner, self.start, self.end, self.total = inner, None, 0, 0

    def __call__(self, done: int, total: int) -> None:
        if self.start is None:
            self.start = done
        self.end, self.total = done, total
        self.inner(done, total)

    def summary(self) -> dict[str, int]:
        return {"total": self.total, "resumed": self.start or 0, "written_by_this_run": self.end - (self.start or 0)}


@task(name="stage", cache_policy=NO_CACHE)
def stage_task(raw: xr.Dataset, reflectance: xr.DataArray, cfg: RunConfig) -> xr.Dataset:
    """Phase 1 of a streamed run (``s2pipe.store.staging``): the unnormalized cube and its per-pixel maxima, staged."""
    log = run_logger()
    where = staging.staging_path(cfg.output, storage=cfg.storage)
    log.info(f"staging the unnormalized cube in {where} region by region (each scene read once)")
    counts = _RegionCount(ProgressLine("staging cube", unit="regions", logger=log))
    return staging.stage(raw, reflectance, cfg.output, overwrite=cfg.overwrite, region_size=cfg.chunk_size,
                         progress=counts, storage=cfg.storage)


def _stage_first(cfg: RunConfig, plan) -> bool:
    """Whether a streamed run stages its cube before normalising (``s2pipe.store.staging``): for the max-based
    methods of a new output, or to finish one whose staging store is complete. Otherwise the factors are
    known (a resumed or appended output) or need every value (``per_band_percentile``): one pass as before."""
    if plan is not None or cfg.normalize.method == "per_band_percentile":
        return False
    if staging.is_complete(staging.staging_path(cfg.output, storage=cfg.storage)):
        return not staging.is_complete(cfg.output, storage=cfg.storage)
    return cfg.overwrite or not location(cfg.output, cfg.storage).exists()


@task(name="write-zarr", cache_policy=NO_CACHE)
def write_task(ds: xr.Dataset, cfg: RunConfig, *, append: bool = False) -> tuple[Path | str, dict[str, int]]:
    """Write (or, with ``append``, extend along time) the output store (a path, or a URL through fsspec with
    ``cfg.storage``); returns it and its region counts."""
    log = run_logger()
    counts = _RegionCount(ProgressLine("appending to cube" if append else "writing cube", unit="regions", logger=log))
    if append:
        log.info(f"appending {ds.sizes['time']} dates to {cfg.output} region by region")
        return append_cube(ds, cfg.output, progress=counts, storage=cfg.storage), counts.summary()
    log.info(f"writing {cfg.output} ({dict(ds.sizes)}) region by region")
    path = write_cube(ds, cfg.output, overwrite=cfg.overwrite, region_size=cfg.chunk_size, progress=counts,
                      storage=cfg.storage, overviews=cfg.overviews, zarr_format=cfg.zarr_format)
    return path, counts.summary()


@task(name="quicklook", cache_policy=NO_CACHE)
def quicklook_task(cube: xr.DataArray, path: Path | str, storage=None) -> Path | str:
    """The quick-look PNG beside the store ``path`` (an object-store URL: rendered locally, then uploaded)."""
    import tempfile

    from s2pipe.products.quicklook import quicklook
    from s2pipe.store.zarr import open_cube

    store = location(path, storage)
    target = store.with_suffix(".png")
    if isinstance(target, ObjectPath):
        with tempfile.TemporaryDirectory(prefix="s2pipe-quicklook-") as tmp:
            local = quicklook(cube, open_cube(store), Path(tmp) / target.name)
            target.write_bytes(Path(local).read_bytes())
        png: Path | str = target.url
    else:
        png = quicklook(cube, open_cube(store), target)
    run_logger().info(f"quick-look saved to {png}")
    return png


@task(name="stac-metadata", cache_policy=NO_CACHE)
def stac_task(path: Path | str, storage=None, collection: str | None = None) -> dict[str, Path | str]:
    """The STAC Collection and Item beside the store (``<stem>.collection.json``, ``<stem>.item.json``)."""
    from s2pipe.products.stac_metadata import write_cube_stac

    files = write_cube_stac(path, storage=storage, input_collection=collection)
    run_logger().info(f"STAC metadata written: {files['collection']}, {files['item']}")
    return files


def _ids(items: list) -> list[str]:
    """Ids of STAC items given as pystac Items or dicts."""
    return [it.id if hasattr(it, "id") else it["id"] for it in items]


def run_summary_path(output: str | Path) -> Path | str:
    """The JSON run summary written beside an output store: ``out/x.zarr`` -> ``out/x.run.json``
    (an object-store URL gives a URL: ``s3://b/x.zarr`` -> ``s3://b/x.run.json``)."""
    if is_url(output):
        store = location(output)
        return store.with_name(f"{store.stem}.run.json").url
    p = Path(output)
    return p.with_name(f"{p.stem}.run.json")


class _Warnings(logging.Handler):
    """Collects WARNING and above of s2pipe and of the Prefect run loggers (for the run summary)."""

    LOGGERS = ("s2pipe", "prefect.flow_runs", "prefect.task_runs", "distributed")

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < 200:
            self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:2000])

    def __enter__(self) -> "_Warnings":
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


def _untimed(name: str, task, *args, **kwargs):
    return task.fn(*args, **kwargs)


def output_of(cube: xr.DataArray, reflectance: xr.DataArray, clear: xr.DataArray, cfg: RunConfig, *,
              persisted: bool, plan=None, new_dates=None, timed=_untimed) -> xr.Dataset:
    """The stages after the cloud mask as the flow runs them: gap fill, then (a streamed cube: stage first, so
    that each COG pixel is read once) normalise, and the output Dataset. ``timed(name, task, *args)`` runs each
    task (default: its function, outside a flow run, as ``benchmarks/bench_scale.py`` calls it)."""
    filled, weight = timed("gap_fill", gapfill_task, reflectance, cfg, new_dates)
    staged = None
    if not persisted and _stage_first(cfg, plan):
        raw = output_dataset(filled, weight, clear, cube=cube, parameters=cfg.parameters())
        staged = timed("stage", stage_task, raw, reflectance, cfg)
        filled, weight, clear = staged["reflectance"], staged["weight"], staged["observed"]
    normalized = timed("normalize", normalize_task, cube, reflectance, filled, cfg, staged=staged)
    return output_dataset(normalized, weight, clear, cube=cube, parameters=cfg.parameters())


def _cube_to_store(check: AssetCheck, cfg: RunConfig, profile: CatalogProfile, plan, *, timed):
    """Read, mask, fill, normalise and write the checked scenes: (cube, dataset, store path, region counts), or
    (cube, None, None, None) when an append finds no new output date."""
    cube, persisted = timed("cube", cube_task, check.items, cfg, profile)
    cube.attrs.update(check.provenance())
    reflectance, clear = timed("cloud_mask", mask_task, cube, cfg)
    new_dates = None
    if plan is not None:
        new_dates = new_output_dates(reflectance.time.values, last_date=plan.last_date, times=cfg.gapfill.times)
        if len(new_dates) == 0:
            return cube, None, None, None
    ds = output_of(cube, reflectance, clear, cfg, persisted=persisted, plan=plan, new_dates=new_dates, timed=timed)
    if plan is not None:
        ds.attrs = extended_attrs(plan.attrs, ds.attrs)
    path, regions = timed("write", write_task, ds, cfg, append=plan is not None)
    return cube, ds, path, regions


def _same_scenes(state: dict, items: list) -> bool:
    """Whether a store's state says it was built from exactly ``items`` (used or left out)."""
    attrs = state.get("inputs", {}).get("attrs", {})
    return set(_ids(items)) == {*attrs.get("stac_items", []), *attrs.get("dropped_items", [])}


def _search(cfg: RunConfig, profile: CatalogProfile, *, timed) -> list:
    """The run's scenes: the profile's STAC API searched; the local demo catalog is served for the search."""
    with contextlib.ExitStack() as stack:
        url = None
        if profile.is_local_demo:
            from s2pipe.synthetic.demo import demo_server

            region = demo_data_task(profile.demo_folder)
            url = stack.enter_context(demo_server(region)).url
            run_logger().info(f"local demo STAC API serving on {url}")
        return timed("search", search_task, cfg, profile, url)


def _summary(path, png, *, items: list, cube: xr.DataArray, ds: xr.Dataset, mode: str, appended: bool,
             seconds: float) -> dict[str, Any]:
    """What the flow returns (and the CLI prints) for a run that wrote something."""
    return {
        "output": str(path),
        "quicklook": str(png) if png else None,
        "scenes": len(items),
        "dates_in": int(cube.sizes["time"]),
        "dates_out": int(ds.sizes["time"]),
        "mode": mode,
        "dates_appended": int(ds.sizes["time"]) if appended else 0,
        "shape": {k: int(v) for k, v in ds["reflectance"].sizes.items()},
        "seconds": seconds,
    }


@flow(name="regional-cube")
def regional_cube(config: RunConfig) -> dict[str, Any]:
    """Build the gap-filled, normalized Zarr datacube of one region and time window.

    With ``append`` an existing store is extended with the output dates after its last one (only the scenes
    that can reach them are read; see ``s2pipe.store.incremental``); when nothing new was acquired the run changes
    nothing. Beside the output it writes a JSON run summary (``run_summary_path``), also when the run fails:
    status, mode (create / resume / append / up-to-date), scenes used, regions written by this run and resumed
    from an earlier one, seconds per stage, warnings.
    """
    from s2pipe.store.zarr import write_json

    cfg = load_config(config)
    profile = load_profile(cfg.catalog)
    log = run_logger()
    t0 = time.monotonic()
    stages: dict[str, float] = {}
    record: dict[str, Any] = {"output": str(cfg.output), "status": "running", "software": f"s2pipe {__version__}",
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stage_seconds": stages,
                              "catalog": profile.name, "parameters": cfg.parameters()}

    def timed(name: str, fn, *args, **kwargs):
        t = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[name] = round(time.monotonic() - t, 2)

    plan = plan_append(cfg.output, cfg.parameters(), start=cfg.start, storage=cfg.storage) if cfg.append else None
    search_cfg = cfg if plan is None else cfg.model_copy(update={"start": plan.search_start})
    if plan is not None:
        record["append"] = {"store_last_date": str(plan.last_date.date()), "search_from": str(plan.search_start)}
        log.info(f"appending to {cfg.output}: its last date is {plan.last_date.date()}, searching from {plan.search_start}")

    def up_to_date(reason: str) -> dict[str, Any]:
        log.info(f"{cfg.output} is up to date: {reason}")
        record.update(status="completed", mode="up-to-date", reason=reason, seconds=round(time.monotonic() - t0, 1),
                      warnings=caught.messages)
        return {"output": str(cfg.output), "mode": "up-to-date", "reason": reason, "dates_appended": 0,
                "seconds": record["seconds"],
                "run_summary": str(write_json(run_summary_path(cfg.output), record, storage=cfg.storage))}

    with _Warnings() as caught, contextlib.ExitStack() as held:
        try:
            # Before any request: one run at a time on the store, and none that would conflict with it.
            held.enter_context(store_lock(cfg.output, storage=cfg.storage, reentrant=True))
            state = None if plan is not None or cfg.overwrite else check_parameters(
                cfg.output, cfg.parameters(), storage=cfg.storage, zarr_format=cfg.zarr_format)
            if plan is not None and plan.search_start > cfg.end:
                return up_to_date(f"the window ends {cfg.end}, before anything new could follow {plan.last_date.date()}")
            try:
                items = _search(search_cfg, profile, timed=timed)
            except NoScenesError:
                if plan is None:
                    raise
                return up_to_date(f"no scenes in {plan.search_start}..{cfg.end}")
            record["scenes"] = _ids(items)
            if state is not None and _same_scenes(state, items) and is_complete(cfg.output, storage=cfg.storage):
                return up_to_date("the store is complete, written from these scenes with these parameters")
            with dask_client(cfg.dask) as client:
                log.info(f"dask cluster: {client.scheduler.address} with {len(client.scheduler_info().get('workers', {}))} workers")
                check = timed("check_assets", check_assets_task, items, cfg, client, profile)
                record["assets"] = check.summary()
                record["scenes"] = _ids(check.items)
                record["scenes_dropped"] = check.dropped_ids
                # An asset that passed the check but whose pixels cannot be read leaves its scene out, and the
                # cube is built again without it: only where this run owns the whole output (nothing of an
                # earlier run's store, made with that scene, would then disagree); otherwise the run fails.
                can_leave_out = not cfg.strict and (cfg.overwrite or not location(cfg.output, cfg.storage).exists())
                run_cfg = cfg
                while True:
                    try:
                        cube, ds, path, regions = _cube_to_store(check, run_cfg, profile, plan, timed=timed)
                        break
                    except AssetReadError as exc:
                        left = (check.leave_out(exc.href, reason=str(exc), attempts=profile.read_retry.attempts)
                                if can_leave_out else None)
                        if left is None or not check.items:
                            raise
                        log.warning(f"scene {left} left out: its asset {redact_href(exc.href)} could not be read "
                                    f"({exc}); building the cube again without it")
                        record.update(assets=check.summary(), scenes=_ids(check.items),
                                      scenes_dropped=check.dropped_ids)
                        run_cfg = cfg.model_copy(update={"overwrite": True})  # what this run wrote, it rewrites
                if ds is None:
                    return up_to_date(f"no acquisition after {plan.last_date.date()} up to {cfg.end}")
                record["regions"] = regions
                staging.remove(cfg.output, storage=cfg.storage)
                record["mode"] = "append" if plan is not None else "resume" if regions["resumed"] else "create"
                png = timed("quicklook", quicklook_task, cube, path, cfg.storage) if cfg.quicklook else None
                stac = timed("stac", stac_task, path, cfg.storage, profile.collection)
                record["stac"] = {k: str(v) for k, v in stac.items()}
        except BaseException as exc:
            if isinstance(exc, (StoreLockedError, OutputConflictError)):
                raise  # refused before any work: the store and its summary are another run's, left as they are
            record.update(status="failed", error=redact_href(f"{type(exc).__name__}: {exc}")[:4000],
                          seconds=round(time.monotonic() - t0, 1), warnings=caught.messages)
            write_json(run_summary_path(cfg.output), record, storage=cfg.storage)
            raise
    summary = _summary(path, png, items=items, cube=cube, ds=ds, mode=record["mode"], appended=plan is not None,
                       seconds=round(time.monotonic() - t0, 1))
    record.update(status="completed", seconds=summary["seconds"], dates_in=summary["dates_in"],
                  dates_out=summary["dates_out"], shape=summary["shape"], quicklook=summary["quicklook"],
                  warnings=caught.messages)
    summary["run_summary"] = str(write_json(run_summary_path(path), record, storage=cfg.storage))
    log.info(f"done: {summary}")
    return summary


def _bbox(cfg: RunConfig) -> tuple[float, float, float, float]:
    if cfg.bbox is not None:
        return cfg.bbox
    from s2pipe.search import parse_region

    return tuple(parse_region(geometry=cfg.region_geometry()).bounds)


if __name__ == "__main__":
    import sys

    print(regional_cube(load_config(sys.argv[1])))

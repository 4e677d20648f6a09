"""The ``s2pipe`` command line."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # cluster start/stop chatter

import s2pipe.flows  # noqa: E402,F401 - s2pipe's Prefect settings, before anything imports Prefect
from s2pipe.errors import InputError, S2PipeError, TransientError  # noqa: E402

__all__ = ["app"]

app = typer.Typer(
    help=(
        "s2pipe: a region and a time window in, an analysis-ready Sentinel-2 datacube out.\n\n"
        "Searches a STAC API, stacks the scenes on one grid (Dask), masks clouds with SCL, fills gaps by "
        "Cressman temporal interpolation, normalizes, and writes a GIS-readable Zarr store. "
        "Start with `s2pipe demo`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_INPUT = 2
EXIT_TRANSIENT = 3
EXIT_OTHER = 1


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("distributed", "httpx", "rasterio", "urllib3", "asyncio", "botocore", "aiobotocore", "s3fs", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(exc: BaseException) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    if isinstance(exc, InputError):
        return typer.Exit(EXIT_INPUT)
    if isinstance(exc, TransientError):
        return typer.Exit(EXIT_TRANSIENT)
    return typer.Exit(EXIT_OTHER)


def _flow(module: str, name: str):
    """The flow ``s2pipe.flows.<module>.<name>``, called so that it reports to a Prefect API (the one place the CLI
    reaches the flows). Without ``PREFECT_API_URL``, the temporary server starts while the flow module imports
    (``s2pipe.flows.ephemeral_api``) instead of after."""
    import functools
    import importlib

    from s2pipe.flows import ephemeral_api

    ephemeral_api.start_in_background()
    flow = getattr(importlib.import_module(f"s2pipe.flows.{module}"), name)

    @functools.wraps(flow)
    def call(*args, **kwargs):
        with ephemeral_api.api():
            return flow(*args, **kwargs)

    return call


def _run_flow(cfg) -> dict:
    return _flow("regional_cube", "regional_cube")(cfg)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run configuration (see examples/*.yaml and `s2pipe.config.RunConfig`).")],
    dask_address: Annotated[Optional[str], typer.Option("--dask-address", help="Existing Dask scheduler, e.g. tcp://host:8786 (default: start a LocalCluster).")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Override the config's output: a Zarr path or an s3://, gs://, az:// URL.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an output built from a different grid or inputs.")] = False,
    append: Annotated[bool, typer.Option("--append", help="Extend the existing output with the dates after its last one (scheduled runs); nothing new: nothing changes.")] = False,
    end: Annotated[Optional[str], typer.Option("--end", help="Override the config's last day: YYYY-MM-DD or 'today' (UTC).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on a missing, truncated or invalid asset instead of leaving its scene out.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the regional-cube flow (search -> cube -> cloud mask -> gap fill -> normalize -> Zarr) for CONFIG."""
    _setup_logging(verbose)
    from s2pipe.config import load_config

    try:
        cfg = load_config(config, dask_address=dask_address, output=output, overwrite=overwrite or None,
                          append=append or None, end=end, strict=strict or None)
        summary = _run_flow(cfg)
    except S2PipeError as exc:
        raise _fail(exc) from None
    _print_summary(summary)


@app.command()
def update(
    config: Annotated[Path, typer.Argument(help="YAML run configuration of the cube to keep up to date.")],
    mapper: Annotated[Optional[Path], typer.Option("--mapper", help="Trained land-cover mapper: a map per new date.")] = None,
    forecaster: Annotated[Optional[Path], typer.Option("--forecaster", help="Trained forecast model: a forecast per new date.")] = None,
    products: Annotated[Optional[Path], typer.Option("--products", help="Folder of the derived products (default: <output>-products beside the cube).")] = None,
    end: Annotated[Optional[str], typer.Option("--end", help="Last day: YYYY-MM-DD or 'today' (UTC, the default for updates).")] = "today",
    dask_address: Annotated[Optional[str], typer.Option("--dask-address", help="Existing Dask scheduler (default: a LocalCluster).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Scheduled update: append the acquisitions since the last run to CONFIG's cube (creating it the first
    time), then map and forecast each new date. Nothing new acquired: nothing changes."""
    _setup_logging(verbose)
    from s2pipe.config import load_config

    try:
        cfg = load_config(config, dask_address=dask_address, end=end, append=True)
        regional_update = _flow("update", "regional_update")

        result = regional_update(cfg, mapper=str(mapper) if mapper else None,
                                 forecaster=str(forecaster) if forecaster else None,
                                 products=str(products) if products else None)
    except S2PipeError as exc:
        raise _fail(exc) from None
    _print_summary(result["cube"])
    if result.get("due") is not None:
        typer.echo(f"  products in {result['products']}: maps {result['maps'] or 'none new'}, "
                   f"forecasts {result['forecasts'] or 'none new'}")


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Zarr store to write.")] = Path("out/demo-cube.zarr"),
    dask_address: Annotated[Optional[str], typer.Option("--dask-address", help="Existing Dask scheduler (default: a LocalCluster).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output built differently.")] = False,
    maps: Annotated[bool, typer.Option("--maps/--no-maps", help="Then map the region's roads and mangroves and the road built in 2022.")] = True,
    maps_output: Annotated[Path, typer.Option("--maps-output", help="Folder of the land-cover products.")] = Path("out/demo-maps"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """The embedded default job: generate the demo region (once), serve it with a local STAC API, build its cube,
    then train a U-Net + ConvLSTM mapper on its road and mangrove vectors, map the region at the end of 2021 and
    of 2022, and find the road built in between."""
    _setup_logging(verbose)
    from s2pipe.config import load_config
    from s2pipe.runtime.progress import ProgressLine
    from s2pipe.stac.catalog import load_profile
    from s2pipe.synthetic.demo import generate_demo

    try:
        profile = load_profile("local-demo")
        region = generate_demo(Path(profile.demo_folder), progress=ProgressLine("generating demo scenes", unit="scenes"))
        cfg = load_config(
            {"catalog": "local-demo", "bbox": list(region.default_bbox), "start": region.start, "end": region.end,
             "output": str(output), "max_cloud": 100.0},
            dask_address=dask_address, overwrite=overwrite or None,
        )
        summary = _run_flow(cfg)
        _print_summary(summary)
        if maps:
            demo_maps = _flow("mapping", "demo_maps")
            from s2pipe.config import DaskConfig

            products = demo_maps(summary["output"], str(region.roads_path), str(region.mangroves_path),
                                 output=str(maps_output), dask=DaskConfig(address=dask_address))
    except S2PipeError as exc:
        raise _fail(exc) from None
    typer.echo(f"vector labels: {region.roads_path} (roads), {region.mangroves_path} (mangroves)")
    typer.echo(f"open in QGIS/GDAL:  gdalinfo ZARR:\"{Path(summary['output']).resolve()}\":/reflectance")
    if maps:
        _print_demo_maps(products)


def _ious(scores: dict) -> str:
    """'name 0.93, ...' per-class IoU of a ``Scores.to_dict()``."""
    return ", ".join(f"{n} {c['iou']:.2f}" if c["iou"] is not None else f"{n} -"
                     for n, c in scores["per_class"].items())


def _print_demo_maps(products: dict) -> None:
    trained = products["train"]
    typer.echo(f"land-cover mapper: {trained['model']} ({trained['train_seconds']} s; report {trained['report']})")
    for mode, scores in (trained.get("held_out") or {}).items():
        ious = _ious(scores)
        typer.echo(f"  held-out east part, {mode.replace('_', ' ')}: OA {scores['overall_accuracy']:.1%}, IoU {ious}")
    for year, m in products["maps"].items():
        typer.echo(f"  map {m['last_date']}: {m['class_map']}, {m['probability']}, {m['png']}")
    ch = products["change"]
    typer.echo(f"  roads built since 2021: {ch['changed_pixels'].get('appeared', 0)} px, {ch['polygons']} polygons -> "
               f"{ch['raster']}, {ch['vectors']}, {ch['png']}")


@app.command()
def search(
    bbox: Annotated[str, typer.Option(help="west,south,east,north in degrees lon/lat.")],
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option(help="Last day, YYYY-MM-DD.")],
    catalog: Annotated[str, typer.Option(help="Catalog profile name or YAML path (see `s2pipe catalogs`).")] = "earth-search-v1-l2a",
    max_cloud: Annotated[float, typer.Option(help="Maximum eo:cloud_cover in percent.")] = 100.0,
    url: Annotated[Optional[str], typer.Option(help="Override the profile's STAC API URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the normalized items as a GeoJSON FeatureCollection.")] = False,
) -> None:
    """Search a STAC API and list the scenes a cube would be built from."""
    _setup_logging(False)
    import contextlib

    from s2pipe.search import search_items
    from s2pipe.stac.catalog import load_profile

    try:
        box = tuple(float(v) for v in bbox.split(","))
        if len(box) != 4:
            raise InputError(f"--bbox {bbox!r} must have 4 numbers: west,south,east,north")
        profile = load_profile(catalog)
        with contextlib.ExitStack() as stack:
            if profile.is_local_demo and url is None:
                from s2pipe.synthetic.demo import demo_server, generate_demo

                region = generate_demo(Path(profile.demo_folder))
                url = stack.enter_context(demo_server(region)).url
            items = search_items(profile, bbox=box, start=start, end=end, max_cloud=max_cloud, url=url)
    except ValueError as exc:
        raise _fail(InputError(str(exc)) if not isinstance(exc, S2PipeError) else exc) from None
    except S2PipeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps({"type": "FeatureCollection", "features": [i.to_dict() for i in items]}))
        return
    for it in items:
        p = it.properties
        typer.echo(f"{it.id:48s} {p.get('datetime', '')[:19]}  cloud {p.get('eo:cloud_cover', float('nan')):5.1f}%  EPSG:{p.get('proj:epsg')}")
    typer.echo(f"{len(items)} scenes")


@app.command()
def catalogs() -> None:
    """List the built-in catalog profiles."""
    from s2pipe.stac.catalog import list_profiles, load_profile

    for name in list_profiles():
        p = load_profile(name)
        typer.echo(f"{name:26s} {p.collection:20s} {p.description}")


@app.command("demo-data")
def demo_data(
    root: Annotated[Path, typer.Option(help="Folder to generate the demo region in.")] = Path("out/demo"),
) -> None:
    """Generate the demo region only (COGs, STAC items, vector labels); idempotent."""
    _setup_logging(False)
    from s2pipe.runtime.progress import ProgressLine
    from s2pipe.synthetic.demo import generate_demo

    region = generate_demo(root, progress=ProgressLine("generating demo scenes", unit="scenes"))
    typer.echo(f"demo region in {region.root}: items {region.items_path}, bbox {region.bbox}, {region.start}..{region.end}")


@app.command("serve-demo")
def serve_demo(
    root: Annotated[Path, typer.Option(help="Folder of the demo region (generated if missing).")] = Path("out/demo"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 7822,
) -> None:
    """Serve the demo region with a real STAC API on 127.0.0.1 until Ctrl-C or SIGTERM (for QGIS, pystac-client, ...)."""
    from s2pipe.stac.server import LocalStacServer
    from s2pipe.synthetic.demo import generate_demo

    region = generate_demo(root)
    with _until_stopped(), LocalStacServer([region.collection_path, region.items_path], port=port) as server:
        typer.echo(f"STAC API at {server.url} (collection sentinel-2-l2a); Ctrl-C to stop")
        _wait_forever()


@app.command("serve")
def serve(
    folder: Annotated[Path, typer.Argument(help="Folder of the outputs: every *.collection.json and *.item.json under it is served.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (serve-demo's is 7822, so both can run).")] = 7823,
) -> None:
    """Serve the STAC metadata of the outputs under FOLDER (cubes, maps, change maps, forecasts) with a real STAC
    API on 127.0.0.1 until Ctrl-C or SIGTERM; search it with pystac-client as the inputs.

    Each output's Collection and Item are served as written beside it, except their hrefs: a relative asset href
    or link is served as an absolute path on this machine (as the demo's input items have them), and a
    derived_from link to another served output as that item's URL in the API. Zarr stores and hidden folders
    are not searched.
    """
    from s2pipe.stac.server import serve_folder

    try:
        with _until_stopped(), serve_folder(folder, port=port) as served:
            typer.echo(f"STAC API at {served.url}: {len(served.items)} items in the collections "
                       f"{', '.join(served.collections)}; Ctrl-C to stop")
            _wait_forever()
    except S2PipeError as exc:
        raise _fail(exc) from None


@contextlib.contextmanager
def _until_stopped():
    """Ctrl-C and SIGTERM (docker stop, a service manager) end the block alike, quietly (a server in it stops)."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except KeyboardInterrupt:
        pass


def _wait_forever() -> None:
    import time

    while True:
        time.sleep(1)


@app.command()
def info(path: Annotated[Path, typer.Argument(help="A Zarr store written by s2pipe.")]) -> None:
    """Summarise a cube written by s2pipe: variables, grid, dates, provenance."""
    from s2pipe.store.zarr import open_cube

    try:
        ds = open_cube(path)
    except S2PipeError as exc:
        raise _fail(exc) from None
    typer.echo(str(ds))
    params = ds.attrs.get("parameters")
    if params:
        typer.echo("parameters: " + json.dumps(params))
    layout = (ds.attrs.get("multiscales") or {}).get("layout", [])[1:]
    if layout:  # the overview levels, by the URI a GIS opens each with
        typer.echo("overview levels: " + ", ".join(
            f"{e['asset'].rsplit('/', 1)[0]} {e['spatial:shape'][0]}x{e['spatial:shape'][1]} px "
            f"({e['spatial:transform'][0]:g} m)" for e in layout))


forecast_app = typer.Typer(
    help="Spectral forecasting with RK4 residual networks on a cube written by `s2pipe run`/`demo`.",
    no_args_is_help=True,
)
app.add_typer(forecast_app, name="forecast")


@forecast_app.command("train")
def forecast_train_cmd(
    cube: Annotated[Path, typer.Argument(help="Zarr cube written by s2pipe (gap-filled, regular time).")],
    model_out: Annotated[Path, typer.Option("--model", "-m", help="Where to save the model (.pt).")] = Path("out/rk4.pt"),
    start: Annotated[Optional[str], typer.Option(help="First training date (YYYY-MM-DD).")] = None,
    end: Annotated[Optional[str], typer.Option(help="Last training date.")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Class raster (GeoTIFF) choosing training pixels, e.g. out/demo/landcover.tif.")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Class ids of --mask to train on, comma-separated (e.g. 3 for forest).")] = None,
    bbox: Annotated[Optional[str], typer.Option(help="xmin,ymin,xmax,ymax in the cube's CRS.")] = None,
    neighbours: Annotated[bool, typer.Option(help="Add each pixel's 4 neighbours (the paper's option).")] = True,
    max_pixels: Annotated[int, typer.Option(help="Random subset of at most this many pixels.")] = 20000,
    scheme: Annotated[str, typer.Option(help="rk4, euler or lstm.")] = "rk4",
    hidden: Annotated[int, typer.Option(help="Hidden units of the operator network.")] = 150,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the library's choice).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 (default: CUDA when available).")] = None,
    baseline: Annotated[str, typer.Option(help="auto, seasonal (blend with each pixel's seasonal reference) or none (the paper's network alone).")] = "auto",
) -> None:
    """Train a spectral-dynamics model on chosen pixels of a cube."""
    _setup_logging(False)
    try:
        cls = [int(c) for c in classes.split(",")] if classes else None
        box = [float(v) for v in bbox.split(",")] if bbox else None
        if box is not None and len(box) != 4:
            raise InputError(f"--bbox {bbox!r} must have 4 numbers: xmin,ymin,xmax,ymax")
        forecast_train = _flow("forecast", "forecast_train")

        summary = forecast_train(str(cube), str(model_out), start=start, end=end, mask=str(mask) if mask else None,
                                 classes=cls, bbox=box, neighbours=neighbours, max_pixels=max_pixels, scheme=scheme,
                                 hidden=hidden, epochs=epochs, seed=seed, device=device, baseline=baseline)
    except ValueError as exc:
        raise _fail(exc if isinstance(exc, S2PipeError) else InputError(str(exc))) from None
    except S2PipeError as exc:
        raise _fail(exc) from None
    typer.echo(f"model saved to {summary['model']} ({summary['pixels']} pixels, {summary['dates']} dates)")


@forecast_app.command("predict")
def forecast_predict_cmd(
    cube: Annotated[Path, typer.Argument(help="Zarr cube written by s2pipe.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model saved by `s2pipe forecast train`.")] = Path("out/rk4.pt"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Forecast Zarr store to write.")] = Path("out/forecast.zarr"),
    steps: Annotated[int, typer.Option(help="Dates to forecast (73 = one year on a 5-day grid).")] = 73,
    history_end: Annotated[Optional[str], typer.Option(help="Forecast from this date (default: the cube's last).")] = None,
    dask_address: Annotated[Optional[str], typer.Option("--dask-address", help="Existing Dask scheduler.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    level: Annotated[Optional[float], typer.Option(help="Also write the calibrated central interval of this coverage (e.g. 0.9): forecast_lower, forecast_upper.")] = None,
) -> None:
    """Forecast every pixel of a cube, chunk by chunk, into a GIS-readable Zarr store."""
    _setup_logging(False)
    from s2pipe.config import DaskConfig

    try:
        forecast_predict = _flow("forecast", "forecast_predict")

        summary = forecast_predict(str(cube), str(model), str(output), steps=steps, history_end=history_end,
                                   overwrite=overwrite, dask=DaskConfig(address=dask_address), level=level)
    except S2PipeError as exc:
        raise _fail(exc) from None
    typer.echo(f"forecast written to {summary['output']} ({steps} steps)")


map_app = typer.Typer(
    help="Land-cover mapping (U-Net per date + ConvLSTM over a date sequence, or per-pixel random forest / LightGBM) "
         "on a cube written by `s2pipe run`/`demo`.",
    no_args_is_help=True,
)
app.add_typer(map_app, name="map")

_LABEL_HELP = ("Vector labels PATH:CLASS_ID[:NAME] (GeoPackage/GeoJSON/Shapefile, any CRS); repeat for several "
               "classes, later ones win, e.g. --label out/demo/vectors/mangroves.geojson:1:mangrove "
               "--label out/demo/vectors/roads.geojson:2:road")


def _label_specs(labels: list[str] | None, *, line_width: float, width_column: str | None) -> list[dict]:
    """``PATH:CLASS_ID[:NAME]`` strings -> label-source dicts of ``s2pipe.ml.labels.label_sources``."""
    specs = []
    for text in labels or []:
        parts = text.rsplit(":", 2)
        if len(parts) == 3 and not parts[2].strip().lstrip("-").isdigit() and parts[1].strip().lstrip("-").isdigit():
            path, cid, name = parts
        elif len(parts) >= 2 and parts[-1].strip().lstrip("-").isdigit():
            path, cid, name = text.rsplit(":", 1) + [None]
        else:
            raise InputError(f"--label {text!r} must be PATH:CLASS_ID or PATH:CLASS_ID:NAME, e.g. roads.gpkg:2:road")
        spec = {"data": path, "class_id": int(cid), "line_width": line_width}
        if name:
            spec["name"] = name
        if width_column:
            spec["width_column"] = width_column
        specs.append(spec)
    return specs


_MODEL_HELP = ("Mapper kind: unet-convlstm (single-date U-Net + ConvLSTM over the window's dates), random-forest or "
               "lightgbm (per-pixel trees on all bands x dates of the window).")


def _mapper_kind(model: str) -> str:
    """The ``--model`` of ``map train``: a mapper kind; a path (the option's meaning before) is refused."""
    from s2pipe.mapping import MAPPER_KINDS

    if model in MAPPER_KINDS:
        return model
    if model.endswith(".pt") or "/" in model or os.sep in model:
        raise InputError(f"--model {model!r} looks like a file path: --model is the mapper kind now "
                         f"({', '.join(MAPPER_KINDS)}); pass the output path with --output/-o {model}")
    raise InputError(f"--model {model!r} is not a mapper kind; pass one of {', '.join(MAPPER_KINDS)}")


@map_app.command("train")
def map_train_cmd(
    cube: Annotated[Path, typer.Argument(help="Zarr cube written by s2pipe.")],
    label: Annotated[list[str], typer.Option("--label", "-l", help=_LABEL_HELP)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to save the mapper (.pt); a JSON report goes beside it.")] = Path("out/mapper.pt"),
    model: Annotated[str, typer.Option("--model", "-m", help=_MODEL_HELP)] = "unet-convlstm",
    start: Annotated[Optional[str], typer.Option(help="First training date (YYYY-MM-DD); pick dates the labels are true for.")] = None,
    end: Annotated[Optional[str], typer.Option(help="Last training date.")] = None,
    line_width: Annotated[float, typer.Option(help="Width (m) lines and points are widened to.")] = 20.0,
    width_column: Annotated[Optional[str], typer.Option(help="Attribute with each line's width in metres (e.g. width_m).")] = None,
    background: Annotated[int, typer.Option(help="Class of pixels no label covers (0 = other; -1 = unlabelled).")] = 0,
    split: Annotated[str, typer.Option(help="Spatial hold-out for the report: half, blocks or none.")] = "half",
    test_fraction: Annotated[float, typer.Option(help="Share of labelled pixels held out.")] = 0.3,
    seq_len: Annotated[Optional[int], typer.Option(help="Dates the mapper reads (default: 5 for unet-convlstm, as the paper; all the window's dates for the trees).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="unet-convlstm: training epochs, U-Net and ConvLSTM together (default: the library's choice).")] = None,
    n_estimators: Annotated[Optional[int], typer.Option(help="random-forest: trees (default 300); lightgbm: boosting rounds (default 400).")] = None,
    n_jobs: Annotated[Optional[int], typer.Option(help="Trees: training threads (default: all cores).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[Optional[str], typer.Option(help="unet-convlstm: cpu, cuda, cuda:1 (default: CUDA when available).")] = None,
) -> None:
    """Train a land-cover mapper from vector labels on a cube; print its held-out scores."""
    _setup_logging(False)
    try:
        kind = _mapper_kind(model)
        tree_options = {k: v for k, v in (("n_estimators", n_estimators), ("n_jobs", n_jobs)) if v is not None}
        if kind == "unet-convlstm" and tree_options:
            raise InputError("--n-estimators/--n-jobs are options of the tree mappers; pass --model random-forest "
                             "or lightgbm, or leave them out")
        specs = _label_specs(label, line_width=line_width, width_column=width_column)
        from s2pipe.ml.labels import label_sources

        label_sources(specs)  # bad labels fail here, before Prefect starts or anything is written
        map_train = _flow("mapping", "map_train")
        report = map_train(str(cube), str(output), specs, start=start, end=end, background=background,
                           split=split, test_fraction=test_fraction, seq_len=seq_len, epochs=epochs, seed=seed,
                           device=device, model=kind, tree_options=tree_options or None)
    except ValueError as exc:
        raise _fail(exc if isinstance(exc, S2PipeError) else InputError(str(exc))) from None
    except S2PipeError as exc:
        raise _fail(exc) from None
    typer.echo(f"{report['kind']} mapper saved to {report['model']} ({report['dates']} dates, "
               f"{report['train_seconds']} s); report {report['report']}")
    for mode, scores in (report.get("held_out") or {}).items():
        ious = _ious(scores)
        typer.echo(f"  held out, {mode.replace('_', ' ')}: OA {scores['overall_accuracy']:.1%}, "
                   f"macro F1 {scores['macro_f1']:.3f}, IoU {ious}")


@map_app.command("predict")
def map_predict_cmd(
    cube: Annotated[Path, typer.Argument(help="Zarr cube written by s2pipe.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Mapper saved by `s2pipe map train` (any kind).")] = Path("out/mapper.pt"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for probability.zarr, class_map.tif, entropy.tif, margin.tif, map.png, summary.json.")] = Path("out/map"),
    end: Annotated[Optional[str], typer.Option(help="Map the dates up to this day (default: the cube's last).")] = None,
    single_date: Annotated[bool, typer.Option("--single-date", help="unet-convlstm: the U-Net on the last date only (no ConvLSTM).")] = False,
    smooth: Annotated[bool, typer.Option("--smooth", help="Smooth the probabilities spatially first (Bayesian, as sits_smooth; off by default).")] = False,
    smooth_window: Annotated[int, typer.Option(help="Window (odd, px) of --smooth.")] = 7,
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="Labels to draw in the PNG and compare with (as for `map train`).")] = None,
    line_width: Annotated[float, typer.Option(help="Width (m) of label lines.")] = 20.0,
    width_column: Annotated[Optional[str], typer.Option(help="Attribute with each line's width in metres.")] = None,
    dask_address: Annotated[Optional[str], typer.Option("--dask-address", help="Existing Dask scheduler.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing probability store.")] = False,
) -> None:
    """Map a cube chunk by chunk: class probabilities and their entropy/margin (Zarr), class map and uncertainty
    layers (COGs) and a PNG."""
    _setup_logging(False)
    from s2pipe.config import DaskConfig

    try:
        specs = _label_specs(label, line_width=line_width, width_column=width_column) or None
        from s2pipe.ml.labels import label_sources

        if specs:
            label_sources(specs)
        map_predict = _flow("mapping", "map_predict")
        summary = map_predict(str(cube), str(model), str(output), end=end, temporal=not single_date, labels=specs,
                              overwrite=overwrite, dask=DaskConfig(address=dask_address),
                              smoothing={"window": smooth_window} if smooth else None)
    except S2PipeError as exc:
        raise _fail(exc) from None
    typer.echo(f"map of {summary['last_date']} ({summary['mode']}) written to {summary['output']}: "
               f"{Path(summary['class_map']).name}, {Path(summary['probability']).name}, "
               f"{Path(summary['entropy']).name}, {Path(summary['margin']).name}, {Path(summary['png']).name}")


@map_app.command("change")
def map_change_cmd(
    earlier: Annotated[Path, typer.Argument(help="Earlier class map (COG from `map predict`).")],
    later: Annotated[Path, typer.Argument(help="Later class map on the same grid.")],
    target: Annotated[list[str], typer.Option("--target", "-t", help="Class id or name to follow (repeat to merge classes).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Change COG; polygons go to the same name with .gpkg.")] = Path("out/change.tif"),
    kind: Annotated[str, typer.Option(help="appeared, disappeared or both.")] = "appeared",
    min_pixels: Annotated[int, typer.Option(help="Drop changed regions smaller than this (pixels).")] = 4,
) -> None:
    """Where a class appeared (or disappeared) between two maps: a COG and GeoPackage polygons."""
    _setup_logging(False)
    try:
        for path in (earlier, later):
            if not path.is_file():
                raise InputError(f"class map {path} does not exist; write one with `s2pipe map predict`")
        map_change = _flow("mapping", "map_change")

        summary = map_change(str(earlier), str(later), str(output), target=list(target),
                             output_gpkg=str(output.with_suffix(".gpkg")), kind=kind, min_pixels=min_pixels,
                             png=str(output.with_suffix(".png")))
    except S2PipeError as exc:
        raise _fail(exc) from None
    typer.echo(f"change of {', '.join(summary['target_names'])} ({kind}): {summary['changed_pixels']} pixels, "
               f"{summary['polygons']} polygons -> {summary['raster']}, {summary['vectors']}, {summary['png']}")


@app.command("export")
def export_cmd(
    store: Annotated[str, typer.Argument(help="Zarr cube written by s2pipe: a path or an s3://, gs://, az:// URL.")],
    folder: Annotated[Path, typer.Argument(help="Output folder: <YYYY-MM-DD>.tif per date, items.json (STAC), stack.vrt.")],
    dates: Annotated[Optional[str], typer.Option("--dates", help="Days to export, comma-separated YYYY-MM-DD (default: all the cube's dates).")] = None,
    bands: Annotated[Optional[str], typer.Option("--bands", help="Bands to export, comma-separated, e.g. B04,B08 (default: all).")] = None,
    bbox: Annotated[Optional[str], typer.Option("--bbox", help="Clip to west,south,east,north in degrees lon/lat.")] = None,
    geometry: Annotated[Optional[Path], typer.Option("--geometry", help="Clip to a GeoJSON Polygon/MultiPolygon file (lon/lat); pixels outside it become nodata.")] = None,
    denormalize: Annotated[bool, typer.Option("--denormalize", help="Write reflectance (undo the normalisation) instead of the stored normalized values.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rewrite COGs that exist (default: keep those of the same export, refuse others).")] = False,
) -> None:
    """Export dates and bands of a cube to GIS files: one multi-band COG per date, a STAC ItemCollection and a
    VRT stack that open them as one time series."""
    _setup_logging(False)
    from s2pipe.products.export import export_cube

    try:
        box = None
        if bbox is not None:
            try:
                box = [float(v) for v in bbox.split(",")]
            except ValueError:
                raise InputError(f"--bbox {bbox!r} must be 4 numbers: west,south,east,north") from None
            if len(box) != 4:
                raise InputError(f"--bbox {bbox!r} must have 4 numbers: west,south,east,north")
        shape = None
        if geometry is not None:
            from s2pipe.runtime.files import read_yaml

            shape = read_yaml(geometry, what="geometry file")  # JSON is YAML; bounded against hostile files
        summary = export_cube(
            store, folder,
            dates=[d.strip() for d in dates.split(",") if d.strip()] if dates is not None else None,
            bands=[b.strip() for b in bands.split(",") if b.strip()] if bands is not None else None,
            bbox=box, geometry=shape, denormalize=denormalize, overwrite=overwrite,
        )
    except S2PipeError as exc:
        raise _fail(exc) from None
    rows, cols = summary["shape"]
    typer.echo(f"exported {len(summary['dates'])} dates x {len(summary['bands'])} bands "
               f"({', '.join(summary['bands'])}; {summary['values']}, {rows} x {cols} px) to {summary['folder']}: "
               f"{len(summary['written'])} written, {len(summary['skipped'])} up to date, {summary['seconds']} s")
    typer.echo(f"  time series: {summary['items']} (STAC), {summary['vrt']} (VRT, band = date x band)")


def _print_summary(summary: dict) -> None:
    if summary.get("mode") == "up-to-date":
        typer.echo(f"{summary['output']} is up to date: {summary['reason']}; nothing written")
        typer.echo(f"  run summary: {summary['run_summary']}")
        return
    verb = f"{summary['dates_appended']} dates appended to" if summary.get("mode") == "append" else "cube written to"
    typer.echo(f"{verb} {summary['output']}")
    typer.echo(f"  {summary['scenes']} scenes -> {summary['dates_in']} solar days -> {summary['dates_out']} dates, shape {summary['shape']}, {summary['seconds']} s")
    if summary.get("quicklook"):
        typer.echo(f"  quick-look: {summary['quicklook']}")
    if summary.get("run_summary"):
        typer.echo(f"  run summary: {summary['run_summary']}")


if __name__ == "__main__":
    app()

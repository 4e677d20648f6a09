"""Prefect flows for land-cover mapping on a cube written by ``regional-cube``.

``map-train``: vector labels (roads, mangroves, any class; any CRS) rasterized onto the cube's grid -> a
spatial hold-out split -> ``train_mapper`` (``model``: the U-Net, then ConvLSTM; or a per-pixel random forest
or LightGBM) -> a saved mapper and a JSON report with the held-out scores (U-Net: of the single-date U-Net and
of the date sequence; trees: of their one mode, the window's dates).
``map-predict``: a mapper (any kind, ``load_mapper``) -> class probabilities of the cube's dates up to ``end``
(chunk by chunk on the Dask cluster), optionally smoothed -> ``probability.zarr`` (with the ``entropy`` and
``margin`` layers), ``class_map.tif``, ``entropy.tif``, ``margin.tif`` (COGs), ``map.png`` and ``summary.json``
in an output folder.
``map-change``: two class-map COGs -> the change of target classes as a COG and GeoPackage polygons.
Each map folder and change map gets its STAC Collection and Item beside it (``s2pipe.products.stac_metadata``).
``demo-maps``: the three on the demo region (roads and mangroves, and the road built in 2022).
Thin orchestration: the work lives in ``s2pipe.ml.labels``, ``s2pipe.mapping``, ``s2pipe.products.maps``, ``s2pipe.ml.metrics``.
"""
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from s2pipe.config import DaskConfig
from s2pipe.errors import InputError
from s2pipe.flows.regional_cube import run_logger
from s2pipe.mapping import MAPPER_KINDS, load_mapper, train_mapper
from s2pipe.ml.labels import label_sources, rasterize_labels, spatial_split
from s2pipe.ml.metrics import score_map
from s2pipe.products.maps import (
    class_map,
    detect_change,
    read_class_map,
    smooth_probabilities,
    write_change,
    write_class_map,
    write_probabilities,
    write_uncertainty,
)
from s2pipe.products.quicklook import map_quicklook
from s2pipe.products.stac_metadata import stac_paths, write_change_stac, write_map_stac
from s2pipe.runtime.cluster import dask_client
from s2pipe.runtime.placement import inference_placement
from s2pipe.store.zarr import open_cube, write_json

__all__ = [
    "report_path", "labels_task", "train_task", "evaluate_task", "map_train", "predict_task",
    "map_predict", "change_task", "map_change", "demo_maps",
]

def _window(cube: xr.Dataset, variable: str, start: str | None, end: str | None, *, min_dates: int,
            cube_path: str) -> xr.DataArray:
    if variable not in cube:
        raise InputError(f"cube {cube_path} has no variable {variable!r}; choose from {list(cube.data_vars)}")
    da = cube[variable].sel(time=slice(start, end))
    if da.sizes["time"] < min_dates:
        raise InputError(f"the time window {start or 'start'}..{end or 'end'} of {cube_path} holds "
                         f"{da.sizes['time']} dates but {min_dates} are needed; widen --start/--end")
    return da


def report_path(model: str | os.PathLike) -> Path:
    """The JSON training report written beside a mapper ``model.pt`` (``model.json``)."""
    return Path(model).with_suffix(".json")


@task(name="rasterize-labels", cache_policy=NO_CACHE)
def labels_task(cube_path: str, labels: list, background: int) -> xr.DataArray:
    cube = open_cube(cube_path)
    raster = rasterize_labels(label_sources(labels), cube, background=background)
    counts = {raster.attrs["classes"].get(str(c["class_id"]), c["class_id"]): c["pixels"] for c in raster.attrs["sources"]}
    run_logger().info(f"labels on the cube grid {raster.sizes['y']} x {raster.sizes['x']}: pixels per source {counts}")
    return raster


@task(name="train-mapper", cache_policy=NO_CACHE)
def train_task(cube_path: str, variable: str, start: str | None, end: str | None, labels: xr.DataArray,
               model_out: str, options: dict) -> dict:
    kind = options.get("model", "unet-convlstm")
    images = _window(open_cube(cube_path), variable, start, end,
                     min_dates=options.get("seq_len") or (5 if kind == "unet-convlstm" else 1), cube_path=cube_path)
    log = run_logger()
    log.info(f"training a {kind} mapper on {images.sizes['time']} dates x {images.sizes['band']} bands x "
             f"{images.sizes['y']} x {images.sizes['x']} px")
    mapper = train_mapper(images.load(), labels, **options)
    path = mapper.save(model_out)
    cfg = mapper.config
    what = (f"{cfg.fcn_epochs} U-Net + {cfg.temporal_epochs} ConvLSTM epochs" if kind == "unet-convlstm" else
            f"{cfg.options.get('n_estimators')} {'trees' if kind == 'random-forest' else 'boosting rounds'} on "
            f"{cfg.train_pixels} pixels x {cfg.n_features} features")
    log.info(f"trained ({what}) in {mapper.train_seconds:.1f} s -> {path}")
    return {"model": str(path), "kind": kind, "train_seconds": round(mapper.train_seconds, 1), "classes": cfg.classes,
            "names": cfg.names, "dates": int(images.sizes["time"]), "seq_len": int(cfg.seq_len),
            "period": [str(images["time"].values[0])[:10], str(images["time"].values[-1])[:10]]}


def _modes(mapper) -> tuple[tuple[str, bool], ...]:
    """(report key, temporal) of the prediction modes a mapper has: the U-Net + ConvLSTM has a single date and
    a sequence; a tree mapper one mode, its ``seq_len`` dates ("single_date" when that is 1)."""
    from s2pipe.ml.trees import TreeMapper

    if isinstance(mapper, TreeMapper):
        return (("sequence" if mapper.config.seq_len > 1 else "single_date", True),)
    return (("single_date", False), ("sequence", True))


@task(name="evaluate-mapper", cache_policy=NO_CACHE)
def evaluate_task(cube_path: str, variable: str, start: str | None, end: str | None, model_path: str,
                  test: xr.DataArray) -> dict:
    """Held-out scores at the window's last date: of the single-date U-Net and of the date sequence, or of a
    tree mapper's one mode."""
    mapper = load_mapper(model_path)
    images = _window(open_cube(cube_path), variable, start, end, min_dates=mapper.config.seq_len,
                     cube_path=cube_path).isel(time=slice(-mapper.config.seq_len, None)).load()
    out = {}
    for mode, temporal in _modes(mapper):
        scores = score_map(class_map(mapper.predict(images, temporal=temporal)), test, classes=mapper.config.classes,
                           names={int(k): v for k, v in mapper.config.names.items()} or None)
        out[mode] = scores.to_dict()
        run_logger().info(f"held-out {mode.replace('_', ' ')}: OA {scores.overall_accuracy:.1%}, "
                          f"IoU {', '.join(f'{n} {v:.2f}' for n, v in zip(scores.names, scores.iou))}")
    return out


@flow(name="map-train")
def map_train(
    cube: str,
    model_out: str,
    labels: list[dict[str, Any]],
    start: str | None = None,
    end: str | None = None,
    variable: str = "reflectance",
    bands: list[str] | None = None,
    background: int = 0,
    test_fraction: float = 0.3,
    split: Literal["half", "blocks", "none"] = "half",
    split_axis: Literal["x", "y"] = "x",
    gap: int = 16,
    seq_len: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device: str | None = None,
    model: Literal["unet-convlstm", "random-forest", "lightgbm"] = "unet-convlstm",
    tree_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a land-cover mapper on the cube's dates ``start..end`` from vector ``labels``.

    ``model``: "unet-convlstm" (U-Net + ConvLSTM; ``seq_len`` None: 5 dates; ``epochs``, ``device``), or a
    per-pixel "random-forest" / "lightgbm" (``seq_len`` None: all the window's dates; ``tree_options``: the
    keywords of ``s2pipe.ml.trees.train_tree_mapper``, e.g. {"n_estimators": 300, "n_jobs": 2}).

    ``labels``: label sources (see ``label_sources``), burned in order (later wins) over ``background`` (0 =
    an "other" class, -1 = unlabelled). ``split``: hold out ``test_fraction`` of the labelled pixels spatially
    (``"half"``: the east/south part along ``split_axis``, ``"blocks"``: random blocks; a ``gap`` px band
    between) and score the mapper there; ``"none"`` trains on every label and scores nothing. Writes the mapper
    to ``model_out`` and a JSON report beside it (``report_path``).
    """
    if split not in ("half", "blocks", "none"):
        raise InputError(f"split={split!r} must be 'half', 'blocks' or 'none'")
    if model not in MAPPER_KINDS:
        raise InputError(f"model={model!r} is not a mapper kind; pass one of {list(MAPPER_KINDS)}")
    if model == "unet-convlstm":
        if tree_options:
            raise InputError(f"tree_options={tree_options!r} are for model='random-forest'/'lightgbm'; leave them out "
                             "for the U-Net + ConvLSTM")
        options = {"seq_len": seq_len, "epochs": epochs, "seed": seed, "device": device, "bands": bands}
    else:
        for name, value in (("epochs", epochs), ("device", device)):
            if value is not None:
                raise InputError(f"{name}={value!r} is an option of model='unet-convlstm', not of model={model!r}; "
                                 "leave it out (tree options go in tree_options)")
        options = {"model": model, "seq_len": seq_len, "seed": seed, "bands": bands}
        clash = sorted(set(tree_options or {}) & (set(options) | {"progress", "images", "labels"}))
        if clash:
            raise InputError(f"tree_options sets {clash}, which are parameters of map-train itself; pass them as such")
        options.update(tree_options or {})
    t0 = time.monotonic()
    raster = labels_task(cube, labels, background)
    if split == "none":
        train, test = raster, None
    else:
        train, test = spatial_split(raster, test_fraction=test_fraction, axis=split_axis, gap=gap, mode=split, seed=seed)
    trained = train_task(cube, variable, start, end, train, model_out, options)
    scores = evaluate_task(cube, variable, start, end, trained["model"], test) if test is not None else None
    report = {
        **trained, "cube": str(Path(cube).resolve()), "variable": variable, "labels": raster.attrs["sources"],
        "background": background, "split": {"mode": split, "test_fraction": test_fraction, "axis": split_axis,
                                              "gap": gap} if test is not None else None,
        "held_out": scores, "seconds": round(time.monotonic() - t0, 1),
    }
    report["report"] = str(write_json(report_path(trained["model"]), report))
    return report


@task(name="predict-map", cache_policy=NO_CACHE)
def predict_task(cube_path: str, model_path: str, output: str, end: str | None, temporal: bool, variable: str,
                 overwrite: bool, labels: list | None, background: int, threads: int | None,
                 smoothing: dict | None = None) -> dict:
    t0 = time.monotonic()
    cube = open_cube(cube_path)
    mapper = load_mapper(model_path)
    n = mapper.config.seq_len if temporal else 1
    images = _window(cube, variable, None, end, min_dates=n, cube_path=cube_path)
    out = Path(output)
    log = run_logger()
    last = str(images["time"].values[-1])[:10]
    log.info(f"mapping {images.sizes['y']} x {images.sizes['x']} px from the {n} date(s) up to {last}")
    with inference_placement(logger=log):  # chunk tasks on GPU workers when the cluster has some
        proba = mapper.predict(images, temporal=temporal, threads=threads).astype("float32")
        proba.attrs = {k: v for k, v in proba.attrs.items() if k in ("crs", "transform", "classes", "mapping_mode",
                                                                      "mapping_model", "mapping_dates",
                                                                      "mapping_last_date")}
        if smoothing is not None:
            proba = smooth_probabilities(proba, **smoothing)
            log.info(f"probabilities smoothed: {proba.attrs['smoothing']}")
        proba.attrs.update(source_cube=str(Path(cube_path).resolve()), model=str(Path(model_path).resolve()))
        zarr_path = write_probabilities(proba, out / "probability.zarr", overwrite=overwrite)
    written = open_cube(zarr_path)
    classes = class_map(written["probability"].load())
    classes.attrs.update({k: proba.attrs[k] for k in ("classes", "mapping_mode") if k in proba.attrs})
    tif = write_class_map(classes, out / "class_map.tif")
    uncertainty = written[["entropy", "margin"]].load()
    layers = write_uncertainty(uncertainty, out)
    raster = rasterize_labels(label_sources(labels), cube, background=background) if labels else None
    kind = proba.attrs.get("mapping_model", "unet-convlstm")
    png = map_quicklook(images.isel(time=slice(-1, None)), classes, out / "map.png", labels=raster,
                        title=f"{Path(model_path).name} ({kind}): {proba.attrs['mapping_mode']} map, {n} date(s) "
                              f"up to {last}")
    entropy = uncertainty["entropy"].values
    summary = {"output": str(out), "probability": str(zarr_path), "class_map": str(tif), "png": str(png),
               "entropy": str(layers["entropy"]), "margin": str(layers["margin"]), "model_kind": kind,
               "last_date": last, "mode": proba.attrs["mapping_mode"], "dates": n,
               "smoothing": proba.attrs.get("smoothing"),
               "mean_entropy": round(float(np.nanmean(entropy)), 4) if np.isfinite(entropy).any() else None,
               "pixels_per_class": {str(k): int(v) for k, v in zip(*np.unique(classes.values, return_counts=True))},
               "seconds": round(time.monotonic() - t0, 1)}
    if raster is not None:
        scores = score_map(classes, raster, classes=mapper.config.classes)
        summary["scores_vs_labels"] = scores.to_dict()
        log.info(f"agreement with the labels (training area included): OA {scores.overall_accuracy:.1%}")
    summary["stac_item"] = str(stac_paths(out)["item"])
    write_json(out / "summary.json", summary)
    stac = write_map_stac(out)
    log.info(f"map written to {out}: {tif.name}, {zarr_path.name}, entropy.tif, margin.tif, {png.name}; STAC "
             f"{stac['item']}")
    return summary


@flow(name="map-predict")
def map_predict(
    cube: str,
    model: str,
    output: str,
    end: str | None = None,
    temporal: bool = True,
    variable: str = "reflectance",
    labels: list[dict[str, Any]] | None = None,
    background: int = 0,
    overwrite: bool = False,
    dask: DaskConfig = DaskConfig(),
    smoothing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Map the cube with a trained mapper (U-Net + ConvLSTM or tree mapper, ``load_mapper``) from its dates up
    to ``end`` (the last ``seq_len`` of them, or the last one with ``temporal=False``, U-Net only) and write
    ``probability.zarr`` (with ``entropy`` and ``margin``), ``class_map.tif``, ``entropy.tif``, ``margin.tif``,
    ``map.png`` and ``summary.json`` into the folder ``output``. ``labels`` (optional, as for ``map-train``) are
    drawn in the PNG and compared with the map. ``smoothing``: None (off, the default), or the keywords of
    ``s2pipe.products.maps.smooth_probabilities`` ({} for its defaults: Bayesian, 7 x 7 window) applied before writing."""
    if not Path(model).is_file():
        raise InputError(f"model {model} does not exist; train one with `s2pipe map train`")
    if smoothing is not None and not isinstance(smoothing, Mapping):
        raise InputError(f"smoothing={smoothing!r} must be None or a dict of smooth_probabilities keywords, e.g. "
                         "{'window': 7}")
    allowed = {"window", "method", "smoothness", "sigma"}
    if smoothing is not None and set(smoothing) - allowed:
        raise InputError(f"smoothing has unknown keys {sorted(set(smoothing) - allowed)}; allowed: {sorted(allowed)}")
    threads = None  # each chunk task takes its worker's share of the host's cores (placement.task_threads)
    with dask_client(dask):
        return predict_task(cube, model, output, end, temporal, variable, overwrite, labels, background, threads,
                            dict(smoothing) if smoothing is not None else None)


@task(name="detect-change", cache_policy=NO_CACHE)
def change_task(earlier: str, later: str, target: list, kind: str, min_pixels: int, output_tif: str,
                output_gpkg: str | None, png: str | None) -> dict:
    a, b = read_class_map(earlier), read_class_map(later)
    ids = [_class_id(t, b.attrs.get("classes") or a.attrs.get("classes") or {}) for t in target]
    change = detect_change(a, b, target=ids, kind=kind, min_pixels=min_pixels)
    files = write_change(change, output_tif, output_gpkg)
    counts = change.attrs["changed_pixels"]
    run_logger().info(f"change of {change.attrs['target_names']} ({kind}): {counts} pixels, {files.n_polygons} polygons")
    summary = {"raster": str(files.raster), "vectors": str(files.vectors) if files.vectors else None,
               "polygons": files.n_polygons, "changed_pixels": counts, "target": ids,
               "target_names": change.attrs["target_names"], "kind": kind}
    if png:
        summary["png"] = str(map_quicklook(None, b, png, earlier=a, change=change,
                                           title=f"{_short(earlier)} -> {_short(later)}"))
    try:
        stac = write_change_stac(files.raster, earlier=earlier, later=later, properties={
            "s2pipe:change_kind": kind, "s2pipe:change_target_names": change.attrs["target_names"],
            "s2pipe:changed_pixels": counts, "s2pipe:polygons": files.n_polygons, "s2pipe:min_pixels": min_pixels})
        summary["stac_item"] = str(stac["item"])
    except InputError as exc:  # maps from elsewhere, without their dates: the change itself is written
        run_logger().warning(f"no STAC metadata for {files.raster}: {exc}")
    return summary


def _short(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _class_id(target: int | str, names: Mapping[str, str]) -> int:
    """A class id from an id or a class name of the map's ``classes`` attribute."""
    if isinstance(target, int) or (isinstance(target, str) and target.strip().lstrip("-").isdigit()):
        return int(target)
    for k, v in names.items():
        if str(v).lower() == str(target).lower():
            return int(k)
    raise InputError(f"target class {target!r} is not a class name of the map ({dict(names)}); pass a class id or one "
                     "of those names")


@flow(name="map-change")
def map_change(
    earlier: str,
    later: str,
    output_tif: str,
    target: list[int | str],
    output_gpkg: str | None = None,
    kind: Literal["appeared", "disappeared", "both"] = "appeared",
    min_pixels: int = 4,
    png: str | None = None,
) -> dict[str, Any]:
    """Change of the ``target`` class(es) (ids or names) between two class-map COGs on one grid, as a COG
    (``output_tif``) and polygons (``output_gpkg``, GeoPackage), with an optional PNG."""
    return change_task(earlier, later, list(target), kind, min_pixels, output_tif, output_gpkg, png)


@flow(name="demo-maps")
def demo_maps(cube: str, roads: str, mangroves: str, output: str = "out/demo-maps", built_after: str = "2022-03-01",
              epochs: int | None = None, seed: int = 0, dask: DaskConfig = DaskConfig(),
              model: Literal["unet-convlstm", "random-forest", "lightgbm"] = "unet-convlstm",
              seq_len: int | None = None) -> dict[str, Any]:
    """The demo region's roads and mangroves: train on the dates after the new road was built (``built_after``
    onwards, when every road of ``roads`` exists), map the region at the end of 2021 and of 2022, and find the
    road that appeared in between. ``model``: the mapper kind (a tree mapper maps each year end from the same
    number of dates, ``seq_len``, as it was trained on)."""
    out = Path(output)
    labels = [{"data": mangroves, "class_id": 1, "name": "mangrove"},
              {"data": roads, "class_id": 2, "name": "road", "width_column": "width_m"}]
    trained = map_train(cube, str(out / "mapper.pt"), labels, start=built_after, epochs=epochs, seed=seed, model=model,
                        seq_len=seq_len)
    year_end = {}
    for year in (2021, 2022):
        year_end[year] = map_predict(cube, trained["model"], str(out / f"map-{year}"), end=f"{year}-12-31",
                                     labels=labels, overwrite=True, dask=dask)
    change = map_change(year_end[2021]["class_map"], year_end[2022]["class_map"], str(out / "new-roads.tif"),
                        target=["road"], output_gpkg=str(out / "new-roads.gpkg"), png=str(out / "new-roads.png"))
    return {"train": trained, "maps": year_end, "change": change}

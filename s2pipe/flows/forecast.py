"""Prefect flows for spectral forecasting on a cube written by ``regional-cube``.

``forecast-train``: training pixels (class raster / bbox, optional 4 neighbours) of a time window of the cube
-> ``fit_dynamics`` -> a saved model. ``forecast-predict``: the model -> ``forecast_cube`` over the whole cube
(chunk by chunk on the Dask cluster) -> a forecast Zarr store with the cube's grid conventions, and its STAC
Collection and Item beside it (``s2pipe.products.stac_metadata.write_cube_stac``).
Thin orchestration: the numerical work lives in ``s2pipe.ml.pixels`` and ``s2pipe.forecast``.
"""
import time
from pathlib import Path
from typing import Any, Literal

import xarray as xr
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from s2pipe.config import DaskConfig
from s2pipe.errors import InputError
from s2pipe.flows.regional_cube import run_logger
from s2pipe.forecast import fit_dynamics, forecast_cube, load_dynamics
from s2pipe.ml.pixels import align_mask, as_yx, training_pixels
from s2pipe.products.stac_metadata import write_cube_stac
from s2pipe.runtime.cluster import dask_client
from s2pipe.runtime.placement import inference_placement
from s2pipe.runtime.progress import ProgressLine
from s2pipe.store.zarr import open_cube, write_cube

__all__ = ["pixels_task", "fit_task", "forecast_train", "predict_task", "forecast_predict"]


def _window(da: xr.DataArray, start: str | None, end: str | None) -> xr.DataArray:
    out = da.sel(time=slice(start, end))
    if out.sizes["time"] < 3:
        raise InputError(f"the time window {start}..{end} holds {out.sizes['time']} dates of the cube; "
                         "widen --start/--end (at least 3 dates)")
    return out


def _class_mask(path: str | Path) -> xr.DataArray:
    """A class raster (GeoTIFF, one band) as a (y, x) DataArray with pixel-centre coordinates."""
    import rioxarray

    path = Path(path)
    if not path.is_file():
        raise InputError(f"mask raster {path} does not exist; pass --mask a class GeoTIFF (e.g. out/demo/landcover.tif)")
    return rioxarray.open_rasterio(path).squeeze("band", drop=True).load()


@task(name="training-pixels", cache_policy=NO_CACHE)
def pixels_task(cube_path: str, variable: str, start: str | None, end: str | None, mask: str | None,
                classes: list[int] | None, bbox: list[float] | None, neighbours: bool, max_pixels: int | None,
                seed: int) -> xr.DataArray:
    ds = open_cube(cube_path)
    if variable not in ds:
        raise InputError(f"cube {cube_path} has no variable {variable!r}; choose from {list(ds.data_vars)}")
    da = _window(ds[variable], start, end)
    m = align_mask(_class_mask(mask), da) if mask else None
    px = training_pixels(da, mask=m, classes=classes, bbox=tuple(bbox) if bbox else None, neighbours=neighbours,
                         max_pixels=max_pixels, seed=seed).load()
    run_logger().info(f"training pixels: {px.sizes['pixel']} x {px.sizes['time']} dates x {px.sizes['band']} bands")
    return px


@task(name="fit-dynamics", cache_policy=NO_CACHE)
def fit_task(pixels: xr.DataArray, scheme: str, hidden: int, epochs: int | None, seed: int, device: str | None,
             model_out: str, baseline: str | None = None) -> Path:
    t0 = time.monotonic()
    model = fit_dynamics(as_yx(pixels), scheme=scheme, hidden=hidden, epochs=epochs, seed=seed, device=device,
                         baseline=baseline)
    path = model.save(model_out)
    cal = (f"intervals calibrated on {model.calibration.shape[0]} horizons" if model.calibration.shape[0]
           else "no interval calibration")
    run_logger().info(f"trained {scheme} ({model.config.epochs} epochs, {model.config.baseline} baseline, {cal}) "
                      f"in {time.monotonic() - t0:.1f} s -> {path}")
    return path


@flow(name="forecast-train")
def forecast_train(
    cube: str,
    model_out: str,
    start: str | None = None,
    end: str | None = None,
    variable: str = "reflectance",
    mask: str | None = None,
    classes: list[int] | None = None,
    bbox: list[float] | None = None,
    neighbours: bool = True,
    max_pixels: int | None = 20000,
    scheme: Literal["rk4", "euler", "lstm"] = "rk4",
    hidden: int = 150,
    epochs: int | None = None,
    seed: int = 0,
    device: str | None = None,
    baseline: Literal["auto", "seasonal", "none"] = "auto",
) -> dict[str, Any]:
    """Train a spectral-dynamics model on the pixels of ``cube`` chosen by ``mask``/``classes``/``bbox``
    (``baseline``: see ``fit_dynamics``; "auto" blends with the pixels' seasonal reference when the window
    spans a year, and calibrates intervals when it spans more)."""
    px = pixels_task(cube, variable, start, end, mask, classes, bbox, neighbours, max_pixels, seed)
    path = fit_task(px, scheme, hidden, epochs, seed, device, model_out, baseline)
    return {"model": str(path), "pixels": int(px.sizes["pixel"]), "dates": int(px.sizes["time"])}


@task(name="forecast-write", cache_policy=NO_CACHE)
def predict_task(cube_path: str, model_path: str, output: str, steps: int, history_end: str | None,
                 variable: str, overwrite: bool, level: float | None = None) -> Path:
    ds = open_cube(cube_path)
    model = load_dynamics(model_path)
    history = ds[variable].sel(time=slice(None, history_end))
    log = run_logger()
    with inference_placement(logger=log):  # forecast tasks on GPU workers when the cluster has some
        fc = forecast_cube(model, history, steps=steps, level=level)
        if level is None:
            out = fc.astype("float32").rename("forecast").to_dataset()
        else:  # forecast, forecast_lower, forecast_upper: the calibrated central interval
            out = xr.Dataset({"forecast": fc["mean"], "forecast_lower": fc["lower"],
                              "forecast_upper": fc["upper"]}).astype("float32")
        out.attrs = {
            "title": f"s2pipe {model.config.scheme} spectral forecast",
            "crs": ds.attrs["crs"], "transform": ds.attrs["transform"],
            "source_cube": str(Path(cube_path).resolve()), "model": str(Path(model_path).resolve()),
            "forecast_from": str(history["time"].values[-1])[:10], "steps": int(steps),
        }
        if level is not None:
            out.attrs["interval_level"] = float(level)
        log.info(f"forecasting {steps} steps after {out.attrs['forecast_from']} for {history.sizes['y']} x "
                 f"{history.sizes['x']} px")
        path = write_cube(out, output, overwrite=overwrite,
                          progress=ProgressLine("writing forecast", unit="regions", logger=log))
    stac = write_cube_stac(path)
    log.info(f"STAC metadata written: {stac['collection']}, {stac['item']}")
    return path


@flow(name="forecast-predict")
def forecast_predict(
    cube: str,
    model: str,
    output: str,
    steps: int = 73,
    history_end: str | None = None,
    variable: str = "reflectance",
    overwrite: bool = False,
    dask: DaskConfig = DaskConfig(),
    level: float | None = None,
) -> dict[str, Any]:
    """Forecast every pixel of ``cube`` ``steps`` dates past ``history_end`` and write a forecast Zarr store
    (with ``level``, e.g. 0.9, also ``forecast_lower``/``forecast_upper``: the calibrated interval)."""
    with dask_client(dask):
        path = predict_task(cube, model, output, steps, history_end, variable, overwrite, level)
    return {"output": str(path), "steps": steps}

"""The ``regional-update`` flow: a scheduled update of a cube and of the products derived from it.

Each run appends the acquisitions since the last run to the cube (``regional-cube`` with ``append``), then
derives the products of every output date that has none yet, from the first product date on (a new series
starts at the cube's last date): a land-cover map (``map-predict`` over the ``seq_len`` dates ending there) into
``<products>/map-<date>/`` and a forecast from the history up to there (``forecast-predict``) into
``<products>/forecast-<date>.zarr``. Products already complete are never recomputed, so a run that died after
appending finishes its products next time, and running it again when nothing new was acquired changes nothing.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow

from s2pipe.config import RunConfig, load_config
from s2pipe.errors import InputError
from s2pipe.flows.forecast import forecast_predict
from s2pipe.flows.mapping import map_predict
from s2pipe.flows.regional_cube import regional_cube, run_logger
from s2pipe.forecast import load_dynamics
from s2pipe.mapping import load_mapper
from s2pipe.store.zarr import is_complete, open_cube

__all__ = ["products_folder", "due_dates", "regional_update"]

MAP_PREFIX, FORECAST_PREFIX = "map-", "forecast-"


def products_folder(output: str | Path) -> Path:
    """Default folder of the derived products of the cube ``output``: ``out/x.zarr`` -> ``out/x-products``."""
    p = Path(output)
    return p.with_name(f"{p.stem}-products")


def _product_dates(folder: Path) -> list[str]:
    """ISO dates of the products present in ``folder`` (complete or not)."""
    if not folder.is_dir():
        return []
    dates = set()
    for p in folder.iterdir():
        for prefix in (MAP_PREFIX, FORECAST_PREFIX):
            if p.name.startswith(prefix):
                dates.add(p.name[len(prefix):].removesuffix(".zarr"))
    return sorted(dates)


def due_dates(cube_dates: list[str], existing: list[str]) -> list[str]:
    """Dates that should have products: every cube date from the first existing product date on, or the last
    cube date when the series has not started."""
    if not cube_dates:
        return []
    if not existing:
        return [cube_dates[-1]]
    return [d for d in cube_dates if d >= existing[0]]


def _map_done(folder: Path) -> bool:
    return (folder / "summary.json").is_file()


@flow(name="regional-update")
def regional_update(
    config: RunConfig,
    mapper: str | None = None,
    forecaster: str | None = None,
    products: str | None = None,
    forecast_steps: int = 73,
) -> dict[str, Any]:
    """Append the new acquisitions to the cube of ``config`` and derive the missing products.

    ``mapper``: a trained land-cover mapper (``s2pipe map train``) or None; ``forecaster``: a trained forecast
    model or ensemble (``s2pipe forecast train``) or None; ``products``: their folder (default: beside the
    cube, ``products_folder``). ``forecast_steps``: output dates forecast past each product date.
    """
    cfg = load_config(config, append=True)
    for name, path in (("mapper", mapper), ("forecaster", forecaster)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{name} {path} does not exist; train one first, or leave {name} out")
    # the models are read before the cube is touched: a bad file fails the update before any work
    if mapper is not None:
        load_mapper(mapper)
    if forecaster is not None:
        load_dynamics(forecaster)
    log = run_logger()
    cube = regional_cube(cfg)
    folder = Path(products) if products else products_folder(cfg.output)
    made: dict[str, list[str]] = {"maps": [], "forecasts": []}
    if mapper is None and forecaster is None:
        return {"cube": cube, "products": str(folder), **made}
    with open_cube(cfg.output) as ds:
        dates = [str(d)[:10] for d in pd.DatetimeIndex(ds.time.values).strftime("%Y-%m-%d")]
    due = due_dates(dates, _product_dates(folder))
    folder.mkdir(parents=True, exist_ok=True)
    for day in due:
        if mapper is not None:
            target = folder / f"{MAP_PREFIX}{day}"
            if not _map_done(target):
                map_predict(str(cfg.output), mapper, str(target), end=day, overwrite=target.exists(), dask=cfg.dask)
                made["maps"].append(day)
        if forecaster is not None:
            target = folder / f"{FORECAST_PREFIX}{day}.zarr"
            if not is_complete(target):
                forecast_predict(str(cfg.output), forecaster, str(target), steps=forecast_steps, history_end=day,
                                 dask=cfg.dask)
                made["forecasts"].append(day)
    log.info(f"products in {folder}: {len(made['maps'])} maps and {len(made['forecasts'])} forecasts made for "
             f"{len(due)} due dates (up to {due[-1] if due else '-'}; {dt.date.today()})")
    return {"cube": cube, "products": str(folder), "due": due, **made}

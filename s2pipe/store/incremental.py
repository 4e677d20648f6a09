"""Incremental runs: what a scheduled run must read and compute to extend an existing cube along time.

A store built by ``regional-cube`` ends at its last output date ``t_K``. New acquisitions only create new
output dates after ``t_K`` (the regular gap-fill grid continues from ``t_K``; with ``times=None`` the new
acquisition dates). Their Cressman values need the clear observations within the kernel's reach of them, so
the run searches from ``t_K - reach`` (reach = R for the ``cressman`` kernel, 3R for ``gaussian``) and
gap-fills only the new dates, with the store's normalisation factors. The old dates are not rewritten, even
those within reach of the new acquisitions (they keep what was known when they were written).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from s2pipe.errors import OutputConflictError
from s2pipe.runtime.objectstore import ObjectPath, location
from s2pipe.store.zarr import is_complete, store_state, value_diffs

__all__ = [
    "VARYING_PARAMETERS", "AppendPlan", "reach_days", "plan_append", "new_output_dates", "extended_attrs",
    "stored_scale",
]

VARYING_PARAMETERS = frozenset({"start", "end", "output"})
"""Run parameters that may differ between the runs that build and extend one store."""


@dataclasses.dataclass(frozen=True)
class AppendPlan:
    """How a run extends the store at ``path``."""

    path: Path | str
    """The store (a local path, or an object-store URL)."""
    last_date: pd.Timestamp
    """The store's last output date (t_K)."""
    search_start: dt.date
    """First day to search: observations before it cannot reach a date after ``last_date``."""
    pending_dates: tuple[str, ...] | None
    """Dates of an interrupted append that this run must finish (ISO strings), or None."""
    attrs: dict[str, Any]
    """The store's dataset attributes (provenance to extend)."""


def reach_days(radius: str, kernel: str) -> float:
    """Days beyond which an observation has zero Cressman weight: R (cressman) or 3R (gaussian)."""
    r = pd.Timedelta(radius) / pd.Timedelta(days=1)
    return 3.0 * r if kernel == "gaussian" else r


def plan_append(path: str | Path, parameters: dict[str, Any], *, start: dt.date, storage: Any = None) -> AppendPlan | None:
    """The plan to extend the complete (or append-interrupted) store at ``path`` built with ``parameters``
    (``RunConfig.parameters()``), or None when there is no store yet or only an unfinished first write.
    ``path``/``storage``: a local path, or an object-store URL and its non-secret settings (``StorageConfig``).

    Raises ``OutputConflictError`` naming each parameter that differs from the store's (region, bands,
    resolution, gap fill, normalisation, catalog, ...), before anything is read or written.
    """
    path = location(path, storage)
    state = store_state(path)
    if state is None:
        return None
    if not state.get("append") and not is_complete(path):
        return None
    attrs = dict(state["inputs"]["attrs"])
    stored = attrs.get("parameters") or {}
    diffs = value_diffs(stored, parameters, new_is="this run", ignore=VARYING_PARAMETERS)
    if diffs:
        raise OutputConflictError(
            f"cannot append to {path}: it was built with different parameters: " + "; ".join(diffs)
            + "; run with the store's parameters, or write a new store (output=...)")
    times = state["grid"]["time"]
    pending = state.get("append")
    last = pd.Timestamp(times[-1])
    g = parameters["gapfill"]
    reach = pd.Timedelta(days=reach_days(g["radius"], g["kernel"]))
    search_start = max(start, (last - reach - pd.Timedelta(days=1)).date())  # a day more: solar vs UTC days
    return AppendPlan(path=path.url if isinstance(path, ObjectPath) else path, last_date=last, search_start=search_start,
                      pending_dates=tuple(pending["times"]) if pending else None, attrs=attrs)


def new_output_dates(acquired: Any, *, last_date: pd.Timestamp, times: str | None) -> pd.DatetimeIndex:
    """Output dates after ``last_date`` for the acquisition dates ``acquired``: the regular grid ``times``
    (e.g. '5D') continued from ``last_date`` up to the last acquisition, or the acquisition dates themselves."""
    acquired = pd.DatetimeIndex(np.asarray(acquired, dtype="datetime64[ns]"))
    if len(acquired) == 0 or acquired[-1] <= last_date:
        return pd.DatetimeIndex([])
    if times is None:
        return acquired[acquired > last_date]
    return pd.date_range(last_date, acquired[-1], freq=times)[1:]


def extended_attrs(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Dataset attributes after an append: the new run's, with the store's first ``start``, the scenes of both
    runs (``stac_items`` in order, no repeats) and the scenes either left out (``dropped_items``, and
    ``dropped_assets`` as JSON text) unless the other run could use them."""
    out = dict(new)
    used = list(dict.fromkeys([*stored.get("stac_items", []), *new.get("stac_items", [])]))
    out["stac_items"] = used
    assets = [*json.loads(stored.get("dropped_assets") or "[]"), *json.loads(new.get("dropped_assets") or "[]")]
    kept = {json.dumps(a, sort_keys=True): a for a in assets if a.get("id") not in set(used)}
    dropped = [i for i in dict.fromkeys([*stored.get("dropped_items", []), *new.get("dropped_items", [])])
               if i not in set(used)]
    out.pop("dropped_items", None), out.pop("dropped_assets", None)
    if dropped:  # the attributes exist only when a scene was left out
        out.update(dropped_items=dropped, dropped_assets=json.dumps(list(kept.values())))
    params = dict(new.get("parameters") or {})
    if "start" in (stored.get("parameters") or {}):
        params["start"] = stored["parameters"]["start"]
    out["parameters"] = params
    return out


def stored_scale(path: str | Path, bands, *, storage: Any = None) -> xr.DataArray | None:
    """Normalisation factors recorded in the store at ``path`` (reflectance attributes) for ``bands``, or None.
    ``path``/``storage``: a local path, or an object-store URL and its settings."""
    from s2pipe.store.zarr import open_cube

    path = location(path, storage)
    if not path.is_dir():
        return None
    try:
        with open_cube(path, allow_incomplete=True) as old:
            attrs = old["reflectance"].attrs
    except Exception:  # not a cube store (write_cube then says what is wrong with it)
        return None
    stored_bands = [str(b) for b in attrs.get("normalize_bands", [])]
    if stored_bands != [str(b) for b in bands] or "normalize_scale" not in attrs:
        return None
    return xr.DataArray([float(s) for s in attrs["normalize_scale"]], dims=("band",), coords={"band": stored_bands},
                        attrs={"normalize_method": attrs.get("normalize_method", "given")})

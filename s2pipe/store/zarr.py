"""Store stage: write a cube Dataset to a GIS-readable Zarr store, region by region and resumable.

Layout (opens georeferenced in GDAL >= 3.6 / QGIS, and in xarray with ``open_cube``):

* Zarr format 2, consolidated metadata (``.zmetadata``) written when the store is complete;
* CF ``spatial_ref`` grid mapping (``crs_wkt``, ``GeoTransform``) referenced by each spatial variable's
  ``grid_mapping``, plus a GDAL ``_CRS = {"wkt": ...}`` attribute on each of them (Debian's GDAL 3.6 needs it);
* ``time`` as CF datetimes, ``band`` names as a coordinate, ``x``/``y`` pixel centres;
* provenance: the Dataset's attributes (made JSON-serialisable), ``s2pipe_version`` and ``s2pipe_signature``.

Chunks: ``(1 date, all bands, C, C)`` for variables with ``time``/``band`` (``(1, C, C)`` without band),
C = the spatial chunk (``chunk_for(region_size)``, at most ``MAX_CHUNK`` = 1024 px). One chunk holds one
date's full spectrum of a tile: a GIS reading one date decodes only that date, and per-date chunks wrote ~2x
faster than time-whole ones on this machine (docs: shared/DESIGN.md).

Writing: a *region* is a ``region_size`` x ``region_size`` pixel block with its whole time series; its
chunks belong to it alone. The store template (metadata, coordinates, attributes, a signature hashing the
grid and the inputs) is written first; regions are then computed and written a few at a time (enough to
keep the Dask workers busy; memory stays bounded by the regions in flight, never the whole cube), and each
finished region is recorded as ``<store>/.s2pipe/done/<iy>_<ix>`` (GDAL and xarray ignore that folder).
Started again on the same grid and inputs, ``write_cube`` writes only the regions not recorded; a different
grid or different inputs raise ``OutputConflictError`` before anything is written.

Object stores: ``path`` may also be an ``s3://``, ``gs://``, ``az://`` (``abfs://``) or ``memory://`` URL
(``s2pipe.runtime.objectstore``): the arrays go through zarr's fsspec store, the bookkeeping (``.s2pipe/``, the lock) through
the URL's fsspec filesystem, with the non-secret ``storage`` settings (``StorageConfig``: profile, endpoint_url,
region, anon); credentials come from the environment or the profile and are never written to the store.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from s2pipe.errors import InputError, OutputConflictError, StoreLockedError
from s2pipe.grid import grid_of
from s2pipe.runtime.files import atomic_path, pid_alive
from s2pipe.runtime.objectstore import (
    ObjectPath,
    location,
    rmtree,
    zarr_store,
    zarr_target,
)
from s2pipe.store.pyramid import (
    MIN_SIDE,
    coarsen,
    geozarr_attrs,
    level_group,
    level_shapes,
    main_variable,
    multiscales_attrs,
    resampling_of,
)

__all__ = [
    "STATE_DIR", "DEFAULT_REGION_SIZE", "MAX_CHUNK", "VOLATILE_ATTRS", "WRITE_TASK_BYTES", "Progress",
    "write_cube", "lock_path", "state_path", "is_complete", "store_lock", "append_cube", "store_state", "value_diffs",
    "check_parameters",
    "open_cube", "chunk_for", "write_json",
]

STATE_DIR = ".s2pipe"
"""Folder inside a store that holds its write state: ``state.json``, ``complete``, ``done/`` (regions written)."""
"""Hidden folder inside the store: ``state.json`` (signature, layout), ``done/<iy>_<ix>``, ``complete``."""
DEFAULT_REGION_SIZE = 1024
"""Default region side (pixels) when neither ``region_size`` nor the Dataset's chunks say otherwise."""
MAX_CHUNK = 1024
"""Largest spatial Zarr chunk side (pixels): a (1, 10 bands, 1024, 1024) float32 chunk is 40 MiB."""
VOLATILE_ATTRS = frozenset({"history", "date_created", "created"})
"""Dataset attributes left out of the signature (they may change between an interrupted run and its resume)."""
LOCATION_PARAMETERS = frozenset({"output"})
"""Run parameters that say where a store lies, not what it holds: left out of its signature, so a copied or
moved store resumes."""

WRITE_TASK_BYTES = 64 * 2**20
"""Dask write tasks span several dates (several Zarr chunks, about this many bytes): zarr writes the chunks
of one task concurrently, which keeps the disk busy even with one thread per Dask worker."""

Progress = Callable[[int, int], None]
ZarrFormat = Literal[2, 3]


def write_cube(
    ds: xr.Dataset | xr.DataArray,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    region_size: int | None = None,
    progress: Progress | None = None,
    storage: Any = None,
    overviews: bool = True,
    overview_min_side: int = MIN_SIDE,
    zarr_format: ZarrFormat = 2,
) -> Path | str:
    """Write ``ds`` to the Zarr store ``path`` region by region; return the path (the URL for object stores).

    ``ds``: Dataset (or one DataArray) of lazily computed variables with ``y``/``x`` dims (e.g. reflectance
    (time, band, y, x) float32, weight (time, y, x) float32, observed (time, y, x) uint8), ``x``/``y``/
    ``time``/``band`` coordinates and a CRS (``attrs['crs']`` or a rioxarray ``spatial_ref``). ``region_size``:
    side of a region in pixels (default: ``DEFAULT_REGION_SIZE``, raised to a multiple of the Dataset's spatial
    chunks so no Dask chunk is computed twice). ``progress(done, total)`` is called with region counts.

    An existing store with the same signature is resumed (recorded regions are skipped); one with a different
    grid or inputs raises ``OutputConflictError`` and is left untouched, unless ``overwrite=True`` replaces it.
    One writer at a time: while a run writes ``path`` it holds ``lock_path(path)``; a second run raises
    ``StoreLockedError`` and touches nothing (a lock left by a dead process on this host is taken over).

    ``path`` may be an object-store URL (``s3://bucket/cube.zarr``); ``storage``: its non-secret settings
    (``s2pipe.config.StorageConfig`` or a mapping with ``profile``/``endpoint_url``/``region``/``anon``).

    ``overviews``: also write the multiscale overview levels (``s2pipe.store.pyramid``: ``overviews/1``,
    ``overviews/2``, ... each 2x coarser, made while the smaller side of the level above is at least
    ``overview_min_side`` px), after level 0 and region by region like it; they are part of the store (resumed,
    appended). The GeoZarr ``spatial:``/``proj:``/``multiscales`` attributes are written either way.
    ``zarr_format``: 2 (default; GDAL >= 3.4, QGIS) or 3 (GDAL >= 3.12). A resumed store keeps its own
    layout, levels and format.
    """
    if zarr_format not in (2, 3):
        raise InputError(f"zarr_format={zarr_format!r}: use 2 (GDAL >= 3.4) or 3 (GDAL >= 3.12) (argument: zarr_format)")
    if not isinstance(overview_min_side, (int, np.integer)) or overview_min_side < 2:
        raise InputError(f"overview_min_side={overview_min_side!r} must be a number of pixels >= 2 "
                         "(argument: overview_min_side)")
    path = location(path, storage)
    with store_lock(path):
        out = _write_cube(ds, path, overwrite=overwrite, region_size=region_size, progress=progress,
                          levels=level_shapes((ds.sizes["y"], ds.sizes["x"]), min_side=int(overview_min_side))
                          if overviews and "y" in ds.sizes and "x" in ds.sizes else [],
                          zarr_format=int(zarr_format))
    return _public(out)


def _public(path: Path | ObjectPath) -> Path | str:
    """What the public functions return: the local ``Path``, or the URL text of an object store."""
    return path.url if isinstance(path, ObjectPath) else path


def lock_path(path: str | os.PathLike, *, storage: Any = None) -> Path | ObjectPath:
    """The lock file of the store ``path``: ``.<name>.lock`` beside it (outside, so replacing the store keeps it)."""
    path = location(path, storage)
    return path.with_name(f".{path.name}.lock")


def state_path(path: Path | ObjectPath, name: str) -> Path | ObjectPath:
    """The file or folder ``name`` of the write state of store ``path`` (``<path>/.s2pipe/<name>``)."""
    return path / STATE_DIR / name


def is_complete(path: str | os.PathLike | ObjectPath, *, storage: Any = None) -> bool:
    """Whether ``path`` holds a store whose every region was written (``write_cube`` or ``append_cube`` finished).

    ``path``/``storage``: a local path, or an object-store URL and its settings."""
    return state_path(location(path, storage), "complete").exists()


class store_lock:
    """Exclusive write lock of a store (context manager): an ``O_EXCL`` lock file holding the owner's host,
    pid and start time. Stale locks (owner pid dead on this host) are replaced; a live owner's lock raises
    ``StoreLockedError`` naming it. Not for network file systems without ``O_EXCL`` semantics.

    Object stores: the lock object is created with a conditional write (``pipe_file(mode="create")``: S3
    ``If-None-Match: *``, GCS ``ifGenerationMatch=0``, Azure ``overwrite=False``), exclusive on AWS S3, GCS,
    Azure and S3-compatible servers that honour ``If-None-Match`` (MinIO, moto); on other fsspec filesystems
    (``memory://``, servers ignoring the condition) it is advisory. A lock left by a crash on another host is
    never taken over: delete the object named in the error.

    ``reentrant=True``: while this lock is held, other ``store_lock`` calls on the same store in this process
    are no-ops (the flow takes the lock before its first request; ``write_cube`` takes it again inside)."""

    _reentrant: dict[str, int] = {}
    """Lock files held here with ``reentrant=True`` -> how many holders are inside them."""

    def __init__(self, path: str | os.PathLike | ObjectPath, *, storage: Any = None, reentrant: bool = False):
        self.path = location(path, storage)
        self.lock = lock_path(self.path)
        self._token = uuid.uuid4().hex
        self._key = str(self.lock)
        self._mode = "reentrant" if reentrant else "plain"

    def __enter__(self) -> "store_lock":
        if self._key in store_lock._reentrant:
            store_lock._reentrant[self._key] += 1
            self._mode = "nested"
            return self
        self._acquire()
        if self._mode == "reentrant":
            store_lock._reentrant[self._key] = 1
        return self

    def _acquire(self) -> None:
        import socket

        self.lock.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": self._token,
              "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(3):
            try:
                fd = self._create(me)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner.get("host") == me["host"] and not pid_alive(int(owner.get("pid", -1))):
                    self.lock.unlink(missing_ok=True)  # its writer died: resumable, take over
                    continue
                if owner is None:  # being written this instant, or unreadable: look again
                    import time

                    time.sleep(0.2)
                    if self._owner() is None and self.lock.exists():
                        raise StoreLockedError(
                            f"the store {self.path} is locked by {self.lock} (unreadable); if no run is writing it, "
                            "delete that file and run again") from None
                    continue
                raise StoreLockedError(
                    f"the store {self.path} is being written by another run (pid {owner.get('pid')} on "
                    f"{owner.get('host')} since {owner.get('started')}); wait for it to finish, or, if that run is "
                    f"dead, delete {self.lock} and run again (the write resumes)") from None
            if fd is not None:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            return
        raise StoreLockedError(f"could not lock {self.path} ({self.lock} keeps reappearing); another run is starting")

    def _create(self, me: dict) -> int | None:
        """Create the lock exclusively (``FileExistsError`` if it exists): the open file descriptor of a local
        lock (its content is written next), None for an object store (written with its content at once)."""
        if isinstance(self.lock, ObjectPath):
            self.lock.create(json.dumps(me).encode())
            return None
        return os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.lock.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        if self._mode == "nested":
            store_lock._reentrant[self._key] -= 1
            return
        if self._mode == "reentrant":
            del store_lock._reentrant[self._key]
        owner = self._owner()
        if owner is not None and owner.get("token") == self._token:
            self.lock.unlink(missing_ok=True)


def _write_cube(ds, path: Path | ObjectPath, *, overwrite: bool, region_size: int | None,
                progress: Progress | None, levels: list[tuple[int, int]], zarr_format: int) -> Path | ObjectPath:
    ds = _prepare(ds)
    grid, inputs = _describe(ds)
    signature = _hash({"grid": grid, "inputs": inputs})
    region, chunk = _layout(ds, region_size)

    state = _existing_state(path, signature, grid, inputs, overwrite=overwrite)
    if state is None:
        state = {
            "signature": signature, "grid": grid, "inputs": inputs, "region_size": region, "chunk": chunk,
            "overviews": [list(s) for s in levels], "overview_chunk": _overview_chunk(chunk),
            "zarr_format": zarr_format, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _write_template(ds, path, signature=signature, chunk=chunk, levels=levels, zarr_format=zarr_format,
                        level_chunk=state["overview_chunk"])
        write_json(state_path(path, "state.json"), state)
    # a resumed run keeps the stored layout, levels and format (a store from before levels has none)
    region, chunk, fmt = int(state["region_size"]), int(state["chunk"]), _format_of(state)
    _check_format(state, zarr_format, path)
    levels = [tuple(s) for s in state.get("overviews", [])]
    fused = _fused_level(state)

    _write_regions(ds, path, region=region, chunk=chunk, done_dir=state_path(path, "done"), progress=progress,
                   zarr_format=fmt, fused_level=fused)
    complete = state_path(path, "complete")
    if complete.exists():
        return path
    _write_levels(path, levels=range(2 if fused else 1, len(levels) + 1), region=region,
                  chunk=_level_chunk(state), done=lambda k: state_path(path, f"done-{k}"), zarr_format=fmt)
    _consolidate(path, fmt)
    complete.touch()  # written last: when present, every region of every level was written
    return path


def _format_of(state: dict) -> int:
    return int(state.get("zarr_format", 2))


def _check_format(state: dict, zarr_format: int, path: Path | ObjectPath) -> None:
    """Refuse to resume a store of another Zarr format (``OutputConflictError`` naming both and the fixes)."""
    fmt = _format_of(state)
    if fmt != zarr_format:
        raise OutputConflictError(
            f"the output store {path} is a Zarr format {fmt} store, not {zarr_format}: pass zarr_format={fmt} "
            f"(run configuration: zarr_format: {fmt}) to resume it, overwrite=True (CLI: --overwrite) to replace "
            "it, or write to a new path")


def _overview_chunk(chunk: int) -> int:
    """Spatial chunk of the overview levels: half of level 0's (when even), so that each block of level 0 covers
    whole chunks of level 1 and level 1 can be written with it, block by block."""
    return chunk // 2 if chunk % 2 == 0 else chunk


def _level_chunk(state: dict) -> int:
    return int(state.get("overview_chunk", state["chunk"]))


def _fused_level(state: dict) -> tuple[str, int] | None:
    """(group, chunk) of level 1 when it is written together with level 0 (even regions and chunks, level 1's chunks
    half of level 0's), else None (level 1 is then written after level 0, from the store)."""
    region, chunk, c1 = int(state["region_size"]), int(state["chunk"]), _level_chunk(state)
    if not state.get("overviews") or region % 2 or chunk % 2 or 2 * c1 != chunk:
        return None
    return level_group(1), c1


def _write_levels(path: Path | ObjectPath, *, levels: range, region: int, chunk: int, done: Callable[[int], Any],
                  zarr_format: int, time_slice: slice | None = None) -> None:
    """Write the overview ``levels`` of ``path`` region by region, each coarsened from the stored level above
    (``done(k)``: the folder recording level k's finished regions). ``time_slice``: only these dates (an append),
    into the same store indices."""
    for k in levels:
        above = _open_level(path, k - 1, zarr_format=zarr_format)
        if time_slice is not None:
            above = above.isel(time=time_slice)
        level = coarsen(_spatial_data(above).assign_coords(x=above["x"], y=above["y"]).assign_attrs(above.attrs))
        _write_regions(level, path, region=region, chunk=chunk, done_dir=done(k), progress=None,
                       time_offset=None if time_slice is None else time_slice.start, group=level_group(k),
                       zarr_format=zarr_format)


def _open_level(path: Path | ObjectPath, k: int, *, zarr_format: int) -> xr.Dataset:
    """Level ``k`` of the store (0: the root) as written so far, lazily, with the stored chunks."""
    target, storage_options = zarr_target(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy")
        return xr.open_zarr(target, group=None if k == 0 else level_group(k), consolidated=False,
                            zarr_format=zarr_format, decode_coords="all", storage_options=storage_options)


def _write_regions(ds: xr.Dataset, path: Path | ObjectPath, *, region: int, chunk: int, done_dir: Path | ObjectPath,
                   progress: Progress | None, time_offset: int | None = None, group: str | None = None,
                   zarr_format: int = 2, fused_level: tuple[str, int] | None = None) -> int:
    """Compute and write the spatial variables of ``ds`` region by region into the existing arrays of ``path``
    (of its ``group``: an overview level), recording each finished region in ``done_dir``; regions recorded there
    are skipped. ``time_offset``: the store index of ``ds``'s first date (appends). ``fused_level``: (group, chunk)
    of overview level 1, written from the same blocks in the same tasks (no second read of level 0). Returns the
    number of regions written."""
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    regions = [(iy, ix) for iy in range(math.ceil(ny / region)) for ix in range(math.ceil(nx / region))]
    done_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(done_dir, ObjectPath):  # one listing instead of a request per region
        recorded = {p.name for p in done_dir.iterdir()}
        todo = [r for r in regions if f"{r[0]}_{r[1]}" not in recorded]
    else:
        todo = [r for r in regions if not (done_dir / f"{r[0]}_{r[1]}").exists()]
    total, n_done = len(regions), len(regions) - len(todo)
    if progress is not None:
        progress(n_done, total)
    if not todo:
        return 0

    data = _spatial_data(ds)
    target = {dim: (chunk if dim in ("y", "x") else _dates_per_task(data, chunk) if dim == "time" else -1)
              for dim in data.dims}
    data = _chunked(data, target)
    time_region = None if time_offset is None else slice(time_offset, time_offset + ds.sizes["time"])
    target, storage_options = zarr_target(path)
    if fused_level is not None:
        level0, level1 = _open_group(path, zarr_format, group), _open_group(path, zarr_format, fused_level[0])

    def delayed_region(r: tuple[int, int]):
        iy, ix = r
        sel = {"y": slice(iy * region, min((iy + 1) * region, ny)), "x": slice(ix * region, min((ix + 1) * region, nx))}
        sub = data.isel(sel)
        if time_region is not None:
            sel["time"] = time_region
        full = {dim: sel.get(dim, slice(None)) for dim in sub.dims}
        if fused_level is None:
            return sub.to_zarr(target, group=group, region=full, mode="r+", zarr_format=zarr_format,
                               consolidated=False, compute=False, storage_options=storage_options)
        # Level 1 from the same blocks, in the same tasks: each block is written to level 0 and, coarsened, to level
        # 1 (two to_zarr graphs would be optimised apart and compute every block twice). A block covers whole
        # chunks of both levels (level 1's chunks are half of level 0's). The spatial variables have no encoding
        # to apply (write_cube's template gives them none), so their values go to the arrays as they are.
        written = []
        for name, var in sub.data_vars.items():
            starts = tuple(full[d].start or 0 for d in var.dims)
            axes = (var.dims.index("y"), var.dims.index("x"))
            written.append(var.data.map_blocks(
                _write_two_levels, level0[name], level1[name], starts, axes, resampling_of(var),
                dtype=bool, chunks=tuple((1,) * len(c) for c in var.data.chunks),
                meta=np.empty((0,) * var.ndim, dtype=bool)).ravel())
        return da.concatenate(written)

    def finished(r: tuple[int, int]) -> None:
        nonlocal n_done
        (done_dir / f"{r[0]}_{r[1]}").touch()
        n_done += 1
        if progress is not None:
            progress(n_done, total)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy")
        client = _distributed_client()
        if client is not None:
            _run_distributed(client, todo, delayed_region, finished, window=max(2, 2 * _n_threads(client)))
        else:
            batch = max(2, _n_threads(None))
            for i in range(0, len(todo), batch):
                part = todo[i:i + batch]
                dask.compute(*[delayed_region(r) for r in part])
                for r in part:
                    finished(r)
    return len(todo)


def append_cube(
    ds: xr.Dataset | xr.DataArray,
    path: str | os.PathLike,
    *,
    progress: Progress | None = None,
    storage: Any = None,
) -> Path | str:
    """Append the dates of ``ds`` to the end of the complete store ``path`` without rewriting what is there.

    ``ds`` holds only the new dates (all after the store's last date) on the store's grid: same CRS,
    transform, y/x size, bands, variables, dtypes and variable attributes, else ``OutputConflictError`` names
    what differs and nothing is touched. Every spatial variable must have a ``time`` dim. The arrays grow
    along ``time``; only the new dates' chunks are written, region by region. The store's attributes become
    ``ds``'s (the caller merges provenance such as ``stac_items``). While it runs the store is incomplete
    (``open_cube`` refuses it); an interrupted append is finished by calling again with the same ``ds``
    (the same dates), and ``write_cube``/``append_cube`` with other dates are refused until then.
    ``path``/``storage``: a local path, or an object-store URL and its settings (as in ``write_cube``).
    """
    path = location(path, storage)
    with store_lock(path), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy")
        return _public(_append_cube(ds, path, progress=progress))


def store_state(path: str | os.PathLike | ObjectPath, *, storage: Any = None) -> dict | None:
    """The bookkeeping of an s2pipe store (grid incl. ``time`` as ISO strings, ``band``, inputs, layout,
    ``append`` while an append is pending, ``appends`` history), or None when ``path`` holds no s2pipe store.
    ``path``/``storage``: a local path, or an object-store URL and its settings."""
    state_file = state_path(location(path, storage), "state.json")
    return json.loads(state_file.read_text()) if state_file.is_file() else None


def check_parameters(path: str | os.PathLike | ObjectPath, parameters: dict[str, Any], *,
                     storage: Any = None, zarr_format: int | None = None) -> dict | None:
    """Refuse, before any work, to resume the store at ``path`` with other run parameters
    (``RunConfig.parameters()``): ``OutputConflictError`` names each differing field with both values
    (``clear_classes [4, 5, 6, 7] (store) vs [4, 5, 6] (this run)``). Returns the store's state (None: no s2pipe
    store there yet). The location (``output``) is not compared: a copied or moved store resumes. ``zarr_format``:
    also refuse a store of another Zarr format."""
    state = store_state(path, storage=storage)
    if state is None:
        return None
    if zarr_format is not None:
        _check_format(state, zarr_format, location(path, storage))
    stored = (state.get("inputs", {}).get("attrs", {}) or {}).get("parameters")
    if isinstance(stored, dict):
        diffs = value_diffs(stored, parameters, new_is="this run", ignore=LOCATION_PARAMETERS)
        if diffs:
            raise OutputConflictError(
                f"the output store {location(path, storage)} was written with other parameters: "
                + "; ".join(diffs[:12]) + ("; ..." if len(diffs) > 12 else "")
                + "; run with the store's parameters, pass overwrite=True (CLI: --overwrite) to replace it, or "
                "write to a new path")
    return state


def _append_cube(ds, path: Path | ObjectPath, *, progress: Progress | None) -> Path | ObjectPath:
    ds = _prepare(ds)
    grid, inputs = _describe(ds)
    if "time" not in ds.dims or any("time" not in ds[v].dims for v in _spatial_data(ds).data_vars):
        raise InputError(f"append_cube: every spatial variable of the dataset needs a 'time' dim (dims: {dict(ds.sizes)})")
    state = store_state(path)
    if state is None:
        raise InputError(f"append_cube: {path} holds no s2pipe store; create it with write_cube first (argument: path)")
    complete = state_path(path, "complete")
    pending = state.get("append")
    new_times = grid["time"]
    if pending is None:
        if not complete.exists():
            raise OutputConflictError(
                f"the store {path} is an unfinished write; run the job that started it again to finish it before appending")
        problems = _append_conflicts(state, grid, inputs)
        if problems:
            raise OutputConflictError(f"cannot append to the store {path}: it holds a cube with a different "
                                      + "; ".join(problems) + "; write to a new path, or rebuild it with overwrite=True")
        last = state["grid"]["time"][-1]
        if new_times[0] <= last:
            raise InputError(
                f"append_cube: the new dates start at {new_times[0]}, not after the store's last date {last}; "
                "pass only the dates after it (e.g. ds.sel(time=slice(after, None)))")
        pending = {"times": new_times, "n_old": len(state["grid"]["time"]), "id": uuid.uuid4().hex[:12],
                   "inputs": inputs}
        state["append"] = pending
        write_json(state_path(path, "state.json"), state)  # first: an interruption from here on is resumable
        complete.unlink(missing_ok=True)
        _drop_consolidated(path, _format_of(state))  # stale shapes; readers fall back to the arrays' own metadata
    elif pending["times"] != new_times or pending["inputs"]["variables"].keys() != inputs["variables"].keys():
        raise OutputConflictError(
            f"the store {path} has an interrupted append of the dates {pending['times'][0]}..{pending['times'][-1]} "
            f"pending; run the same window again to finish it first (this run brings {new_times[0]}..{new_times[-1]})")
    n_old, n_new = int(pending["n_old"]), len(new_times)
    fmt, n_levels = _format_of(state), len(state.get("overviews", []))
    region, chunk = int(state["region_size"]), int(state["chunk"])
    for k in range(n_levels + 1):
        _grow_time(path, ds, n_old=n_old, n_new=n_new, zarr_format=fmt, group=level_group(k) if k else None)
    done_dir = state_path(path, f"append-{pending['id']}")
    fused = _fused_level(state)
    _write_regions(ds, path, region=region, chunk=chunk, done_dir=done_dir, progress=progress, time_offset=n_old,
                   zarr_format=fmt, fused_level=fused)
    _write_levels(path, levels=range(2 if fused else 1, n_levels + 1), region=region, chunk=_level_chunk(state),
                  zarr_format=fmt,
                  done=lambda k: state_path(path, f"append-{pending['id']}-{k}"),
                  time_slice=slice(n_old, n_old + n_new))

    root = _open_group(path, fmt)
    signature_grid = {**grid, "time": state["grid"]["time"] + new_times}
    signature = _hash({"grid": signature_grid, "inputs": inputs})
    root.attrs.put(_root_attrs(ds, signature=signature, levels=[tuple(v) for v in state.get("overviews", [])]))
    history = list(state.get("appends", []))
    history.append({"dates": [new_times[0], new_times[-1]], "n_dates": n_new,
                    "appended": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    state = {k: v for k, v in state.items() if k != "append"}
    state.update(signature=signature, grid=signature_grid, inputs=inputs, appends=history)
    write_json(state_path(path, "state.json"), state)
    _consolidate(path, fmt)
    complete.touch()
    for k in range(n_levels + 1):
        rmtree(state_path(path, f"append-{pending['id']}" + (f"-{k}" if k else "")))
    return path


def _write_two_levels(block: np.ndarray, level0: Any, level1: Any, starts: tuple[int, ...], axes: tuple[int, int],
                      method: str, block_info=None) -> np.ndarray:
    """Write one block of a region to its level-0 zarr array and, coarsened 2x along ``axes`` (y, x), to level 1.

    ``starts``: the region's first index along each dim in the store; the block's place in the region comes from
    ``block_info``. Returns a one-element flag (the task's result: nothing to carry)."""
    from s2pipe.store import pyramid

    loc = block_info[0]["array-location"]
    level0[tuple(slice(s + a, s + b) for s, (a, b) in zip(starts, loc))] = block
    coarse = pyramid.coarsen_block(block, method)
    at1 = []
    for i, (s, (a, _)) in enumerate(zip(starts, loc)):
        first = (s + a) // 2 if i in axes else s + a
        at1.append(slice(first, first + coarse.shape[i]))
    level1[tuple(at1)] = coarse
    return np.ones((1,) * block.ndim, dtype=bool)


def _append_conflicts(state: dict, grid: dict, inputs: dict) -> list[str]:
    """What keeps ``grid``/``inputs`` from extending the stored cube along time (empty: nothing)."""
    out = []
    old = state.get("grid", {})
    for key in sorted((set(old) | set(grid)) - {"time"}):
        if old.get(key) != grid.get(key):
            out.append(f"{key} {_short(old.get(key))} (store) vs {_short(grid.get(key))} (new)")
    ov, nv = state.get("inputs", {}).get("variables", {}), inputs["variables"]
    for name in sorted(set(ov) | set(nv)):
        a, b = ov.get(name), nv.get(name)
        if a is None or b is None:
            out.append(f"variable {name!r} {'missing' if a is None else 'present'} (store) vs "
                       f"{'missing' if b is None else 'present'} (new)")
            continue
        for field in ("dims", "dtype", "attrs"):
            if a.get(field) != b.get(field):
                out.append(f"variable {name!r} {field} {_short(a.get(field))} (store) vs {_short(b.get(field))} (new)")
        t = b["dims"].index("time") if "time" in b["dims"] else None
        if a.get("dims") == b["dims"] and [s for i, s in enumerate(a["shape"]) if i != t] != \
                [s for i, s in enumerate(b["shape"]) if i != t]:
            out.append(f"variable {name!r} shape {a['shape']} (store) vs {b['shape']} (new)")
    return out


def _grow_time(path: Path | ObjectPath, ds: xr.Dataset, *, n_old: int, n_new: int, zarr_format: int = 2,
               group: str | None = None) -> None:
    """Resize every array with a ``time`` dim of the root (or of ``group``, an overview level) from ``n_old`` to
    ``n_old + n_new`` dates (idempotent) and write the new dates into its time coordinate with the stored CF
    encoding, and any non-spatial time variables."""
    from xarray.coding.times import decode_cf_datetime, encode_cf_datetime

    root = _open_group(path, zarr_format, group)
    for name, arr in root.arrays():
        dims = list(arr.attrs.get("_ARRAY_DIMENSIONS", [])) if zarr_format == 2 else list(arr.metadata.dimension_names or [])
        if "time" not in dims:
            continue
        ax = dims.index("time")
        if arr.shape[ax] == n_old:
            shape = list(arr.shape)
            shape[ax] = n_old + n_new
            arr.resize(tuple(shape))
        elif arr.shape[ax] != n_old + n_new:
            raise OutputConflictError(f"the store {path}: array {name!r} has {arr.shape[ax]} dates, expected "
                                      f"{n_old} or {n_old + n_new}; the store was changed outside s2pipe")
    tarr = root["time"]
    units, calendar = tarr.attrs["units"], tarr.attrs.get("calendar", "proleptic_gregorian")
    new = ds["time"].values.astype("datetime64[ns]")
    values, _, _ = encode_cf_datetime(new, units, calendar, dtype=tarr.dtype)
    if not np.array_equal(decode_cf_datetime(values, units, calendar).astype("datetime64[ns]"), new):
        raise InputError(f"append_cube: the new dates {new[:3]}... cannot be stored exactly as {units!r} "
                         f"({tarr.dtype}); append dates on the store's time resolution")
    tarr[n_old:] = values
    other = [v for v in ds.data_vars if "time" in ds[v].dims and not {"y", "x"} <= set(ds[v].dims)]
    if other and group is None:  # overview levels hold only the spatial variables
        part = ds[other].drop_vars(list(ds[other].coords))
        target, storage_options = zarr_target(path)
        part.to_zarr(target, region={"time": slice(n_old, n_old + n_new)}, mode="r+", zarr_format=zarr_format,
                     consolidated=False, storage_options=storage_options)


def open_cube(path: str | os.PathLike | ObjectPath, *, allow_incomplete: bool = False, storage: Any = None) -> xr.Dataset:
    """Open a store written by ``write_cube`` lazily (``decode_coords="all"``: ``spatial_ref`` is a coordinate).

    ``path``/``storage``: a local path, or an object-store URL and its non-secret settings (as in ``write_cube``).
    Raises ``InputError`` if ``path`` is missing, or holds an unfinished write (unless ``allow_incomplete``).
    """
    path = location(path, storage)
    if not path.exists():
        raise InputError(f"no Zarr store at {path}; write one with write_cube / `s2pipe run` (argument: path)")
    state_dir = path / STATE_DIR
    complete = is_complete(path)
    if state_dir.exists() and not complete and not allow_incomplete:
        raise InputError(
            f"the store {path} is incomplete (an interrupted write); run the same job again to finish it, "
            "or pass allow_incomplete=True to open what is there"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy")
        # an unfinished s2pipe store has no consolidated metadata yet: don't look for it (and warn)
        consolidated = True if complete else False if state_dir.exists() else None
        return xr.open_zarr(zarr_store(path, read_only=True), consolidated=consolidated, decode_coords="all")


def chunk_for(region_size: int) -> int:
    """Spatial Zarr chunk for a region side: the region itself up to ``MAX_CHUNK``, else its largest divisor <= it."""
    if region_size <= MAX_CHUNK:
        return region_size
    k = math.ceil(region_size / MAX_CHUNK)
    while region_size % k and region_size // k >= 256:
        k += 1
    return region_size // k if region_size % k == 0 else region_size


# ---------------------------------------------------------------------------------------------- helpers


def _prepare(ds: xr.Dataset | xr.DataArray) -> xr.Dataset:
    """Validate, make coordinates concrete, write spatial_ref/_CRS/grid_mapping, JSON-clean the attributes."""
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "data", promote_attrs=True)
    if not isinstance(ds, xr.Dataset):
        raise InputError(f"write_cube expects an xarray Dataset, got {type(ds).__name__} (argument: ds)")
    for dim in ("y", "x"):
        if dim not in ds.dims or dim not in ds.coords:
            raise InputError(f"write_cube: the dataset has no {dim!r} dimension with coordinates (dims: {dict(ds.sizes)})")
    spatial = [v for v in ds.data_vars if {"y", "x"} <= set(ds[v].dims)]
    if not spatial:
        raise InputError(f"write_cube: no data variable has (y, x) dims; variables: {list(ds.data_vars)}")
    for name in spatial:
        if ds[name].dtype.kind not in "biuf":
            raise InputError(
                f"write_cube: variable {name!r} has dtype {ds[name].dtype}; GIS stores hold numbers: "
                "convert it (e.g. .astype('float32')) or drop it"
            )
    grid = grid_of(ds)
    transform = grid.transform
    xs, ys = ds["x"].values, ds["y"].values
    if not (np.allclose(xs, transform.c + (np.arange(len(xs)) + 0.5) * transform.a, rtol=0, atol=1e-6 * abs(transform.a))
            and np.allclose(ys, transform.f + (np.arange(len(ys)) + 0.5) * transform.e, rtol=0, atol=1e-6 * abs(transform.e))):
        raise InputError(
            f"write_cube: the x/y coordinates are not the pixel centres of attrs['transform'] {list(transform)[:6]}; "
            "set attrs['transform'] to the grid's top-left affine (or drop it to derive it from x/y)"
        )
    ds = ds.copy()
    for name in spatial:
        if ds[name].dtype.kind == "b":  # GDAL has no boolean type: store 0/1 bytes
            ds[name] = ds[name].astype("uint8")
    non_index = [c for c in ds.coords if c not in ds.dims and c != "spatial_ref"]
    ds = ds.assign_coords({c: ds[c].compute() for c in non_index})
    if "spatial_ref" in ds.coords:
        ds = ds.drop_vars("spatial_ref")
    crs = grid.crs
    ds.rio.write_crs(crs, inplace=True)  # inplace on the shallow copy: rioxarray would deep-copy the arrays
    ds.rio.write_transform(transform, inplace=True)
    # CF axis attributes: without them GDAL 3.6's Zarr driver cannot tell the x from the y dimension
    # (axis mapping "0,0": right origin, wrong geographic corners).
    ds.rio.write_coordinate_system(inplace=True)
    for dim, axis in (("x", "X"), ("y", "Y")):
        ds[dim].attrs.setdefault("axis", axis)
        ds[dim].attrs.setdefault("units", "metre")
    wkt = ds.rio.crs.to_wkt()
    attrs = {k: _jsonable(v) for k, v in ds.attrs.items()}
    attrs["crs"] = crs
    attrs["transform"] = [float(v) for v in list(transform)[:6]]
    from s2pipe import __version__

    attrs.setdefault("s2pipe_version", __version__)
    ds.attrs = attrs
    for name in ds.data_vars:
        var = ds[name]
        var.encoding = {}
        var.attrs = {k: _jsonable(v) for k, v in var.attrs.items() if k not in ("grid_mapping", "_CRS")}
        if name in spatial:
            var.attrs["grid_mapping"] = "spatial_ref"
            var.attrs["_CRS"] = {"wkt": wkt}
    for name in ds.coords:
        ds[name].encoding = {k: v for k, v in ds[name].encoding.items() if k in ("units", "calendar", "dtype")}
    return ds


def _describe(ds: xr.Dataset) -> tuple[dict, dict]:
    """(grid, inputs): the JSON descriptions hashed into the signature."""
    g = grid_of(ds)
    grid: dict[str, Any] = {
        "crs": g.crs,
        "transform": [float(v) for v in list(g.transform)[:6]],
        "shape": [int(v) for v in g.shape],
    }
    if "time" in ds.coords:
        grid["time"] = [str(v) for v in pd.DatetimeIndex(ds["time"].values).strftime("%Y-%m-%dT%H:%M:%S")] \
            if np.issubdtype(ds["time"].dtype, np.datetime64) else [str(v) for v in ds["time"].values]
    if "band" in ds.coords:
        grid["band"] = [str(v) for v in ds["band"].values]
    variables = {
        name: {"dims": list(ds[name].dims), "dtype": str(ds[name].dtype), "shape": [int(s) for s in ds[name].shape],
               "attrs": {k: v for k, v in ds[name].attrs.items() if k != "_CRS"}}
        for name in sorted(ds.data_vars)
    }
    attrs = {k: v for k, v in sorted(ds.attrs.items()) if k not in VOLATILE_ATTRS}
    if isinstance(attrs.get("parameters"), dict):  # where the store lies is not what it holds: a copy resumes
        attrs["parameters"] = {k: v for k, v in attrs["parameters"].items() if k not in LOCATION_PARAMETERS}
    inputs = {"attrs": attrs, "variables": variables}
    return grid, inputs


def _layout(ds: xr.Dataset, region_size: int | None) -> tuple[int, int]:
    """(region side, chunk side) in pixels; regions are multiples of the Dataset's regular spatial chunks."""
    if region_size is not None and (not isinstance(region_size, (int, np.integer)) or region_size <= 0):
        raise InputError(f"region_size={region_size!r} must be a positive number of pixels (argument: region_size)")
    region = int(region_size or DEFAULT_REGION_SIZE)
    upstream = 1
    for name in ds.data_vars:
        chunks = ds[name].chunksizes
        for dim in ("y", "x"):
            c = chunks.get(dim)
            if c and len(c) > 1 and len(set(c[:-1])) == 1 and c[-1] <= c[0]:  # regular chunks from index 0
                upstream = max(upstream, c[0])
    if upstream > 1 and region % upstream:
        region = math.ceil(region / upstream) * upstream
    region = min(region, max(ds.sizes["y"], ds.sizes["x"]))  # one region covers a small cube
    return region, chunk_for(region)


def _dates_per_task(data: xr.Dataset, chunk: int) -> int:
    """Dates per Dask write task: Zarr chunks of all variables for one date add up to ~WRITE_TASK_BYTES per task."""
    per_date = sum(
        int(np.prod([chunk if d in ("y", "x") else 1 if d == "time" else v.sizes[d] for d in v.dims])) * v.dtype.itemsize
        for v in data.data_vars.values()
    )
    return max(1, min(data.sizes.get("time", 1), WRITE_TASK_BYTES // max(per_date, 1)))


def _chunked(data: xr.Dataset, target: dict[str, int]) -> xr.Dataset:
    """Dask-backed copy of ``data`` with the write chunks; in-memory arrays are wrapped without a copy
    (``dask.array.from_array`` would copy and hash them: ~20 % of a write of an in-memory cube)."""
    out = {}
    for name, var in data.data_vars.items():
        chunks = tuple(var.sizes[d] if target[d] == -1 else target[d] for d in var.dims)
        if isinstance(var.data, da.Array):
            arr = var.data.rechunk(chunks, method="tasks")  # in-region: a P2P shuffle costs more
        else:
            arr = _wrap_numpy(np.asarray(var.data), chunks, f"s2pipe-{name}-{uuid.uuid4().hex}")
        out[name] = xr.Variable(var.dims, arr)
    return xr.Dataset(out)


def _wrap_numpy(x: np.ndarray, chunks: tuple[int, ...], name: str) -> da.Array:
    """A Dask array whose blocks are views of ``x`` (no copy, no hashing)."""
    import itertools
    import operator

    from dask.array.core import normalize_chunks, slices_from_chunks

    nchunks = normalize_chunks(chunks, x.shape, dtype=x.dtype)
    src = name + "-source"
    dsk: dict[Any, Any] = {src: x}
    for idx, slc in zip(itertools.product(*(range(len(c)) for c in nchunks)), slices_from_chunks(nchunks)):
        dsk[(name,) + idx] = (operator.getitem, src, slc)
    return da.Array(dsk, name, nchunks, dtype=x.dtype)


def _spatial_data(ds: xr.Dataset) -> xr.Dataset:
    """The variables written region by region, without coordinates (the template holds those)."""
    spatial = [v for v in ds.data_vars if {"y", "x"} <= set(ds[v].dims)]
    out = ds[spatial]
    return out.drop_vars(list(out.coords))


def _write_template(ds: xr.Dataset, path: Path | ObjectPath, *, signature: str, chunk: int,
                    levels: list[tuple[int, int]], zarr_format: int, level_chunk: int) -> None:
    """Metadata, coordinates, attributes and non-spatial variables of level 0 and of each overview level (their
    GeoZarr attributes included); spatial variables stay unwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_group_template(ds, path, attrs=_root_attrs(ds, signature=signature, levels=levels), chunk=chunk,
                          zarr_format=zarr_format, group=None)
    level = _skeleton(ds)
    for k in range(1, len(levels) + 1):
        level = _prepare(coarsen(level))
        grid = grid_of(level)
        attrs = {"title": f"overview level {k} of the store: {2 ** k}x coarser in x and y", "crs": grid.crs,
                 "transform": [float(v) for v in list(grid.transform)[:6]], "s2pipe:level": k,
                 "s2pipe:resampling": {n: resampling_of(level[n]) for n in _spatial_data(level).data_vars},
                 **geozarr_attrs(grid.crs, list(grid.transform)[:6], grid.shape)}
        _write_group_template(level, path, attrs=attrs, chunk=level_chunk, zarr_format=zarr_format,
                              group=level_group(k))
    (path / STATE_DIR).mkdir(exist_ok=True)


def _skeleton(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with lazy zeros for its spatial variables: the shapes, dtypes and attributes, nothing computed."""
    out = ds.copy()
    for name in _spatial_data(ds).data_vars:
        var = ds[name]
        out[name] = xr.Variable(var.dims, da.zeros(var.shape, dtype=var.dtype, chunks=-1), var.attrs)
    return out


def _root_attrs(ds: xr.Dataset, *, signature: str, levels: list[tuple[int, int]]) -> dict[str, Any]:
    """The root group's attributes: ``ds``'s, the signature, and the GeoZarr ``spatial:``/``proj:`` (and, with
    overview levels, ``multiscales``) attributes of the grid (derived from it: not part of the signature)."""
    grid = grid_of(ds)
    t = [float(v) for v in list(grid.transform)[:6]]
    attrs = {**ds.attrs, "s2pipe_signature": signature, **geozarr_attrs(grid.crs, t, grid.shape, multiscales=True)}
    main = main_variable(_spatial_data(ds))
    shapes, transforms = [tuple(grid.shape)], [t]
    for k, shape in enumerate(levels, start=1):
        shapes.append(tuple(shape))
        transforms.append([t[0] * 2 ** k, t[1], t[2], t[3], t[4] * 2 ** k, t[5]])
    attrs.update(multiscales_attrs(main, list(zip(shapes, transforms)), resampling=resampling_of(ds[main])))
    return attrs


def _write_group_template(ds: xr.Dataset, path: Path | ObjectPath, *, attrs: dict, chunk: int, zarr_format: int,
                          group: str | None) -> None:
    """The template of one group (the root or an overview level): see ``_write_template``."""
    tmpl = ds.copy()
    tmpl.attrs = attrs
    if zarr_format == 3:  # variable-length strings: v3's fixed-length ones are not in the spec yet (zarr warns)
        tmpl = tmpl.assign_coords({c: tmpl[c].astype(object) for c in tmpl.coords if tmpl[c].dtype.kind == "U"})
    encoding: dict[str, dict] = {}
    for name in ds.data_vars:
        var = ds[name]
        if {"y", "x"} <= set(var.dims):
            chunks = tuple(
                min(chunk, var.sizes[d]) if d in ("y", "x") else 1 if d == "time" else var.sizes[d] for d in var.dims
            )
            tmpl[name] = xr.Variable(var.dims, da.zeros(var.shape, dtype=var.dtype, chunks=chunks), var.attrs, var.encoding)
            encoding[name] = {"chunks": chunks}
            if var.dtype.kind == "f":
                encoding[name]["_FillValue"] = np.nan
        else:
            tmpl[name] = var.compute()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, message=".*(Consolidated metadata|vlen-utf8).*")
        target, storage_options = zarr_target(path)
        tmpl.to_zarr(target, group=group, mode="w" if group is None else "w-", zarr_format=zarr_format,
                     consolidated=False, compute=False, encoding=encoding, storage_options=storage_options)


def _existing_state(path: Path | ObjectPath, signature: str, grid: dict, inputs: dict, *, overwrite: bool) -> dict | None:
    """The stored state to resume from, or None to (re)create the store; OutputConflictError otherwise."""
    fix = "pass overwrite=True (CLI: --overwrite) to replace it, or write to a new path"
    if not path.exists() and not path.is_symlink():
        return None
    if overwrite:
        if isinstance(path, ObjectPath):  # check_url refused bucket roots: the prefix is the store alone
            if path.is_dir():
                path.rmtree()
            else:
                path.unlink(missing_ok=True)
            return None
        if path.resolve() in (Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve()):
            raise InputError(f"refusing to overwrite {path}: it is the root, home or current folder; choose a store path")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return None
    if not path.is_dir():
        raise OutputConflictError(f"the output path {path} exists and is not a folder (not a Zarr store); {fix}")
    if not any(path.iterdir()):
        return None
    state_file = state_path(path, "state.json")
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("append"):
            dates = state["append"]["times"]
            raise OutputConflictError(
                f"the store {path} has an interrupted append of the dates {dates[0]}..{dates[-1]} pending; run that "
                f"append again to finish it, or {fix}")
        if state.get("signature") == signature:
            return state
        raise OutputConflictError(
            f"the output store {path} holds a cube with a different {_diff(state, grid, inputs)}; {fix}"
        )
    root_attrs = _group_attrs(path)
    stored = root_attrs.get("s2pipe_signature") if root_attrs is not None else None
    if stored == signature:
        return None  # our own template, interrupted before any region: write it again
    if stored is not None:
        raise OutputConflictError(f"the output store {path} holds a different, unfinished s2pipe cube; {fix}")
    raise OutputConflictError(f"the output path {path} exists and is not an s2pipe cube store; {fix}")


def value_diffs(old: Any, new: Any, *, name: str = "", old_is: str = "store", new_is: str = "new",
                ignore: frozenset[str] = frozenset()) -> list[str]:
    """Where two JSON-like values differ, one entry per differing leaf, named by its dotted path:
    ``["gapfill.radius '10D' (store) vs '20D' (new)", ...]`` (keys in ``ignore`` at the top level skipped)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if not name and key in ignore:
                continue
            out += value_diffs(old.get(key), new.get(key), name=f"{name}.{key}" if name else str(key),
                               old_is=old_is, new_is=new_is)
        return out
    if old == new:
        return []
    return [f"{name or 'value'} {_short(old)} ({old_is}) vs {_short(new)} ({new_is})"]


def _diff(state: dict, grid: dict, inputs: dict) -> str:
    """Readable summary of what differs between a stored state and the new grid/inputs."""
    parts = []
    old_grid, old_inputs = state.get("grid", {}), state.get("inputs", {})
    for key in sorted(set(old_grid) | set(grid)):
        a, b = old_grid.get(key), grid.get(key)
        if a != b:
            parts.append(f"{key} {_short(a)} (store) vs {_short(b)} (new)")
    if parts:
        return "grid: " + "; ".join(parts)
    oa, na = old_inputs.get("attrs", {}), inputs.get("attrs", {})
    parts += [f"attribute {d}" for d in value_diffs(oa, na)]
    ov, nv = old_inputs.get("variables", {}), inputs.get("variables", {})
    for key in sorted(set(ov) | set(nv)):
        a, b = ov.get(key), nv.get(key)
        if a == b:
            continue
        if a is None or b is None:
            parts.append(f"variable {key!r} {'missing' if a is None else 'present'} (store) vs {'missing' if b is None else 'present'} (new)")
            continue
        for field in sorted(set(a) | set(b)):
            fa, fb = a.get(field), b.get(field)
            if field == "attrs" and isinstance(fa, dict) and isinstance(fb, dict):
                for k in sorted(set(fa) | set(fb)):
                    if fa.get(k) != fb.get(k):
                        parts.append(f"variable {key!r} attribute {k!r} {_short(fa.get(k))} (store) vs {_short(fb.get(k))} (new)")
            elif fa != fb:
                parts.append(f"variable {key!r} {field} {_short(fa)} (store) vs {_short(fb)} (new)")
    return "inputs: " + ("; ".join(parts) if parts else "signature")


def _short(value: Any, n: int = 120) -> str:
    s = json.dumps(value, default=str)
    return s if len(s) <= n else s[: n - 3] + "..."


def _open_group(path: Path | ObjectPath, zarr_format: int = 2, group: str | None = None):
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy")
        return zarr.open_group(zarr_store(path), path=group or "", mode="r+", zarr_format=zarr_format,
                               use_consolidated=False)


def _consolidate(path: Path | ObjectPath, zarr_format: int = 2) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy")
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        zarr.consolidate_metadata(zarr_store(path), zarr_format=zarr_format)


def _drop_consolidated(path: Path | ObjectPath, zarr_format: int) -> None:
    """Remove the store's consolidated metadata (stale once arrays change shape); readers then read the arrays'
    own metadata until ``_consolidate`` writes it again."""
    if zarr_format == 2:
        (path / ".zmetadata").unlink(missing_ok=True)
        return
    meta_file = path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    if meta.pop("consolidated_metadata", None) is not None:
        meta_file.write_text(json.dumps(meta, indent=2))


def _group_attrs(path: Path | ObjectPath) -> dict | None:
    """The root group's attributes read from its metadata file (format 2 or 3), or None without one."""
    if (path / ".zattrs").exists():
        return json.loads((path / ".zattrs").read_text())
    if (path / "zarr.json").exists():
        return json.loads((path / "zarr.json").read_text()).get("attributes", {})
    return None


def _distributed_client():
    """The ``distributed.Client`` Dask would use now, or None for the local schedulers."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    scheduler = dask.base.get_scheduler()
    return client if getattr(scheduler, "__self__", None) is client else None


def _n_threads(client) -> int:
    if client is not None:
        try:
            return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
        except Exception:
            return 2
    n = dask.config.get("num_workers", None)
    return int(n) if n else (os.cpu_count() or 2)


def _run_distributed(client, todo, delayed_region, finished, *, window: int) -> None:
    """Keep ``window`` regions in flight on the cluster; record each as soon as it is written.

    Each region prefers one worker (the least busy; the scheduler may still move its tasks elsewhere, e.g. when
    that worker dies): its band blocks then meet on that worker for the Zarr chunks that hold every band, instead
    of travelling between worker processes (measured on a 2048² px tile, 2 workers: ~15 s of transfers less)."""
    from distributed import as_completed

    pending = iter(todo)
    futures: dict = {}
    busy: dict[str, int] = {w: 0 for w in client.scheduler_info().get("workers", {})}
    ac = as_completed()

    def submit() -> None:
        r = next(pending, None)
        if r is not None:
            work = delayed_region(r)
            if busy:
                w = min(busy, key=busy.get)
                busy[w] += 1
                f = client.compute(work, workers=[w], allow_other_workers=True)
            else:
                w, f = None, client.compute(work)
            futures[f] = (r, w)
            ac.add(f)

    for _ in range(window):
        submit()
    try:
        for f in ac:
            f.result()  # raises the region's error
            r, w = futures.pop(f)
            if w in busy:
                busy[w] -= 1
            finished(r)
            submit()
    finally:
        for f in futures:
            f.cancel()


def write_json(path: str | os.PathLike | ObjectPath, obj: Any, *, storage: Any = None) -> Path | ObjectPath:
    """Write ``obj`` as JSON under a unique temporary name beside ``path`` and rename it: readers never see a
    half-written file, and concurrent writers never share a temporary file. Returns ``path``.

    Object-store URLs (``storage``: their settings) are written with one PUT, which replaces the object
    atomically (readers see the old or the new one)."""
    path = location(path, storage)
    if isinstance(path, ObjectPath):
        path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
        return path
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    return path


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _jsonable(v: Any) -> Any:
    """Attribute value -> JSON-serialisable (numpy -> lists/scalars, Affine -> 6 floats, dates -> ISO text)."""
    if isinstance(v, Affine):
        return [float(x) for x in list(v)[:6]]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, (dt.datetime, dt.date, pd.Timestamp)):
        return v.isoformat()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    return str(v)

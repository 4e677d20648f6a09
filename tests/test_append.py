"""append_cube: a store grows along time without rewriting what is there; conflicts and interruptions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from helpers import NT, chunk_mtimes, make_dataset

from s2pipe.errors import InputError, OutputConflictError
from s2pipe.store.zarr import STATE_DIR, append_cube, open_cube, store_state, write_cube

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")


def _split(ds: xr.Dataset, k: int) -> tuple[xr.Dataset, xr.Dataset]:
    first, rest = ds.isel(time=slice(0, k)), ds.isel(time=slice(k, None))
    return first, rest.assign_attrs(stac_items=["A", "B", "C"])


def _files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and STATE_DIR not in p.parts and not p.name.startswith(".z")}


@pytest.mark.parametrize("dask", [False, True])
def test_append_equals_one_write_and_keeps_old_chunks(tmp_path, dask):
    full = make_dataset(backing="dask" if dask else "numpy")
    first, rest = _split(full, 2)
    one = write_cube(full, tmp_path / "one.zarr", region_size=16)
    grown = write_cube(first, tmp_path / "grown.zarr", region_size=16)
    before = chunk_mtimes(grown)
    old_bytes = _files(grown)
    append_cube(rest, grown)
    with open_cube(one) as a, open_cube(grown) as b:
        xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
        assert b.attrs["stac_items"] == ["A", "B", "C"]
    after = chunk_mtimes(grown)
    assert {k: after[k] for k in before} == before, "chunks of the old dates were rewritten"
    assert len(after) > len(before)
    now = _files(grown)
    assert all(now[k] == v for k, v in old_bytes.items() if k.split("/")[0] != "time")
    state = store_state(grown)
    assert "append" not in state and len(state["grid"]["time"]) == NT and len(state["appends"]) == 1
    assert not list((grown / STATE_DIR).glob("append-*")), "the append's region records were left behind"


def test_gdal_reads_the_appended_dates(tmp_path):
    import rasterio

    full = make_dataset()
    first, rest = _split(full, 3)
    path = write_cube(first, tmp_path / "c.zarr")
    append_cube(rest, path)
    with rasterio.open(f'ZARR:"{path}":/reflectance:{NT - 1}:1') as src:
        got = src.read(1)
    np.testing.assert_array_equal(got, full.reflectance.isel(time=NT - 1, band=1).values)


def test_append_interrupted_then_finished(tmp_path):
    full = make_dataset()
    first, rest = _split(full, 2)
    path = write_cube(first, tmp_path / "c.zarr", region_size=16)
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        append_cube(rest, path, progress=stop_after_two)
    assert store_state(path)["append"]["times"][0].startswith(str(rest.time.values[0])[:10])
    with pytest.raises(InputError, match="incomplete"):
        open_cube(path)
    with pytest.raises(OutputConflictError, match="interrupted append"):  # other dates wait for it
        append_cube(rest.isel(time=slice(1, None)), path)
    with pytest.raises(OutputConflictError, match="interrupted append"):
        write_cube(full, path)
    append_cube(rest, path)
    with open_cube(path) as b, open_cube(write_cube(full, tmp_path / "one.zarr", region_size=16)) as a:
        xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


@pytest.mark.parametrize("change, message", [
    (lambda ds: ds.assign_coords(band=["B02", "B03", "B04"]), "band"),
    (lambda ds: ds.assign_attrs(transform=[10.0, 0.0, 399970.0, 0.0, -10.0, 5000040.0])
     .assign_coords(x=ds.x + 10), "transform"),
    (lambda ds: ds.assign(weight=ds.weight.astype("float64")), "dtype"),
    (lambda ds: ds.assign(reflectance=ds.reflectance.assign_attrs(normalize_scale=[1, 1, 1])), "normalize_scale"),
    (lambda ds: ds.drop_vars("observed"), "observed"),
])
def test_a_different_grid_bands_or_parameters_is_refused_untouched(tmp_path, change, message):
    full = make_dataset()
    first, rest = _split(full, 2)
    path = write_cube(first, tmp_path / "c.zarr")
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(OutputConflictError, match=message):
        append_cube(change(rest), path)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


def test_dates_must_follow_the_store(tmp_path):
    full = make_dataset()
    path = write_cube(full.isel(time=slice(0, 3)), tmp_path / "c.zarr")
    with pytest.raises(InputError, match="not after the store's last date"):
        append_cube(full.isel(time=slice(2, None)), path)
    with pytest.raises(InputError, match="no s2pipe store"):
        append_cube(full, tmp_path / "missing.zarr")
    assert json.loads((path / STATE_DIR / "state.json").read_text()).get("append") is None

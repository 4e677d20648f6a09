"""write_cube / open_cube: round trip, Zarr v2 layout, resumable region writes, conflicts, overwrite."""
from __future__ import annotations

import json
import os
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from helpers import NB, NT, NX, NY, TRANSFORM, arrays, chunk_mtimes, make_dataset  # noqa: F401

from s2pipe.errors import InputError, OutputConflictError
from s2pipe.store.zarr import STATE_DIR, open_cube, write_cube

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray + affine
def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.stat().st_size) for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted write (region 16 px -> 3 x 4 regions)."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    write_cube(make_dataset(), path, region_size=16)
    return path


@pytest.mark.parametrize("backing", ["numpy", "dask"])
def test_round_trip_values_coords_attrs(tmp_path, backing):
    ds = make_dataset(backing=backing)
    calls = []
    out = write_cube(ds, tmp_path / "c.zarr", region_size=16, progress=lambda d, t: calls.append((d, t)))
    assert out == tmp_path / "c.zarr"
    assert calls[0] == (0, 12) and calls[-1] == (12, 12) and len(calls) == 13
    got = open_cube(out)
    for name in ("reflectance", "weight", "observed"):
        assert got[name].dtype == ds[name].dtype
        assert got[name].dims == ds[name].dims
        np.testing.assert_array_equal(got[name].values, ds[name].values)
    np.testing.assert_array_equal(got.time.values, ds.time.values)
    assert list(got.band.values) == ["B02", "B03", "B8A"]
    np.testing.assert_array_equal(got.x.values, ds.x.values)
    np.testing.assert_array_equal(got.y.values, ds.y.values)
    assert got.rio.crs.to_epsg() == 32633
    assert tuple(got.rio.transform())[:6] == tuple(TRANSFORM)
    assert "spatial_ref" in got.coords
    assert got.attrs["stac_items"] == ["A", "B"]
    assert got.attrs["parameters"] == {"radius": "10D", "bands": ["B02", "B03", "B8A"], "np": 1.5}
    assert got.attrs["catalog_url"] == "http://127.0.0.1:1234"
    assert got.attrs["s2pipe_version"]
    assert got.attrs["transform"] == TRANSFORM
    assert got["reflectance"].attrs["normalize_scale"] == [0.5, 0.5, 0.25]
    assert got["reflectance"].attrs["_CRS"]["wkt"].startswith("PROJCS")
    # the source dataset is not modified
    assert "_CRS" not in ds["reflectance"].attrs and "s2pipe_version" not in ds.attrs


def test_zarr_v2_consolidated_cf_layout(reference):
    assert (reference / ".zgroup").exists() and (reference / ".zmetadata").exists()
    meta = json.loads((reference / ".zmetadata").read_text())["metadata"]
    zarray = meta["reflectance/.zarray"]
    assert zarray["zarr_format"] == 2
    assert zarray["chunks"] == [1, NB, 16, 16]  # one date, all bands, one region
    assert meta["weight/.zarray"]["chunks"] == [1, 16, 16]
    assert zarray["fill_value"] == "NaN"
    for var in ("reflectance", "weight", "observed"):
        attrs = meta[f"{var}/.zattrs"]
        assert attrs["grid_mapping"] == "spatial_ref"
        assert "wkt" in attrs["_CRS"]
    ref = meta["spatial_ref/.zattrs"]
    assert "crs_wkt" in ref and ref["GeoTransform"].split() == ["399960.0", "10.0", "0.0", "5000040.0", "0.0", "-10.0"]
    assert meta["time/.zattrs"]["units"].startswith("days since")
    assert meta[".zattrs"]["s2pipe_signature"]
    # consolidated metadata opens without listing the store
    zarr.open_consolidated(str(reference), zarr_format=2)
    assert (reference / STATE_DIR / "complete").exists()
    assert len(list((reference / STATE_DIR / "done").iterdir())) == 12


@pytest.mark.parametrize("scheduler", ["threads", "distributed"])
def test_interrupted_by_progress_then_resumed_equals_uninterrupted(tmp_path, reference, scheduler):
    path = tmp_path / "c.zarr"

    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done == 2:
            raise Stop

    with _scheduler(scheduler):
        with pytest.raises(Stop):
            write_cube(make_dataset(), path, region_size=16, progress=stop_after_two)
        done = sorted(p.name for p in (path / STATE_DIR / "done").iterdir())
        assert len(done) == 2
        assert not (path / ".zmetadata").exists() and not (path / STATE_DIR / "complete").exists()
        with pytest.raises(InputError, match="incomplete"):
            open_cube(path)
        before = chunk_mtimes(path)
        written_first = {k for k in before if k.split(".")[2:] in (_chunk_of(done[0]), _chunk_of(done[1]))}
        assert len(written_first) == 2 * NT  # every date's chunk of the 2 recorded regions
        calls = []
        write_cube(make_dataset(), path, region_size=16, progress=lambda d, t: calls.append(d))
    assert calls[0] == 2 and calls[-1] == 12 and len(calls) == 11
    after = chunk_mtimes(path)
    for k in written_first:
        assert after[k] == before[k], f"chunk {k} of a recorded region was written again"
    _assert_same_store(path, reference)


def test_crash_in_region_then_resume_equals_uninterrupted(tmp_path, reference):
    path = tmp_path / "c.zarr"
    with dask.config.set(scheduler="threads", num_workers=2):
        with pytest.raises(RuntimeError, match="simulated worker crash"):
            write_cube(make_dataset(fail_at=(35, 50)), path, region_size=16)  # the last region fails
        n_done = len(list((path / STATE_DIR / "done").iterdir()))
        assert 0 < n_done < 12
        write_cube(make_dataset(), path, region_size=16)
    _assert_same_store(path, reference)


def test_complete_store_same_inputs_is_left_as_is(tmp_path):
    path = write_cube(make_dataset(), tmp_path / "c.zarr", region_size=16)
    before = snapshot(path)
    calls = []
    write_cube(make_dataset(), path, region_size=16, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (12, 12)
    changed = {k for k, v in snapshot(path).items() if before.get(k) != v}
    assert not {k for k in changed if not k.startswith(STATE_DIR) and k != ".zmetadata"}


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(ny=NY + 8), r"grid: shape \[40, 56\] \(store\) vs \[48, 56\] \(new\)"),
        (dict(items=("A", "C")), r"inputs: attribute stac_items \[\"A\", \"B\"\] \(store\) vs \[\"A\", \"C\"\]"),
    ],
)
def test_conflict_raises_and_writes_nothing(tmp_path, change, message):
    path = write_cube(make_dataset(), tmp_path / "c.zarr", region_size=16)
    before = snapshot(path)
    with pytest.raises(OutputConflictError, match=message) as err:
        write_cube(make_dataset(**change), path, region_size=16)
    assert str(path) in str(err.value) and "overwrite=True" in str(err.value) and "new path" in str(err.value)
    assert snapshot(path) == before


def test_conflict_with_a_foreign_folder_or_file(tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(OutputConflictError, match="not an s2pipe cube store"):
        write_cube(make_dataset(), foreign)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    afile = tmp_path / "file.zarr"
    afile.write_text("x")
    with pytest.raises(OutputConflictError, match="not a folder"):
        write_cube(make_dataset(), afile)
    assert afile.read_text() == "x"
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    write_cube(make_dataset(), empty, region_size=32)  # an empty folder is fine
    assert open_cube(empty).sizes["time"] == NT


def test_overwrite_replaces_the_store(tmp_path):
    path = write_cube(make_dataset(), tmp_path / "c.zarr", region_size=16)
    new = make_dataset(ny=24, items=("Z",))
    write_cube(new, path, overwrite=True, region_size=16)
    got = open_cube(path)
    assert got.sizes["y"] == 24 and got.attrs["stac_items"] == ["Z"]
    np.testing.assert_array_equal(got.reflectance.values, new.reflectance.values)
    assert len(list((path / STATE_DIR / "done").iterdir())) == 2 * 4


def test_interrupted_template_is_rewritten(tmp_path):
    """A crash while the template was being written (no state file yet) is resumed from scratch."""
    path = write_cube(make_dataset(), tmp_path / "c.zarr", region_size=16)
    import shutil

    shutil.rmtree(path / STATE_DIR)
    os.remove(path / ".zmetadata")
    write_cube(make_dataset(), path, region_size=16)
    assert (path / STATE_DIR / "complete").exists()
    with pytest.raises(OutputConflictError, match="different, unfinished"):
        shutil.rmtree(path / STATE_DIR)
        write_cube(make_dataset(items=("Q",)), path, region_size=16)


def test_region_size_follows_dataset_chunks_and_bad_input(tmp_path):
    ds = make_dataset()  # 8-px time-whole blocks
    path = write_cube(ds, tmp_path / "a.zarr", region_size=12)  # 12 -> 16: never split an 8-px block
    state = json.loads((path / STATE_DIR / "state.json").read_text())
    assert state["region_size"] == 16
    with pytest.raises(InputError, match="region_size"):
        write_cube(ds, tmp_path / "b.zarr", region_size=0)
    with pytest.raises(InputError, match="no 'y' dimension"):
        write_cube(ds.isel(y=0), tmp_path / "c.zarr")
    bad = ds.assign_attrs(transform=[10.0, 0.0, 0.0, 0.0, -10.0, 0.0])
    with pytest.raises(InputError, match="not the pixel centres"):
        write_cube(bad, tmp_path / "d.zarr")
    with pytest.raises(InputError, match="no Zarr store"):
        open_cube(tmp_path / "nothing.zarr")
    assert not (tmp_path / "b.zarr").exists() and not (tmp_path / "d.zarr").exists()


def test_data_array_input_and_memory_bounded_batches(tmp_path):
    """One DataArray is accepted; regions are computed a few at a time, never the whole cube at once."""
    computed: list[tuple[int, int]] = []

    def record(block, block_info=None):
        computed.append(tuple(block_info[0]["chunk-location"][2:]))
        return block

    ds = make_dataset()
    refl = ds["reflectance"].copy(data=ds["reflectance"].data.map_blocks(record, dtype="float32"))
    refl.attrs.update(ds.attrs)
    seen_at_progress = []
    with dask.config.set(scheduler="threads", num_workers=2):
        write_cube(refl, tmp_path / "c.zarr", region_size=16,
                   progress=lambda d, t: seen_at_progress.append(len(set(computed))))
    # 8-px blocks, 16-px regions: 4 blocks per region (2 at the edge); batches of 2 regions
    assert seen_at_progress[1] <= 8 < len(set(computed)) == 5 * 7
    got = open_cube(tmp_path / "c.zarr")
    np.testing.assert_array_equal(got["reflectance"].values, ds["reflectance"].values)


# ---------------------------------------------------------------------------------------------- helpers


def _chunk_of(done_name: str) -> list[str]:
    iy, ix = done_name.split("_")
    return [iy, ix]  # region 16 == chunk 16: region (iy, ix) is chunk (t, 0, iy, ix)


def _assert_same_store(path: Path, reference: Path) -> None:
    a, b = arrays(path), arrays(reference)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    ma = json.loads((path / ".zmetadata").read_text())["metadata"]
    mb = json.loads((reference / ".zmetadata").read_text())["metadata"]
    assert ma == mb


class _scheduler:
    def __init__(self, kind: str):
        self.kind = kind

    def __enter__(self):
        if self.kind == "threads":
            self._cm = dask.config.set(scheduler="threads", num_workers=2)
            self._cm.__enter__()
        else:
            from distributed import Client, LocalCluster

            self._cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None)
            self._cm = Client(self._cluster)
            self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        if self.kind != "threads":
            self._cluster.close()


def test_bool_variable_is_stored_as_bytes_and_text_is_refused(tmp_path):
    ds = make_dataset(backing="numpy")
    ds["clear"] = ds["observed"] > 0
    write_cube(ds, tmp_path / "a.zarr", region_size=32)
    got = open_cube(tmp_path / "a.zarr")
    assert got["clear"].dtype == np.uint8
    np.testing.assert_array_equal(got["clear"].values, ds["observed"].values > 0)
    ds["label"] = ds["observed"].astype(str)
    with pytest.raises(InputError, match="variable 'label' has dtype"):
        write_cube(ds, tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()


# ------------------------------------------------------------------------------------------ one writer at a time
_HOLD = """
import sys, time
from s2pipe.store.zarr import store_lock
with store_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""

_WRITE = """
import sys, time
sys.path.insert(0, sys.argv[2])
from helpers import make_dataset
from s2pipe.errors import StoreLockedError
from s2pipe.store.zarr import write_cube
ds = make_dataset()
while time.time() < float(sys.argv[3]):  # start both writers together
    time.sleep(0.005)
try:
    write_cube(ds, sys.argv[1], region_size=16)
    print("wrote")
except StoreLockedError as exc:
    print("locked:", exc)
"""


def test_live_lock_refuses_a_second_writer_and_touches_nothing(tmp_path, reference):
    import subprocess
    import sys

    from s2pipe.errors import StoreLockedError
    from s2pipe.store.zarr import lock_path

    path = tmp_path / "cube.zarr"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}.*delete .*lock"):
            write_cube(make_dataset(), path, region_size=16)
        assert not path.exists() and lock_path(path).exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale, the next run takes it over and finishes
    assert lock_path(path).exists()
    write_cube(make_dataset(), path, region_size=16)
    assert not lock_path(path).exists()
    got, want = arrays(path), arrays(reference)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])  # NaN == NaN here


def test_concurrent_writers_one_wins_and_the_store_is_whole(tmp_path, reference):
    """Two processes start writing the same store at the same instant: at most one writes at a time, and the
    store ends complete and equal to an undisturbed write."""
    import subprocess
    import sys
    import time

    path = tmp_path / "cube.zarr"
    start = str(time.time() + 3.0)
    tests_dir = str(Path(__file__).resolve().parent)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITE, str(path), tests_dir, start], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    said = sorted(o[0].strip().split(":")[0] for o in outs)
    assert said in (["locked", "wrote"], ["wrote", "wrote"]), outs  # "wrote" twice: one finished before the other began
    assert (path / STATE_DIR / "complete").exists()
    got, want = arrays(path), arrays(reference)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])  # NaN == NaN here

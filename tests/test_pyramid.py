"""Multiscale overviews (s2pipe.store.pyramid): the 2x kernels, the levels write_cube writes beside level 0
(values, grids, GeoZarr attributes, consolidated metadata), resume after a crash in a level, append, Zarr v3."""
from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from helpers import NT, TRANSFORM, chunk_mtimes, make_dataset

import s2pipe.store.pyramid as pyramid
from s2pipe.errors import OutputConflictError
from s2pipe.store.pyramid import coarsen, level_group, level_shapes
from s2pipe.store.zarr import STATE_DIR, append_cube, open_cube, write_cube

pytestmark = [pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Object at .s2pipe is not recognized")]

MIN_SIDE = 8  # the test cube is 40 x 56 px: levels 20x28, 10x14, 5x7


def _brute(block: np.ndarray, method: str) -> np.ndarray:
    """Coarse pixel by coarse pixel, from the fine pixels that exist."""
    ny, nx = block.shape[-2:]
    out = np.empty(block.shape[:-2] + ((ny + 1) // 2, (nx + 1) // 2), dtype=block.dtype)
    for idx in np.ndindex(*block.shape[:-2]):
        for i in range(out.shape[-2]):
            for j in range(out.shape[-1]):
                cell = block[idx + (slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2))].ravel()
                if method == "average":
                    cell = cell[~np.isnan(cell)]
                    out[idx + (i, j)] = cell.mean() if cell.size else np.nan
                else:
                    values, counts = np.unique(cell, return_counts=True)
                    out[idx + (i, j)] = values[counts == counts.max()].max()  # ties: the larger value
    return out


@pytest.mark.parametrize("shape", [(4, 6), (5, 7), (3, 1, 9)])
def test_kernels_match_a_pixel_by_pixel_loop(shape):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, shape).astype("float32")
    x[x < 0.3] = np.nan
    x[..., :2, :2] = np.nan  # a coarse pixel with no valid fine pixel stays NaN
    np.testing.assert_allclose(pyramid.coarsen_block(x, "average"), _brute(x, "average"), rtol=1e-6)
    classes = rng.integers(0, 3, shape).astype("uint8")
    np.testing.assert_array_equal(pyramid.coarsen_block(classes, "mode"), _brute(classes, "mode"))
    flags = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]], dtype="uint8")  # 2 of 4 set -> set; 1 of 4 -> not
    np.testing.assert_array_equal(pyramid.coarsen_block(flags, "mode"), [[1, 0, 0]])


@pytest.mark.parametrize("dask_backed", [False, True])
def test_coarsen_numpy_and_dask_paths_agree(dask_backed):
    ds = make_dataset(backing="numpy").drop_vars([])
    if dask_backed:  # odd chunks (7 px) are realigned on even pixel indices
        ds = ds.chunk({"y": 7, "x": 9})
    got = coarsen(ds)
    assert isinstance(got.reflectance.data, da.Array) == dask_backed
    ref = make_dataset(backing="numpy")
    np.testing.assert_allclose(got.reflectance.values, _brute(ref.reflectance.values, "average"), rtol=1e-6)
    np.testing.assert_array_equal(got.observed.values, _brute(ref.observed.values, "mode"))
    assert got.reflectance.dtype == np.float32 and got.observed.dtype == np.uint8
    assert got.attrs["transform"] == [20.0, 0.0, TRANSFORM[2], 0.0, -20.0, TRANSFORM[5]]
    np.testing.assert_allclose(got.x.values, TRANSFORM[2] + (np.arange(28) + 0.5) * 20)
    np.testing.assert_allclose(got.y.values, TRANSFORM[5] - (np.arange(20) + 0.5) * 20)


def test_level_shapes_stop_under_the_minimum_side():
    assert level_shapes((10980, 10980)) == [(5490, 5490), (2745, 2745), (1373, 1373), (687, 687), (344, 344),
                                            (172, 172)]
    assert level_shapes((512, 300)) == [(256, 150)]
    assert level_shapes((255, 4000)) == []


@pytest.fixture(scope="module")
def levelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("pyr") / "c.zarr"
    write_cube(make_dataset(), path, region_size=16, overview_min_side=MIN_SIDE)
    return path


def _level(path, k):
    return xr.open_zarr(path, group=level_group(k) if k else None, decode_coords="all", consolidated=False)


def test_levels_hold_the_coarsened_level_above_on_the_doubled_grid(levelled):
    src = make_dataset(backing="numpy")
    expected = {"reflectance": src.reflectance.values, "weight": src.weight.values, "observed": src.observed.values}
    for k, shape in enumerate(level_shapes((40, 56), min_side=MIN_SIDE), start=1):
        lv = _level(levelled, k)
        for name, method in (("reflectance", "average"), ("weight", "average"), ("observed", "mode")):
            expected[name] = _brute(expected[name], method)
            np.testing.assert_allclose(lv[name].values, expected[name], rtol=1e-5, err_msg=f"{name} level {k}")
            assert lv[name].dtype == src[name].dtype
        assert lv.sizes["y"] == shape[0] and lv.sizes["x"] == shape[1]
        assert lv.rio.crs.to_epsg() == 32633
        assert tuple(lv.rio.transform())[:6] == (10.0 * 2 ** k, 0.0, TRANSFORM[2], 0.0, -10.0 * 2 ** k, TRANSFORM[5])
        np.testing.assert_array_equal(lv.time.values, src.time.values)
        assert list(lv.band.values) == ["B02", "B03", "B8A"]
        assert lv.attrs["s2pipe:resampling"] == {"observed": "mode", "reflectance": "average", "weight": "average"}
        assert lv.reflectance.attrs["_CRS"]["wkt"].startswith("PROJCS")  # what GDAL 3.6 reads
        assert lv.attrs["spatial:shape"] == list(shape)
    # level 0 is what it always was
    np.testing.assert_array_equal(open_cube(levelled).reflectance.values, src.reflectance.values)


def test_geozarr_attributes_and_multiscales_layout(levelled):
    root = zarr.open_consolidated(str(levelled), zarr_format=2)  # the levels are in the consolidated metadata
    attrs = dict(root.attrs)
    names = [c["name"] for c in attrs["zarr_conventions"]]
    assert names == ["spatial:", "proj:", "multiscales"]
    assert attrs["spatial:dimensions"] == ["y", "x"] and attrs["spatial:shape"] == [40, 56]
    assert attrs["spatial:transform"] == TRANSFORM
    assert attrs["spatial:bbox"] == [TRANSFORM[2], TRANSFORM[5] - 400, TRANSFORM[2] + 560, TRANSFORM[5]]
    assert attrs["proj:code"] == "EPSG:32633" and attrs["proj:wkt2"].startswith("PROJCRS")
    layout = attrs["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == ["reflectance"] + [f"overviews/{k}/reflectance" for k in (1, 2, 3)]
    assert [e.get("derived_from") for e in layout] == [None, "reflectance", "overviews/1/reflectance",
                                                       "overviews/2/reflectance"]
    for k, entry in enumerate(layout):
        assert entry["asset"] in root  # every asset exists
        assert list(root[entry["asset"]].shape[-2:]) == entry["spatial:shape"]
        assert entry["spatial:transform"][0] == 10.0 * 2 ** k
        assert entry["transform"]["scale"] == ([1.0, 1.0] if k == 0 else [2.0, 2.0])
    meta = json.loads((levelled / ".zmetadata").read_text())["metadata"]
    assert "overviews/3/reflectance/.zarray" in meta and "overviews/1/.zattrs" in meta


def test_gdal_opens_each_level_georeferenced(levelled):
    import rasterio

    for k in range(4):
        name = "reflectance" if k == 0 else f"overviews/{k}/reflectance"
        with rasterio.open(f'ZARR:"{levelled}":/{name}') as src:
            assert src.crs.to_epsg() == 32633
            assert tuple(src.transform)[:6] == (10.0 * 2 ** k, 0.0, TRANSFORM[2], 0.0, -10.0 * 2 ** k, TRANSFORM[5])
            assert src.count == NT * 3  # one band per (date, band)
            first = src.read(1)
        np.testing.assert_array_equal(first, _level(levelled, k).reflectance.isel(time=0, band=0).values)


def test_a_crash_in_a_level_resumes_without_rewriting_level_0(tmp_path, levelled, monkeypatch):
    """Level 1 is written with level 0; a crash while level 2 is written from the store leaves level 0 and 1 whole,
    and the rerun writes only what is missing."""
    import s2pipe.store.zarr as store

    path = tmp_path / "c.zarr"
    real_block, real_levels, calls = pyramid.coarsen_block, store._write_levels, []

    def levels(*args, **kwargs):
        calls.append("levels")
        return real_levels(*args, **kwargs)

    def failing(block, method):
        if calls and len(calls) > 3:
            raise RuntimeError("simulated crash in a level")
        calls.append(1) if calls else None
        return real_block(block, method)

    monkeypatch.setattr(store, "_write_levels", levels)
    monkeypatch.setattr(pyramid, "coarsen_block", failing)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="crash in a level"):
        write_cube(make_dataset(), path, region_size=16, overview_min_side=MIN_SIDE)
    monkeypatch.setattr(pyramid, "coarsen_block", real_block)
    assert len(list((path / STATE_DIR / "done").iterdir())) == 12  # level 0 (and with it level 1) was whole
    assert not (path / STATE_DIR / "complete").exists()
    with pytest.raises(Exception, match="incomplete"):
        open_cube(path)
    before = {k: chunk_mtimes(path, v) for k, v in (("0", "reflectance"), ("1", "overviews/1/reflectance"))}
    write_cube(make_dataset(), path, region_size=16, overview_min_side=MIN_SIDE)
    assert {k: chunk_mtimes(path, v) for k, v in (("0", "reflectance"), ("1", "overviews/1/reflectance"))} == before
    _assert_levels_equal(path, levelled)


def test_an_interrupted_write_resumes_with_its_levels(tmp_path, levelled):
    path = tmp_path / "c.zarr"

    class Stop(Exception):
        pass

    def stop_after_three(done, total):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        write_cube(make_dataset(), path, region_size=16, overview_min_side=MIN_SIDE, progress=stop_after_three)
    write_cube(make_dataset(), path, region_size=16, overview_min_side=MIN_SIDE)
    _assert_levels_equal(path, levelled)


def _assert_levels_equal(path, reference) -> None:
    for k in range(4):
        a, b = _level(path, k), _level(reference, k)
        for name in ("reflectance", "weight", "observed"):
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{name} level {k}")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_append_extends_every_level(tmp_path, levelled, zarr_format):
    path = tmp_path / "c.zarr"
    full = make_dataset()
    write_cube(full.isel(time=slice(0, 2)), path, region_size=16, overview_min_side=MIN_SIDE, zarr_format=zarr_format)
    append_cube(full.isel(time=slice(2, None)), path)
    for k in range(4):
        a, b = _level(path, k), _level(levelled, k)
        assert a.sizes == b.sizes
        np.testing.assert_array_equal(a.time.values, b.time.values)
        for name in ("reflectance", "weight", "observed"):
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{name} level {k}")
    got = open_cube(path)  # consolidated again, with the new shapes
    assert got.sizes["time"] == NT
    layout = (json.loads((path / ".zattrs").read_text()) if zarr_format == 2 else
              json.loads((path / "zarr.json").read_text())["attributes"])["multiscales"]["layout"]
    assert len(layout) == 4


def test_zarr_v3_store_and_format_conflict(tmp_path):
    path = tmp_path / "c3.zarr"
    ds = make_dataset()
    write_cube(ds, path, region_size=16, overview_min_side=MIN_SIDE, zarr_format=3)
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["attributes"]["proj:code"] == "EPSG:32633"
    assert "consolidated_metadata" in meta
    got = open_cube(path)
    np.testing.assert_array_equal(got.reflectance.values, make_dataset(backing="numpy").reflectance.values)
    assert list(got.band.values) == ["B02", "B03", "B8A"]
    assert json.loads((path / "overviews/1/reflectance/zarr.json").read_text())["shape"] == [NT, 3, 20, 28]
    with pytest.raises(OutputConflictError, match="Zarr format 3 store, not 2.*zarr_format=3"):
        write_cube(ds, path, region_size=16, overview_min_side=MIN_SIDE, zarr_format=2)
    with pytest.raises(Exception, match="zarr_format=4"):
        write_cube(ds, tmp_path / "c4.zarr", zarr_format=4)


def test_no_overviews_when_off_or_too_small(tmp_path):
    path = write_cube(make_dataset(), tmp_path / "c.zarr", region_size=16, overviews=False)
    assert not (path / "overviews").exists()
    attrs = json.loads((path / ".zattrs").read_text())
    assert [e["asset"] for e in attrs["multiscales"]["layout"]] == ["reflectance"]
    small = write_cube(make_dataset(), tmp_path / "s.zarr", region_size=16)  # 40 px < 256: no level
    assert not (small / "overviews").exists()


def test_levels_on_an_object_store(levelled):
    """The same levels through fsspec (memory://, as s3:// goes): written, appended, consolidated."""
    url = "memory://s2pipe-test-pyramid/c.zarr"
    full = make_dataset()
    write_cube(full.isel(time=slice(0, 3)), url, region_size=16, overview_min_side=MIN_SIDE)
    append_cube(full.isel(time=slice(3, None)), url)
    for k in range(4):
        got = xr.open_zarr(url, group=level_group(k) if k else None, consolidated=True)
        np.testing.assert_array_equal(got.reflectance.values, _level(levelled, k).reflectance.values)


def test_info_lists_the_levels(levelled):
    from typer.testing import CliRunner

    from s2pipe.cli import app

    result = CliRunner().invoke(app, ["info", str(levelled)])
    assert result.exit_code == 0, result.output
    assert ("overview levels: overviews/1 20x28 px (20 m), overviews/2 10x14 px (40 m), overviews/3 5x7 px (80 m)"
            in result.output)


def test_level_1_is_written_from_the_same_blocks_computed_once(tmp_path, levelled):
    """Level 0's blocks feed level 1 in the same tasks: each source block is computed once, not once per level."""
    calls = []

    def counted(block):
        if block.size:  # not the shape probe map_blocks makes
            calls.append(block.shape)
        return block

    ds = make_dataset()
    ds["reflectance"] = ds.reflectance.copy(data=ds.reflectance.data.map_blocks(counted, dtype="float32"))
    with dask.config.set(scheduler="threads", num_workers=2):
        write_cube(ds, tmp_path / "c.zarr", region_size=16, overview_min_side=MIN_SIDE)
    assert len(calls) == ds.reflectance.data.npartitions
    _assert_levels_equal(tmp_path / "c.zarr", levelled)


def test_levels_through_a_distributed_cluster(tmp_path):
    """Worker processes, regions in flight together, and a source whose regions share upstream keys (a global
    maximum, as normalisation has): the same store as the threaded scheduler writes."""
    from distributed import Client, LocalCluster

    def normalized():
        ds = make_dataset()
        return ds.assign(reflectance=ds.reflectance / ds.reflectance.max())

    with dask.config.set(scheduler="threads"):
        write_cube(normalized(), tmp_path / "ref.zarr", region_size=16, overview_min_side=MIN_SIDE)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        write_cube(normalized(), tmp_path / "c.zarr", region_size=16, overview_min_side=MIN_SIDE)
    _assert_levels_equal(tmp_path / "c.zarr", tmp_path / "ref.zarr")

"""End to end: demo catalog -> local STAC API (rustac) -> Prefect flow on Dask -> Zarr -> GDAL."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import xarray as xr
from helpers import flow_config

pytestmark = pytest.mark.slow

_config = flow_config


def _config_file(path: Path, cfg) -> Path:
    """``cfg`` (a RunConfig) as the YAML file that `s2pipe run` reads."""
    import yaml

    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _cli(*args):
    """`s2pipe ARGS...` in this process (reporting to the test's Prefect API): the typer result."""
    from typer.testing import CliRunner

    from s2pipe.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def flow_run(prefect_harness, tiny_demo, tmp_path_factory):
    from s2pipe.flows.regional_cube import regional_cube

    region, profile = tiny_demo
    out = tmp_path_factory.mktemp("flow") / "cube.zarr"
    summary = regional_cube(_config(region, profile, out))
    return region, profile, out, summary


def test_flow_writes_a_complete_cube(flow_run):
    region, _, out, summary = flow_run
    assert Path(summary["output"]) == out and out.is_dir()
    assert Path(summary["quicklook"]).is_file()
    ds = xr.open_zarr(out, consolidated=True, decode_coords="all")
    assert set(ds.data_vars) >= {"reflectance", "weight", "observed"}
    assert ds.reflectance.dims == ("time", "band", "y", "x")
    assert list(ds.band.values) == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    t = ds.time.values
    assert np.all(np.diff(t) == np.timedelta64(5, "D")), "output is on the regular 5-day grid"
    r = ds.reflectance.values
    assert np.nanmax(r) <= 1.0 + 1e-6 and np.nanmin(r) >= -0.2
    assert np.isfinite(r).mean() > 0.9
    attrs = ds.attrs
    assert attrs["stac_items"] and attrs["catalog_url"] == "local-demo" and "s2pipe" in attrs["software"]
    assert attrs["parameters"]["gapfill"]["radius"] == "10D"
    assert "dropped_items" not in attrs and "dropped_assets" not in attrs  # present only when a scene is left out
    import pystac

    item = pystac.read_file(str(out.with_name("cube.item.json")))  # STAC metadata beside the store
    assert Path(item.assets["data"].get_absolute_href()) == out and item.properties["cube:dimensions"]["time"]
    assert {ln.href.rsplit("/", 1)[-1] for ln in item.links if ln.rel == "derived_from"} <= set(attrs["stac_items"])
    assert summary["scenes"] >= 2 * summary["dates_in"] - 2, "two tiles per date were merged into solar days"
    run = json.loads(Path(summary["run_summary"]).read_text())
    assert Path(summary["run_summary"]) == out.with_name("cube.run.json")
    assert run["status"] == "completed" and len(run["scenes"]) == summary["scenes"] == len(attrs["stac_items"])
    assert run["regions"]["written_by_this_run"] == run["regions"]["total"] > 0 and run["regions"]["resumed"] == 0
    assert set(run["stage_seconds"]) == {"search", "check_assets", "cube", "cloud_mask", "gap_fill", "normalize", "write", "quicklook", "stac"}
    assert isinstance(run["warnings"], list) and run["parameters"]["gapfill"]["radius"] == "10D"


def test_cli_info_summarises_the_store(flow_run, tmp_path):
    """`s2pipe info STORE`: variables, dates and the run's parameters; a folder that is no store: exit 2."""
    _, _, out, summary = flow_run
    result = _cli("info", out)
    assert result.exit_code == 0, result.output
    for word in ("reflectance", "weight", "observed", f"time: {summary['dates_out']}", "parameters:", '"radius": "10D"'):
        assert word in result.output, word
    missing = _cli("info", tmp_path / "nothing.zarr")
    assert missing.exit_code == 2 and "no Zarr store" in missing.output


def test_cli_run_on_an_unreachable_scheduler_exits_3_and_writes_nothing(flow_run, tmp_path):
    """`s2pipe run --dask-address` of a scheduler that does not answer: exit 3 (transient), one error line."""
    from s2pipe.stac.server import free_port

    region, profile, _, _ = flow_run
    out = tmp_path / "never.zarr"
    cfg = _config_file(tmp_path / "run.yaml", _config(region, profile, out, quicklook=False))
    result = _cli("run", cfg, "--dask-address", f"tcp://127.0.0.1:{free_port()}")
    assert result.exit_code == 3, result.output
    assert "error:" in result.output and "scheduler" in result.output.lower(), result.output
    assert not out.exists()


def test_gdal_reads_the_flow_output_georeferenced_and_equal_to_source_cogs(flow_run):
    region, _, out, _ = flow_run
    ds = xr.open_zarr(out, consolidated=True, decode_coords="all")
    epsg = int(ds.attrs["crs"].split(":")[1])
    with rasterio.open(f'ZARR:"{out}":/reflectance') as src:
        assert src.crs.to_epsg() == epsg
        a, b, c, d, e, f = ds.attrs["transform"][:6]
        assert np.allclose(tuple(src.transform)[:6], (a, b, c, d, e, f))
        assert (src.width, src.height) == (ds.sizes["x"], ds.sizes["y"])
    # a clear 10 m observation equals the source COG's DN * scale + offset, divided by the stored factor
    obs = ds.observed.values.astype(bool)
    ti, yi, xi = (int(v[len(v) // 2]) for v in np.nonzero(obs))
    when = str(np.datetime_as_string(ds.time.values[ti], unit="D"))
    items = json.loads(Path(region.items_path).read_text())["features"]
    band = "B04"
    scale = dict(zip(ds.reflectance.attrs["normalize_bands"], ds.reflectance.attrs["normalize_scale"]))[band]
    x, y = float(ds.x[xi]), float(ds.y[yi])
    expected = []
    for it in items:
        if it["properties"]["datetime"][:10] != when:
            continue
        asset = it["assets"]["red"]
        with rasterio.open(asset["href"]) as src:
            row, col = src.index(x, y)
            if 0 <= row < src.height and 0 <= col < src.width:
                dn = int(src.read(1, window=((row, row + 1), (col, col + 1)))[0, 0])
                rb = asset["raster:bands"][0]
                expected.append(dn * rb["scale"] + rb["offset"])
    assert expected, "the pixel lies in at least one source tile"
    with rasterio.open(f'ZARR:"{out}":/reflectance') as src:  # GDAL 3.10: one band per (date, band), date-major
        assert src.count == ds.sizes["time"] * ds.sizes["band"]
        b = list(ds.band.values).index(band)
        np.testing.assert_array_equal(src.read(ti * ds.sizes["band"] + b + 1), ds.reflectance.values[ti, b])
    got = float(ds.reflectance.sel(band=band).values[ti, yi, xi]) * scale
    assert got == pytest.approx(expected[0], abs=1e-4)


def test_flow_store_equals_an_independent_numpy_reference_chain(flow_run):
    """Every value of the flow's store against tests/helpers.reference_chain: the source COGs read with rasterio
    (20 m bands cubic on read, SCL nearest), solar days mosaicked, SCL-masked in NumPy, gap-filled with the
    brute-force loop, divided by the NumPy maximum of each band group; plus the store's metadata."""
    from helpers import reference_chain, snapped_grid
    from shapely.geometry import box, shape

    from s2pipe.stac.catalog import load_profile

    region, profile, out, _ = flow_run
    cfg = _config(region, profile, out)
    ds = xr.open_zarr(out, consolidated=True, decode_coords="all").load()
    start, end = str(cfg.start), str(cfg.end)
    items = [it for it in json.loads(Path(region.items_path).read_text())["features"]
             if start <= it["properties"]["datetime"][:10] <= end and shape(it["geometry"]).intersects(box(*cfg.bbox))
             and it["properties"]["eo:cloud_cover"] <= cfg.max_cloud]
    transform, grid_shape = snapped_grid(cfg.bbox, region.epsg, cfg.resolution)
    ref = reference_chain(items, assets=dict(load_profile(str(profile)).assets), bands=list(cfg.bands),
                          transform=transform, shape=grid_shape, clear_classes=cfg.clear_classes,
                          radius_days=pd.Timedelta(cfg.gapfill.radius) / pd.Timedelta(days=1),
                          kernel=cfg.gapfill.kernel, freq=cfg.gapfill.times)
    # metadata: scenes, grid, time axis, bands, factors
    assert list(ds.attrs["stac_items"]) == ref["items"] and len(ref["time_in"]) < len(items)  # solar days merged
    assert ds.attrs["crs"] == f"EPSG:{region.epsg}" and tuple(ds.attrs["transform"]) == transform
    assert (ds.sizes["y"], ds.sizes["x"]) == grid_shape
    np.testing.assert_array_equal(ds.x.values, transform[2] + 10.0 * (np.arange(grid_shape[1]) + 0.5))
    np.testing.assert_array_equal(ds.y.values, transform[5] - 10.0 * (np.arange(grid_shape[0]) + 0.5))
    np.testing.assert_array_equal(ds.time.values, ref["time"])
    assert list(ds.band.values) == list(cfg.bands) == list(ds.reflectance.attrs["normalize_bands"])
    assert ds.reflectance.attrs["normalize_method"] == cfg.normalize.method == "global_max_by_resolution"
    np.testing.assert_allclose(ds.reflectance.attrs["normalize_scale"], ref["scale"], rtol=1e-7)
    assert len(set(ref["scale"].tolist())) == 2  # one factor per band group
    # every value (measured: equal within 2 float32 ulp; the direct read is the same resampling on read)
    for name in ("reflectance", "weight", "observed"):
        assert ds[name].shape == ref[name].shape and ds[name].dtype == ref[name].dtype, name
    np.testing.assert_array_equal(ds.observed.values, ref["observed"])
    assert 0 < ds.observed.values.mean() < 1
    got, want = ds.reflectance.values, ref["reflectance"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(ds.weight.values, ref["weight"], rtol=2e-6, atol=1e-7)
    assert np.isnan(want).mean() < 0.5 and np.nanmax(want) == pytest.approx(1.0, abs=1e-6)


def _count_reads(monkeypatch) -> dict:
    """Count the pixel reads of each (asset, window) by the cube's readers (the test clusters run in-process): each
    attempt of a read, so a retried window would count twice."""
    import threading
    from collections import Counter

    from s2pipe.cube import DirectReadRioReader, PlainReadRioReader

    reads: Counter = Counter()
    local = threading.local()
    for cls in (DirectReadRioReader, PlainReadRioReader):
        def read(self, window, *args, _real=cls.__dict__["_read_once"], **kwargs):
            outer = not getattr(local, "busy", False)  # DirectReadRioReader's may call PlainReadRioReader's
            if outer:
                reads[(self.url, tuple(window.flatten()))] += 1
                local.busy = True
            try:
                return _real(self, window, *args, **kwargs)
            finally:
                if outer:
                    local.busy = False

        monkeypatch.setattr(cls, "_read_once", read)
    return reads


def _streaming_budget(monkeypatch, summary, ref) -> None:
    import dask.utils

    import s2pipe.runtime.cluster as cluster
    from s2pipe.config import DaskConfig

    raw_bytes = summary["dates_in"] * (ref.sizes["band"] + 1) * ref.sizes["y"] * ref.sizes["x"] * 2
    assert raw_bytes <= cluster.PERSIST_FRACTION * dask.utils.parse_bytes(DaskConfig().memory_limit)  # flow_run persisted
    monkeypatch.setattr(cluster, "PERSIST_FRACTION", 0.1 * raw_bytes / dask.utils.parse_bytes(DaskConfig().memory_limit))


def _same_store(got: xr.Dataset, ref: xr.Dataset, output) -> None:
    got, ref = got.copy(), ref.copy()
    # the output path is part of the parameters, and so of the store signature that hashes them
    assert got.attrs.pop("parameters") == {**ref.attrs.pop("parameters"), "output": str(output)}
    got.attrs.pop("s2pipe_signature"), ref.attrs.pop("s2pipe_signature")
    xr.testing.assert_identical(got, ref)  # every value, coordinate and other attribute


def test_streaming_branch_reads_each_pixel_once_and_writes_the_same_store(flow_run, tmp_path, monkeypatch):
    """A raw cube larger than the memory budget is not persisted but streamed (forced here with a tiny budget):
    it is staged unnormalized with its per-pixel maxima, then normalised from the staging store. Every asset
    window is read exactly once, the staging store is gone afterwards, and the store equals the persisted run's."""
    import s2pipe.flows.regional_cube as rc

    region, profile, out, summary = flow_run
    ref = xr.open_zarr(out, consolidated=True).load()
    _streaming_budget(monkeypatch, summary, ref)
    persisted = []
    real_persist = xr.DataArray.persist
    monkeypatch.setattr(xr.DataArray, "persist", lambda self, **kw: persisted.append(self.name) or real_persist(self, **kw))
    reads = _count_reads(monkeypatch)
    output = tmp_path / "streamed.zarr"
    streamed = rc.regional_cube(_config(region, profile, output, quicklook=False))
    assert persisted == [], "the cube was persisted although it exceeds the budget"
    assert len(reads) >= summary["scenes"] * (ref.sizes["band"] + 1), "not every asset was read"
    assert set(reads.values()) == {1}, f"asset windows read more than once: {[k for k, n in reads.items() if n > 1][:3]}"
    assert not (tmp_path / "streamed.zarr.staging").exists()
    run = json.loads((tmp_path / "streamed.run.json").read_text())
    assert run["stage_seconds"]["stage"] > 0 and run["mode"] == "create"
    _same_store(xr.open_zarr(streamed["output"], consolidated=True).load(), ref, output)


def test_streamed_run_interrupted_after_staging_resumes_without_reading_a_scene(flow_run, tmp_path, monkeypatch):
    """A streamed run that fails while writing the output (after staging) is finished by the next run from the
    staging store alone: no asset is read again, and the store equals the persisted run's."""
    import s2pipe.flows.regional_cube as rc

    region, profile, out, summary = flow_run
    ref = xr.open_zarr(out, consolidated=True).load()
    _streaming_budget(monkeypatch, summary, ref)
    output = tmp_path / "resumed.zarr"
    cfg = _config(region, profile, output, quicklook=False)  # 4 regions of 32 px
    real_progress = rc.ProgressLine

    class Crash(real_progress):
        def __call__(self, done, total):
            super().__call__(done, total)
            if self.label == "writing cube" and done >= 2:
                raise RuntimeError("worker lost")

    monkeypatch.setattr(rc, "ProgressLine", Crash)
    with pytest.raises(RuntimeError, match="worker lost"):
        rc.regional_cube(cfg)
    assert (tmp_path / "resumed.zarr.staging" / ".s2pipe" / "complete").exists()
    assert not (output / ".s2pipe" / "complete").exists()
    monkeypatch.setattr(rc, "ProgressLine", real_progress)
    reads = _count_reads(monkeypatch)
    rc.regional_cube(cfg)
    assert not reads, f"{len(reads)} asset windows read again"
    run = json.loads((tmp_path / "resumed.run.json").read_text())
    assert run["mode"] == "resume" and run["regions"]["resumed"] >= 2
    assert not (tmp_path / "resumed.zarr.staging").exists()
    _same_store(xr.open_zarr(output, consolidated=True).load(), ref, output)


def test_rerun_resumes_and_changes_nothing(flow_run):
    from s2pipe.flows.regional_cube import regional_cube

    region, profile, out, _ = flow_run
    before = xr.open_zarr(out, consolidated=True).load()
    summary = regional_cube(_config(region, profile, out))
    after = xr.open_zarr(out, consolidated=True).load()
    xr.testing.assert_identical(before, after)
    run = json.loads(Path(summary["run_summary"]).read_text())
    assert run["mode"] == "up-to-date" and "complete" in run["reason"] and "regions" not in run, run


def test_scheduled_appends_extend_the_cube_like_one_run(flow_run, tmp_path):
    """append=True: a first run creates, a later window appends only the new dates (old chunks untouched, new
    dates equal to one run over the whole window, in reflectance units), the same window again (`s2pipe run
    --append`) changes nothing, a store built with other parameters is refused untouched (exit 2, naming
    --overwrite), and `--overwrite` replaces it."""
    from s2pipe.errors import OutputConflictError
    from s2pipe.flows.regional_cube import regional_cube
    from s2pipe.normalize import invert

    region, profile, full_out, _ = flow_run
    out = tmp_path / "weekly.zarr"
    first = regional_cube(_config(region, profile, out, end="2022-01-20", append=True, quicklook=False))
    assert first["mode"] == "create"
    with xr.open_zarr(out, consolidated=True) as ds:
        old = ds.load()
    old_chunks = {p: p.stat().st_mtime_ns for p in (out / "reflectance").iterdir() if not p.name.startswith(".")}

    second = regional_cube(_config(region, profile, out, append=True, quicklook=False))
    assert second["mode"] == "append" and second["dates_appended"] > 0
    run = json.loads(Path(second["run_summary"]).read_text())
    assert run["mode"] == "append" and run["append"]["search_from"] > str(region.start)
    assert {p: p.stat().st_mtime_ns for p in old_chunks} == old_chunks, "old chunks were rewritten"
    full = xr.open_zarr(full_out, consolidated=True).load()
    grown = xr.open_zarr(out, consolidated=True).load()
    np.testing.assert_array_equal(grown.time.values, full.time.values)  # the 5-day grid continues
    k = old.sizes["time"]
    xr.testing.assert_identical(grown.isel(time=slice(0, k)).drop_attrs(), old.drop_attrs())
    new, ref = grown.isel(time=slice(k, None)), full.isel(time=slice(k, None))
    xr.testing.assert_equal(new.observed, ref.observed)
    xr.testing.assert_allclose(new.weight, ref.weight, rtol=1e-6)
    xr.testing.assert_allclose(invert(new.reflectance), invert(ref.reflectance), rtol=2e-6, atol=1e-7)
    assert set(full.attrs["stac_items"]) <= set(grown.attrs["stac_items"])
    assert grown.attrs["parameters"]["start"] == str(region.start)[:10]

    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    same = _config_file(tmp_path / "same.yaml", _config(region, profile, out, quicklook=False))
    again = _cli("run", same, "--append")  # the same window again, from the command line
    assert again.exit_code == 0 and "is up to date" in again.output and "nothing written" in again.output, again.output
    assert {p: p.stat().st_mtime_ns for p in files} == files

    with pytest.raises(OutputConflictError, match="bands"):
        regional_cube(_config(region, profile, out, append=True, quicklook=False, bands=["B02", "B03", "B04"]))
    assert {p: p.stat().st_mtime_ns for p in files} == files
    three = _config_file(tmp_path / "three.yaml", _config(region, profile, out, quicklook=False, bands=["B02", "B03", "B04"]))
    refused = _cli("run", three)
    assert refused.exit_code == 2 and "--overwrite" in refused.output, refused.output
    assert {p: p.stat().st_mtime_ns for p in files} == files
    replaced = _cli("run", three, "--overwrite")
    assert replaced.exit_code == 0 and "cube written to" in replaced.output, replaced.output
    with xr.open_zarr(out, consolidated=True) as ds:
        assert ds.band.values.tolist() == ["B02", "B03", "B04"] and ds.sizes["time"] == full.sizes["time"]


@pytest.fixture(scope="module")
def truncated_run(flow_run, tmp_path_factory):
    """A copy of the tiny region whose middle scene has its B04 COG cut short, and the store of a run on it (the
    scene left out by the asset check): (copied region, its profile, the victim item, the store)."""
    import shutil

    from s2pipe.flows.regional_cube import regional_cube

    region, profile, _, _ = flow_run
    tmp_path = tmp_path_factory.mktemp("truncated")
    src = Path(region.root)
    copy = tmp_path / "region"
    shutil.copytree(src, copy)
    for name in ("items.json", "manifest.json"):
        f = copy / name
        f.write_text(f.read_text().replace(str(src), str(copy)))
    items = json.loads((copy / "items.json").read_text())["features"]
    victim = items[len(items) // 2]
    cog = Path(victim["assets"]["red"]["href"])  # Earth Search asset key of B04
    cog.write_bytes(cog.read_bytes()[: int(cog.stat().st_size * 0.6)])
    prof = tmp_path / "profile.yaml"
    prof.write_text(Path(profile).read_text().replace(f"demo_root: {src}", f"demo_root: {copy}"))
    out = tmp_path / "lenient.zarr"
    summary = regional_cube(_config(region, prof, out, quicklook=False))
    return copy, prof, victim, out, summary


def test_a_truncated_asset_leaves_its_scene_out_or_fails_in_strict_mode(flow_run, truncated_run, tmp_path):
    """A COG cut short in the catalog: the scene is left out and recorded in the store's provenance and the run
    summary; `s2pipe run --strict` fails naming it, before anything is written."""
    region = flow_run[0]
    _, prof, victim, out, summary = truncated_run
    strict = tmp_path / "strict.zarr"
    result = _cli("run", _config_file(tmp_path / "strict.yaml", _config(region, prof, strict, quicklook=False)),
                  "--strict")
    assert result.exit_code == 1 and victim["id"] in result.output and "error:" in result.output, result.output
    assert isinstance(result.exception, SystemExit)
    assert not strict.exists()

    run = json.loads(Path(summary["run_summary"]).read_text())
    assert run["scenes_dropped"] == [victim["id"]] and victim["id"] not in run["scenes"]
    assert run["assets"]["dropped"][0]["asset"] == "B04" and "Truncated" in run["assets"]["dropped"][0]["reason"]
    assert any(victim["id"] in w for w in run["warnings"])
    with xr.open_zarr(out, consolidated=True) as ds:
        assert ds.attrs["dropped_items"] == [victim["id"]]
        assert json.loads(ds.attrs["dropped_assets"])[0]["id"] == victim["id"]
        assert victim["id"] not in ds.attrs["stac_items"] and int(ds.observed.sum()) > 0


def test_a_killed_run_resumes_only_the_missing_regions(flow_run, tmp_path):
    """`s2pipe run` SIGKILLed in the middle of writing: run again, it writes only the regions not recorded, and
    the store equals an undisturbed run, every chunk present."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from prefect.settings import PREFECT_API_URL

    region, profile, full_out, _ = flow_run
    out = tmp_path / "killed.zarr"
    cfg = _config(region, profile, out, quicklook=False, chunk_size=16,
                  dask={"n_workers": 1, "threads_per_worker": 1, "processes": False})
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, "-m", "s2pipe.cli", "run", str(cfg_path)]
    done = out / ".s2pipe" / "done"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if done.is_dir() and len(os.listdir(done)) >= 1:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    recorded = len(os.listdir(done))
    assert not (out / ".s2pipe" / "complete").exists()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    run = json.loads(out.with_name("killed.run.json").read_text())
    regions = run["regions"]
    assert run["mode"] == "resume" and regions["resumed"] >= recorded >= 1
    assert regions["written_by_this_run"] == regions["total"] - regions["resumed"] > 0
    from s2pipe.flows.regional_cube import regional_cube

    undisturbed = regional_cube(cfg.model_copy(update={"output": tmp_path / "undisturbed.zarr"}))["output"]
    ref = xr.open_zarr(undisturbed, consolidated=True).load()
    got = xr.open_zarr(out, consolidated=True).load()
    xr.testing.assert_identical(got.drop_attrs(), ref.drop_attrs())
    per_date = len(list((out / "reflectance").glob("0.*")))  # chunk files of the first date: every region's
    assert per_date == regions["total"] and len(list((out / "reflectance").glob("*.0.*.*"))) == per_date * got.sizes["time"]


def test_cli_run_without_a_prefect_api_starts_and_stops_its_own(flow_run, tmp_path):
    """`s2pipe run` with no PREFECT_API_URL: the temporary Prefect server starts while the flow modules import
    (``s2pipe.flows.ephemeral_api``), the run reports to it and succeeds, and the server is gone when the command ends."""
    import os
    import re
    import socket
    import subprocess
    import sys

    import yaml

    region, profile, _, _ = flow_run
    out = tmp_path / "own-api.zarr"
    cfg = _config(region, profile, out, quicklook=False)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a fresh database, as on a new machine
    proc = subprocess.run([sys.executable, "-m", "s2pipe.cli", "run", str(cfg_path)], env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"temporary Prefect API server on http://127\.0\.0\.1:(\d+)/api", proc.stderr)
    assert found, proc.stderr[-3000:]
    assert "Beginning flow run" in proc.stderr and (out / ".s2pipe" / "complete").exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(found.group(1)))) != 0, "the temporary server outlived the command"


def test_flow_on_an_existing_dask_scheduler(flow_run, tmp_path):
    """`--dask-address`: the array work runs on a separately started cluster of worker processes. Its scheduler's
    task stream shows every read, mask, gap-fill and write task executed on that cluster's worker processes."""
    import os
    from collections import Counter

    from dask.utils import key_split
    from distributed import Client, LocalCluster, get_task_stream

    from s2pipe.flows.regional_cube import regional_cube

    region, profile, out, summary = flow_run
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster.scheduler_address, set_as_default=False) as observer:
        workers = set(observer.scheduler_info()["workers"])
        pids = observer.run(os.getpid)
        cfg = _config(region, profile, tmp_path / "remote.zarr", quicklook=False, dask={"address": cluster.scheduler_address})
        with get_task_stream(client=observer) as stream:
            regional_cube(cfg)
        per_worker = Counter(rec["worker"] for rec in stream.data)
        prefixes = Counter(key_split(rec["key"]) for rec in stream.data)
        assert set(observer.scheduler_info()["workers"]) == workers  # the same two processes all along
    assert len(workers) == 2 and os.getpid() not in pids.values() and set(pids) == workers  # worker processes
    assert set(per_worker) == workers and sum(per_worker.values()) == len(stream.data)  # both ran tasks, only they
    # every stage's tasks ran there: stackstac's asset tables (one per band: the read chunks hold every date),
    # the reads (fused into the raw cube's time-whole chunks, merged into solar days), cloud mask, Cressman
    # blocks, statistics (max of the clear DN), normalisation, Zarr writes
    n_tables = len(cfg.bands) + 1
    assert prefixes["asset-table"] == n_tables, prefixes
    assert prefixes["merge-solar-day"] >= n_tables and prefixes["merge-solar-day"] % n_tables == 0, prefixes
    for prefix in ("check_asset_task", "mask_array", "fill_block", "chunk_max", "truediv"):
        assert prefixes[prefix] > 0, (prefix, prefixes)
    assert any(p.endswith("store-map") for p in prefixes), prefixes
    a = xr.open_zarr(out, consolidated=True).load()
    b = xr.open_zarr(tmp_path / "remote.zarr", consolidated=True).load()
    xr.testing.assert_allclose(a.reflectance, b.reflectance)
    xr.testing.assert_equal(a.observed, b.observed)


def test_output_built_from_another_grid_is_refused_and_left_untouched(flow_run):
    from s2pipe.errors import OutputConflictError
    from s2pipe.flows.regional_cube import regional_cube

    region, profile, out, _ = flow_run
    summary = out.with_name("cube.run.json")
    before = {p: p.stat().st_mtime_ns for p in [summary, *out.rglob("*")] if p.is_file()}
    w, s, e, n = region.default_bbox
    smaller = [w, s, (w + e) / 2, n]
    with pytest.raises(OutputConflictError, match=r"bbox \[.*\] \(store\) vs \[.*\] \(this run\).*overwrite"):
        regional_cube(_config(region, profile, out, bbox=smaller))
    after = {p: p.stat().st_mtime_ns for p in [summary, *out.rglob("*")] if p.is_file()}
    assert before == after  # a refused run writes nothing: not the store, not its run summary


def test_flow_runs_as_a_prefect_deployment(flow_run, tmp_path):
    """`python -m s2pipe.flows.serve` registers a deployment on a Prefect server; a triggered run builds the cube."""
    import os
    import subprocess
    import sys
    import time

    import yaml
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    region, profile, _, _ = flow_run
    out = tmp_path / "deployed.zarr"
    cfg = _config(region, profile, out, quicklook=False)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    server = subprocess.Popen(
        [sys.executable, "-m", "s2pipe.flows.serve", "--config", str(cfg_path), "--name", "pytest"],
        cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        run = None
        while time.monotonic() < deadline and run is None:
            try:
                run = run_deployment("regional-cube/pytest", timeout=240)
            except Exception:  # not registered yet
                if server.poll() is not None:
                    pytest.fail(f"s2pipe.flows.serve exited: {server.stderr.read().decode()[-2000:]}")
                time.sleep(1)
        assert run is not None, "the deployment was never registered"
        assert run.state.is_completed(), run.state
    finally:
        server.terminate()
        server.wait(timeout=30)
    ds = xr.open_zarr(out, consolidated=True)
    assert ds.reflectance.sizes["time"] > 0 and int(ds.observed.sum()) > 0


def test_gdal_warps_the_output_to_the_requested_lonlat_region(flow_run):
    """GDAL reprojects the store to EPSG:4326 onto the bbox the run asked for (to within a pixel)."""
    from rasterio.vrt import WarpedVRT

    region, _, out, _ = flow_run
    with rasterio.open(f'ZARR:"{out}":/weight') as src, WarpedVRT(src, crs="EPSG:4326") as vrt:
        got = vrt.bounds
    pixel_deg = 10 / 111_000 * 1.5
    assert np.allclose(got, region.default_bbox, atol=pixel_deg), (got, region.default_bbox)


def test_forecast_flows_train_and_predict_on_the_cube(flow_run, tmp_path):
    """`s2pipe forecast train` on class pixels of the cube, forecast-predict over the whole cube -> GIS-ready
    Zarr (`s2pipe forecast predict` runs in ``test_scheduled_update_extends_the_cube_and_its_products``)."""
    from s2pipe.flows.forecast import forecast_predict

    region, _, out, _ = flow_run
    model = tmp_path / "m.pt"
    trained = _cli("forecast", "train", out, "--model", model, "--mask", region.landcover_path, "--classes", "1,2,3,4",
                   "--max-pixels", 300, "--epochs", 2, "--hidden", 16)
    assert trained.exit_code == 0 and model.is_file(), trained.output
    done = forecast_predict(str(out), str(model), str(tmp_path / "fc.zarr"), steps=4,
                            dask={"n_workers": 1, "threads_per_worker": 2, "processes": False})
    fc = xr.open_zarr(done["output"], consolidated=True, decode_coords="all")
    cube = xr.open_zarr(out, consolidated=True)
    assert fc.forecast.dims == ("time", "band", "y", "x") and fc.sizes["time"] == 4
    assert (fc.time.values[0] - cube.time.values[-1]) == np.timedelta64(5, "D")
    assert np.isfinite(fc.forecast.values).mean() > 0.9
    with rasterio.open(f'ZARR:"{done["output"]}":/forecast') as src:
        assert src.crs.to_epsg() == int(cube.attrs["crs"].split(":")[1])
    from s2pipe.products.stac_metadata import (
        stac_paths,  # its STAC beside it, derived from the cube's
    )

    item = pystac.Item.from_file(stac_paths(done["output"])["item"])
    assert item.properties["s2pipe:model"] == "m.pt" and list(item.properties["cube:variables"]) == ["forecast"]
    assert [link.get_absolute_href() for link in item.links if link.rel == "derived_from"] == [str(stac_paths(out)["item"])]


def test_mapping_flows_train_predict_change(flow_run, tmp_path):
    """map-train (vector labels, spatial hold-out) -> map-predict (Zarr + COG + PNG) -> map-change (COG + GPKG)."""
    import pyogrio

    from s2pipe.flows.mapping import map_change, map_predict, map_train, report_path
    from s2pipe.products.maps import uncertainty

    region, _, out, _ = flow_run
    labels = [{"data": str(region.mangroves_path), "class_id": 1, "name": "mangrove"},
              {"data": str(region.roads_path), "class_id": 2, "name": "road", "width_column": "width_m"}]
    report = map_train(str(out), str(tmp_path / "mapper.pt"), labels, epochs=3, seq_len=3)
    assert Path(report["model"]).is_file() and report_path(report["model"]).is_file()
    assert report["names"] == {"0": "background", "1": "mangrove", "2": "road"}
    for mode in ("single_date", "sequence"):
        held = report["held_out"][mode]
        confusion = np.asarray(held["confusion"])
        assert held["n_pixels"] == confusion.sum() > 0  # every held-out pixel scored once, by the confusion matrix
        assert held["overall_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
        assert [held["per_class"][n]["support"] for n in held["names"]] == confusion.sum(axis=1).tolist()

    dask = {"n_workers": 1, "threads_per_worker": 2, "processes": False}
    cube = xr.open_zarr(out, consolidated=True)
    early_end = str(cube.time.values[-6])[:10]
    late = map_predict(str(out), report["model"], str(tmp_path / "late"), labels=labels, dask=dask)
    early = map_predict(str(out), report["model"], str(tmp_path / "early"), end=early_end, dask=dask)
    assert early["last_date"] == early_end and late["last_date"] == str(cube.time.values[-1])[:10]
    for product in (late, early):
        assert Path(product["png"]).stat().st_size > 10_000
        assert json.loads((Path(product["output"]) / "summary.json").read_text())["class_map"] == product["class_map"]
        with rasterio.open(f'ZARR:"{product["probability"]}":/probability') as src:
            assert src.count == 3 and src.crs.to_epsg() == int(cube.attrs["crs"].split(":")[1])
            proba = src.read()
        assert np.allclose(proba.sum(axis=0), 1, atol=1e-4)
        for name in ("entropy", "margin"):  # uncertainty layers: in the store and as COGs
            with rasterio.open(f'ZARR:"{product["probability"]}":/{name}') as src, rasterio.open(product[name]) as cog:
                layer = cog.read(1)
                assert np.array_equal(src.read(1), layer, equal_nan=True)
                ref = uncertainty(xr.DataArray(proba, dims=("class", "y", "x")))[name].values
                np.testing.assert_allclose(layer, ref, rtol=1e-5, atol=1e-6)  # recomputed from the probabilities
        with rasterio.open(product["class_map"]) as src:
            assert src.crs == rasterio.crs.CRS.from_string(cube.attrs["crs"])
            assert src.overviews(1) or max(src.shape) <= 128  # small maps: one 128 px block, no overview needed
            assert src.colormap(1)[2][:3] == (60, 60, 60)  # "road" colour by name
            assert np.array_equal(src.read(1), proba.argmax(axis=0))  # class ids 0, 1, 2 = channel order
    assert "scores_vs_labels" in late and "scores_vs_labels" not in early
    from s2pipe.products.stac_metadata import (
        stac_paths,  # each folder's STAC beside it, derived from the cube's
    )

    for product in (late, early):
        item = pystac.Item.from_file(product["stac_item"])
        assert product["stac_item"] == str(stac_paths(product["output"])["item"])
        assert {"class_map", "class_map_style", "probability", "entropy", "margin", "overview", "summary"} <= set(item.assets)
        assert item.datetime.strftime("%Y-%m-%d") == product["last_date"]
        assert [link.get_absolute_href() for link in item.links if link.rel == "derived_from"] == [str(stac_paths(out)["item"])]

    change = map_change(early["class_map"], late["class_map"], str(tmp_path / "change.tif"), target=["road"],
                        output_gpkg=str(tmp_path / "change.gpkg"), png=str(tmp_path / "change.png"), min_pixels=1)
    assert change["target"] == [2] and change["target_names"] == ["road"]
    with rasterio.open(change["raster"]) as src:
        values = src.read(1)
    assert int((values == 1).sum()) == change["changed_pixels"]["appeared"]
    info = pyogrio.read_info(change["vectors"])  # the GeoPackage is written also when it holds no polygon
    assert info["features"] == change["polygons"] and info["geometry_type"] == "MultiPolygon"
    assert (change["polygons"] > 0) == (sum(change["changed_pixels"].values()) > 0)  # min_pixels=1: every patch
    assert Path(change["png"]).is_file()
    item = pystac.Item.from_file(change["stac_item"])
    assert {"change", "polygons", "overview"} <= set(item.assets)
    assert [link.get_absolute_href() for link in item.links if link.rel == "derived_from"] == [early["stac_item"],
                                                                                              late["stac_item"]]
    assert item.properties["s2pipe:polygons"] == change["polygons"] and item.properties["s2pipe:change_kind"] == "appeared"


def test_map_cli_train_predict_change(flow_run, tmp_path):
    """`s2pipe map train|predict|change` end to end on the tiny cube."""
    from typer.testing import CliRunner

    from s2pipe.cli import app

    region, _, out, _ = flow_run
    runner = CliRunner()
    model = tmp_path / "m.pt"
    labels = ["--label", f"{region.mangroves_path}:1:mangrove", "--label", f"{region.roads_path}:2:road"]
    res = runner.invoke(app, ["map", "train", str(out), *labels, "-o", str(model), "--epochs", "2", "--seq-len", "2",
                              "--width-column", "width_m"])
    assert res.exit_code == 0, res.output
    assert model.is_file() and "held out, sequence: OA" in res.output
    for name, end in (("a", "2022-02-01"), ("b", None)):
        args = ["map", "predict", str(out), "-m", str(model), "-o", str(tmp_path / name)]
        res = runner.invoke(app, args + (["--end", end] if end else []))
        assert res.exit_code == 0, res.output
        assert (tmp_path / name / "class_map.tif").is_file()
    res = runner.invoke(app, ["map", "change", str(tmp_path / "a" / "class_map.tif"), str(tmp_path / "b" / "class_map.tif"),
                              "--target", "2", "-o", str(tmp_path / "roads.tif"), "--min-pixels", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "roads.tif").is_file() and (tmp_path / "roads.png").is_file()


def test_map_cli_random_forest_train_predict_with_uncertainty(flow_run, tmp_path):
    """`s2pipe map train --model random-forest` then `map predict` (smoothed) on the tiny cube: held-out scores of
    its one mode, probabilities with entropy/margin in the Zarr store, class map and uncertainty COGs."""
    from typer.testing import CliRunner

    from s2pipe.cli import app
    from s2pipe.products.maps import uncertainty

    region, _, out, _ = flow_run
    runner = CliRunner()
    model = tmp_path / "rf.pt"
    labels = ["--label", f"{region.mangroves_path}:1:mangrove", "--label", f"{region.roads_path}:2:road"]
    res = runner.invoke(app, ["map", "train", str(out), *labels, "--model", "random-forest", "-o", str(model),
                              "--seq-len", "4", "--n-estimators", "30", "--n-jobs", "1", "--width-column", "width_m"])
    assert res.exit_code == 0, res.output
    assert "random-forest mapper saved" in res.output and "held out, sequence: OA" in res.output
    report = json.loads(model.with_suffix(".json").read_text())
    assert report["kind"] == "random-forest" and report["seq_len"] == 4 and list(report["held_out"]) == ["sequence"]
    assert report["held_out"]["sequence"]["overall_accuracy"] > 0.5
    res = runner.invoke(app, ["map", "predict", str(out), "-m", str(model), "-o", str(tmp_path / "map"), "--smooth",
                              "--smooth-window", "3"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "map" / "summary.json").read_text())
    assert summary["model_kind"] == "random-forest" and summary["dates"] == 4
    assert summary["smoothing"] == {"method": "bayes", "window": 3, "smoothness": 10.0}
    store = xr.open_zarr(summary["probability"], consolidated=True)
    assert set(store.data_vars) >= {"probability", "entropy", "margin"}
    np.testing.assert_allclose(store["entropy"].values, uncertainty(store["probability"]).entropy.values, atol=1e-6)
    for name in ("entropy", "margin"):
        with rasterio.open(tmp_path / "map" / f"{name}.tif") as src:
            assert src.crs.to_epsg() == int(store.attrs["crs"].split(":")[1]) and src.dtypes == ("float32",)
            np.testing.assert_array_equal(src.read(1), store[name].values)
    with rasterio.open(summary["class_map"]) as src:
        assert np.array_equal(src.read(1), store["probability"].values.argmax(axis=0))


def test_scheduled_update_extends_the_cube_and_its_products(flow_run, tmp_path):
    """regional-update: the first run builds the cube and the products of its last date; a later window appends
    dates and makes a map and a forecast for each new date only; again with nothing new: nothing changes."""
    from s2pipe.flows.forecast import forecast_train
    from s2pipe.flows.mapping import map_train
    from s2pipe.flows.update import regional_update

    region, profile, full_out, _ = flow_run
    labels = [{"data": str(region.mangroves_path), "class_id": 1, "name": "mangrove"}]
    mapper = map_train(str(full_out), str(tmp_path / "mapper.pt"), labels, epochs=2, seq_len=2)["model"]
    forecaster = forecast_train(str(full_out), str(tmp_path / "fc.pt"), mask=str(region.landcover_path), classes=[1, 2],
                                max_pixels=100, epochs=1, hidden=8)["model"]
    out, products = tmp_path / "weekly.zarr", tmp_path / "products"
    kw = dict(mapper=mapper, forecaster=forecaster, products=str(products), forecast_steps=2)
    first = regional_update(_config(region, profile, out, end="2022-01-20", quicklook=False), **kw)
    assert first["cube"]["mode"] == "create" and first["maps"] == first["forecasts"] == first["due"]
    assert len(first["due"]) == 1
    made = {p: p.stat().st_mtime_ns for p in products.rglob("*") if p.is_file()}

    second = regional_update(_config(region, profile, out, quicklook=False), **kw)
    appended = second["cube"]["dates_appended"]
    assert second["cube"]["mode"] == "append" and appended > 0
    assert second["maps"] == second["forecasts"] == second["due"][1:] and len(second["due"]) == appended + 1
    assert {p: p.stat().st_mtime_ns for p in made} == made, "products of earlier dates were recomputed"
    with xr.open_zarr(out, consolidated=True) as cube:
        last = str(cube.time.values[-1])[:10]
    with rasterio.open(products / f"map-{last}" / "class_map.tif") as src:
        assert src.read(1).shape == (cube.sizes["y"], cube.sizes["x"])
    with xr.open_zarr(products / f"forecast-{last}.zarr", consolidated=True) as fc:
        assert fc.attrs["forecast_from"] == last and fc.sizes["time"] == 2

    every = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and "run.json" not in p.name}
    cfg = _config_file(tmp_path / "weekly.yaml", _config(region, profile, out, quicklook=False))
    third = _cli("update", cfg, "--mapper", mapper, "--forecaster", forecaster, "--products", products,
                 "--end", region.end)  # `s2pipe update`, nothing new: nothing changes
    assert third.exit_code == 0 and "is up to date" in third.output and "none new" in third.output, third.output
    assert {p: p.stat().st_mtime_ns for p in every} == every

    fc_cli = tmp_path / "fc-cli.zarr"
    predicted = _cli("forecast", "predict", out, "--model", forecaster, "--output", fc_cli, "--steps", 2)
    assert predicted.exit_code == 0, predicted.output
    with xr.open_zarr(fc_cli, consolidated=True) as fc, xr.open_zarr(out, consolidated=True) as cube:
        assert fc.sizes["time"] == 2 and fc.attrs["forecast_from"] == str(cube.time.values[-1])[:10]


def test_demo_maps_flow_trains_maps_both_year_ends_and_finds_the_change(flow_run, tmp_path):
    """The `demo-maps` flow of `make demo` on the tiny region (a random forest, to stay quick): a mapper, a map
    at each year end (its last date the cube's last one up to that day), and the change COG + GeoPackage."""
    import pyogrio

    from s2pipe.config import DaskConfig
    from s2pipe.flows.mapping import demo_maps

    region, _, out, _ = flow_run
    products = demo_maps(str(out), str(region.roads_path), str(region.mangroves_path), output=str(tmp_path / "maps"),
                         built_after="2022-01-10", model="random-forest", seq_len=2,
                         dask=DaskConfig(n_workers=1, threads_per_worker=2, processes=False))
    cube = xr.open_zarr(out, consolidated=True)
    dates = [str(t)[:10] for t in cube.time.values]
    assert products["train"]["kind"] == "random-forest" and products["train"]["period"][0] >= "2022-01-10"
    assert products["maps"][2021]["last_date"] == max(d for d in dates if d <= "2021-12-31")
    assert products["maps"][2022]["last_date"] == dates[-1]
    for year in (2021, 2022):
        with rasterio.open(products["maps"][year]["class_map"]) as src:
            assert src.shape == (cube.sizes["y"], cube.sizes["x"]) and set(np.unique(src.read(1))) <= {0, 1, 2}
    change = products["change"]
    assert change["target_names"] == ["road"] and Path(change["png"]).is_file()
    with rasterio.open(change["raster"]) as src:
        assert int((src.read(1) == 1).sum()) == change["changed_pixels"]["appeared"]
    assert pyogrio.read_info(change["vectors"])["features"] == change["polygons"]


def test_a_run_through_a_faulty_object_store_writes_the_same_store(flow_run, truncated_run, tmp_path, monkeypatch,
                                                                   caplog):
    """The tiny region's COGs over HTTP from a server that spoils 3 % of the range requests (503, 429, stalls,
    bodies cut short or truncated), wants SAS tokens that expire every 2 s, and stops serving one asset for good
    once the asset check has passed it; the items come from the local STAC API. The run completes, leaves that
    scene out and records it, and writes the store of the run on the local files without that scene (values,
    weights, observed flags, factors). No token reaches the logs, the summary or the store, nor the password
    and token in the catalog URL."""
    import s2pipe.flows.regional_cube as rc
    from s2pipe.flows.regional_cube import regional_cube
    from s2pipe.runtime.objectstore import forget_cached_ranges
    from s2pipe.stac.server import LocalStacServer
    from s2pipe.stac.signing import forget_tokens
    from s2pipe.synthetic.faulty_server import FaultyCogServer, http_items

    region, profile, _, _ = flow_run
    copy, _, victim, reference, _ = truncated_run
    features = json.loads(region.items_path.read_text())["features"]
    broken = Path(victim["assets"]["red"]["href"]).relative_to(copy).as_posix()
    out = tmp_path / "http.zarr"
    forget_tokens()
    real_check = rc.check_assets_task

    def check_then_break(*args, **kwargs):  # the asset passes the check, then its reads fail for good
        check = real_check.fn(*args, **kwargs)
        cogs.broken = (broken,)
        forget_cached_ranges(cogs.url(Path(region.root) / broken))  # what the check read of it, GDAL forgets
        return check

    monkeypatch.setattr(rc, "check_assets_task", check_then_break)
    with FaultyCogServer(region.root, rate=0.03, seed=11, stall_s=3.0, token_ttl=2.0) as cogs:
        items = tmp_path / "items.json"
        items.write_text(json.dumps({"type": "FeatureCollection", "features": http_items(features, cogs)}))
        with LocalStacServer([region.collection_path, items]) as stac:
            prof = tmp_path / "http.yaml"
            host = cogs.token_url.split("/")[2]
            canary = stac.url.replace("http://", "http://s2pipe-user:CANARY-PASSWORD@").rstrip("/") + "/?token=CANARY-TOKEN"
            text = (Path(profile).read_text().replace("url: local-demo", f"url: '{canary}'")
                    .replace("signing: none", f"signing: planetary-computer\ntoken_url: {cogs.token_url}\n"
                                              f"sign_hosts: ['{host}']\ntoken_renew_s: 0.5"))
            prof.write_text(text + "\nread_backoff: 0.1\nhttp_timeout: 1\n")
            summary = regional_cube(_config(region, prof, out, quicklook=False))
    faults = {k: v for k, v in cogs.counts.items() if k in FaultyCogServer.KINDS}
    assert sum(faults.values()) >= 5 and cogs.counts["broken"] >= 1 and cogs.counts["tokens"] >= 2, cogs.counts
    run = json.loads(Path(summary["run_summary"]).read_text())
    assert run["status"] == "completed" and run["scenes_dropped"] == [victim["id"]], run
    assert "could not read" in run["assets"]["dropped"][0]["reason"] and "sig=" not in json.dumps(run)
    got = xr.open_zarr(out, consolidated=True).load()
    ref = xr.open_zarr(reference, consolidated=True).load()
    xr.testing.assert_identical(got.drop_attrs(), ref.drop_attrs())
    assert got.reflectance.attrs == ref.reflectance.attrs and got.attrs["stac_items"] == ref.attrs["stac_items"]
    assert got.attrs["dropped_items"] == [victim["id"]] and "sig=" not in json.dumps(got.attrs)
    assert "HTTP error code" in caplog.text and "sig=" not in caplog.text  # GDAL's messages, redacted
    for f in [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("http.yaml", "items.json")]:
        assert b"CANARY" not in f.read_bytes(), f  # the catalog URL's password and token: in no byte written
    assert "CANARY" not in caplog.text
    print(f"faulty flow run: {dict(cogs.counts)}")

def test_a_conflicting_run_is_refused_before_any_work_and_changes_nothing(flow_run, monkeypatch, tmp_path):
    """Another clear_classes on a complete store: refused before the search, naming the field and both values;
    the store and its run summary keep every byte. A second live run on the store is refused the same way."""
    import os

    import s2pipe.flows.regional_cube as rc
    from s2pipe.errors import OutputConflictError, StoreLockedError
    from s2pipe.store.zarr import lock_path

    region, profile, out, _ = flow_run
    summary_file = rc.run_summary_path(out)
    before = {p: p.read_bytes() for p in [summary_file, *out.rglob("*")] if p.is_file()}

    def no_search(*args, **kwargs):
        raise AssertionError("the refused run searched")

    monkeypatch.setattr(rc, "_search", no_search)
    with pytest.raises(OutputConflictError) as err:
        rc.regional_cube(_config(region, profile, out, clear_classes=[4, 5, 6]))
    assert "clear_classes [4, 5, 6, 7] (store) vs [4, 5, 6] (this run)" in str(err.value), err.value
    lock = lock_path(out)
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": 1, "started": "now", "token": "x"}))
    try:
        with pytest.raises(StoreLockedError, match="pid 1"):
            rc.regional_cube(_config(region, profile, out))
    finally:
        lock.unlink()
    assert {p: p.read_bytes() for p in before} == before


def test_a_rerun_on_a_complete_store_reads_no_pixel_and_a_copied_store_resumes(flow_run, monkeypatch, tmp_path):
    """A complete store copied elsewhere (`cp -r`), the same run on the copy: it finds the store complete from
    the same scenes and stops after the search, reading no pixel. A copy with a region unrecorded resumes it
    and equals the original."""
    import shutil
    import time

    from s2pipe.flows.regional_cube import regional_cube
    from s2pipe.store.zarr import state_path

    region, profile, out, _ = flow_run
    moved = tmp_path / "moved.zarr"
    shutil.copytree(out, moved)
    reads = _count_reads(monkeypatch)
    t0 = time.monotonic()
    again = regional_cube(_config(region, profile, moved))
    assert again["mode"] == "up-to-date" and not reads and time.monotonic() - t0 < 20, again

    copy = tmp_path / "elsewhere" / "copy.zarr"
    shutil.copytree(out, copy)
    done = sorted(state_path(copy, "done").iterdir())
    assert len(done) >= 2
    done[0].unlink()
    state_path(copy, "complete").unlink()
    resumed = regional_cube(_config(region, profile, copy))
    run = json.loads(Path(resumed["run_summary"]).read_text())
    assert run["mode"] == "resume" and run["regions"]["written_by_this_run"] == 1, run
    xr.testing.assert_identical(xr.open_zarr(copy, consolidated=True).load().drop_attrs(),
                                xr.open_zarr(out, consolidated=True).load().drop_attrs())


def test_an_update_with_a_bad_model_file_fails_before_the_cube_is_touched(flow_run, tmp_path):
    region, profile, _, _ = flow_run
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model" * 100)
    out = tmp_path / "new.zarr"
    result = _cli("update", _config_file(tmp_path / "u.yaml", _config(region, profile, out)), "--mapper", bad)
    assert result.exit_code == 2 and "error:" in result.output and "bad.pt" in result.output, result.output
    assert not out.exists() and not (tmp_path / "new-products").exists()

"""The command line: help texts, and bad input -> a clear message, a non-zero exit, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from s2pipe.cli import EXIT_INPUT, EXIT_TRANSIENT, app
from s2pipe.stac.server import free_port

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("run", "demo", "search", "catalogs", "demo-data", "serve-demo", "info", "forecast", "map"):
        assert cmd in result.output


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("s2pipe")
    out = subprocess.run([str(exe), "run", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--dask-address" in out.stdout


def test_catalogs_lists_profiles():
    result = runner.invoke(app, ["catalogs"])
    assert result.exit_code == 0
    for name in ("earth-search-v1-l2a", "earth-search-v1-c1-l2a", "planetary-computer-l2a", "local-demo"):
        assert name in result.output


GOOD = {"catalog": "local-demo", "bbox": [-80.911, 25.292, -80.889, 25.309], "start": "2021-01-01", "end": "2021-03-01"}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"bbox": [-80.889, 25.292, -80.911, 25.309]}, ["bbox", "west"]),
        ({"bbox": [-80.911, 25.292, -80.911, 25.309]}, ["bbox"]),
        ({"start": "2021-03-01", "end": "2021-01-01"}, ["end", "before start"]),
        ({"bands": ["B04", "B99"]}, ["B99", "bands"]),
        ({"catalog": "no-such-catalog"}, ["no-such-catalog", "earth-search-v1-l2a"]),
        ({"gapfill": {"radius": "ten days"}}, ["radius"]),
        ({"clear_classes": [4, 42]}, ["clear_classes"]),
        ({"max_cloud": 140}, ["max_cloud"]),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path, change, words):
    out = tmp_path / "cube.zarr"
    cfg = {**GOOD, **change, "output": str(out)}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == EXIT_INPUT, result.output
    for w in words:
        assert w in result.output
    assert not out.exists()


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == EXIT_INPUT and "does not exist" in result.output


@pytest.fixture
def dead_catalog(tmp_path):
    """A profile whose STAC API URL has nothing listening."""
    data = yaml.safe_load((REPO / "catalogs" / "earth-search-v1-l2a.yaml").read_text())
    data.update(name="dead", url=f"http://127.0.0.1:{free_port()}")
    path = tmp_path / "dead.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unreachable_catalog_exits_3(dead_catalog):
    result = runner.invoke(
        app, ["search", "--catalog", str(dead_catalog), "--bbox", "22.1,45.2,22.2,45.3", "--start", "2020-01-01", "--end", "2020-02-01"]
    )
    assert result.exit_code == EXIT_TRANSIENT, result.output
    assert "127.0.0.1" in result.output


@pytest.mark.parametrize(
    "args, words",
    [
        (["--label", "roads.geojson"], ["--label", "PATH:CLASS_ID"]),
        (["--label", "{missing}:2:road"], ["does not exist"]),
        (["--label", "{roads}:-3:road"], ["class_id", "-3"]),
    ],
)
def test_map_train_bad_labels_exit_2_and_write_nothing(tmp_path, args, words):
    roads = tmp_path / "roads.geojson"
    roads.write_text('{"type": "FeatureCollection", "features": []}')
    args = [a.format(missing=tmp_path / "nope.gpkg", roads=roads) for a in args]
    model = tmp_path / "m.pt"
    result = runner.invoke(app, ["map", "train", str(tmp_path / "cube.zarr"), *args, "-o", str(model)])
    assert result.exit_code == EXIT_INPUT, result.output
    for w in words:
        assert w in result.output
    assert not model.exists()


@pytest.mark.parametrize("model, words", [("out/mapper.pt", ["looks like a file path", "--output", "out/mapper.pt"]),
                                          ("xgboost", ["not a mapper kind", "random-forest", "lightgbm"])])
def test_map_train_model_is_the_kind_not_the_path(tmp_path, model, words):
    """`--model` of `map train` is the mapper kind since the tree mappers came; the output path is --output/-o."""
    roads = tmp_path / "roads.geojson"
    roads.write_text('{"type": "FeatureCollection", "features": []}')
    result = runner.invoke(app, ["map", "train", str(tmp_path / "cube.zarr"), "--label", f"{roads}:2:road",
                                 "--model", model])
    assert result.exit_code == EXIT_INPUT, result.output
    for w in words:
        assert w in result.output
    result = runner.invoke(app, ["map", "train", str(tmp_path / "cube.zarr"), "--label", f"{roads}:2:road",
                                 "--n-estimators", "10"])  # a tree option with the default U-Net
    assert result.exit_code == EXIT_INPUT and "tree mappers" in result.output


def test_map_change_missing_map_exits_2(tmp_path):
    result = runner.invoke(app, ["map", "change", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--target", "2",
                                 "-o", str(tmp_path / "c.tif")])
    assert result.exit_code == EXIT_INPUT and "does not exist" in result.output
    assert not (tmp_path / "c.tif").exists()


def test_map_subcommands_have_help():
    for sub in ("train", "predict", "change"):
        result = runner.invoke(app, ["map", sub, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_every_example_configuration_validates():
    """examples/*.yaml: each is a valid run configuration on a built-in catalog, writing under out/."""
    from s2pipe.config import load_config
    from s2pipe.stac.catalog import list_profiles

    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        cfg = load_config(path)
        assert cfg.catalog in list_profiles(), f"{path.name}: catalog {cfg.catalog!r}"
        assert str(cfg.output).startswith("out/"), f"{path.name}: output {cfg.output}"
        assert cfg.end >= cfg.start


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """A folder whose ``out/demo`` holds the default demo region, generated by `s2pipe demo-data` (the profile's
    ``demo_root`` is ``out/demo``, relative to where the command runs)."""
    home = tmp_path_factory.mktemp("home")
    first = runner.invoke(app, ["demo-data", "--root", str(home / "out" / "demo")])
    assert first.exit_code == 0 and "demo region in" in first.output, first.output
    return home


def test_demo_data_then_serve_demo(demo_home):
    """`s2pipe demo-data` generates the default demo region (again: nothing to do); `s2pipe serve-demo` serves it
    with a real STAC API that pystac-client searches, and stops cleanly on SIGTERM (and on Ctrl-C, which a
    background job's children may ignore, hence SIGTERM here)."""
    import json
    import signal

    import pystac_client
    from helpers import wait_for_api

    root = demo_home / "out" / "demo"
    items = json.loads((root / "items.json").read_text())["features"]
    stamp = (root / "items.json").stat().st_mtime_ns
    again = runner.invoke(app, ["demo-data", "--root", str(root)])
    assert again.exit_code == 0 and (root / "items.json").stat().st_mtime_ns == stamp  # idempotent

    port = free_port()
    exe = Path(sys.executable).with_name("s2pipe")
    proc = subprocess.Popen([str(exe), "serve-demo", "--root", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_api(url, proc)
        client = pystac_client.Client.open(url)
        found = list(client.search(collections=["sentinel-2-l2a"], max_items=None).items())
        assert {it.id for it in found} == {f["id"] for f in items}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert f"STAC API at {url}" in out


def test_demo_command_builds_the_default_cube(demo_home, prefect_harness, monkeypatch):
    """`s2pipe demo --no-maps`, the embedded default job without its maps (the `demo-maps` flow has its own test in
    test_flow.py): the default region's cube, complete, GDAL-readable, over the whole default window."""
    import rasterio
    import xarray as xr

    from s2pipe.synthetic.demo import load_demo

    monkeypatch.chdir(demo_home)
    result = runner.invoke(app, ["demo", "--no-maps"])
    assert result.exit_code == 0, result.output
    out = demo_home / "out" / "demo-cube.zarr"
    assert f"cube written to {Path('out') / 'demo-cube.zarr'}" in result.output and "open in QGIS/GDAL" in result.output
    region = load_demo(demo_home / "out" / "demo")
    with xr.open_zarr(out, consolidated=True) as ds:
        assert str(ds.time.values[0])[:10] >= region.start and str(ds.time.values[-1])[:10] <= region.end
        assert ds.sizes["band"] == 10 and int(ds.observed.sum()) > 0
    with rasterio.open(f'ZARR:"{out}":/reflectance') as src:
        assert src.crs.to_epsg() == region.epsg


def test_a_killed_run_leaves_no_child_process_behind(tiny_demo, tmp_path):
    """`s2pipe run` SIGKILLed while its temporary Prefect API server and its Dask worker processes run: no atexit
    handler runs, yet every child process is gone within seconds (none lives on orphaned)."""
    import contextlib
    import os
    import signal
    import time

    import psutil
    from helpers import flow_config

    region, profile = tiny_demo
    cfg = flow_config(region, profile, tmp_path / "cube.zarr", quicklook=False,
                      dask={"n_workers": 1, "threads_per_worker": 1, "processes": True})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the CLI starts its own server
    proc = subprocess.Popen([str(Path(sys.executable).with_name("s2pipe")), "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    children: dict[int, psutil.Process] = {}

    def cmd(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # ended meanwhile
            return ""

    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:  # until the server and a worker run
            with contextlib.suppress(psutil.Error):
                for c in parent.children(recursive=True):
                    children.setdefault(c.pid, c)
            cmds = [cmd(c) for c in children.values()]
            if any("uvicorn" in c for c in cmds) and any("multiprocessing" in c or "spawn" in c for c in cmds):
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the run ended before its children could be seen"
        assert any("uvicorn" in cmd(c) for c in children.values()), [cmd(c) for c in children.values()]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    gone, alive = psutil.wait_procs(list(children.values()), timeout=20)
    assert not alive, [(p.pid, cmd(p)[:120]) for p in alive]

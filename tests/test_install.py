"""s2pipe installs like any other package: a built wheel, installed into a fresh venv and run from another folder.

The wheel goes in with ``--no-deps``; its dependencies come from the test environment's site-packages, added to
the fresh venv by a ``.pth`` path entry (which does not run that folder's own ``.pth`` files, so the editable
install of this checkout stays out of it). The test checks that everything imported comes from the wheel.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from s2pipe.search import search_items
from s2pipe.stac.catalog import load_profile
from s2pipe.synthetic.demo import DemoConfig, demo_server, generate_demo

REPO = Path(__file__).resolve().parents[1]
DEMO = DemoConfig(start="2021-06-01", end="2021-07-31", revisit_days=5, tile_size=16, overlap=4, block_size=16)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out)],
        check=True, timeout=300,
    )
    (whl,) = out.glob("s2pipe-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    """A venv that holds only the wheel; the dependencies come from the test environment's site-packages."""
    root = tmp_path_factory.mktemp("venv") / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(purelib, "test-env-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True, timeout=300,
    )
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "S2PIPE_CATALOGS", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_wheel_holds_every_subpackage_the_catalog_profiles_and_no_top_level_flows(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    source_packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "s2pipe").rglob("__init__.py")}
    assert source_packages, "no packages found in the source tree"
    for pkg in source_packages:
        assert f"{pkg}/__init__.py" in names, f"subpackage {pkg} is missing from the wheel (pyproject.toml packages)"
    for profile in (REPO / "catalogs").glob("*.yaml"):
        assert f"s2pipe/catalogs/{profile.name}" in names
    assert "s2pipe/py.typed" in names
    top_level = {n.split("/", 1)[0] for n in names if "/" in n and not n.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == {"s2pipe"}, f"the wheel installs top-level names besides s2pipe: {top_level}"


def test_installed_wheel_runs_from_another_folder(fresh_venv, tmp_path):
    python, cli = fresh_venv / "bin" / "python", fresh_venv / "bin" / "s2pipe"
    out = subprocess.run([str(cli), "catalogs"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for profile in (REPO / "catalogs").glob("*.yaml"):
        assert profile.stem in out.stdout
    probe = (
        "import importlib.util, json, s2pipe, s2pipe.stac.catalog as c, s2pipe.flows.regional_cube as rc\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "flow = load_flow_from_entrypoint('s2pipe.flows.update.regional_update')\n"
        "print(json.dumps({'s2pipe': s2pipe.__file__, 'flows': rc.__file__, 'catalogs': str(c.CATALOG_DIR),\n"
        "  'profile': c.load_profile('earth-search-v1-c1-l2a').url, 'top_level_flows': importlib.util.find_spec('flows') is not None,\n"
        "  'flow': flow.name, 'version': s2pipe.__version__}))\n"
    )
    out = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    site = str(fresh_venv.resolve())
    for key in ("s2pipe", "flows", "catalogs"):
        assert got[key].startswith(site), f"{key} imported from {got[key]}, not from the installed wheel"
    assert got["profile"].startswith("https://")
    assert not got["top_level_flows"]
    assert got["flow"] == "regional-update" and got["version"] == "0.1.0"


def test_installed_wheel_searches_the_local_demo_api(fresh_venv, tmp_path):
    region = generate_demo(tmp_path / "demo", DEMO)
    bbox = ",".join(str(v) for v in region.default_bbox)
    with demo_server(region) as server:
        want = search_items(load_profile("local-demo"), bbox=region.default_bbox, start=DEMO.start, end=DEMO.end, url=server.url)
        out = subprocess.run(
            [str(fresh_venv / "bin" / "s2pipe"), "search", "--catalog", "local-demo", "--url", server.url,
             "--bbox", bbox, "--start", DEMO.start, "--end", DEMO.end, "--json"],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    got = [f["id"] for f in json.loads(out.stdout)["features"]]
    assert want and got == [it.id for it in want]
    assert not (tmp_path / "out").exists(), "a search with --url must not generate the demo region"

"""The outputs opened by every GDAL a user is likely to have, side by side: CRS, transform, values against the
store, overview levels, band names, legends.

* GDAL 3.6: Debian's ``gdal-bin`` (bookworm; QGIS 3.22 links it), through ``gdalinfo`` / ``gdal_translate`` /
  ``gdallocationinfo``; ``.ci/run`` installs it.
* GDAL 3.10: rasterio 1.4 in the main venv.
* GDAL 3.12: rasterio 1.5.2 on Python 3.12, in a side venv the tests build (``helpers.gdal312_python``), which
  also validates the GeoZarr attributes of the v2 and v3 stores with ``geozarr-toolkit``.

What each reads is what the README's GIS section documents; a reader that is absent skips its test, except in CI
(``S2PIPE_REQUIRE_READERS=1``), where it fails.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from helpers import gdal312_python, make_dataset, missing_reader

from s2pipe.products.export import export_cube
from s2pipe.products.maps import write_class_map
from s2pipe.store.pyramid import level_group, level_shapes
from s2pipe.store.zarr import open_cube, write_cube

pytestmark = [pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Object at .s2pipe is not recognized")]

NY, NX, MIN_SIDE = 300, 280, 64  # levels 150 x 140, 75 x 70, 38 x 35
LEVELS = level_shapes((NY, NX), min_side=MIN_SIDE)
PROBE = Path(__file__).with_name("gdal_probe.py")
CLASSES = {1: "water", 2: "mangrove", 7: "road"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A v2 and a v3 cube store with overview levels, the COG export of its first date, and a class map COG."""
    root = tmp_path_factory.mktemp("readers")
    ds = make_dataset(backing="numpy", ny=NY, nx=NX)
    v2 = write_cube(ds, root / "cube.zarr", region_size=128, overview_min_side=MIN_SIDE)
    v3 = write_cube(ds, root / "cube3.zarr", region_size=128, overview_min_side=MIN_SIDE, zarr_format=3)
    day = str(ds.time.values[0])[:10]
    export = export_cube(v2, root / "gis", dates=[day], blocksize=128)
    classes = np.ones((NY, NX), np.uint8)
    classes[100:110, :] = 7
    classes[:5, :5] = 255
    cmap = xr.DataArray(classes, dims=("y", "x"), coords={"y": ds.y, "x": ds.x},
                        attrs={"crs": ds.attrs["crs"], "transform": ds.attrs["transform"], "nodata": 255,
                               "classes": {str(k): v for k, v in CLASSES.items()}})
    class_tif = write_class_map(cmap, root / "classes.tif")
    levels = [open_cube(v2)] + [xr.open_zarr(v2, group=level_group(k), decode_coords="all")
                                for k in range(1, len(LEVELS) + 1)]
    return {"v2": v2, "v3": v3, "cog": Path(export["files"][day]), "day": day, "classes": class_tif,
            "levels": levels, "ds": ds}


def _uri(store: Path, k: int, var: str = "reflectance", index: str = "") -> str:
    name = var if k == 0 else f"{level_group(k)}/{var}"
    return f'ZARR:"{store}":/{name}{index}'


def _transform(k: int) -> list[float]:
    t = make_dataset().attrs["transform"]
    return [t[0] * 2 ** k, 0.0, t[2], 0.0, t[4] * 2 ** k, t[5]]


def _band1(level: xr.Dataset) -> np.ndarray:
    return level.reflectance.isel(time=0, band=0).values.astype("float64")


def _probe(python: str | Path, request: dict, tmp_path: Path) -> dict:
    req = tmp_path / "request.json"
    req.write_text(json.dumps(request))
    out = subprocess.run([str(python), str(PROBE), str(req)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _values(rows) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype="float64")


def _check_rasterio_report(report: dict, outputs: dict, *, store: Path, band_names: bool) -> None:
    """The cube levels and the COG as a rasterio-based GDAL (3.10, 3.12) must see them."""
    for k, level in enumerate(outputs["levels"]):
        got = report["rasters"][_uri(store, k)]
        assert "error" not in got, got
        assert got["crs"] == 32633 and got["transform"] == _transform(k), (k, got["transform"])
        assert got["shape"] == [level.sizes["y"], level.sizes["x"]] and got["count"] == level.sizes["time"] * 3
        np.testing.assert_array_equal(_values(got["band1"]), _band1(level))
        assert got["tags1"]["DIM_time_INDEX"] == "0" and got["tags1"]["DIM_band_INDEX"] == "0"
        if band_names:  # the band name of each GDAL band, from the band coordinate
            assert got["tags1"]["DIM_band_VALUE"] == "B02"
    cog = report["rasters"][str(outputs["cog"])]
    assert cog["descriptions"] == ["B02", "B03", "B8A"] and cog["tags"]["date"] == outputs["day"]
    assert cog["crs"] == 32633 and cog["transform"] == _transform(0) and cog["nodata"] == "nan"
    assert cog["overviews"] == [2, 4]  # 300 x 280 px in 128-px blocks
    np.testing.assert_array_equal(_values(cog["band1"]), _band1(outputs["levels"][0]))
    cls = report["rasters"][str(outputs["classes"])]
    assert cls["crs"] == 32633 and cls["nodata"] == "255.0"


def test_gdal_3_10_of_the_main_venv(outputs, tmp_path):
    import rasterio

    assert rasterio.__gdal_version__.startswith("3.10")
    rasters = [_uri(outputs["v2"], k) for k in range(len(LEVELS) + 1)] + [str(outputs["cog"]), str(outputs["classes"])]
    report = _probe(sys.executable, {"rasters": rasters + [_uri(outputs["v3"], 0)]}, tmp_path)
    _check_rasterio_report(report, outputs, store=outputs["v2"], band_names=True)
    assert "error" in report["rasters"][_uri(outputs["v3"], 0)]  # Zarr v3 needs GDAL >= 3.12


def test_gdal_3_12_reads_v2_and_v3_and_the_geozarr_layout_validates(outputs, tmp_path):
    python = gdal312_python(Path(__file__).resolve().parents[1])
    if python is None:
        missing_reader("no Python 3.12 for the rasterio 1.5.2 / GDAL 3.12 side venv")
    both = [_uri(s, k) for s in (outputs["v2"], outputs["v3"]) for k in range(len(LEVELS) + 1)]
    report = _probe(python, {"rasters": both + [str(outputs["cog"]), str(outputs["classes"])],
                             "geozarr": [str(outputs["v2"]), str(outputs["v3"])]}, tmp_path)
    assert report["gdal"].startswith("3.12"), report["gdal"]
    _check_rasterio_report(report, outputs, store=outputs["v2"], band_names=True)
    # v3: the same grid and values; GDAL 3.12 shows the band index, not its name, for a v3 string coordinate
    _check_rasterio_report(report, outputs, store=outputs["v3"], band_names=False)
    for store in ("v2", "v3"):
        checked = report["geozarr"][str(outputs[store])]
        assert checked["root"] == {"spatial": [], "proj": [], "multiscales": [], "zarr_conventions": []}, checked
        assert checked["structure_ok"], checked["structure"]
        assert sorted(checked["levels"]) == [str(k) for k in range(1, len(LEVELS) + 1)]
        for errors in checked["levels"].values():
            assert errors == {"spatial": [], "proj": [], "zarr_conventions": []}


def _gdal36(*args: str) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (args, out.stderr[-2000:])
    return out.stdout


@pytest.fixture(scope="module")
def gdal36():
    if shutil.which("gdalinfo") is None:
        missing_reader("Debian's gdal-bin (GDAL 3.6) is not installed: apt-get install gdal-bin")
    version = _gdal36("gdalinfo", "--version")
    if not version.startswith("GDAL 3.6"):
        missing_reader(f"gdalinfo is {version.strip()}, not Debian bookworm's GDAL 3.6")
    return version


def _xyz(uri: str) -> np.ndarray:
    """(x, y, value) of every pixel as GDAL writes them (pixel centres), row by row."""
    text = _gdal36("gdal_translate", "-q", "-of", "XYZ", uri, "/vsistdout/")
    return np.array([[float(v) for v in line.split()] for line in text.splitlines() if line.strip()])


def test_gdal_3_6_of_debian(outputs, gdal36):
    for k, level in enumerate(outputs["levels"]):
        uri = _uri(outputs["v2"], k, index=":0:0")  # GDAL 3.4-3.9 need the time and band index
        info = json.loads(_gdal36("gdalinfo", "-json", uri))
        t = _transform(k)
        assert info["geoTransform"] == [t[2], t[0], 0.0, t[5], 0.0, t[4]]
        assert info["size"] == [level.sizes["x"], level.sizes["y"]]
        assert "UTM zone 33N" in info["coordinateSystem"]["wkt"]
        xyz = _xyz(uri)
        assert xyz.shape == (level.sizes["x"] * level.sizes["y"], 3)
        np.testing.assert_allclose(xyz[: level.sizes["x"], 0], level.x.values)  # pixel centres
        np.testing.assert_allclose(xyz[:: level.sizes["x"], 1], level.y.values)
        np.testing.assert_allclose(xyz[:, 2].reshape(level.sizes["y"], level.sizes["x"]), _band1(level), rtol=1e-6)
    # the whole 4-D array without indices, and any Zarr v3 store, are beyond GDAL 3.6
    for uri in (_uri(outputs["v2"], 0), _uri(outputs["v3"], 0, index=":0:0")):
        assert subprocess.run(["gdalinfo", uri], capture_output=True).returncode != 0
    # the COG export: band names, date, overviews, and lon/lat queries (which 3.6 gets wrong on the Zarr store)
    cog = json.loads(_gdal36("gdalinfo", "-json", str(outputs["cog"])))
    assert [b["description"] for b in cog["bands"]] == ["B02", "B03", "B8A"]
    assert cog["metadata"][""]["date"] == outputs["day"] and len(cog["bands"][0]["overviews"]) == 2
    level0 = outputs["levels"][0]
    band1 = _band1(level0)
    row, col = map(int, np.argwhere(~np.isnan(band1))[len(band1) * 50])  # the centre of a valid pixel
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(32633, 4326, always_xy=True).transform(level0.x.values[col], level0.y.values[row])
    value = _gdal36("gdallocationinfo", "-wgs84", "-valonly", "-b", "1", str(outputs["cog"]), str(lon), str(lat))
    assert math.isclose(float(value), band1[row, col], rel_tol=1e-6)
    # the class map: category names, nodata transparent
    cls = json.loads(_gdal36("gdalinfo", "-json", str(outputs["classes"])))
    band = cls["bands"][0]
    assert [band["categories"][i] for i in CLASSES] == list(CLASSES.values())
    assert band["noDataValue"] == 255 and band["colorTable"]["entries"][255][3] == 0

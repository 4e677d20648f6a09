"""Class and change maps that explain themselves in GIS tools: GDAL category names and raster attribute table
(``.aux.xml``), a QGIS style (``.qml``) of the classes present, transparent nodata / "no change" in the colour
table, and a GeoPackage 1.2 that GDAL 3.6 reads without a version warning."""
from __future__ import annotations

import ctypes
import sqlite3
import xml.etree.ElementTree as ET

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio._base
import xarray as xr
from affine import Affine

from s2pipe.products.maps import (
    APPEARED,
    DISAPPEARED,
    NO_CHANGE,
    detect_change,
    legend_paths,
    write_change,
    write_class_map,
)

EPSG = 32617
RES = 10.0
TRANSFORM = Affine(RES, 0.0, 500_000.0, 0.0, -RES, 2_800_000.0)
NAMES = {1: "water", 2: "mangrove", 7: "road"}
GPKG_APPLICATION_ID = int.from_bytes(b"GPKG", "big")


def georef(values: np.ndarray, classes: dict[int, str] | None = None) -> xr.DataArray:
    ny, nx = values.shape
    attrs = {"crs": f"EPSG:{EPSG}", "transform": list(TRANSFORM)[:6], "nodata": 255}
    if classes is not None:
        attrs["classes"] = {str(k): v for k, v in classes.items()}
    return xr.DataArray(values.astype(np.uint8), dims=("y", "x"), attrs=attrs,
                        coords={"y": 2_800_000.0 - (np.arange(ny) + 0.5) * RES,
                                "x": 500_000.0 + (np.arange(nx) + 0.5) * RES})


def maps() -> tuple[xr.DataArray, xr.DataArray]:
    """Two 48 x 64 class maps: water (1) and a road (7) that grows; mangrove (2) is named but absent."""
    a = np.ones((48, 64), np.uint8)
    a[20:23, 5:30] = 7
    a[:4, :6] = 255
    b = a.copy()
    b[20:23, 30:50] = 7  # the road grows: appeared
    b[20:23, 5:9] = 1  # its start is gone: disappeared
    return georef(a, NAMES), georef(b, NAMES)


def gdal_legend(path) -> tuple[list[str], list[dict[str, str]]]:
    """What GDAL itself (rasterio's libgdal, through its C API) reports for band 1 of ``path``: the category
    names and the raster attribute table rows ({column: value as text})."""
    lib = ctypes.CDLL(rasterio._base.__file__)  # dlsym on rasterio's module finds the libgdal it links
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    for name, res, args in (("GDALOpen", vp, [cp, ctypes.c_int]), ("GDALGetRasterBand", vp, [vp, ctypes.c_int]),
                            ("GDALGetRasterColorTable", vp, [vp]),
                            ("GDALGetRasterCategoryNames", ctypes.POINTER(cp), [vp]),
                            ("GDALGetDefaultRAT", vp, [vp]), ("GDALRATGetRowCount", ctypes.c_int, [vp]),
                            ("GDALRATGetColumnCount", ctypes.c_int, [vp]),
                            ("GDALRATGetNameOfCol", cp, [vp, ctypes.c_int]),
                            ("GDALRATGetValueAsString", cp, [vp, ctypes.c_int, ctypes.c_int]),
                            ("GDALClose", None, [vp])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    lib.GDALAllRegister()
    # GDAL finds the .aux.xml beside a file only when it may list the folder: an earlier rasterio.Env in the
    # main thread can leave GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR set process-wide (as cloud set-ups often
    # do); this thread's own setting wins, as a desktop GIS's default would
    lib.CPLSetThreadLocalConfigOption.argtypes = [cp, cp]
    lib.CPLSetThreadLocalConfigOption(b"GDAL_DISABLE_READDIR_ON_OPEN", b"FALSE")
    ds = lib.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    try:
        band = lib.GDALGetRasterBand(ds, 1)
        # GTiff reads the .aux.xml on the first query of georeferencing, metadata or colours (gdalinfo and QGIS
        # ask those first); GDALGetRasterCategoryNames alone does not trigger it in GDAL 3.10
        lib.GDALGetRasterColorTable(band)
        names, categories = lib.GDALGetRasterCategoryNames(band), []
        while names and names[len(categories)] is not None:
            categories.append(names[len(categories)].decode())
        rat, rows = lib.GDALGetDefaultRAT(band), []
        if rat:
            cols = [lib.GDALRATGetNameOfCol(rat, c).decode() for c in range(lib.GDALRATGetColumnCount(rat))]
            rows = [{col: lib.GDALRATGetValueAsString(rat, r, c).decode() for c, col in enumerate(cols)}
                    for r in range(lib.GDALRATGetRowCount(rat))]
    finally:
        lib.GDALClose(ds)
        lib.CPLSetThreadLocalConfigOption(b"GDAL_DISABLE_READDIR_ON_OPEN", None)
    return categories, rows


def qml_palette(path) -> dict[int, dict[str, str]]:
    """{value: paletteEntry attributes} of the paletted renderer of the QGIS style ``path``."""
    root = ET.parse(path).getroot()
    assert root.tag == "qgis"
    renderers = root.findall("./pipe/rasterrenderer")
    assert len(renderers) == 1 and renderers[0].get("type") == "paletted" and renderers[0].get("band") == "1"
    return {int(e.get("value")): e.attrib for e in renderers[0].findall("./colorPalette/paletteEntry")}


def hex_of(rgba) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def test_class_map_legend_gdal_categories_rat_and_qgis_style(tmp_path):
    _, later = maps()
    path = write_class_map(later, tmp_path / "classes.tif", colors={7: "#ff0000"})
    aux, qml = legend_paths(path)
    assert (aux.name, qml.name) == ("classes.tif.aux.xml", "classes.qml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.qml", "classes.tif", "classes.tif.aux.xml"]
    # GDAL: category index = pixel value; unused values (and nodata) empty; a RAT of the present classes
    categories, rows = gdal_legend(path)
    assert categories == ["", "water", "mangrove", "", "", "", "", "road"]
    counts = dict(zip(*np.unique(later.values, return_counts=True)))
    assert [(r["Value"], r["Class"], r["Count"]) for r in rows] == [
        ("1", "water", str(counts[1])), ("7", "road", str(counts[7]))]
    assert [tuple(r[c] for c in ("Red", "Green", "Blue", "Alpha")) for r in rows] == [
        (*map(str, (31, 120, 180)), "255"), ("255", "0", "0", "255")]
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="FALSE"), rasterio.open(path) as src:
        cmap = src.colormap(1)
        assert src.nodata == 255 and cmap[255][3] == 0 and cmap[7] == (255, 0, 0, 255)
        assert cmap[1] == (31, 120, 180, 255) and cmap[2][3] == 255  # named, absent: still coloured
        assert all(cmap[v][3] == 0 for v in range(256) if v not in NAMES)
        assert src.tags(1)["CLASS_7"] == "road"  # the metadata of before is still there
    # QGIS: only the classes present, by name, in the colours of the COG; nodata not drawn
    palette = qml_palette(qml)
    assert sorted(palette) == [1, 7]
    assert {v: (e["label"], e["color"], e["alpha"]) for v, e in palette.items()} == {
        1: ("water", hex_of(cmap[1]), "255"), 7: ("road", "#ff0000", "255")}
    assert qml.read_text(encoding="utf-8").startswith("<!DOCTYPE qgis")


def test_class_map_legend_is_rewritten_with_the_map(tmp_path):
    _, later = maps()
    path = write_class_map(later, tmp_path / "classes.tif")
    values = later.values.copy()
    values[values == 1] = 9  # an unnamed class replaces water
    write_class_map(later.copy(data=values), path)
    categories, rows = gdal_legend(path)
    assert categories[9] == "class 9" and categories[7] == "road" and len(categories) == 10
    assert [r["Value"] for r in rows] == ["7", "9"]
    assert sorted(qml_palette(legend_paths(path)[1])) == [7, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.qml", "classes.tif", "classes.tif.aux.xml"]


def test_change_map_legend_no_change_transparent_and_geopackage_1_2(tmp_path):
    earlier, later = maps()
    change = detect_change(earlier, later, target=7, kind="both", min_pixels=1)
    assert set(np.unique(change.values)) == {NO_CHANGE, APPEARED, DISAPPEARED, 255}
    files = write_change(change, tmp_path / "new-roads.tif", tmp_path / "new-roads.gpkg")
    aux, qml = legend_paths(files.raster)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "new-roads.gpkg", "new-roads.qml", "new-roads.tif", "new-roads.tif.aux.xml"]
    categories, rows = gdal_legend(files.raster)
    assert categories == ["no change", "appeared", "disappeared"]
    assert [(r["Value"], r["Class"], r["Alpha"]) for r in rows] == [
        ("0", "no change", "0"), ("1", "appeared", "255"), ("2", "disappeared", "255")]
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="FALSE"), rasterio.open(files.raster) as src:
        cmap = src.colormap(1)
        assert cmap[NO_CHANGE][3] == 0 and cmap[255][3] == 0  # the TIFF table has no alpha: read from .aux.xml
        assert cmap[APPEARED] == (228, 26, 28, 255) and cmap[DISAPPEARED] == (55, 126, 184, 255)
        np.testing.assert_array_equal(src.read(1), change.values)
    palette = qml_palette(qml)
    assert {v: (e["label"], e["color"]) for v, e in palette.items()} == {
        APPEARED: ("appeared", hex_of(cmap[APPEARED])), DISAPPEARED: ("disappeared", hex_of(cmap[DISAPPEARED]))}
    # only the changes present are listed
    grown = write_change(detect_change(earlier, later, target=7, kind="appeared"), tmp_path / "grown.tif")
    assert sorted(qml_palette(legend_paths(grown.raster)[1])) == [APPEARED]
    # GeoPackage 1.2: what GDAL 3.6 reads without "may only be partially supported"
    with sqlite3.connect(files.vectors) as con:
        assert con.execute("PRAGMA application_id").fetchone()[0] == GPKG_APPLICATION_ID
        assert con.execute("PRAGMA user_version").fetchone()[0] == 10200
    gdf = gpd.read_file(files.vectors)
    assert len(gdf) == files.n_polygons > 0 and gdf.crs.to_epsg() == EPSG


@pytest.mark.parametrize("writer", ["class", "change"])
def test_legend_of_an_all_nodata_map_draws_nothing(tmp_path, writer):
    empty = georef(np.full((32, 32), 255, np.uint8), NAMES)
    if writer == "class":
        path = write_class_map(empty, tmp_path / "m.tif")
    else:
        path = write_change(empty.assign_attrs(classes=None), tmp_path / "m.tif").raster
    categories, rows = gdal_legend(path)
    assert rows == [] and qml_palette(legend_paths(path)[1]) == {}
    assert categories == (["", "water", "mangrove", "", "", "", "", "road"] if writer == "class"
                          else ["no change", "appeared", "disappeared"])

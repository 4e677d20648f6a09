"""Map products: class map (argmax, nodata), class-map COG, probability Zarr in GDAL, change raster + GeoPackage."""
from __future__ import annotations

import json

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from scipy import ndimage

from s2pipe.errors import InputError
from s2pipe.products.maps import (
    APPEARED,
    DISAPPEARED,
    NO_CHANGE,
    class_map,
    detect_change,
    smooth_probabilities,
    uncertainty,
    write_change,
    write_class_map,
    write_probabilities,
    write_uncertainty,
)
from s2pipe.store.zarr import open_cube

EPSG = 32617
RES = 10.0
X0, Y0 = 500_000.0, 2_800_000.0
NY, NX = 96, 112
TRANSFORM = Affine(RES, 0.0, X0, 0.0, -RES, Y0)
IDS = [1, 2, 7]
NAMES = {1: "water", 2: "mangrove", 7: "road"}


def georef(values: np.ndarray, *, dims=("y", "x"), **coords) -> xr.DataArray:
    ny, nx = values.shape[-2:]
    c = {"y": Y0 - (np.arange(ny) + 0.5) * RES, "x": X0 + (np.arange(nx) + 0.5) * RES, **coords}
    return xr.DataArray(values, dims=dims, coords=c,
                        attrs={"crs": f"EPSG:{EPSG}", "transform": list(TRANSFORM)[:6]})


@pytest.fixture(scope="module")
def proba() -> xr.DataArray:
    rng = np.random.default_rng(1)
    p = rng.random((3, NY, NX)).astype("float32")
    p /= p.sum(axis=0)
    p[:, :4, :5] = np.nan
    out = georef(p, dims=("class", "y", "x"), **{"class": IDS})
    out.attrs["classes"] = {str(k): v for k, v in NAMES.items()}
    return out


def test_class_map_argmax_to_class_ids_and_nodata(proba):
    cm = class_map(proba)
    assert cm.dims == ("y", "x") and cm.dtype == np.uint8 and cm.name == "class_map"
    expected = np.array(IDS, dtype=np.uint8)[np.nanargmax(np.nan_to_num(proba.values, nan=-1), axis=0)]
    expected[:4, :5] = 255
    np.testing.assert_array_equal(cm.values, expected)
    assert cm.attrs["crs"] == f"EPSG:{EPSG}" and cm.attrs["transform"] == list(TRANSFORM)[:6]
    assert cm.attrs["nodata"] == 255 and cm.attrs["classes"]["7"] == "road"
    np.testing.assert_array_equal(cm["x"].values, proba["x"].values)
    lazy = class_map(proba.copy(data=da.from_array(proba.values, chunks=(3, 32, 32))), nodata=0)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_array_equal(lazy.values, np.where(expected == 255, 0, expected))
    with pytest.raises(InputError, match="nodata=7 is also a class id"):
        class_map(proba, nodata=7)
    with pytest.raises(InputError, match=r"dims \(class, y, x\)"):
        class_map(proba.isel({"class": 0}))


def test_class_map_cog_is_valid_with_colormap_and_names(proba, tmp_path):
    cm = class_map(proba)
    path = write_class_map(cm, tmp_path / "classes.tif", colors={7: "#ff0000"}, blocksize=32)
    assert path == tmp_path / "classes.tif" and sorted(p.name for p in tmp_path.iterdir()) == [
        "classes.qml", "classes.tif", "classes.tif.aux.xml"]  # the COG and its legends (QGIS style, GDAL PAM)
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.block_shapes == [(32, 32)]
        assert src.compression.name.upper() == "DEFLATE"
        assert src.overviews(1) == [2, 4]
        assert src.crs.to_epsg() == EPSG and src.transform == TRANSFORM
        assert src.nodata == 255 and src.dtypes == ("uint8",)
        np.testing.assert_array_equal(src.read(1), cm.values)
        cmap = src.colormap(1)
        assert cmap[7] == (255, 0, 0, 255) and cmap[1] == (31, 120, 180, 255) and cmap[255][3] == 0
        assert src.descriptions == ("class",)
        assert src.tags(1)["CLASS_2"] == "mangrove"
        assert json.loads(src.tags()["CLASSES"]) == {"1": "water", "2": "mangrove", "7": "road"}
        assert set(np.unique(src.read(1, out_shape=(NY // 4, NX // 4)))) <= {1, 2, 7, 255}  # overview: nearest
    with pytest.raises(InputError, match="colors"):
        write_class_map(cm, tmp_path / "bad.tif", colors={7: "red"})


def test_probabilities_zarr_opens_in_gdal_georeferenced(proba, tmp_path):
    path = write_probabilities(proba, tmp_path / "proba.zarr")
    with rasterio.open(f'ZARR:"{path}":/probability') as src:
        assert src.count == 3 and (src.height, src.width) == (NY, NX)
        assert src.crs.to_epsg() == EPSG and src.transform == TRANSFORM
        np.testing.assert_array_equal(src.read(), proba.values)  # NaN == NaN here
    back = open_cube(path)
    np.testing.assert_array_equal(back["class"].values, IDS)
    np.testing.assert_array_equal(back["probability"].values, proba.values)
    unc = uncertainty(proba)
    for name in ("entropy", "margin"):  # the uncertainty layers beside the probabilities, one band each
        with rasterio.open(f'ZARR:"{path}":/{name}') as src:
            assert src.count == 1 and src.crs.to_epsg() == EPSG and src.transform == TRANSFORM
            np.testing.assert_array_equal(src.read(1), unc[name].values)
        assert back[name].attrs["long_name"].startswith(("normalised entropy", "margin"))
    only = open_cube(write_probabilities(proba, tmp_path / "only.zarr", uncertainty_layers=False))
    assert set(only.data_vars) == {"probability"}


def _uniform_onehot():
    p = np.zeros((4, 3, 5), dtype="float32")
    p[:, 0] = 0.25                      # row 0: uniform
    p[2, 1] = 1.0                       # row 1: one class certain
    p[:, 2] = np.array([0.5, 0.3, 0.2, 0.0])[:, None]  # row 2: a known mixture
    p[:, 2, 4] = np.nan                 # nodata
    return georef(p, dims=("class", "y", "x"), **{"class": [0, 1, 2, 3]})


@pytest.mark.parametrize("dask", [False, True])
def test_uncertainty_entropy_and_margin(dask):
    p = _uniform_onehot()
    if dask:
        p = p.chunk({"y": 2, "x": 2})
    unc = uncertainty(p)
    assert set(unc.data_vars) == {"entropy", "margin"} and unc["entropy"].dims == ("y", "x")
    assert isinstance(unc["entropy"].data, da.Array) == dask
    e, m = unc["entropy"].values, unc["margin"].values
    assert e.dtype == np.float32 and m.dtype == np.float32
    np.testing.assert_allclose(e[0], 1.0, atol=1e-6)  # normalised by ln K: uniform = 1
    np.testing.assert_allclose(m[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(e[1], 0.0, atol=1e-6)
    np.testing.assert_allclose(m[1], 1.0, atol=1e-6)
    want = -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)) / np.log(4)
    np.testing.assert_allclose(e[2, :4], want, rtol=1e-5)
    np.testing.assert_allclose(m[2, :4], 0.2, atol=1e-6)
    assert np.isnan(e[2, 4]) and np.isnan(m[2, 4])
    assert unc.attrs["crs"] == f"EPSG:{EPSG}" and "x" in unc.coords


def test_uncertainty_cogs(proba, tmp_path):
    files = write_uncertainty(uncertainty(proba), tmp_path / "out", blocksize=32)
    assert {k: p.name for k, p in files.items()} == {"entropy": "entropy.tif", "margin": "margin.tif"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["entropy.tif", "margin.tif"]
    unc = uncertainty(proba)
    for name, path in files.items():
        with rasterio.open(path) as src:
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.overviews(1) == [2, 4]
            assert src.dtypes == ("float32",) and np.isnan(src.nodata)
            assert src.crs.to_epsg() == EPSG and src.transform == TRANSFORM and src.descriptions == (name,)
            np.testing.assert_array_equal(src.read(1), unc[name].values)
            assert "LONG_NAME" in src.tags()
    assert write_uncertainty(proba, tmp_path / "direct")["entropy"].is_file()  # probabilities in: computed
    with pytest.raises(InputError, match="uncertainty\\(proba\\)"):
        write_uncertainty(proba.to_dataset(name="p"), tmp_path / "bad")


def _noisy_map():
    """(3, 40, 44) probabilities: class 0 left, class 1 right, a 1-px class-2 speck and a 1-px flip, NaN block."""
    rng = np.random.default_rng(2)
    p = np.full((3, 40, 44), 0.1, dtype="float32")
    p[0, :, :22] = 0.8
    p[1, :, 22:] = 0.8
    p += rng.uniform(0, 0.05, p.shape).astype("float32")
    p[:, 10, 10] = [0.2, 0.1, 0.7]   # speck of class 2 in class 0
    p[:, 30, 35] = [0.6, 0.4, 0.0]   # a class-0 pixel in class 1
    p[:, 0:3, 40:44] = np.nan        # nodata corner
    p /= p.sum(axis=0)
    return georef(p, dims=("class", "y", "x"), **{"class": [0, 1, 2]})


@pytest.mark.parametrize("method", ["bayes", "gaussian"])
@pytest.mark.parametrize("dask", [False, True])
def test_smooth_probabilities_removes_specks_keeps_regions(method, dask):
    p = _noisy_map()
    ref = smooth_probabilities(p, window=5, method=method)
    if dask:
        lazy = smooth_probabilities(p.chunk({"y": 16, "x": 12}), window=5, method=method)
        assert isinstance(lazy.data, da.Array)
        np.testing.assert_allclose(lazy.values, ref.values, rtol=0, atol=1e-6)  # halo: equal to in memory
        return
    assert ref.dims == p.dims and ref.dtype == np.float32 and ref.attrs["smoothing"]["method"] == method
    np.testing.assert_allclose(np.nansum(ref.values, axis=0)[3:], 1.0, atol=1e-5)
    assert np.isnan(ref.values[:, 0:3, 40:44]).all() and np.isfinite(ref.values[:, 3:]).all()
    before, after = class_map(p).values, class_map(ref).values
    assert before[10, 10] == 2 and after[10, 10] == 0
    assert before[30, 35] == 0 and after[30, 35] == 1
    assert (after[:, :20] == 0).all() and (after[3:, 24:] == 1).all()  # regions kept, border moves <= 2 px


def test_smooth_probabilities_errors(proba):
    with pytest.raises(InputError, match="window=4 must be an odd"):
        smooth_probabilities(proba, window=4)
    with pytest.raises(InputError, match="method='median'"):
        smooth_probabilities(proba, method="median")
    with pytest.raises(InputError, match="smoothness=0"):
        smooth_probabilities(proba, smoothness=0)


def _maps():
    """earlier/later class maps: a 3x3 road block appears, a 2x2 disappears, a 1-px road noise, nodata."""
    a = np.full((NY, NX), 1, dtype=np.uint8)
    b = a.copy()
    b[10:13, 20:23] = 7           # appeared, 9 px
    a[40:42, 50:52] = 7           # disappeared, 4 px
    b[60, 60] = 7                 # appeared, 1 px: below min_pixels
    a[70:80, 70:80] = 7           # road in both: no change
    b[70:80, 70:80] = 7
    b[90:92, 5:7] = 7             # appeared, but earlier is nodata there -> nodata
    a[90:92, 5:7] = 255
    b[20, 30], b[21, 31] = 7, 7   # two diagonal neighbours (8-connected) ...
    b[22, 32], b[23, 33] = 7, 7   # ... 4 px in one 8-connected group
    return georef(a), georef(b)


def test_detect_change_counts_kinds_min_pixels_and_nodata():
    earlier, later = _maps()
    ch = detect_change(earlier, later, target=7)
    v = ch.values
    assert ch.dtype == np.uint8 and ch.dims == ("y", "x")
    assert (v == APPEARED).sum() == 9 + 4 and (v == DISAPPEARED).sum() == 0
    assert v[60, 60] == NO_CHANGE and v[40, 40] == NO_CHANGE and (v[90:92, 5:7] == 255).all()
    both = detect_change(earlier, later, target=7, kind="both")
    assert (both.values == DISAPPEARED).sum() == 4 and both.attrs["changed_pixels"] == {"appeared": 13,
                                                                                      "disappeared": 4}
    assert (detect_change(earlier, later, target=7, kind="disappeared").values == APPEARED).sum() == 0
    four = detect_change(earlier, later, target=7, connectivity=4)
    assert (four.values == APPEARED).sum() == 9  # the diagonal chain falls apart into 1-px groups
    assert (detect_change(earlier, later, target=7, min_pixels=1).values == APPEARED).sum() == 9 + 4 + 1
    assert (detect_change(earlier, later, target=[1, 7]).values == APPEARED).sum() == 0  # 1 <-> 7 is no change
    shifted = later.assign_attrs(transform=list(TRANSFORM @ Affine.translation(1, 0))[:6])
    with pytest.raises(InputError, match="different grids"):
        detect_change(earlier, shifted, target=7)
    with pytest.raises(InputError, match="kind"):
        detect_change(earlier, later, target=7, kind="new")


def test_write_change_cog_and_geopackage_polygons(tmp_path):
    earlier, later = _maps()
    ch = detect_change(earlier, later, target=7, kind="both")
    files = write_change(ch, tmp_path / "change.tif", tmp_path / "change.gpkg", layer="roads", blocksize=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["change.gpkg", "change.qml", "change.tif", "change.tif.aux.xml"]
    with rasterio.open(files.raster) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.overviews(1)
        assert src.crs.to_epsg() == EPSG and src.transform == TRANSFORM and src.nodata == 255
        np.testing.assert_array_equal(src.read(1), ch.values)
        assert src.colormap(1)[APPEARED][3] == 255 and src.tags(1)["CLASS_1"] == "appeared"
    gdf = gpd.read_file(files.vectors, layer="roads")
    assert gdf.crs.to_epsg() == EPSG and len(gdf) == files.n_polygons
    assert set(gdf.geom_type) == {"MultiPolygon"} and gdf.is_valid.all()
    structure = np.ones((3, 3), bool)
    for value, name in ((APPEARED, "appeared"), (DISAPPEARED, "disappeared")):
        mask = ch.values == value
        part = gdf[gdf["change"] == name]
        assert len(part) == ndimage.label(mask, structure=structure)[1]
        assert part["pixels"].sum() == mask.sum()
        assert part.area.sum() == pytest.approx(mask.sum() * RES * RES)
        assert part["area_m2"].sum() == pytest.approx(mask.sum() * RES * RES)
    assert (gdf["class_id"] == 7).all() and set(gdf["target"]) == {"7"}
    assert sorted(gdf["pixels"]) == [4, 4, 9]
    # no change at all: an empty layer, still with its CRS and columns
    none = detect_change(earlier, earlier, target=7)
    empty = write_change(none, tmp_path / "none.tif", tmp_path / "none.gpkg")
    back = gpd.read_file(empty.vectors)
    assert empty.n_polygons == 0 and len(back) == 0 and back.crs.to_epsg() == EPSG
    assert {"change", "class_id", "area_m2", "pixels"} <= set(back.columns)

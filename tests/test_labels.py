"""Label rasterization (polygons, widened lines, points, reprojection, order) and spatial train/test splits."""
from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import shapely
import xarray as xr
from shapely.geometry import LineString, Point, Polygon

from s2pipe.errors import InputError
from s2pipe.ml.labels import (
    IGNORE,
    LabelSource,
    line_footprint,
    rasterize_labels,
    spatial_split,
)

EPSG = 32617
RES = 10.0
X0, Y0 = 500_000.0, 2_800_000.0
NY, NX = 60, 80


def make_like(ny: int = NY, nx: int = NX, *, spatial_ref: bool = False) -> xr.DataArray:
    """A (y, x) grid in UTM 17N, 10 m pixels, top-left corner (X0, Y0)."""
    x = X0 + (np.arange(nx) + 0.5) * RES
    y = Y0 - (np.arange(ny) + 0.5) * RES
    da = xr.DataArray(np.zeros((ny, nx), dtype="float32"), dims=("y", "x"), coords={"y": y, "x": x},
                      attrs={"crs": f"EPSG:{EPSG}", "transform": [RES, 0.0, X0, 0.0, -RES, Y0]})
    if spatial_ref:
        da = da.rio.write_crs(f"EPSG:{EPSG}")
    return da


def centres(like: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(like["x"].values, like["y"].values)


# Off-grid coordinates (never on a pixel centre or edge) so that rasterization ties cannot occur.
POLY = Polygon([(X0 + 53.7, Y0 - 41.3), (X0 + 403.1, Y0 - 77.9), (X0 + 351.3, Y0 - 388.2), (X0 + 121.6, Y0 - 302.4)])
HLINE = LineString([(X0 + 102.3, Y0 - 453.3), (X0 + 702.7, Y0 - 453.3)])  # horizontal, row 45
DIAG = LineString([(X0 + 451.3, Y0 - 52.9), (X0 + 752.1, Y0 - 353.7)])


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """The same features as GeoJSON (EPSG:4326), GeoPackage and Shapefile (UTM): polygons and lines."""
    root = tmp_path_factory.mktemp("vectors")
    polys = gpd.GeoDataFrame({"kind": ["mangrove"]}, geometry=[POLY], crs=EPSG)
    lines = gpd.GeoDataFrame({"highway": ["primary", "residential"], "width_m": [30.0, np.nan]},
                             geometry=[HLINE, DIAG], crs=EPSG)
    paths = {}
    for name, gdf in (("polys", polys), ("lines", lines)):
        paths[f"{name}_geojson"] = root / f"{name}.geojson"
        gdf.to_crs(4326).to_file(paths[f"{name}_geojson"], driver="GeoJSON")
        paths[f"{name}_shp"] = root / f"{name}.shp"
        gdf.to_file(paths[f"{name}_shp"], driver="ESRI Shapefile")
        paths["gpkg"] = root / "labels.gpkg"
        gdf.to_file(paths["gpkg"], driver="GPKG", layer=name)
    return paths


def test_polygon_burns_the_pixels_whose_centre_is_inside():
    like = make_like()
    gdf = gpd.GeoDataFrame(geometry=[POLY], crs=EPSG)
    lab = rasterize_labels([LabelSource(gdf, class_id=2)], like)
    xs, ys = centres(like)
    expected = shapely.contains_xy(POLY, xs, ys)
    assert expected.sum() > 500
    np.testing.assert_array_equal(lab.values == 2, expected)
    touched = rasterize_labels([LabelSource(gdf, class_id=2)], like, all_touched=True)
    assert ((touched.values == 2) >= expected).all() and (touched.values == 2).sum() > expected.sum()


@pytest.mark.parametrize("width_m", [10.0, 20.0, 30.0, 50.0, 80.0])
def test_line_width_in_pixels_matches_the_requested_metres(width_m):
    like = make_like()
    gdf = gpd.GeoDataFrame(geometry=[HLINE, DIAG], crs=EPSG)
    lab = rasterize_labels([LabelSource(gdf, class_id=7, line_width=width_m)], like).values == 7
    want = width_m / RES
    across = lab[:, 15:38].sum(axis=0)  # columns crossing only the horizontal line
    rows = np.nonzero(lab[:, 30])[0]
    assert rows.min() >= 45 - math.ceil(want / 2) - 1 and rows.max() <= 45 + math.ceil(want / 2) + 1
    assert np.all(np.abs(across - want) <= 1), (width_m, np.unique(across))
    # the diagonal: the width perpendicular to the line is ~ width_m (area / length)
    diag_only = lab.copy()
    diag_only[40:, :] = False
    diag_px = diag_only[:, 45:].sum()
    length_px = DIAG.length / RES
    assert abs(diag_px / length_px - want) <= 1.0, (width_m, diag_px / length_px)


def test_footprint_is_a_disk_of_the_requested_diameter():
    np.testing.assert_array_equal(line_footprint(5, 10), [[True]])
    assert line_footprint(30, 10).shape == (3, 3) and line_footprint(30, 10).all()
    fp = line_footprint(50, 10)
    assert fp.shape == (5, 5) and fp.sum() == 21 and not fp[0, 0] and fp[0, 1] and fp[2].all()


def test_points_become_disks():
    like = make_like()
    p = Point(X0 + 303.3, Y0 - 203.3)  # pixel (row 20, col 30)
    lab = rasterize_labels([LabelSource(gpd.GeoDataFrame(geometry=[p], crs=EPSG), class_id=3, line_width=50)], like)
    rows, cols = np.nonzero(lab.values == 3)
    assert len(rows) == 21  # a 5-px disk
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (18, 22, 28, 32)


def test_same_labels_from_geojson_4326_gpkg_and_shapefile_utm(vectors):
    like = make_like()
    variants = {
        "geojson-4326": [LabelSource(vectors["polys_geojson"], 2), LabelSource(vectors["lines_geojson"], 7)],
        "gpkg-utm": [LabelSource(vectors["gpkg"], 2, layer="polys"), LabelSource(vectors["gpkg"], 7, layer="lines")],
        "shp-utm": [LabelSource(vectors["polys_shp"], 2), LabelSource(vectors["lines_shp"], 7)],
    }
    out = {k: rasterize_labels(v, like).values for k, v in variants.items()}
    ref = out["gpkg-utm"]
    assert set(np.unique(ref)) == {0, 2, 7}
    for k, v in out.items():
        np.testing.assert_array_equal(v, ref, err_msg=k)
    xs, ys = centres(like)
    assert ((ref == 2) <= shapely.contains_xy(POLY, xs, ys)).all()


def test_later_source_wins_and_classes_attribute(vectors):
    like = make_like(spatial_ref=True)
    poly = LabelSource(vectors["polys_geojson"], 2, name="mangrove")
    road = LabelSource(gpd.GeoDataFrame(geometry=[LineString([(X0 + 5.1, Y0 - 201.7), (X0 + 795.3, Y0 - 201.7)])],
                                        crs=EPSG), 7, line_width=30, name="road")
    a = rasterize_labels([poly, road], like)
    b = rasterize_labels([road, poly], like)
    both = (a.values != 0) & (b.values != 0) & (a.values != b.values)
    assert both.sum() > 10
    assert (a.values[both] == 7).all() and (b.values[both] == 2).all()
    assert a.attrs["classes"] == {"0": "background", "2": "mangrove", "7": "road"}
    assert a.attrs["crs"] == f"EPSG:{EPSG}" and a.attrs["transform"] == [RES, 0.0, X0, 0.0, -RES, Y0]
    assert "spatial_ref" in a.coords and a.rio.crs.to_epsg() == EPSG
    np.testing.assert_array_equal(a["x"].values, like["x"].values)
    assert [s["pixels"] for s in a.attrs["sources"]][1] == int((a.values == 7).sum())


def test_background_minus_one_and_dtype(vectors):
    like = make_like()
    lab = rasterize_labels([LabelSource(vectors["polys_shp"], 0)], like, background=-1)
    assert lab.dtype == np.int16 and lab.dims == ("y", "x") and lab.shape == (NY, NX)
    assert set(np.unique(lab.values)) == {-1, 0}
    assert lab.attrs["background"] == -1 and lab.attrs["classes"] == {"0": "polys"}


def test_where_filter_and_width_column(vectors):
    like = make_like()
    only_primary = rasterize_labels([LabelSource(vectors["lines_geojson"], 7, where="highway == 'primary'")], like)
    assert (only_primary.values[:40] == 0).all() and (only_primary.values[40:] == 7).any()  # only the diagonal is gone
    by_column = rasterize_labels([LabelSource(vectors["lines_geojson"], 7, line_width=10, width_column="width_m")], like)
    col = by_column.values[:, 30] == 7
    assert col.sum() == 3  # the primary road: width_m = 30 m -> 3 px
    assert (by_column.values[:40, 45:] == 7).sum() < (rasterize_labels(
        [LabelSource(vectors["lines_geojson"], 7, line_width=30)], like).values[:40, 45:] == 7).sum()  # NaN -> 10 m


def test_errors_name_the_problem(vectors, tmp_path):
    like = make_like()
    with pytest.raises(InputError, match="does not exist"):
        rasterize_labels([LabelSource(tmp_path / "nope.gpkg", 1)], like)
    empty = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"a": []}, geometry=gpd.GeoSeries([], crs=EPSG), crs=EPSG).to_file(empty, layer="roads")
    with pytest.raises(InputError, match="empty"):
        rasterize_labels([LabelSource(empty, 1, layer="roads")], like)
    with pytest.raises(InputError, match="no CRS"):
        rasterize_labels([LabelSource(gpd.GeoDataFrame(geometry=[POLY]), 1)], like)
    far = gpd.GeoDataFrame(geometry=[Point(X0 + 50_000, Y0)], crs=EPSG)
    with pytest.raises(InputError, match=r"does not overlap the grid.*550000.*500000\.0, 2799400\.0, 500800\.0"):
        rasterize_labels([LabelSource(far, 1)], like)
    for bad in (-1, 1.5, True, 40_000):
        with pytest.raises(InputError, match="class_id"):
            LabelSource(vectors["gpkg"], bad)
    with pytest.raises(InputError, match="line_width"):
        LabelSource(vectors["gpkg"], 1, line_width=0)
    with pytest.raises(InputError, match="selects no feature"):
        rasterize_labels([LabelSource(vectors["lines_shp"], 1, where="highway == 'motorway'")], like)
    with pytest.raises(InputError, match="layer='nope'"):
        rasterize_labels([LabelSource(vectors["gpkg"], 1, layer="nope")], like)
    with pytest.raises(InputError, match="background"):
        rasterize_labels([LabelSource(vectors["gpkg"], 1)], like, background=-2)
    with pytest.raises(InputError, match="no sources"):
        rasterize_labels([], like)


def test_spatial_split_half_has_a_gap_and_keeps_labels():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 3, size=(NY, NX)).astype(np.int16)
    labels = make_like().copy(data=values)
    train, test = spatial_split(labels, test_fraction=0.3, axis="x", gap=6)
    tr, te = train.values, test.values
    assert tr.shape == te.shape == values.shape
    assert not ((tr != IGNORE) & (te != IGNORE)).any()
    np.testing.assert_array_equal(tr[tr != IGNORE], values[tr != IGNORE])
    np.testing.assert_array_equal(te[te != IGNORE], values[te != IGNORE])
    train_cols = np.nonzero((tr != IGNORE).any(axis=0))[0]
    test_cols = np.nonzero((te != IGNORE).any(axis=0))[0]
    assert train_cols.max() < test_cols.min()
    assert test_cols.min() - train_cols.max() - 1 == 6  # exactly `gap` empty columns between the parts
    assert train_cols.min() == 0 and test_cols.max() == NX - 1
    share = (te != IGNORE).sum() / ((te != IGNORE).sum() + (tr != IGNORE).sum())
    assert abs(share - 0.3) < 0.08
    assert train.attrs["split"] == "train" and test.attrs["split"] == "test"

    # along y, with sparse labels: the fraction counts labelled pixels
    sparse = np.full((NY, NX), IGNORE, dtype=np.int16)
    sparse[:10] = 1
    sparse[50:] = 2
    train, test = spatial_split(make_like().copy(data=sparse), test_fraction=0.5, axis="y", gap=4)
    assert set(np.unique(train.values)) == {IGNORE, 1} and set(np.unique(test.values)) == {IGNORE, 2}


def test_spatial_split_blocks():
    values = np.ones((NY, NX), dtype=np.int16)
    train, test = spatial_split(make_like().copy(data=values), test_fraction=0.25, mode="blocks", block=20, gap=4)
    tr, te = train.values != IGNORE, test.values != IGNORE
    assert tr.any() and te.any() and not (tr & te).any()
    # no train pixel within 2 px (chessboard) of a test pixel, and vice versa: the gap separates them
    from scipy import ndimage

    near_test = ndimage.binary_dilation(te, structure=np.ones((9, 9), bool))  # 4 px around the test pixels
    assert not (near_test & tr).any()
    with pytest.raises(InputError, match="test_fraction"):
        spatial_split(train, test_fraction=1.0)


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray + affine >= 2.4
def test_demo_vectors_match_the_demo_landcover(tmp_path):
    """The demo's road/mangrove vectors rasterized on the grid of its landcover.tif agree with that raster."""
    from s2pipe.synthetic.demo import MANGROVE, ROAD, DemoConfig, generate_demo

    region = generate_demo(tmp_path / "demo", DemoConfig(start="2021-01-01", end="2021-01-06", tile_size=128,
                                                         overlap=0, n_tiles=1, block_size=64), workers=0)
    truth = rioxarray.open_rasterio(region.landcover_path).squeeze("band", drop=True).load()
    lab = rasterize_labels([LabelSource(region.mangroves_path, MANGROVE),
                            LabelSource(region.roads_path, ROAD, width_column="width_m")], truth, background=0)
    assert lab.shape == truth.shape and lab.rio.crs.to_epsg() == region.epsg
    for cid, min_iou in ((MANGROVE, 0.99), (ROAD, 0.65)):  # full demo: 1.0 and 0.75
        a, b = lab.values == cid, truth.values == cid
        iou = (a & b).sum() / (a | b).sum()
        assert b.sum() > 50 and iou >= min_iou, (cid, iou)

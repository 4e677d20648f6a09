"""The written Zarr store opened by GDAL (rasterio's GDAL 3.10): CRS, transform and values vs the source COGs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
import xarray as xr

from s2pipe.cube import build_cube, grid_of
from s2pipe.store.zarr import write_cube
from s2pipe.synthetic.scenes import make_scenes, read_cog

BANDS = ["B02", "B05"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Scenes -> build_cube -> masked reflectance (no gap filling) -> write_cube; returns (items, cube, ds, path)."""
    root = tmp_path_factory.mktemp("gis")
    items = make_scenes(root / "scenes", n_dates=3, tiles=2, size=48, overlap=16, nodata_cols=4,
                        start="2022-01-20", bands=tuple(BANDS))
    cube = build_cube(items, bands=BANDS, chunk_size=32)
    dn = cube.sel(band=BANDS)
    refl = (dn * dn.scale + dn.offset).where(dn > 0).astype("float32").drop_vars(["scale", "offset"])
    observed = cube.sel(band="SCL").isin([4, 5, 6, 7]).astype("uint8").drop_vars(["scale", "offset", "band"])
    ds = xr.Dataset({"reflectance": refl, "observed": observed}, attrs=dict(cube.attrs))
    path = write_cube(ds, root / "cube.zarr", region_size=32)
    return items, cube, ds.compute(), path


def test_gdal_opens_reflectance_georeferenced_with_dataset_values(written):
    items, cube, ds, path = written
    grid = grid_of(cube)
    nt, nb = ds.sizes["time"], ds.sizes["band"]
    with rasterio.open(f'ZARR:"{path}":/reflectance') as src:
        assert src.driver == "Zarr"
        assert src.crs.to_epsg() == grid.epsg == 32633
        assert src.transform == grid.transform
        assert (src.height, src.width) == grid.shape
        assert src.count == nt * nb  # GDAL exposes (time, band) as bands, time-major
        assert np.isnan(src.nodata)
        for t in range(nt):
            for b in range(nb):
                np.testing.assert_array_equal(src.read(t * nb + b + 1), ds["reflectance"].values[t, b])
    with rasterio.open(f'ZARR:"{path}":/observed') as src:
        assert src.crs.to_epsg() == 32633 and src.transform == grid.transform and src.count == nt
        np.testing.assert_array_equal(src.read(), ds["observed"].values)


def test_gdal_values_equal_the_source_cogs(written):
    """GDAL-read reflectance == DN * scale + offset read with rasterio from the source COG (10 m band, each date)."""
    items, cube, ds, path = written
    nb = ds.sizes["band"]
    first_tile = [it for it in items if "_T0_" in it.id]
    with rasterio.open(f'ZARR:"{path}":/reflectance') as src:
        for t, item in enumerate(first_tile):
            dn, transform = read_cog(item.assets["B02"].href)
            rb = item.assets["B02"].extra_fields["raster:bands"][0]
            expected = np.where(dn > 0, dn * rb["scale"] + rb["offset"], np.nan).astype("float32")
            col = round((transform.c - src.transform.c) / 10)
            row = round((src.transform.f - transform.f) / 10)
            window = src.read(t * nb + 1)[row:row + dn.shape[0], col:col + dn.shape[1]]
            valid = dn > 0  # tile 0's nodata columns are filled from tile 1 in the cube
            np.testing.assert_array_equal(window[valid], expected[valid])
            assert valid.sum() > 0.9 * dn.size
    offsets = [it.assets["B02"].extra_fields["raster:bands"][0]["offset"] for it in first_tile]
    assert offsets == [0.0, -0.1, -0.1]  # both processing baselines went through


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the store root is not a raster
def test_gdal_lists_the_variables_and_reads_crs_from_the__CRS_attribute(written, tmp_path):
    _, cube, _, path = written
    with rasterio.open(str(path)) as src:
        names = {s.rsplit(":", 1)[-1] for s in src.subdatasets}
    assert {"/reflectance", "/observed", "/time", "/band"} <= names
    # Debian's GDAL 3.6 ignores CF grid_mapping and reads only `_CRS`: check that attribute alone suffices
    old = tmp_path / "no_cf.zarr"
    shutil.copytree(path, old)
    shutil.rmtree(old / "spatial_ref")
    meta = json.loads((old / ".zmetadata").read_text())
    for key in list(meta["metadata"]):
        if key.startswith("spatial_ref/"):
            del meta["metadata"][key]
    for var in ("reflectance", "observed"):
        attrs = meta["metadata"][f"{var}/.zattrs"]
        attrs.pop("grid_mapping")
        attrs["coordinates"] = " ".join(c for c in attrs.get("coordinates", "").split() if c != "spatial_ref")
        (old / var / ".zattrs").write_text(json.dumps(attrs))
    (old / ".zmetadata").write_text(json.dumps(meta))
    with rasterio.open(f'ZARR:"{old}":/reflectance') as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == grid_of(cube).transform

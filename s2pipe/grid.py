"""The exact raster grid of a cube (``Grid``) and how to read it off any cube or dataset (``grid_of``).

Shared by the cube stage, the store, the label rasters and the map products; imports neither stackstac nor
Dask."""
from __future__ import annotations

from typing import NamedTuple

import rioxarray  # noqa: F401  (registers the .rio accessor that grid_of reads a spatial_ref with)
import xarray as xr
from affine import Affine

from s2pipe.errors import InputError

__all__ = ["Grid", "grid_of"]


class Grid(NamedTuple):
    """An exact raster grid: CRS, affine of the top-left corner, (rows, cols), pixel size in CRS units."""

    epsg: int | None
    crs: str
    transform: Affine
    shape: tuple[int, int]
    resolution: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in CRS units."""
        t, (h, w) = self.transform, self.shape
        return (t.c, t.f + t.e * h, t.c + t.a * w, t.f)


def grid_of(obj: xr.DataArray | xr.Dataset) -> Grid:
    """The exact grid of a cube or dataset.

    The CRS comes from the ``crs`` attribute, else the ``spatial_ref`` coordinate; the transform from the
    ``transform`` attribute (6 floats, rasterio order), else from the ``x``/``y`` pixel-centre coordinates.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        A cube or dataset with ``y``/``x`` dims and a CRS.

    Returns
    -------
    Grid
        EPSG code (None when the CRS has none), CRS text (``"EPSG:<n>"``, else the CRS as given), affine of the
        top-left corner, (rows, cols) in pixels and the pixel size in CRS units (``abs(transform.a)``).

    Raises
    ------
    InputError
        ``obj`` has no CRS, or has no ``transform`` attribute and fewer than 2 pixels along ``x`` or ``y``.
    """
    attrs = obj.attrs
    crs = attrs.get("crs")
    if crs is None and "spatial_ref" in obj.coords:
        crs = obj.rio.crs.to_string() if obj.rio.crs is not None else None
    if crs is None:
        raise InputError(
            f"{type(obj).__name__} {getattr(obj, 'name', '') or ''} has no CRS: set attrs['crs'] ('EPSG:n') "
            "or write one with .rio.write_crs()"
        )
    from pyproj import CRS

    epsg = CRS.from_user_input(crs).to_epsg()
    ny, nx = int(obj.sizes["y"]), int(obj.sizes["x"])
    if attrs.get("transform") is not None and len(attrs["transform"]) >= 6:
        transform = Affine(*[float(v) for v in list(attrs["transform"])[:6]])
    else:
        xs, ys = obj["x"].values, obj["y"].values
        if len(xs) < 2 or len(ys) < 2:
            raise InputError(f"cannot derive a transform from a {ny}x{nx} grid; set attrs['transform'] (6 floats)")
        a, e = float(xs[1] - xs[0]), float(ys[1] - ys[0])
        transform = Affine(a, 0.0, float(xs[0]) - a / 2, 0.0, e, float(ys[0]) - e / 2)
    return Grid(epsg, f"EPSG:{epsg}" if epsg else str(crs), transform, (ny, nx), abs(transform.a))

"""The embedded demo region: realistic synthetic Sentinel-2 L2A scenes that s2pipe generates locally.

A subtropical coast (default: near 25.3° N 80.9° W, UTM 17N) with sea, a mangrove belt, seasonal forest,
grassland, bare soil, a town and a road network is drawn as vectors, rasterized to a 10 m "world", and
rendered every ``revisit_days`` with per-class seasonal spectra, spatial texture, noise, clouds, cloud
shadows and missing dates. Each date yields one scene per tile; neighbouring tiles are cut from the same
world (identical pixels in their overlap) and acquired the same solar day a few seconds apart, like real
neighbouring MGRS tiles of one datatake.

Layout under ``root``::

    manifest.json           config + region facts (idempotence key)
    collection.json         STAC Collection ``sentinel-2-l2a`` (with extent)
    items.json              STAC FeatureCollection of Earth Search v1 style items (absolute local hrefs)
    landcover.tif           uint8 COG of true class ids (``DemoRegion.classes``) on the 10 m grid of the union
    vectors/roads.geojson   road centre lines (LineString, EPSG:4326, RFC 7946); property ``built``: the date a
                            new road was built during the period (null for roads there from the start)
    vectors/mangroves.geojson  mangrove polygons (Polygon, EPSG:4326, RFC 7946)
    scenes/<item id>/<band>.tif  single-band tiled COGs: B02 B03 B04 B08 (10 m), B05 B06 B07 B8A B11 B12, SCL (20 m)

Serve it with :func:`demo_server` (a real STAC API on 127.0.0.1) and search it with pystac-client.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from s2pipe.bands import BANDS, SPECTRAL_10
from s2pipe.errors import InputError, OutputConflictError
from s2pipe.products.cog import write_cog
from s2pipe.runtime.files import pid_alive
from s2pipe.stac.server import LocalStacServer
from s2pipe.synthetic.items import BASELINE_CHANGE, earth_search_item

__all__ = ["DemoConfig", "DemoRegion", "generate_demo", "load_demo", "demo_server", "CLASSES", "FORMAT_VERSION"]

FORMAT_VERSION = 2
"""Bumped whenever the generator's output changes; a region of another version is regenerated."""

WATER, MANGROVE, FOREST, GRASSLAND, BARE, URBAN, ROAD = 1, 2, 3, 4, 5, 6, 7
CLASSES: dict[int, str] = {
    WATER: "water",
    MANGROVE: "mangrove",
    FOREST: "forest",
    GRASSLAND: "grassland",
    BARE: "bare soil",
    URBAN: "urban",
    ROAD: "road",
}
"""Land-cover class ids of ``landcover.tif`` (0 = no data, not used inside the region)."""

# Surface reflectance per class and band (order of SPECTRAL_10: B02 B03 B04 B05 B06 B07 B08 B8A B11 B12).
# LOW = dry season / leaf-off (or clear water, dry soil); HIGH = peak of the wet season. Rows: class id.
_LOW = np.array([
    [0.0] * 10,                                                               # 0 unused
    [0.045, 0.055, 0.035, 0.025, 0.018, 0.015, 0.013, 0.011, 0.006, 0.004],   # water (clear)
    [0.022, 0.040, 0.026, 0.070, 0.160, 0.200, 0.220, 0.230, 0.110, 0.050],   # mangrove
    [0.040, 0.060, 0.060, 0.095, 0.165, 0.195, 0.215, 0.225, 0.220, 0.130],   # forest (leaf-off)
    [0.055, 0.075, 0.085, 0.115, 0.160, 0.180, 0.190, 0.200, 0.280, 0.190],   # grassland (dry)
    [0.100, 0.140, 0.180, 0.205, 0.225, 0.240, 0.255, 0.265, 0.330, 0.280],   # bare soil (dry)
    [0.110, 0.120, 0.130, 0.140, 0.150, 0.155, 0.160, 0.165, 0.190, 0.170],   # urban
    [0.065, 0.075, 0.080, 0.085, 0.090, 0.095, 0.100, 0.102, 0.115, 0.105],   # road (asphalt)
], dtype=np.float32)
_HIGH = np.array([
    [0.0] * 10,
    [0.060, 0.080, 0.065, 0.050, 0.030, 0.022, 0.020, 0.017, 0.008, 0.005],   # water (turbid)
    [0.018, 0.038, 0.018, 0.065, 0.190, 0.250, 0.275, 0.285, 0.100, 0.042],   # mangrove (evergreen)
    [0.022, 0.050, 0.024, 0.085, 0.260, 0.340, 0.370, 0.380, 0.170, 0.080],   # forest (full leaf)
    [0.035, 0.065, 0.045, 0.105, 0.225, 0.275, 0.295, 0.305, 0.230, 0.125],   # grassland (green)
    [0.075, 0.105, 0.135, 0.155, 0.170, 0.180, 0.190, 0.200, 0.250, 0.210],   # bare soil (wet)
    [0.110, 0.120, 0.130, 0.140, 0.150, 0.155, 0.160, 0.165, 0.190, 0.170],   # urban
    [0.065, 0.075, 0.080, 0.085, 0.090, 0.095, 0.100, 0.102, 0.115, 0.105],   # road
], dtype=np.float32)
_PEAK_DOY = np.array([0, 200, 250, 235, 215, 230, 0, 0], dtype=np.float32)
"""Day of year of the seasonal maximum (HIGH spectrum) per class: the wet season, July-September."""
_TEXTURE = np.array([0, 0.03, 0.06, 0.07, 0.07, 0.08, 0.05, 0.03], dtype=np.float32)
"""Relative amplitude of the smooth brightness texture per class."""
_CLOUD = np.array([0.50, 0.49, 0.48, 0.48, 0.47, 0.47, 0.47, 0.46, 0.33, 0.22], dtype=np.float32)
"""Reflectance of a thick cloud (scaled per date by 0.8-1.3)."""
_SHADOW_DARK = np.array([0.55, 0.60, 0.65, 0.68, 0.70, 0.72, 0.72, 0.72, 0.75, 0.75], dtype=np.float32)
"""Fraction of reflectance removed in a full cloud shadow (blue least: diffuse sky light)."""

_IDX = {b: i for i, b in enumerate(SPECTRAL_10)}
_B10 = tuple(b for b in SPECTRAL_10 if BANDS[b].resolution == 10)
_B20 = tuple(b for b in SPECTRAL_10 if BANDS[b].resolution == 20)
_MGRS_COLUMNS = "NPQRSTUVWXYZ"  # MGRS 100 km column letters east of N (I and O are skipped)
_SOLAR_TIME_H = 10.5  # Sentinel-2 descending node: 10:30 local solar time


def _parse_date(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"DemoConfig {name}={value!r} is not an ISO date; pass e.g. '2021-01-01'") from None


def _check_int(value: Any, name: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"DemoConfig {name}={value!r} must be an integer >= {minimum}; pass another {name}")


@dataclass(frozen=True)
class DemoConfig:
    """Parameters of the synthetic demo region; the defaults are the README's demo."""

    start: str = "2021-01-01"
    """First acquisition date (ISO ``YYYY-MM-DD``)."""
    end: str = "2022-12-31"
    """Last possible acquisition date (ISO, inclusive)."""
    revisit_days: int = 5
    """Days between acquisitions (Sentinel-2A + 2B: 5)."""
    tile_size: int = 256
    """Tile side in 10 m pixels (20 m bands and SCL: ``tile_size // 2``); even."""
    overlap: int = 64
    """Overlap of neighbouring tiles in x, in 10 m pixels; even, smaller than ``tile_size``."""
    n_tiles: int = 2
    """Number of tiles side by side in x (same UTM zone, same datatake)."""
    epsg: int = 32617
    """Projected CRS of the tiles (UTM, metres)."""
    center_lonlat: tuple[float, float] = (-80.9, 25.3)
    """Longitude, latitude (degrees) of the centre of the region: a subtropical coast by default."""
    block_size: int = 128
    """Internal COG tile size in pixels (multiple of 16; matches ``catalogs/local-demo.yaml``)."""
    missing_date_fraction: float = 0.05
    """Probability that a date has no acquisition at all."""
    seed: int = 0
    """Random seed: the same config always gives the same region, pixel for pixel."""

    def __post_init__(self) -> None:
        start, end = _parse_date(self.start, "start"), _parse_date(self.end, "end")
        if end < start:
            raise InputError(f"DemoConfig end {self.end!r} is before start {self.start!r}; pass a later end")
        _check_int(self.revisit_days, "revisit_days", 1)
        _check_int(self.tile_size, "tile_size", 16)
        _check_int(self.n_tiles, "n_tiles", 1)
        _check_int(self.overlap, "overlap", 0)
        _check_int(self.block_size, "block_size", 16)
        if self.tile_size % 2:
            raise InputError(f"DemoConfig tile_size={self.tile_size} must be even (20 m bands are half of it); "
                             f"pass an even tile_size")
        if self.overlap % 2 or self.overlap >= self.tile_size:
            raise InputError(f"DemoConfig overlap={self.overlap} must be even and smaller than "
                             f"tile_size={self.tile_size}; pass another overlap")
        if self.block_size % 16:
            raise InputError(f"DemoConfig block_size={self.block_size} must be a multiple of 16 (GeoTIFF tiles); "
                             f"pass e.g. block_size=128")
        if not 0.0 <= float(self.missing_date_fraction) < 1.0:
            raise InputError(f"DemoConfig missing_date_fraction={self.missing_date_fraction} must be in [0, 1); "
                             f"pass e.g. 0.05")
        lon, lat = self.center_lonlat
        if not (-180 <= lon <= 180 and -80 <= lat <= 84):
            raise InputError(f"DemoConfig center_lonlat={self.center_lonlat} is not a (lon, lat) in degrees "
                             f"inside the UTM domain; pass e.g. (-80.9, 25.3)")
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            crs = CRS.from_epsg(self.epsg)
        except CRSError:
            raise InputError(f"DemoConfig epsg={self.epsg} is not a known EPSG code; pass e.g. 32617") from None
        if not crs.is_projected or crs.axis_info[0].unit_name not in ("metre", "meter"):
            raise InputError(f"DemoConfig epsg={self.epsg} is not a projected CRS in metres; pass a UTM code "
                             f"such as 32617")

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (tuples as lists), as stored in ``manifest.json``."""
        d = dataclasses.asdict(self)
        d["center_lonlat"] = list(self.center_lonlat)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DemoConfig":
        d = dict(d)
        if "center_lonlat" in d:
            d["center_lonlat"] = tuple(d["center_lonlat"])
        return cls(**d)


@dataclass(frozen=True)
class DemoRegion:
    """A generated demo region on disk (what :func:`generate_demo` returns and :func:`load_demo` reads)."""

    root: Path
    """Folder of the region (absolute)."""
    items_path: Path
    """STAC FeatureCollection JSON of all scenes (Earth Search v1 form, absolute local asset hrefs)."""
    collection_path: Path
    """STAC Collection JSON (id ``sentinel-2-l2a``) with the spatial and temporal extent."""
    epsg: int
    """EPSG code of the scenes' projected CRS."""
    bounds: tuple[float, float, float, float]
    """Projected union of the tiles: xmin, ymin, xmax, ymax (metres)."""
    bbox: tuple[float, float, float, float]
    """Lon/lat bounding box of the union of the tiles: west, south, east, north (degrees)."""
    default_bbox: tuple[float, float, float, float]
    """Lon/lat AOI inside the union that straddles the overlap of the first two tiles (solar-day merging)."""
    start: str
    """First date of the region's time window (ISO)."""
    end: str
    """Last date of the region's time window (ISO, inclusive)."""
    roads_path: Path
    """Road centre lines: GeoJSON LineStrings in EPSG:4326 with a ``highway`` property."""
    mangroves_path: Path
    """Mangrove areas: GeoJSON Polygons in EPSG:4326."""
    landcover_path: Path
    """uint8 COG of the true class ids (``classes``) on the 10 m grid of ``bounds``."""
    classes: dict[int, str]
    """Class id -> name of ``landcover_path``."""
    config: DemoConfig = field(default_factory=DemoConfig)
    """The configuration the region was generated with."""
    n_items: int = 0
    """Number of STAC items (scenes: dates x tiles)."""


# ---------------------------------------------------------------------------------------------- public API


def generate_demo(
    root: str | os.PathLike,
    config: DemoConfig = DemoConfig(),
    *,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> DemoRegion:
    """Generate the demo region under ``root`` (idempotent, atomic) and return it.

    If ``root`` already holds a region made with the same ``config`` (and generator version), it is returned
    without touching a file. Otherwise the region is built in a hidden sibling folder and renamed to ``root`` at
    the end, replacing an older demo region there; an interrupted run leaves no half region.

    Parameters
    ----------
    root : str or os.PathLike
        Folder of the region: missing, empty, or holding a demo region (``manifest.json``).
    config : DemoConfig, default ``DemoConfig()``
        Parameters of the region (the defaults are the README's demo).
    progress : callable, optional
        ``progress(done, total)`` is called after each scene (one tile on one date) is written.
    workers : int, optional
        Processes writing the COGs (None: automatic, up to 4 for large regions on Linux when this process is
        single-threaded; 0: one thread in this process, as always on other systems and in daemonic processes);
        the output does not depend on it.

    Returns
    -------
    DemoRegion
        The region on disk, as ``load_demo`` reads it.

    Raises
    ------
    InputError
        ``workers`` is neither None nor an integer >= 0, or ``config`` is not a ``DemoConfig``.
    OutputConflictError
        ``root`` exists and is neither a demo region (no ``manifest.json``) nor an empty folder.
    """
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise InputError(f"generate_demo workers={workers!r} must be None or an integer >= 0 (argument: workers)")
    if not isinstance(config, DemoConfig):
        raise InputError(f"generate_demo config must be a DemoConfig, got {type(config).__name__}; "
                         f"pass DemoConfig(...) (argument: config)")
    root = Path(root).expanduser().resolve()
    manifest = _read_manifest(root)
    if manifest is not None and _is_current(manifest, root, config):
        return load_demo(root)
    if root.exists() and manifest is None and (not root.is_dir() or any(root.iterdir())):
        raise OutputConflictError(
            f"demo root {root} exists and is not a demo region (no manifest.json); refusing to replace it — "
            f"pass another folder (argument: root) or remove it"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _build(tmp, root, config, progress, workers)
        # Another process may have finished the same region meanwhile: keep theirs.
        manifest = _read_manifest(root)
        if manifest is not None and _is_current(manifest, root, config):
            shutil.rmtree(tmp, ignore_errors=True)
            return load_demo(root)
        old = None
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
        os.replace(tmp, root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_demo(root)


def load_demo(root: str | os.PathLike) -> DemoRegion:
    """Read the demo region under ``root`` (from its ``manifest.json``) without generating anything."""
    root = Path(root).expanduser().resolve()
    m = _read_manifest(root)
    if m is None:
        raise InputError(f"no demo region at {root} (missing or unreadable manifest.json); "
                         f"generate it with s2pipe.synthetic.demo.generate_demo({str(root)!r}) or `s2pipe demo-data`")
    files = m["files"]
    return DemoRegion(
        root=root,
        items_path=root / files["items"],
        collection_path=root / files["collection"],
        epsg=int(m["epsg"]),
        bounds=tuple(m["bounds"]),
        bbox=tuple(m["bbox"]),
        default_bbox=tuple(m["default_bbox"]),
        start=m["config"]["start"],
        end=m["config"]["end"],
        roads_path=root / files["roads"],
        mangroves_path=root / files["mangroves"],
        landcover_path=root / files["landcover"],
        classes={int(k): v for k, v in m["classes"].items()},
        config=DemoConfig.from_json(m["config"]),
        n_items=int(m["n_items"]),
    )


def demo_server(region: DemoRegion) -> LocalStacServer:
    """A (not yet started) local STAC API serving the region's collection and items; use ``with``.

    Parameters
    ----------
    region : DemoRegion
        A generated region (``generate_demo`` or ``load_demo``).

    Returns
    -------
    LocalStacServer
        A ``rustac serve`` process on 127.0.0.1 at a free port (its address: ``url``), started on entering the
        ``with`` block (or by ``start()``) and stopped on leaving it.

    Raises
    ------
    S2PipeError
        The region's collection or items file does not exist.
    """
    return LocalStacServer([region.collection_path, region.items_path])


# ---------------------------------------------------------------------------------------------- helpers


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(manifest: dict[str, Any], root: Path, config: DemoConfig) -> bool:
    """Whether ``root`` holds a complete region of this ``config`` and generator version (no file is read
    beyond the manifest; the scene folders are counted)."""
    if not (manifest.get("format_version") == FORMAT_VERSION and manifest.get("config") == config.to_json()
            and manifest.get("root") == str(root)):
        return False
    files = manifest.get("files", {})
    if not all((root / files.get(k, "-")).is_file() for k in ("items", "collection", "landcover", "roads",
                                                               "mangroves")):
        return False
    try:
        return sum(1 for _ in os.scandir(root / files["scenes"])) == manifest.get("n_items")
    except (OSError, KeyError):
        return False


def _remove_stale_partials(root: Path) -> None:
    """Remove hidden build/old folders of ``root`` left by runs that were killed (their process is gone)."""
    for p in [*root.parent.glob(f".{root.name}.partial-*"), *root.parent.glob(f".{root.name}.old-*")]:
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _dates(config: DemoConfig) -> list[dt.date]:
    """Acquisition dates: every ``revisit_days`` from start to end, minus the missing ones."""
    start, end = dt.date.fromisoformat(config.start), dt.date.fromisoformat(config.end)
    out = []
    d = start
    while d <= end:
        rng = np.random.default_rng([config.seed, d.toordinal(), 1])
        if rng.random() >= config.missing_date_fraction:
            out.append(d)
        d += dt.timedelta(days=config.revisit_days)
    return out


def _bspline_taps(n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline taps sampling coefficients spaced ``scale`` pixels apart at ``n_out`` pixels:
    (4, n_out) coefficient indices and (4, n_out) float32 weights (coefficient 0 lies one knot before pixel 0)."""
    t = np.arange(n_out) / scale + 1.0
    first = np.floor(t).astype(np.intp) - 1
    idx = first[None, :] + np.arange(4)[:, None]
    x = np.abs(t[None, :] - idx)
    w = np.where(x < 1.0, 2.0 / 3.0 - x**2 + 0.5 * x**3, np.where(x < 2.0, (2.0 - x) ** 3 / 6.0, 0.0))
    return idx, w.astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (float32) of ``shape``, correlation length ~``scale`` px.

    White noise on a coarse grid (one value every ``scale`` pixels) smoothed by a separable cubic B-spline,
    4 taps per axis (no BLAS: tiny matrix products are slow with a multi-threaded BLAS on a busy machine).
    """
    scale = max(float(scale), 1.0)
    ny, nx = int(math.ceil(shape[0] / scale)) + 4, int(math.ceil(shape[1] / scale)) + 4
    coarse = rng.standard_normal((ny, nx), dtype=np.float32)
    (iy, wy), (ix, wx) = _bspline_taps(shape[0], scale), _bspline_taps(shape[1], scale)
    rows = sum(wy[k][:, None] * coarse[iy[k]] for k in range(4))  # (H, nx)
    f = sum(wx[k][None, :] * rows[:, ix[k]] for k in range(4))  # (H, W)
    f -= f.mean()
    s = f.std()
    return f / s if s > 0 else f


def _block_mean(a: np.ndarray) -> np.ndarray:
    """2x2 block average over the last two axes (10 m -> 20 m)."""
    return 0.25 * ((a[..., 0::2, 0::2] + a[..., 1::2, 0::2]) + (a[..., 0::2, 1::2] + a[..., 1::2, 1::2]))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Grid:
    """The 10 m grid of the union of the tiles and the tiles' places in it."""

    epsg: int
    """CRS."""
    xmin: float
    """West edge of the union (m)."""
    ymax: float
    """North edge of the union (m)."""
    height: int
    """Rows of the union at 10 m."""
    width: int
    """Columns of the union at 10 m."""
    tile_size: int
    """Tile side at 10 m."""
    step: int
    """Column offset between neighbouring tiles at 10 m (tile_size - overlap)."""
    n_tiles: int
    """Number of tiles."""

    @property
    def transform(self) -> Affine:
        return Affine(10.0, 0.0, self.xmin, 0.0, -10.0, self.ymax)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.xmin, self.ymax - 10.0 * self.height, self.xmin + 10.0 * self.width, self.ymax)

    def tile_bounds(self, i: int) -> tuple[float, float, float, float]:
        x0 = self.xmin + 10.0 * i * self.step
        return (x0, self.ymax - 10.0 * self.tile_size, x0 + 10.0 * self.tile_size, self.ymax)


def _grid(config: DemoConfig) -> _Grid:
    from pyproj import Transformer

    width = config.tile_size + (config.n_tiles - 1) * (config.tile_size - config.overlap)
    height = config.tile_size
    cx, cy = Transformer.from_crs(4326, config.epsg, always_xy=True).transform(*config.center_lonlat)
    # Snap the corner to 60 m like real Sentinel-2 tile origins (also keeps the 20 m grid aligned).
    xmin = round((cx - 5.0 * width) / 60.0) * 60.0
    ymax = round((cy + 5.0 * height) / 60.0) * 60.0
    return _Grid(config.epsg, float(xmin), float(ymax), height, width, config.tile_size,
                 config.tile_size - config.overlap, config.n_tiles)


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, rough: float = 0.25):
    """An irregular closed shape (shapely Polygon) of mean radius ``r`` around (cx, cy)."""
    from shapely.geometry import Polygon

    th = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    rad = np.ones_like(th)
    for k in range(2, 6):
        rad += rough / k * rng.uniform(0.5, 1.0) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    return Polygon(np.c_[cx + r * rad * np.cos(th), cy + r * rad * np.sin(th)]).buffer(0)


def _world_vectors(grid: _Grid, rng: np.random.Generator) -> dict[str, Any]:
    """Vector land cover of the union in projected metres: sea, rivers/lakes, mangroves, forest, fields,
    town and roads. Shapes are drawn in relative coordinates (u east, v north, 0..1) so they scale with
    the region."""
    from shapely import affinity
    from shapely.geometry import LineString, Polygon, box
    from shapely.ops import unary_union

    xmin, ymin, xmax, ymax = grid.bounds
    wm, hm = xmax - xmin, ymax - ymin
    dmin = min(wm, hm)

    def xy(u, v):
        return np.c_[xmin + np.asarray(u) * wm, ymin + np.asarray(v) * hm]

    ph = rng.uniform(0, 1, 12)
    u = np.linspace(-0.05, 1.05, 331)
    coast_v = (0.30 + 0.05 * np.sin(2 * np.pi * (1.2 * u + ph[0])) + 0.025 * np.sin(2 * np.pi * (3.1 * u + ph[1]))
               + 0.01 * np.sin(2 * np.pi * (7.3 * u + ph[2])))
    sea = Polygon(np.r_[xy(u, coast_v), xy([1.05, -0.05], [-0.05, -0.05])])
    belt_v = (coast_v + 0.10 + 0.035 * np.sin(2 * np.pi * (2.3 * u + ph[3]))
              + 0.015 * np.sin(2 * np.pi * (5.9 * u + ph[4])))
    belt = Polygon(np.r_[xy(u, coast_v), xy(u[::-1], belt_v[::-1])]).buffer(0)
    # A meandering creek from the coast inland, and ponds in the grassland.
    v = np.linspace(0.0, 0.58, 120)
    cu = 0.36 + 0.03 * np.sin(2 * np.pi * (2.5 * v + ph[5])) + 0.012 * np.sin(2 * np.pi * (6.0 * v + ph[6]))
    creek_line = LineString(xy(cu, v))
    creek = creek_line.buffer(max(12.0, 0.008 * hm))
    ponds = [_blob(rng, *xy(0.15, 0.80)[0], 0.05 * dmin), _blob(rng, *xy(0.88, 0.52)[0], 0.035 * dmin)]
    water = unary_union([sea, creek, *ponds])
    # Mangroves: the belt, the lower creek banks and islands offshore, minus open water.
    banks = LineString(xy(cu[v < 0.5], v[v < 0.5])).buffer(0.035 * hm)
    islands = [_blob(rng, *xy(a, b)[0], r * dmin, rough=0.4)
               for a, b, r in [(0.18, 0.10, 0.035), (0.55, 0.07, 0.03), (0.80, 0.14, 0.045)]]
    mangrove = unary_union([belt, banks, *islands]).difference(water)
    # Town and bare fields.
    town = affinity.rotate(box(*xy(0.55, 0.72)[0], *xy(0.69, 0.88)[0]), 8, origin="center")
    fields = [affinity.rotate(box(*xy(a - da, b - db)[0], *xy(a + da, b + db)[0]), ang, origin="center")
              for a, b, da, db, ang in [(0.82, 0.80, 0.05, 0.06, -5), (0.45, 0.90, 0.04, 0.05, 12),
                                        (0.08, 0.55, 0.035, 0.05, 3)]]
    built = unary_union([town, *fields])
    # Forest patches (hammocks / cypress domes) on the land beyond the mangroves.
    centres = [(0.12, 0.70), (0.30, 0.82), (0.28, 0.55), (0.50, 0.58), (0.70, 0.58), (0.92, 0.68),
               (0.62, 0.97), (0.98, 0.95), (0.40, 0.72), (0.80, 0.40), (0.05, 0.92)]
    forest = unary_union([
        _blob(rng, *xy(a + rng.uniform(-0.03, 0.03), b + rng.uniform(-0.03, 0.03))[0],
              rng.uniform(0.07, 0.14) * dmin, rough=0.35)
        for a, b in centres
    ]).difference(unary_union([water, mangrove, built]))
    # Roads: a curving highway across the region, two branch roads, a street grid in town.
    land = box(xmin - wm, ymin - hm, xmax + wm, ymax + hm).difference(unary_union([sea, *ponds]))
    uu = np.linspace(-0.03, 1.03, 160)
    highway = LineString(xy(uu, 0.66 + 0.03 * np.sin(2 * np.pi * (0.8 * uu + ph[7]))))
    vv = np.linspace(0.66, 1.03, 40)
    north = LineString(xy(0.62 + 0.02 * np.sin(2 * np.pi * (1.5 * vv + ph[8])), vv))
    vs = np.linspace(-0.02, 0.69, 80)
    south = LineString(xy(0.44 + 0.04 * np.sin(2 * np.pi * (1.1 * vs + ph[9])), vs))
    streets = []
    tb = town.bounds
    for x in np.arange(tb[0], tb[2], max(0.025 * wm, 60.0)):
        streets.append(LineString([(x, tb[1]), (x, tb[3])]))
    for y in np.arange(tb[1], tb[3], max(0.03 * hm, 60.0)):
        streets.append(LineString([(tb[0], y), (tb[2], y)]))
    street_geom = unary_union([affinity.rotate(s, 8, origin=town.centroid) for s in streets]).intersection(town)
    # A road built during the period (see _build): from the highway south into the mangrove belt.
    vn = np.linspace(0.38, 0.67, 40)
    new_road = LineString(xy(0.29 + 0.015 * np.sin(2 * np.pi * (1.3 * vn + ph[10])), vn))
    roads: list[tuple[Any, str]] = []
    for geom, kind in [(highway, "primary"), (north, "secondary"), (south, "secondary"),
                       (street_geom, "residential"), (new_road, "new")]:
        g = geom.intersection(land).simplify(0.5)
        parts = g.geoms if hasattr(g, "geoms") else [g]
        roads += [(p, kind) for p in parts if isinstance(p, LineString) and p.length > 20.0]
    mangrove_polys = [p for p in (mangrove.geoms if hasattr(mangrove, "geoms") else [mangrove])
                      if isinstance(p, Polygon) and p.area > 400.0]
    return dict(water=water, mangrove=mangrove_polys, forest=forest, fields=fields, town=town, roads=roads)


_ROAD_HALF_WIDTH = {"primary": 7.5, "secondary": 0.0, "residential": 0.0, "new": 6.0}
"""Metres each side of the centre line burned into the land cover (0: the line itself, 1 px)."""


def _landcover(grid: _Grid, vec: dict[str, Any], *, new_roads: bool = True) -> np.ndarray:
    """Rasterize the vectors to class ids on the 10 m union grid; later shapes win. ``new_roads=False``:
    the land cover before the road built during the period."""
    from rasterio.features import rasterize

    shapes: list[tuple[Any, int]] = [(vec["forest"], FOREST)]
    shapes += [(f, BARE) for f in vec["fields"]] + [(vec["town"], URBAN), (vec["water"], WATER)]
    shapes += [(p, MANGROVE) for p in vec["mangrove"]]
    roads = [(line, k) for line, k in vec["roads"] if new_roads or k != "new"]
    shapes += [(line.buffer(_ROAD_HALF_WIDTH[k], cap_style="flat"), ROAD) for line, k in roads
               if _ROAD_HALF_WIDTH[k] > 0]
    shapes += [(line, ROAD) for line, _ in roads]  # every centre line burns its pixels
    shapes = [(g, v) for g, v in shapes if not g.is_empty]
    return rasterize(shapes, out_shape=(grid.height, grid.width), transform=grid.transform,
                     fill=GRASSLAND, dtype="uint8")


def _write_geojson(path: Path, features: list[tuple[Any, dict[str, Any]]], epsg: int) -> None:
    """Write shapely geometries (projected, ``epsg``) as an RFC 7946 FeatureCollection in lon/lat."""
    import shapely
    from pyproj import Transformer
    from shapely.geometry import mapping
    from shapely.geometry.polygon import orient

    tr = Transformer.from_crs(epsg, 4326, always_xy=True)

    def to_lonlat(coords: np.ndarray) -> np.ndarray:
        lon, lat = tr.transform(coords[:, 0], coords[:, 1])
        return np.round(np.c_[lon, lat], 8)

    feats = []
    for geom, props in features:
        g = shapely.transform(geom, to_lonlat)
        if g.geom_type == "Polygon":
            g = orient(g, sign=1.0)  # RFC 7946: exterior counter-clockwise
        feats.append({"type": "Feature", "properties": props, "geometry": mapping(g)})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _World:
    """Static per-pixel fields of the 10 m union grid that each date's rendering starts from."""

    classes: np.ndarray
    """(H, W) uint8 true class ids."""
    low: np.ndarray
    """(10, H, W) float32 dry-season reflectance with texture."""
    delta: np.ndarray
    """(10, H, W) float32 HIGH - LOW with texture."""
    vigor: np.ndarray
    """(H, W) float32 per-pixel scaling of the seasonal amplitude."""
    peak: np.ndarray
    """(H, W) float32 per-pixel day of year of the seasonal maximum."""
    water20: np.ndarray
    """(H/2, W/2) bool: water majority at 20 m (SCL class 6 when clear)."""
    year_amp: dict[int, float]
    """Inter-annual scaling of the seasonal amplitude."""
    built: dt.datetime | None = None
    """When the new road was built: before it, the ``changed`` pixels show their earlier land cover."""
    changed: tuple[np.ndarray, np.ndarray] | None = None
    """(rows, cols) of the pixels whose class changed at ``built``."""
    before: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    """(low (10, n), delta (10, n), peak (n,)) of the changed pixels before ``built``."""


def _world(grid: _Grid, classes: np.ndarray, rng: np.random.Generator, years: range, *,
           classes_before: np.ndarray | None = None, built: dt.datetime | None = None) -> _World:
    shape = classes.shape
    s = max(min(shape) / 16.0, 2.0)
    tex = 1.0 + _TEXTURE[classes] * (_smooth_field(rng, shape, s) + 0.4 * _smooth_field(rng, shape, s / 4))
    low = _LOW[classes].transpose(2, 0, 1) * tex
    delta = (_HIGH - _LOW)[classes].transpose(2, 0, 1) * tex
    vigor = np.clip(1.0 + 0.12 * _smooth_field(rng, shape, s / 2), 0.7, 1.3).astype(np.float32)
    peak = (_PEAK_DOY[classes] + 8.0 * _smooth_field(rng, shape, s)).astype(np.float32)
    water20 = _block_mean((classes == WATER).astype(np.float32)) >= 0.5
    year_amp = {y: float(1.0 + 0.08 * np.random.default_rng([rng.integers(2**31), y]).standard_normal()) for y in years}
    changed = before = None
    if classes_before is not None and built is not None:
        changed = np.nonzero(classes_before != classes)
        cb = classes_before[changed]
        t = tex[changed]
        jitter = peak[changed] - _PEAK_DOY[classes[changed]]  # keep each pixel's own phase offset
        before = ((_LOW[cb].T * t).astype(np.float32), ((_HIGH - _LOW)[cb].T * t).astype(np.float32),
                  (_PEAK_DOY[cb] + jitter).astype(np.float32))
    return _World(classes, low.astype(np.float32), delta.astype(np.float32), vigor, peak, water20, year_amp,
                  built=built if changed is not None else None, changed=changed, before=before)


def _render(world: _World, when: dt.datetime, rng: np.random.Generator):
    """Render one date on the union grid.

    Returns (refl10 (4, H, W), refl20 (6, H/2, W/2) top-of-canopy reflectance incl. clouds and shadows,
    scl (H/2, W/2) uint8).
    """
    h, w = world.classes.shape
    doy = when.timetuple().tm_yday + when.hour / 24.0
    season = 0.5 * (1.0 + np.cos(2 * np.pi * (doy - world.peak) / 365.25))  # (H, W) 0..1, 1 at the peak
    s = world.low + world.delta * (world.vigor * season * world.year_amp.get(when.year, 1.0))[None]
    if world.built is not None and when < world.built:  # the new road is not there yet
        rows, cols = world.changed
        low_b, delta_b, peak_b = world.before
        season_b = 0.5 * (1.0 + np.cos(2 * np.pi * (doy - peak_b) / 365.25))
        s[:, rows, cols] = low_b + delta_b * (world.vigor[rows, cols] * season_b * world.year_amp.get(when.year, 1.0))
    atmos = (1.0 + 0.015 * rng.standard_normal(10)).astype(np.float32)  # per-date calibration/atmosphere
    s *= atmos[:, None, None]
    s += (0.012 * s + 0.0015) * rng.standard_normal(s.shape, dtype=np.float32)  # sensor + residual noise

    # Clouds: thresholded smooth noise; more and bigger in the wet season (June-October).
    wet = 0.5 * (1.0 - np.cos(2 * np.pi * (doy - 15.0) / 365.25))  # 0 mid-January, 1 mid-July
    r = rng.random()
    p_full, p_part = 0.06 + 0.08 * wet, 0.25 + 0.25 * wet
    if r < p_full:
        cover = 1.0
    elif r < p_full + p_part:
        cover = float(rng.uniform(0.05, 0.85))
    elif r < p_full + p_part + 0.15:
        cover = float(rng.uniform(0.005, 0.04))  # a few small clouds
    else:
        cover = 0.0
    scale = float(np.clip(min(h, w) / 5.0, 4.0, 48.0))
    pad = int(2 * scale)
    field_p = _smooth_field(rng, (h + 2 * pad, w + 2 * pad), scale)
    field_p += 0.45 * _smooth_field(rng, field_p.shape, scale / 3.0)
    if cover >= 1.0:
        alpha_p = np.ones_like(field_p)
    elif cover <= 0.0:
        alpha_p = np.zeros_like(field_p)
    else:
        thr = float(np.quantile(field_p[pad:pad + h, pad:pad + w], 1.0 - cover))
        alpha_p = _smoothstep((field_p - thr) / 0.6)
    alpha = alpha_p[pad:pad + h, pad:pad + w]
    # Shadows fall north-west of the clouds (morning sun from the south-east).
    dy, dx = (int(v) for v in np.rint(rng.uniform(0.5, 1.0, 2) * scale))  # 0.5-1 cloud sizes away
    # beta(y, x) = alpha(y + dy, x + dx), with a sharper edge (the penumbra is narrower than the cloud edge).
    beta = _smoothstep(2.0 * alpha_p[pad + dy:pad + dy + h, pad + dx:pad + dx + w])
    s *= 1.0 - (rng.uniform(0.85, 1.0) * _SHADOW_DARK)[:, None, None] * beta[None]
    thickness = 0.9 + 0.1 * np.tanh(field_p[pad:pad + h, pad:pad + w])  # brighter in the cloud cores
    cloud = _CLOUD[:, None, None] * (rng.uniform(0.8, 1.3) * thickness)[None]
    s += alpha[None] * (cloud - s)

    refl10 = s[[_IDX[b] for b in _B10]]
    refl20 = _block_mean(s[[_IDX[b] for b in _B20]])
    a20, b20 = _block_mean(alpha), _block_mean(beta)
    red20 = _block_mean(s[_IDX["B04"]])
    nir20 = refl20[_B20.index("B8A")]
    ndvi20 = (nir20 - red20) / np.maximum(nir20 + red20, 1e-6)
    scl = np.where(world.water20, 6, np.where(ndvi20 > 0.35, 4, 5)).astype(np.uint8)
    scl[b20 > 0.15] = 3
    scl[a20 > 0.02] = 10
    scl[a20 > 0.25] = 8
    scl[a20 > 0.60] = 9
    return refl10, refl20, scl


def _to_dn(refl: np.ndarray, new_baseline: bool) -> np.ndarray:
    """Reflectance -> uint16 DN (``round(refl * 10000)``, +1000 from baseline 04.00), never 0 (nodata)."""
    dn = np.rint(refl * 10000.0) + (1000.0 if new_baseline else 0.0)
    return np.clip(dn, 1, 65535).astype(np.uint16)


def _scl_stats(scl: np.ndarray) -> dict[str, float]:
    n = scl.size
    pct = {c: 100.0 * np.count_nonzero(scl == c) / n for c in range(12)}
    return {
        "eo:cloud_cover": pct[8] + pct[9] + pct[10],
        "s2:nodata_pixel_percentage": pct[0],
        "s2:cloud_shadow_percentage": pct[3],
        "s2:vegetation_percentage": pct[4],
        "s2:not_vegetated_percentage": pct[5],
        "s2:water_percentage": pct[6],
        "s2:unclassified_percentage": pct[7],
        "s2:medium_proba_clouds_percentage": pct[8],
        "s2:high_proba_clouds_percentage": pct[9],
        "s2:thin_cirrus_percentage": pct[10],
    }


def _mgrs_names(config: DemoConfig, n: int) -> list[str]:
    """MGRS-like tile names of neighbouring tiles (east of one another), e.g. 17RNJ, 17RPJ."""
    from pyproj import CRS

    name = CRS.from_epsg(config.epsg).name  # "WGS 84 / UTM zone 17N"
    zone = name.rsplit(" ", 1)[-1].rstrip("NS") if "UTM zone" in name else "17"
    lat = config.center_lonlat[1]
    band = "CDEFGHJKLMNPQRSTUVWXX"[int(np.clip((lat + 80) // 8, 0, 20))]
    return [f"{zone}{band}{_MGRS_COLUMNS[i % len(_MGRS_COLUMNS)]}J" for i in range(n)]


def _item(item_id: str, *, when: dt.datetime, tile: str, platform: str, bounds: tuple[float, float, float, float],
          epsg: int, tile_size: int, scl: np.ndarray, root: Path) -> dict[str, Any]:
    """The Earth Search v1 item of one scene; cloud cover and class percentages come from its SCL."""
    stats = _scl_stats(scl)
    cloud_cover = stats.pop("eo:cloud_cover")
    extra: dict[str, Any] = {k: round(v, 4) for k, v in stats.items()}
    sat, baseline = platform[-1].upper(), "0400" if when >= BASELINE_CHANGE else "0214"
    extra |= {
        "mgrs:utm_zone": int(tile[:2]), "mgrs:latitude_band": tile[2], "mgrs:grid_square": tile[3:],
        "s2:product_uri": f"S2{sat}_MSIL2A_{when:%Y%m%dT%H%M%S}_N{baseline}_R054_T{tile}_{when:%Y%m%dT%H%M%S}.SAFE",
        "created": (when + dt.timedelta(hours=3)).isoformat().replace("+00:00", "Z"),
        "s2pipe:synthetic": True,
    }
    assets = {b: str(root / "scenes" / item_id / f"{b}.tif") for b in (*SPECTRAL_10, "SCL")}
    return earth_search_item(
        item_id, datetime=when, epsg=epsg, bounds=bounds, assets=assets,
        shapes={10: (tile_size, tile_size), 20: (tile_size // 2, tile_size // 2)}, cloud_cover=cloud_cover,
        mgrs_tile=tile, platform=platform, extra_properties=extra,
    )


def _write_scene(scene_dir: Path, layers: dict[str, tuple[np.ndarray, Affine]], epsg: int, block: int) -> None:
    """Write one scene's single-band COGs (runs in a writer process or thread)."""
    scene_dir.mkdir()
    for band, (arr, tf) in layers.items():
        write_cog(scene_dir / f"{band}.tif", arr, transform=tf, epsg=epsg, nodata=0, blocksize=block)


def _writer_pool(workers: int | None, n_pixels: int) -> tuple[Executor, int]:
    """The executor that writes the COGs, and its size.

    rasterio holds the GIL while GDAL builds a COG, so threads do not write in parallel; forked processes
    do. Processes are forked (Linux only): a forked child re-imports nothing, so scripts need no
    ``__main__`` guard. ``workers=None`` forks up to 4 processes for regions of >= 4 M pixels per band (the
    default region has ~19 M) when this process runs a single thread (forking a multi-threaded process,
    e.g. inside Prefect or Dask, could copy a lock another thread holds); otherwise it writes with one
    thread beside the rendering, as ``workers=0`` always does. Daemonic processes (Dask workers) cannot
    have children and use the thread.
    """
    import multiprocessing as mp
    import sys
    import threading

    if workers is None:
        big = n_pixels >= 4_000_000 and threading.active_count() == 1
        workers = min(4, os.cpu_count() or 1) if big else 0
    if workers > 0 and sys.platform.startswith("linux") and not mp.current_process().daemon:
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")), workers
    return ThreadPoolExecutor(max_workers=1), 1


def _build(tmp: Path, root: Path, config: DemoConfig, progress: Callable[[int, int], None] | None,
           workers: int | None = None) -> None:
    """Write the whole region into ``tmp`` with hrefs pointing into ``root`` (its final place)."""
    from s2pipe import __version__

    grid = _grid(config)
    dates = _dates(config)
    rng = np.random.default_rng([config.seed, 0])
    vec = _world_vectors(grid, rng)
    classes = _landcover(grid, vec)
    first, last = _parse_date(config.start, "start"), _parse_date(config.end, "end")
    built = _new_road_date(first, last)
    world = _world(grid, classes, rng, range(first.year, last.year + 1),
                   classes_before=_landcover(grid, vec, new_roads=False), built=built)

    _write_truth(tmp, grid, classes, vec, built, config)
    tiles = _mgrs_names(config, config.n_tiles)
    items = _write_scenes(tmp, root, config, grid, world, dates, tiles, progress=progress, workers=workers)
    items.sort(key=lambda it: (it["properties"]["datetime"], it["id"]))
    (tmp / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))

    bbox, collection = _collection(grid, items)
    (tmp / "collection.json").write_text(json.dumps(collection, indent=1))
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": f"s2pipe {__version__}",
        "root": str(root),
        "config": config.to_json(),
        "epsg": grid.epsg,
        "bounds": list(grid.bounds),
        "shape_10m": [grid.height, grid.width],
        "bbox": list(bbox),
        "default_bbox": list(_default_bbox(grid, config)),
        "classes": {str(k): v for k, v in CLASSES.items()},
        "tiles": {t: list(grid.tile_bounds(i)) for i, t in enumerate(tiles)},
        "dates": [d.isoformat() for d in dates],
        "new_road_built": built.date().isoformat(),
        "n_items": len(items),
        "files": {"items": "items.json", "collection": "collection.json", "landcover": "landcover.tif",
                  "roads": "vectors/roads.geojson", "mangroves": "vectors/mangroves.geojson", "scenes": "scenes"},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _write_truth(tmp: Path, grid, classes: np.ndarray, vec: dict, built: dt.datetime, config: DemoConfig) -> None:
    """The region's ground truth: the land-cover COG and the road and mangrove vectors (GeoJSON)."""
    (tmp / "vectors").mkdir()
    (tmp / "scenes").mkdir()
    write_cog(tmp / "landcover.tif", classes, transform=grid.transform, epsg=grid.epsg, nodata=0,
              blocksize=config.block_size)
    _write_geojson(tmp / "vectors" / "roads.geojson",
                   [(g, {"id": i, "highway": "tertiary" if k == "new" else k,
                         "width_m": {"primary": 15.0, "new": 12.0}.get(k, 8.0),
                         "built": built.date().isoformat() if k == "new" else None})
                    for i, (g, k) in enumerate(vec["roads"])], grid.epsg)
    _write_geojson(tmp / "vectors" / "mangroves.geojson",
                   [(p, {"id": i, "class": "mangrove", "area_m2": round(p.area, 1)})
                    for i, p in enumerate(vec["mangrove"])], grid.epsg)



def _write_scenes(tmp: Path, root: Path, config: DemoConfig, grid, world, dates: list[dt.date], tiles: list[str], *,
                  progress: Callable[[int, int], None] | None, workers: int | None) -> list[dict[str, Any]]:
    """Render every date, cut it into its tiles and write each scene's COGs (in a pool of writers, a few dates in
    flight); returns the scenes' item dicts, hrefs pointing into ``root``."""
    utc_hour = _SOLAR_TIME_H - config.center_lonlat[0] / 15.0
    ts, t20 = config.tile_size, config.tile_size // 2
    total, done = len(dates) * config.n_tiles, 0
    items: list[dict[str, Any]] = []
    pending: list[Future] = []

    def drain(keep: int) -> None:
        nonlocal done
        while len(pending) > keep:
            pending.pop(0).result()
            done += 1
            if progress is not None:
                progress(done, total)

    pool, n_workers = _writer_pool(workers, total * ts * ts)
    with pool:
        try:
            for day in dates:
                rng_d = np.random.default_rng([config.seed, day.toordinal(), 2])
                platform = "sentinel-2a" if (day.toordinal() // config.revisit_days) % 2 == 0 else "sentinel-2b"
                t0 = dt.datetime.combine(day, dt.time(0), tzinfo=dt.timezone.utc) + dt.timedelta(
                    hours=utc_hour, seconds=float(rng_d.uniform(-20, 20)))
                t0 = t0.replace(microsecond=(t0.microsecond // 1000) * 1000)
                refl10, refl20, scl = _render(world, t0, rng_d)
                new_baseline = t0 >= BASELINE_CHANGE
                dn10, dn20 = _to_dn(refl10, new_baseline), _to_dn(refl20, new_baseline)
                for i, tile in enumerate(tiles):
                    when = t0 + dt.timedelta(seconds=2.6 * i)  # neighbouring tiles: a few seconds apart
                    c10, c20 = i * grid.step, i * grid.step // 2
                    arrays = {b: np.ascontiguousarray(dn10[j, :, c10:c10 + ts]) for j, b in enumerate(_B10)}
                    arrays |= {b: np.ascontiguousarray(dn20[j, :, c20:c20 + t20]) for j, b in enumerate(_B20)}
                    arrays["SCL"] = np.ascontiguousarray(scl[:, c20:c20 + t20])
                    item_id = f"S2{platform[-1].upper()}_{tile}_{day:%Y%m%d}_0_L2A"
                    tb = grid.tile_bounds(i)
                    items.append(_item(item_id, when=when, tile=tile, platform=platform, bounds=tb, epsg=grid.epsg,
                                       tile_size=ts, scl=arrays["SCL"], root=root))
                    tf10 = Affine(10.0, 0.0, tb[0], 0.0, -10.0, tb[3])
                    tf20 = Affine(20.0, 0.0, tb[0], 0.0, -20.0, tb[3])
                    layers = {b: (a, tf10 if a.shape[0] == ts else tf20) for b, a in arrays.items()}
                    pending.append(pool.submit(_write_scene, tmp / "scenes" / item_id, layers, grid.epsg,
                                               config.block_size))
                drain(keep=2 * config.n_tiles * n_workers)  # a few dates in flight: bounded memory
            drain(keep=0)
        except BaseException:
            for f in pending:  # do not write what nobody will keep
                f.cancel()
            raise

    return items


def _collection(grid, items: list[dict[str, Any]]) -> tuple[tuple[float, float, float, float], dict[str, Any]]:
    """The region's lon/lat bbox and its STAC Collection (the extent of ``items``)."""
    from s2pipe.synthetic.items import footprint_lonlat

    footprint = footprint_lonlat(grid.epsg, grid.bounds)["coordinates"][0]
    lons, lats = [c[0] for c in footprint], [c[1] for c in footprint]
    bbox = (min(lons), min(lats), max(lons), max(lats))
    times = [it["properties"]["datetime"] for it in items]
    collection = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": "sentinel-2-l2a",
        "title": "Sentinel-2 Level-2A (s2pipe synthetic demo region)",
        "description": "Synthetic Sentinel-2 L2A scenes generated by s2pipe.synthetic.demo in the form of Earth Search v1 "
                       "items: a subtropical coast with mangroves, seasonal forest, grassland, water, bare soil, "
                       "a town and roads; clouds, shadows and missing dates included.",
        "license": "CC0-1.0",
        "keywords": ["sentinel-2", "l2a", "synthetic", "s2pipe"],
        "extent": {
            "spatial": {"bbox": [list(bbox)]},
            "temporal": {"interval": [[times[0] if times else None, times[-1] if times else None]]},
        },
        "summaries": {"platform": ["sentinel-2a", "sentinel-2b"], "constellation": ["sentinel-2"],
                      "instruments": ["msi"], "gsd": [10, 20], "proj:epsg": [grid.epsg]},
        "links": [],
    }
    return bbox, collection


def _new_road_date(first: dt.date, last: dt.date) -> dt.datetime:
    """The new road appears 58 % of the way through the period (2022-02-28 for the default 2021-2022)."""
    day = first + dt.timedelta(days=round(0.58 * (last - first).days))
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.timezone.utc)


def _default_bbox(grid: _Grid, config: DemoConfig) -> tuple[float, float, float, float]:
    """Lon/lat AOI centred on the overlap of the first two tiles, half the union wide, 3/4 of it high."""
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = grid.bounds
    if config.n_tiles > 1:
        cx = xmin + 10.0 * (grid.step + config.tile_size) / 2.0  # centre of the first overlap
    else:
        cx = (xmin + xmax) / 2.0
    half = min(0.25 * (xmax - xmin), cx - xmin - 20.0, xmax - cx - 20.0)
    inset = (ymax - ymin) / 8.0
    x0, x1, y0, y1 = cx - half, cx + half, ymin + inset, ymax - inset
    tr = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
    n = 9
    xs = np.r_[np.linspace(x0, x1, n), np.full(n, x1), np.linspace(x1, x0, n), np.full(n, x0)]
    ys = np.r_[np.full(n, y0), np.linspace(y0, y1, n), np.full(n, y1), np.linspace(y1, y0, n)]
    lon, lat = tr.transform(xs, ys)
    # Rounded to 1e-5 degrees (~1 m) towards the inside.
    return (math.ceil(lon.min() * 1e5) / 1e5, math.ceil(lat.min() * 1e5) / 1e5,
            math.floor(lon.max() * 1e5) / 1e5, math.floor(lat.max() * 1e5) / 1e5)

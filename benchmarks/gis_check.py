"""Headless QGIS check of the demo outputs: do they open, georeferenced and styled, in QGIS?

It opens, with the QGIS Python API (``qgis.core``) and no display (``QgsApplication([], False)``,
``QT_QPA_PLATFORM=offscreen``):

1. the cube ``out/demo-cube.zarr`` as ``ZARR:"<store>":/reflectance:<t>:<b>`` (GDAL before 3.10 needs the time
   and band index), with ``<t>`` the latest of the clearest dates (largest share of ``observed`` pixels) and
   ``<b>`` the index of B04, both read from the store's ``time``, ``band`` and ``observed`` arrays with GDAL's
   multidimensional API; and ``<store>/overviews/1/reflectance`` the same way when the store has that
   overview level;
2. an exported COG of ``out/demo-gis/`` (``s2pipe export``), drawn as RGB (B04, B03, B02) with a min/max stretch;
3. the class map ``out/demo-maps/map-2022/class_map.tif`` and the change map ``out/demo-maps/new-roads.tif``
   with the ``.qml`` style and ``.tif.aux.xml`` categories written beside them;
4. the change polygons ``out/demo-maps/new-roads.gpkg``;
5. the road lines ``out/demo/vectors/roads.geojson``, drawn on top of every raster.

For each raster it prints whether the layer is valid, its provider, CRS, extent, size, band names and legend
entries (for a paletted renderer its classes' values, labels and colours; and the legend nodes QGIS would show
in its Layers panel), and renders it in its own CRS and extent, about 800 px wide, with the roads on top, to
``out/gis-check/<name>.png``; the cube also in EPSG:4326 (``cube-epsg4326.png``: QGIS reprojects it, where
GDAL < 3.10 prints wrong lon/lat corners for Zarr). For each vector layer: feature count, fields, geometry
type. GDAL/OGR warnings and QGIS log messages seen while a file is opened are listed with it. The class and
change maps are also opened from a copy without their ``.qml`` (``without_qml``: the legend QGIS builds from
the ``.tif.aux.xml`` and colour table alone), and GDAL's view of their categories and raster attribute
table is listed (QGIS 3.22 has no API for raster attribute tables).

Georeferencing: points every 10 m along the road lines, transformed into the class map's CRS, are sampled
from the class map (``dataProvider().sample``); the share that falls on road-class pixels is compared with
the share on the class map shifted one pixel in each of the 8 directions (the true position must win). On
the cube and COG layers the mean B04 at the same points is compared the same way (informative), and every
raster's extent is compared with the class map's (they share the cube's grid).

Everything is also written to ``out/gis-check/report.json``. Exit status 1 when a layer is invalid, a render
is empty (every pixel one colour, with or without the roads), a cube or COG layer is off the class map's grid
or the class map is as well or better aligned with the roads when shifted one pixel; 2 when an input is
missing.

It uses the standard library, QGIS and GDAL's Python bindings only (Debian's ``python3-qgis`` and
``python3-gdal``), not s2pipe, so it runs under Debian's ``/usr/bin/python3``. Run::

    make gis-check      # installs qgis + python3-qgis with apt-get if needed, makes the demo outputs, runs this

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 benchmarks/gis_check.py [--root .] [--out out/gis-check]
"""
from __future__ import annotations

import argparse
import array
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from osgeo import gdal  # noqa: E402  (Debian's python3-gdal, a dependency of python3-qgis)
from qgis.core import (  # noqa: E402
    Qgis,
    QgsApplication,
    QgsContrastEnhancement,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsLayerTreeLayer,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsMultiBandColorRenderer,
    QgsPalettedRasterRenderer,
    QgsPointXY,
    QgsProject,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QSize, Qt  # noqa: E402
from qgis.PyQt.QtGui import QColor, QImage  # noqa: E402

gdal.UseExceptions()

ROAD_STEP_M = 10.0
"""Spacing of the road sample points along each line, metres."""
RGB_BANDS = ("B04", "B03", "B02")
"""Bands of an exported COG drawn as red, green, blue."""
SHIFTS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0)]
"""One-pixel shifts (columns, rows) of the class map the true position is compared with."""


class Messages:
    """GDAL/OGR errors and warnings and QGIS log messages, collected while a file is opened.

    Attributes
    ----------
    items : list of str
        The messages caught since the last :meth:`take`, as ``"<source> <level>: <text>"``.
    """

    def __init__(self) -> None:
        self.items: list[str] = []

    def qgis(self, message: str, tag: str, level: Any) -> None:
        """Slot for ``QgsMessageLog.messageReceived``: keep warnings and errors.

        Parameters
        ----------
        message, tag : str
            The message and its tag (e.g. ``"GDAL"``, ``"OGR"``).
        level : Qgis.MessageLevel
            Its level; ``Info`` messages are dropped.
        """
        if level != Qgis.Info:
            name = {Qgis.Warning: "warning", Qgis.Critical: "critical"}.get(level, str(int(level)))
            self.items.append(f"QGIS[{tag}] {name}: {message.strip()}")

    @contextlib.contextmanager
    def gdal(self) -> Iterator[None]:
        """Catch GDAL/OGR messages (warnings and errors) raised inside the block.

        Yields
        ------
        None
        """
        names = {gdal.CE_Warning: "warning", gdal.CE_Failure: "error", gdal.CE_Fatal: "fatal"}

        def handler(level: int, number: int, text: str) -> None:
            if level in names:
                self.items.append(f"GDAL {names[level]}: {text.strip()}")

        gdal.PushErrorHandler(handler)
        try:
            yield
        finally:
            gdal.PopErrorHandler()

    def take(self) -> list[str]:
        """The messages caught so far, without repeats, and forget them.

        Returns
        -------
        list of str
        """
        out = list(dict.fromkeys(self.items))
        self.items.clear()
        return out


def gdal_warnings(messages: Messages, path: str, vector: bool = False) -> list[str]:
    """Open ``path`` with GDAL/OGR directly and return the warnings it gives.

    Parameters
    ----------
    messages : Messages
        The collector (emptied first).
    path : str
        A file or a GDAL connection string.
    vector : bool, default False
        Open as a vector data set (every layer's features are counted, which reads them).

    Returns
    -------
    list of str
    """
    messages.take()
    with messages.gdal():
        try:
            ds = gdal.OpenEx(path, gdal.OF_VECTOR if vector else gdal.OF_RASTER)
            if vector:
                for i in range(ds.GetLayerCount()):
                    ds.GetLayer(i).GetFeatureCount()
            else:
                ds.GetRasterBand(1).GetDescription()
            ds = None
        except RuntimeError as exc:
            messages.items.append(f"GDAL error: {exc}")
    return messages.take()


def cube_choice(store: Path) -> dict[str, Any]:
    """The date and band of the cube to open, read from its coordinate arrays.

    Parameters
    ----------
    store : Path
        The Zarr store written by s2pipe.

    Returns
    -------
    dict
        ``bands`` (names), ``dates`` (ISO days), ``clear`` (share of observed pixels per date),
        ``time_index`` (the latest of the clearest dates), ``band_index`` (of B04), ``overviews`` (the overview
        levels ``k`` with a ``<store>/overviews/<k>/reflectance`` array).
    """
    ds = gdal.OpenEx(str(store), gdal.OF_MULTIDIM_RASTER)
    root = ds.GetRootGroup()
    bands = [str(b) for b in root.OpenMDArray("band").Read()]
    time_array = root.OpenMDArray("time")
    unit = time_array.GetUnit() or ""  # CF: "<days|hours|...> since <origin>"
    step, _, origin = unit.partition(" since ")
    seconds = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}[step.strip()]
    start = dt.datetime.fromisoformat(origin.strip().replace(" ", "T"))
    raw = time_array.Read(buffer_datatype=gdal.ExtendedDataType.Create(gdal.GDT_Float64))
    dates = [(start + dt.timedelta(seconds=v * seconds)).date().isoformat() for v in array.array("d", bytes(raw))]
    observed = root.OpenMDArray("observed")  # (time, y, x) uint8, 1 = clear observation
    per_date = observed.GetDimensions()[1].GetSize() * observed.GetDimensions()[2].GetSize()
    values = observed.Read()
    clear = [values[i * per_date:(i + 1) * per_date].count(1) / per_date for i in range(len(dates))]
    best = max(clear)
    time_index = max(i for i, c in enumerate(clear) if c == best)
    metadata = json.loads((store / ".zmetadata").read_text())["metadata"] if (store / ".zmetadata").exists() else {}
    overviews = sorted({int(k.split("/")[1]) for k in metadata
                        if k.startswith("overviews/") and k.endswith("/reflectance/.zarray")
                        and k.split("/")[1].isdigit()})
    if (store / "overviews").is_dir():  # also an overview group missing from the consolidated metadata
        overviews = sorted(set(overviews) | {int(p.name) for p in (store / "overviews").iterdir()
                                            if p.name.isdigit() and (p / "reflectance").is_dir()})
    return {"bands": bands, "dates": dates, "clear": [round(c, 4) for c in clear], "time_index": time_index,
            "band_index": bands.index("B04"), "overviews": overviews}


def band_names(layer: QgsRasterLayer) -> list[dict[str, str]]:
    """Each band's name as QGIS shows it and its GDAL description.

    Parameters
    ----------
    layer : QgsRasterLayer

    Returns
    -------
    list of dict
        ``{"qgis": layer.bandName(i), "description": ...}`` per band; the description is
        ``dataProvider().bandDescription(i)`` where QGIS has it (3.34+), else GDAL's band description.
    """
    provider = layer.dataProvider()
    out = []
    ds = None
    for i in range(1, layer.bandCount() + 1):
        if hasattr(provider, "bandDescription"):
            description = provider.bandDescription(i)
        else:
            if ds is None:
                with contextlib.suppress(RuntimeError):
                    ds = gdal.Open(layer.source())
            description = ds.GetRasterBand(i).GetDescription() if ds is not None else ""
        out.append({"qgis": layer.bandName(i), "description": description})
    return out


def color_hex(color: QColor) -> str:
    """``#rrggbb`` or ``#rrggbbaa`` (when not opaque) of a QColor.

    Parameters
    ----------
    color : QColor

    Returns
    -------
    str
    """
    text = color.name()
    return text if color.alpha() == 255 else f"{text}{color.alpha():02x}"


def legend(layer: QgsRasterLayer | QgsVectorLayer) -> dict[str, Any]:
    """The layer's renderer and legend entries.

    Parameters
    ----------
    layer : QgsRasterLayer or QgsVectorLayer

    Returns
    -------
    dict
        ``renderer`` (its type), ``classes`` (paletted renderers: value, label, colour), ``symbology``
        (the renderer's legend items: label, colour; rasters only) and ``nodes`` (the texts of the legend nodes
        of the layer in a layer tree, i.e. what the Layers panel lists under it).
    """
    renderer = layer.renderer()
    out: dict[str, Any] = {"renderer": renderer.type() if renderer is not None else None}
    if isinstance(renderer, QgsPalettedRasterRenderer):
        out["classes"] = [{"value": c.value, "label": c.label, "color": color_hex(c.color)}
                          for c in renderer.classes()]
    if isinstance(layer, QgsRasterLayer) and renderer is not None:
        out["symbology"] = [{"label": label, "color": color_hex(color)}
                            for label, color in renderer.legendSymbologyItems()]
    tree_layer = QgsLayerTreeLayer(layer)
    nodes = layer.legend().createLayerTreeModelLegendNodes(tree_layer) if layer.legend() else []
    out["nodes"] = [node_text(n) for n in nodes]
    del nodes, tree_layer
    return out


def node_text(node: Any) -> str:
    """The text of a legend node, or ``<its class name>`` when it has none (a colour ramp, say).

    Parameters
    ----------
    node : QgsLayerTreeModelLegendNode

    Returns
    -------
    str
    """
    text = node.data(Qt.DisplayRole)
    return str(text) if text not in (None, "") and not getattr(text, "isNull", lambda: False)() else \
        f"<{type(node).__name__}>"


def extent_list(rect: QgsRectangle) -> list[float]:
    """``[xmin, ymin, xmax, ymax]`` of a rectangle, rounded to the millimetre.

    Parameters
    ----------
    rect : QgsRectangle

    Returns
    -------
    list of float
    """
    return [round(v, 3) for v in (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())]


def _validity(layer) -> dict[str, Any]:
    """Whether ``layer`` is valid, its provider and source, and QGIS's error summary when it is not."""
    out: dict[str, Any] = {"valid": layer.isValid(), "provider": layer.providerType(), "source": layer.source()}
    if not layer.isValid():
        out["error"] = layer.error().summary()
    return out


def describe_raster(layer: QgsRasterLayer) -> dict[str, Any]:
    """Validity, provider, CRS, extent, size, bands and legend of a raster layer.

    Parameters
    ----------
    layer : QgsRasterLayer

    Returns
    -------
    dict
    """
    out = _validity(layer)
    if not layer.isValid():
        return out
    out.update({"crs": layer.crs().authid() or layer.crs().description(), "extent": extent_list(layer.extent()),
                "width": layer.width(), "height": layer.height(), "band_count": layer.bandCount(),
                "pixel_size": [round(layer.rasterUnitsPerPixelX(), 6), round(layer.rasterUnitsPerPixelY(), 6)],
                "lonlat_extent": lonlat_extent(layer), "bands": band_names(layer), "legend": legend(layer)})
    qml = Path(layer.source()).with_suffix(".qml")
    if qml.exists():  # QGIS applied it when the layer was opened; loading it again tells whether it reads
        message, ok = layer.loadDefaultStyle()
        out["style"] = {"qml": str(qml), "loaded": ok, "message": message}
    with contextlib.suppress(RuntimeError, AttributeError):
        ds = gdal.Open(layer.source())  # keep the data set referenced while its band is used
        band = ds.GetRasterBand(1)
        rat = band.GetDefaultRAT()  # first: GDAL 3.6's GTiff gives no PAM category names before the PAM is read
        names = band.GetCategoryNames()
        if names or rat is not None:
            out["gdal_categories"] = {
                "names": {i: n for i, n in enumerate(names or []) if n},
                "rat_columns": [rat.GetNameOfCol(i) for i in range(rat.GetColumnCount())] if rat is not None else [],
                "rat_rows": rat.GetRowCount() if rat is not None else 0}
    return out


def lonlat_extent(layer: QgsRasterLayer) -> list[float]:
    """The layer's extent transformed by QGIS to EPSG:4326 (lon/lat), rounded to 1e-6 degrees.

    Parameters
    ----------
    layer : QgsRasterLayer

    Returns
    -------
    list of float
        ``[west, south, east, north]``.
    """
    transform = QgsCoordinateTransform(layer.crs(), QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    box = transform.transformBoundingBox(layer.extent())
    return [round(v, 6) for v in (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum())]


def describe_vector(layer: QgsVectorLayer) -> dict[str, Any]:
    """Validity, provider, CRS, extent, feature count, fields and geometry type of a vector layer.

    Parameters
    ----------
    layer : QgsVectorLayer

    Returns
    -------
    dict
    """
    out = _validity(layer)
    if not layer.isValid():
        return out
    out.update({"crs": layer.crs().authid(), "extent": extent_list(layer.extent()),
                "features": layer.featureCount(), "geometry": QgsWkbTypes.displayString(layer.wkbType()),
                "fields": [f"{f.name()} ({f.typeName()})" for f in layer.fields()], "legend": legend(layer)})
    return out


def style_rgb(layer: QgsRasterLayer, names: tuple[str, str, str]) -> dict[str, Any]:
    """Draw ``layer`` as RGB from the bands described ``names``, each stretched from its minimum to maximum.

    Parameters
    ----------
    layer : QgsRasterLayer
        A multi-band layer whose band descriptions (or QGIS band names) contain the band names.
    names : tuple of str
        Red, green and blue band names.

    Returns
    -------
    dict
        ``bands`` (the 1-based band numbers used) and ``stretch`` (per band: name, min, max).
    """
    provider = layer.dataProvider()
    found = {}
    for i, band in enumerate(band_names(layer), start=1):
        for name in names:
            if band["description"] == name or band["qgis"].endswith(f": {name}") or band["qgis"] == name:
                found.setdefault(name, i)
    numbers = [found[n] for n in names]
    renderer = QgsMultiBandColorRenderer(provider, *numbers)
    stretch = []
    for name, number, setter in zip(names, numbers, (renderer.setRedContrastEnhancement,
                                                     renderer.setGreenContrastEnhancement,
                                                     renderer.setBlueContrastEnhancement)):
        stats = provider.bandStatistics(number, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
        enhancement = QgsContrastEnhancement(provider.dataType(number))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        enhancement.setMinimumValue(stats.minimumValue)
        enhancement.setMaximumValue(stats.maximumValue)
        setter(enhancement)
        stretch.append({"band": name, "number": number, "min": round(stats.minimumValue, 6),
                        "max": round(stats.maximumValue, 6)})
    layer.setRenderer(renderer)
    return {"bands": numbers, "stretch": stretch}


def style_roads(layer: QgsVectorLayer) -> None:
    """A thin cyan line, so that the road pixels beneath stay visible.

    Parameters
    ----------
    layer : QgsVectorLayer
    """
    symbol = layer.renderer().symbol()
    symbol.setColor(QColor(0, 230, 255))
    symbol.setWidth(0.3)  # millimetres: about 1 px at 96 dpi, a road pixel is ~3.5 px at 800 px wide


def style_outline(layer: QgsVectorLayer) -> None:
    """Yellow polygon outlines without fill.

    Parameters
    ----------
    layer : QgsVectorLayer
    """
    symbol = layer.renderer().symbol()
    symbol.setColor(QColor(0, 0, 0, 0))
    symbol.symbolLayer(0).setStrokeColor(QColor(255, 220, 0))
    symbol.symbolLayer(0).setStrokeWidth(0.5)


def render(layers: list, crs: QgsCoordinateReferenceSystem, extent: QgsRectangle, size: int,
           path: Path | None = None) -> dict[str, Any]:
    """Render ``layers`` (first on top) on white in ``crs`` over ``extent``, ``size`` px on the longer side.

    Parameters
    ----------
    layers : list of QgsMapLayer
        Top first.
    crs : QgsCoordinateReferenceSystem
        Destination CRS.
    extent : QgsRectangle
        Map extent, in ``crs``.
    size : int
        Pixels on the longer side.
    path : Path, optional
        Save the image here (PNG).

    Returns
    -------
    dict
        ``size`` ([width, height]), ``colours`` (number of distinct colours, counted up to 1000), ``empty`` (every
        pixel one colour), ``errors`` (the render job's), ``seconds`` and ``png`` (when saved).
    """
    ratio = extent.height() / extent.width()
    width, height = (size, max(1, round(size * ratio))) if ratio <= 1 else (max(1, round(size / ratio)), size)
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(crs)
    settings.setExtent(extent)
    settings.setOutputSize(QSize(width, height))
    settings.setOutputDpi(96)
    settings.setBackgroundColor(QColor(255, 255, 255))
    start = time.perf_counter()
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage().convertToFormat(QImage.Format_ARGB32)
    seconds = time.perf_counter() - start
    raw = image.constBits().asstring(image.sizeInBytes())
    colours: set[bytes] = set()
    for i in range(0, len(raw), 4 * 7):  # every 7th pixel is enough to tell one colour from many
        colours.add(raw[i:i + 4])
        if len(colours) >= 1000:
            break
    empty = len(set(raw[i:i + 4] for i in range(0, len(raw), 4))) == 1 if len(colours) == 1 else False
    out = {"size": [width, height], "colours": len(colours), "empty": empty,
           "errors": [f"{e.layerID}: {e.message}" for e in job.errors()], "seconds": round(seconds, 3)}
    if path is not None:
        image.save(str(path), "PNG")
        out["png"] = str(path)
    return out


def road_points(roads: QgsVectorLayer, crs: QgsCoordinateReferenceSystem, step: float) -> list[QgsPointXY]:
    """Points every ``step`` along every road line, in ``crs``.

    Parameters
    ----------
    roads : QgsVectorLayer
        Line layer.
    crs : QgsCoordinateReferenceSystem
        A projected CRS in metres (the class map's).
    step : float
        Spacing, in ``crs`` units.

    Returns
    -------
    list of QgsPointXY
    """
    transform = QgsCoordinateTransform(roads.crs(), crs, QgsProject.instance())
    points = []
    for feature in roads.getFeatures():
        geometry = feature.geometry()
        geometry.transform(transform)
        length = geometry.length()
        n = int(length // step)
        points.extend(geometry.interpolate(k * step).asPoint() for k in range(n + 1))
    return points


def sample_values(layer: QgsRasterLayer, points: list[QgsPointXY], shift: tuple[int, int] = (0, 0),
                  band: int = 1) -> list[float | None]:
    """Values of ``layer`` at ``points`` moved by ``shift`` pixels (the layer shifted the other way).

    Parameters
    ----------
    layer : QgsRasterLayer
    points : list of QgsPointXY
        In the layer's CRS.
    shift : (int, int), default (0, 0)
        Columns to the east, rows to the south.
    band : int, default 1

    Returns
    -------
    list of float or None
        None where the point falls outside the layer or on nodata.
    """
    provider = layer.dataProvider()
    px, py = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    out = []
    for p in points:
        value, ok = provider.sample(QgsPointXY(p.x() + shift[0] * px, p.y() - shift[1] * py), band)
        out.append(value if ok and not math.isnan(value) else None)
    return out


def inner(layer: QgsRasterLayer, points: list[QgsPointXY]) -> list[QgsPointXY]:
    """The points at least one pixel inside the layer's extent, so that every one-pixel shift stays inside.

    Parameters
    ----------
    layer : QgsRasterLayer
    points : list of QgsPointXY

    Returns
    -------
    list of QgsPointXY
    """
    e = layer.extent()
    px, py = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    return [p for p in points if e.xMinimum() + px < p.x() < e.xMaximum() - px
            and e.yMinimum() + py < p.y() < e.yMaximum() - py]


def road_share(layer: QgsRasterLayer, points: list[QgsPointXY], road_value: float) -> dict[str, Any]:
    """Share of the road sample points on road-class pixels, at the true position and shifted one pixel.

    Parameters
    ----------
    layer : QgsRasterLayer
        The class map.
    points : list of QgsPointXY
        Road sample points in the layer's CRS, one pixel inside its extent.
    road_value : float
        The road class's pixel value.

    Returns
    -------
    dict
        ``points``, ``share`` (true position), ``shifted`` (per shift ``"dx,dy"``), ``best_shifted`` and ``ok``
        (the true position beats every shift).
    """
    def share(shift: tuple[int, int]) -> float:
        values = sample_values(layer, points, shift)
        return sum(v == road_value for v in values) / max(1, len(values))

    true = share((0, 0))
    shifted = {f"{dx},{dy}": round(share((dx, dy)), 4) for dx, dy in SHIFTS}
    best = max(shifted.values())
    return {"points": len(points), "road_value": road_value, "share": round(true, 4), "shifted": shifted,
            "best_shifted": best, "mean_shifted": round(sum(shifted.values()) / len(shifted), 4),
            "ok": bool(points) and true > best}


def road_contrast(layer: QgsRasterLayer, points: list[QgsPointXY], band: int) -> dict[str, Any]:
    """Mean value of ``band`` at the road sample points, at the true position and shifted one pixel.

    Parameters
    ----------
    layer : QgsRasterLayer
    points : list of QgsPointXY
        Road sample points in the layer's CRS, one pixel inside its extent.
    band : int
        1-based band number (B04 of a COG; 1 for a single-band Zarr slice).

    Returns
    -------
    dict
        ``mean`` (true position), ``shifted`` (per shift), ``true_is_extreme`` (the true mean is above, or
        below, every shifted mean: the roads are where the layer has them).
    """
    def mean(shift: tuple[int, int]) -> float | None:
        values = [v for v in sample_values(layer, points, shift, band) if v is not None]
        return sum(values) / len(values) if values else None

    true = mean((0, 0))
    shifted = {f"{dx},{dy}": mean((dx, dy)) for dx, dy in SHIFTS}
    others = [v for v in shifted.values() if v is not None]
    extreme = true is not None and bool(others) and (true > max(others) or true < min(others))
    return {"band": band, "mean": None if true is None else round(true, 5),
            "shifted": {k: None if v is None else round(v, 5) for k, v in shifted.items()},
            "true_is_extreme": extreme}


def same_grid(layer: QgsRasterLayer, reference: QgsRasterLayer) -> dict[str, Any]:
    """Whether ``layer`` lies on ``reference``'s grid: the same top-left corner and edges.

    Parameters
    ----------
    layer, reference : QgsRasterLayer

    Returns
    -------
    dict
        ``top_left_offset_px`` and ``max_offset_px`` (largest difference of the four edges), in pixels of
        ``reference``; ``ok``: the top-left corners agree within 0.01 px and the right and bottom edges within
        one pixel of ``layer`` (an overview level pads an odd side by part of one of its pixels).
    """
    a, b = extent_list(layer.extent()), extent_list(reference.extent())
    px = reference.rasterUnitsPerPixelX()
    top_left = max(abs(a[0] - b[0]), abs(a[3] - b[3])) / px
    offset = max(abs(x - y) for x, y in zip(a, b)) / px
    ok = top_left < 0.01 and offset < max(0.01, layer.rasterUnitsPerPixelX() / px)
    return {"reference": reference.name(), "top_left_offset_px": round(top_left, 4),
            "max_offset_px": round(offset, 4), "ok": ok}


def print_layer(name: str, info: dict[str, Any]) -> None:
    """Print the report of one layer, a few lines.

    Parameters
    ----------
    name : str
    info : dict
        As made by :func:`describe_raster` / :func:`describe_vector`, with the checks added.
    """
    print(f"\n== {name}: valid={info['valid']} provider={info['provider']}")
    print(f"   source: {info['source']}")
    if not info["valid"]:
        print(f"   error: {info.get('error')}")
    for key in ("crs", "extent", "lonlat_extent", "pixel_size", "style", "gdal_categories", "features", "geometry",
                "fields", "stretch", "same_grid", "road_share", "road_contrast", "render", "render_alone",
                "render_epsg4326", "render_messages", "without_qml"):
        if key in info:
            print(f"   {key}: {json.dumps(info[key])}")
    if "width" in info:
        print(f"   size: {info['width']} x {info['height']}, {info['band_count']} band(s)")
    for i, band in enumerate(info.get("bands", []), start=1):
        if i <= 12:
            print(f"   band {i}: {band['qgis']!r} (description {band['description']!r})")
    if len(info.get("bands", [])) > 12:
        print(f"   ... {len(info['bands'])} bands")
    if "legend" in info:
        lg = info["legend"]
        print(f"   renderer: {lg['renderer']}")
        for c in lg.get("classes", []):
            print(f"   class {c['value']:g}: {c['label']!r} {c['color']}")
        for s in lg.get("symbology", []):
            print(f"   symbology: {s['label']!r} {s['color']}")
        print(f"   legend nodes: {lg['nodes']}")
    for m in info.get("messages", []):
        print(f"   message: {m}")
    for m in info.get("gdal_direct", []):
        print(f"   GDAL (direct open): {m}")
    for p in info.get("problems", []):
        print(f"   PROBLEM: {p}")


def without_qml(path: Path, messages: Messages) -> dict[str, Any]:
    """The legend QGIS makes of a paletted COG from its ``.aux.xml`` alone, as when the ``.qml`` got lost.

    The ``.tif`` and ``.tif.aux.xml`` are copied into a temporary folder and opened there.

    Parameters
    ----------
    path : Path
        The COG.
    messages : Messages
        The collector of GDAL/QGIS messages.

    Returns
    -------
    dict
        ``renderer``, ``classes`` (how many), ``named`` (value, label, colour of the classes whose label is not
        just their value) and ``messages``.
    """
    with tempfile.TemporaryDirectory(prefix="gis-check-") as tmp:
        for src in (path, path.with_name(path.name + ".aux.xml")):
            if src.exists():
                shutil.copy(src, Path(tmp) / src.name)
        with messages.gdal():
            layer = QgsRasterLayer(str(Path(tmp) / path.name), f"{path.stem} without .qml", "gdal")
        renderer = layer.renderer()
        out: dict[str, Any] = {"renderer": renderer.type() if renderer is not None else None}
        if isinstance(renderer, QgsPalettedRasterRenderer):
            classes = renderer.classes()
            out["classes"] = len(classes)
            out["named"] = [{"value": c.value, "label": c.label, "color": color_hex(c.color)}
                            for c in classes if c.label != f"{c.value:g}"]
        out["messages"] = messages.take()
        del renderer, layer
    return out


def run_checks(store: Path, cogs: list[Path], paths: dict[str, Path], out_dir: Path, size: int,
               messages: Messages) -> dict[str, Any]:
    """Open, describe, check and render every layer (QgsApplication initialised).

    Every QGIS object is created here and freed on return, before ``exitQgis``.

    Parameters
    ----------
    store : Path
        The cube.
    cogs : list of Path
        The exported COGs (one is opened: the cube's chosen date if exported, else the first).
    paths : dict
        ``class_map``, ``change_map``, ``change_polygons``, ``roads``.
    out_dir : Path
        Folder of the PNGs.
    size : int
        Render size, px on the longer side.
    messages : Messages
        The collector of GDAL/QGIS messages.

    Returns
    -------
    dict
        The report: ``cube_choice``, ``layers`` (per layer, as printed) and ``problems``.
    """
    report: dict[str, Any] = {"qgis": Qgis.QGIS_VERSION, "gdal": gdal.__version__, "layers": {}, "problems": []}
    layers: dict[str, Any] = {}
    choice = cube_choice(store)
    t, b = choice["time_index"], choice["band_index"]
    report["cube_choice"] = {"date": choice["dates"][t], "time_index": t, "clear_share": choice["clear"][t],
                             "band": choice["bands"][b], "band_index": b, "bands": choice["bands"],
                             "dates": len(choice["dates"]), "overview_levels": choice["overviews"]}

    # open everything, catching what GDAL/OGR and QGIS say meanwhile
    rasters: list[tuple[str, str, str]] = [("cube", f'ZARR:"{store}":/reflectance:{t}:{b}', "cube B04")]
    if 1 in choice["overviews"]:
        rasters.append(("cube_overview_1", f'ZARR:"{store}":/overviews/1/reflectance:{t}:{b}', "overview 1 B04"))
    cog = next((c for c in cogs if c.stem == choice["dates"][t]), cogs[0])
    rasters += [("cog", str(cog), f"COG {cog.stem}"), ("class_map", str(paths["class_map"]), "class map 2022"),
                ("change_map", str(paths["change_map"]), "new roads")]
    for key, uri, title in rasters:
        direct = gdal_warnings(messages, uri)
        with messages.gdal():
            layers[key] = QgsRasterLayer(uri, title, "gdal")
        info = describe_raster(layers[key])
        info["messages"], info["gdal_direct"] = messages.take(), direct
        report["layers"][key] = info
    for key in ("class_map", "change_map"):
        report["layers"][key]["without_qml"] = without_qml(paths[key], messages)
    for key, title in (("change_polygons", "new-road polygons"), ("roads", "roads")):
        direct = gdal_warnings(messages, str(paths[key]), vector=True)
        with messages.gdal():
            layers[key] = QgsVectorLayer(str(paths[key]), title, "ogr")
        info = describe_vector(layers[key])
        info["messages"], info["gdal_direct"] = messages.take(), direct
        report["layers"][key] = info

    roads, class_map, polygons = layers["roads"], layers["class_map"], layers["change_polygons"]
    if roads.isValid():
        style_roads(roads)
    if polygons.isValid():
        style_outline(polygons)

    # styling and georeferencing checks
    if layers["cog"].isValid():
        report["layers"]["cog"]["stretch"] = style_rgb(layers["cog"], RGB_BANDS)["stretch"]
    if class_map.isValid() and roads.isValid():
        road_value = next((c.value for c in getattr(class_map.renderer(), "classes", lambda: [])()
                           if c.label == "road"), 2.0)
        points = inner(class_map, road_points(roads, class_map.crs(), ROAD_STEP_M))
        report["layers"]["class_map"]["road_share"] = road_share(class_map, points, road_value)
        for key in ("cube", "cube_overview_1", "cog"):
            layer = layers.get(key)
            if layer is not None and layer.isValid():
                pts = points if layer.crs() == class_map.crs() else inner(
                    layer, road_points(roads, layer.crs(), ROAD_STEP_M))
                band = report["layers"]["cog"].get("stretch", [{"number": 1}])[0]["number"] if key == "cog" else 1
                report["layers"][key]["road_contrast"] = road_contrast(layer, pts, band)
                report["layers"][key]["same_grid"] = same_grid(layer, class_map)

    # renders: each raster alone (empty?) and with the roads on top (saved)
    for key, *_ in rasters:
        layer = layers[key]
        if not layer.isValid():
            continue
        on_top = [roads] if roads.isValid() else []
        if key == "change_map" and polygons.isValid():
            on_top = on_top + [polygons]
        info = report["layers"][key]
        info["render_alone"] = render([layer], layer.crs(), layer.extent(), size)
        info["render"] = render(on_top + [layer], layer.crs(), layer.extent(), size, out_dir / f"{key}.png")
        if key == "cube":  # GDAL < 3.10 gets the Zarr lon/lat corners wrong: does QGIS reproject it right?
            wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
            box = QgsCoordinateTransform(layer.crs(), wgs84, QgsProject.instance()).transformBoundingBox(
                layer.extent())
            info["render_epsg4326"] = render(on_top + [layer], wgs84, box, size, out_dir / f"{key}-epsg4326.png")
        info["render_messages"] = messages.take()

    # verdicts
    for key, info in report["layers"].items():
        problems = []
        if not info["valid"]:
            problems.append("invalid layer")
        for r in ("render_alone", "render", "render_epsg4326"):
            if info.get(r, {}).get("empty"):
                problems.append(f"{r}: empty (one colour)")
            if info.get(r, {}).get("errors"):
                problems.append(f"{r}: errors {info[r]['errors']}")
        if "same_grid" in info and not info["same_grid"]["ok"]:
            problems.append(f"not on the class map's grid: {info['same_grid']}")
        if "road_share" in info and not info["road_share"]["ok"]:
            problems.append("road share: a one-pixel shift matches the roads as well or better")
        info["problems"] = problems
        report["problems"] += [f"{key}: {p}" for p in problems]
    del layer, roads, class_map, polygons
    layers.clear()
    return report


def main(argv: list[str] | None = None) -> int:
    """Check the demo outputs in QGIS, print the report and write it as JSON.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when every check passes, 1 when one fails, 2 when an input is missing.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository root holding out/ (default: this script's)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <root>/out/gis-check)")
    parser.add_argument("--size", type=int, default=800, help="render size, px on the longer side")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    out_dir = (args.out or root / "out" / "gis-check").resolve()
    store = root / "out" / "demo-cube.zarr"
    maps = root / "out" / "demo-maps"
    cogs = sorted((root / "out" / "demo-gis").glob("*.tif"))
    paths = {"class_map": maps / "map-2022" / "class_map.tif", "change_map": maps / "new-roads.tif",
             "change_polygons": maps / "new-roads.gpkg", "roads": root / "out" / "demo" / "vectors" / "roads.geojson"}
    missing = [str(p) for p in [store, *paths.values()] if not p.exists()]
    missing += [] if cogs else [str(root / "out" / "demo-gis" / "*.tif")]
    if missing:
        print(f"missing inputs (run `make gis-check`, or `make demo` and `s2pipe export`): {', '.join(missing)}",
              file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    app = QgsApplication([], False)
    app.setPrefixPath("/usr", True)
    app.initQgis()
    messages = Messages()
    QgsApplication.messageLog().messageReceived.connect(messages.qgis)
    try:
        report = run_checks(store, cogs, paths, out_dir, args.size, messages)
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(messages.qgis)
        app.exitQgis()
    report["seconds"] = round(time.perf_counter() - started, 2)

    print(f"QGIS {report['qgis']}, GDAL {report['gdal']}")
    c = report["cube_choice"]
    print(f"cube: {c['dates']} dates; opened date {c['date']} (time index {c['time_index']}, clear share "
          f"{c['clear_share']}), band {c['band']} (index {c['band_index']}); overview levels: {c['overview_levels']}")
    for key, info in report["layers"].items():
        print_layer(key, info)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {out_dir / 'report.json'}, renders: {out_dir}/*.png, {report['seconds']} s")
    if report["problems"]:
        print("FAILED: " + "; ".join(report["problems"]))
    else:
        print("OK: every layer valid, every render drawn, the class map aligned with the roads")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Real-data land-cover evaluation: Slovenia LULC and Romania forest, spatial folds, several seeds, five models.

Models: majority class, per-pixel random forest and LightGBM, the single-date U-Net and the U-Net + ConvLSTM
sequence (issue 11, "real evaluation first").

Importable API (light imports at module level: NumPy, pandas, xarray; torch / sklearn / lightgbm only inside the
functions that train)::

    ev = importlib.util.module_from_spec(...)              # as tests/test_mapping_real.py loads its script
    images, labels = ev.load_slovenia(root)                 # 12 clear dates (default), or n_dates=None, max_cloud=0.5
    images, labels = ev.load_romania_forest(root, resolution=20)   # or resolution=10
    images, labels = ev.load_dataset("romania20", root)    # by name: "slovenia", "slovenia41", "romania10", "romania20"
    for name, train, test in ev.folds(labels, kind="default"):     # or kind=("north-south", "blocks"), ...
        ...

``root`` is the shared data folder (the ``shared_data`` test fixture, ``S2PIPE_SHARED_DATA``, default
``<repo>/../shared/data``), i.e. the parent of ``eolearn-slovenia-s2`` and ``nrt-romania-s2l2a``.
``images``: (time, band, y, x) float32 with clouds as NaN, in time order; ``labels``: (y, x) int64, -1 = unlabelled;
both carry ``attrs["classes"]`` ({id: name}) and ``attrs["selection"]`` (a sentence saying how they were made).

Data
----
**slovenia** (``load_slovenia``): eo-learn Slovenia patch, 101 x 100 px at ~10 m, one band (NDVI from L1C TOA),
s2cloudless mask -> NaN, LULC reference (2 forest, 3 grassland, 4 shrubland, 8 artificial; 0 and the 11 px of
class 1 "cultivated" -> -1). Read by ``benchmarks/eval_mapping_slovenia.load_slovenia`` (imported). Dates:
``n_dates=12, max_cloud=0.05`` (default): the **last 12 dates whose cloud fraction is <= 5 %** (2017-06-20 ..
2017-12-07; all 12 are fully cloud-free by the mask); ``n_dates=None, max_cloud=0.5`` ("slovenia41"): the 41 dates
of ``eval_mapping_slovenia.py``.

**romania20 / romania10** (``load_romania_forest``): the JRC L2A cube ``nrt-romania-s2l2a`` (1 km x 1 km,
EPSG:3035), 4 bands (20 m: B03 B04 B8A B11, 50 x 50 px; 10 m: B02 B03 B04 B08, 100 x 100 px), ``mask_clouds`` with
SCL clear classes 4 5 6 7 (reflectance = DN / 1e4, NaN elsewhere). Dates: those of ``year`` (2018, the year of the
tree-cover map) with SCL clear fraction >= ``min_clear`` (0.8), the last ``n_dates`` (12) of them: 2018-04-27 ..
2018-10-14 (15 dates pass the clear test); the few clouds left on them (2 % of the values) stay NaN: no gap
filling, so every value is a real observation, and the tree models and the mapper are NaN-aware. Labels from the
Copernicus HRL Tree Cover Density 2018 (20 m, 255 = nodata; read with ``s2pipe.products.maps.read_class_map``): forest (1)
= TCD >= ``forest_tcd`` (50 %), non-forest (0) = TCD < ``nonforest_tcd`` (30 %), in between and nodata -1
(unlabelled); at 10 m the label raster is upsampled x2 by nearest pixel centre (``s2pipe.ml.pixels.align_mask``).
The area is mostly forest: non-forest lies in the northern clearings (rows 0-16 of 50) and a few small gaps further
south.

Folds (``folds``)
-----------------
``s2pipe.ml.labels.spatial_split`` with ``test_fraction=0.3`` and an unlabelled gap of ``gap`` px between the parts
(default 80 m: 8 px at 10 m, 4 px at 20 m):

* ``north-south``: train north, test south (``mode="half", axis="y"``);
* ``south-north``: train south, test north (the same cut on the raster flipped north-south);
* ``west-east`` / ``east-west``: train west, test east, and the reverse (``axis="x"``);
* ``blocks``: ``mode="blocks"``, blocks of ``block`` px (default 200 m: 20 px at 10 m, 10 px at 20 m), a random
  30 % of them (``block_seed``) held out.

``kind="default"`` picks the 3 folds per data set in ``DEFAULT_FOLDS`` (checked on the data: every kept class is in
both parts of each). ``folds`` raises ``InputError`` when a class is missing from a part (``check=False`` skips it);
``fold_counts`` gives the class counts. Class counts (train / test) of the default folds:

* slovenia north-south: forest 5355 / 1588, grassland 840 / 802, shrubland 271 / 82, artificial 168 / 28;
* slovenia south-north: forest 4959 / 1865, grassland 1418 / 350, shrubland 144 / 204, artificial 58 / 136;
* slovenia blocks: forest 3830 / 1588, grassland 996 / 293, shrubland 93 / 193, artificial 94 / 52;
* romania20 west-east: non-forest 114 / 108, forest 1430 / 453; east-west: 190 / 37, 1346 / 549;
  blocks: 174 / 47, 1177 / 446 (all labelled: non-forest 237, forest 2056);
* romania10 (the 20 m labels x4, minus the gap): west-east 452 / 442, 5636 / 1898; east-west 760 / 148,
  5384 / 2196; blocks 696 / 188, 4708 / 1784.

The non-forest threshold 30 % was chosen on these counts: with TCD < 10 % (92 px in all) the east-west test part
holds 7 non-forest pixels and the blocks test part 9 (< 20 %: 23 and 28); north/south cuts leave 0-5 non-forest
pixels in one part whatever the threshold up to 40 %.

Evaluation (``main``)
---------------------
For each data set, window (``--window N``: the last N of its dates), fold and seed: majority class (of the train
labels); ``random-forest`` and ``lightgbm`` (``s2pipe.mapping.train_mapper(model=..., seq_len=N, n_jobs=1)``: every
band x the N dates per pixel, NaN-aware, the library's defaults: 300 trees / LightGBM's ``LIGHTGBM_DEFAULTS``);
one ``train_mapper(images, train, seq_len=N, seed=seed)`` (the library's defaults, ``--epochs`` /
``--unet-options`` override them) scored twice: ``unet`` = ``predict(temporal=False)`` (the window's last date) and
``unet-convlstm`` = ``predict(temporal=True)`` (all N dates). The whole image is the input (the test part's imagery
is seen, its labels never). Scores: ``s2pipe.ml.metrics.score_map`` of ``s2pipe.products.maps.class_map`` on the test labels.
Printed per data set and window: OA, macro-F1, kappa, per-class IoU as mean ± sd over folds × seeds; a per-fold
table (mean ± sd over seeds); the issue's check per fold on the seed means: U-Net+ConvLSTM macro-F1 >= RF - 0.03
and OA >= RF - 0.02, and sequence macro-F1 > single date: PASS / FAIL. ``--json PATH`` writes every record.

Cost (2 CPU cores shared with 3 other jobs, 1 torch thread, 1 tree thread), measured 2026-12-01 with
``s2pipe/mapping.py`` at SHA-1 b950224439a6 (printed as ``code:`` and stored in the JSON): default run (slovenia +
romania20, window 12, 3 folds, seeds 0 1 2: 18 mapper trainings of 53-61 s on slovenia, 43-54 s on romania20)
**1110 s**; ``--window 5`` 1003 s (earlier mapping code); the random forest takes 2-12 s per fold, LightGBM 1-5 s.
An earlier version of the mapping code needed 90-170 s per training, 2420 s in all. ``--quick``
(first seed, smallest window, 9 U-Net epochs, 50 trees) runs in ~1-2 min per data set.

```bash
.venv/bin/python benchmarks/eval_mapping_real.py                          # default: slovenia + romania20, window 12
.venv/bin/python benchmarks/eval_mapping_real.py --window 5               # the 5-date window variant
.venv/bin/python benchmarks/eval_mapping_real.py --datasets romania10 slovenia41 --seeds 0
.venv/bin/python benchmarks/eval_mapping_real.py --quick --json out/eval/real_quick.json
.venv/bin/python benchmarks/eval_mapping_real.py --models random-forest lightgbm majority --folds all
```
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from s2pipe.errors import InputError  # noqa: E402

__all__ = ["load_slovenia", "load_romania_forest", "load_dataset", "folds", "fold_counts", "FOLD_KINDS",
           "DEFAULT_FOLDS", "DATASETS", "MODELS", "shared_data_dir", "train_trees", "evaluate_fold", "run_dataset",
           "summarise"]

SLOVENIA = "eolearn-slovenia-s2"
ROMANIA = "nrt-romania-s2l2a"
SLOVENIA_CLASSES = {2: "forest", 3: "grassland", 4: "shrubland", 8: "artificial"}
ROMANIA_CLASSES = {0: "non-forest", 1: "forest"}
ROMANIA_CLEAR_CLASSES = (4, 5, 6, 7)
DATASETS = ("slovenia", "slovenia41", "romania20", "romania10")
"""Data set names of ``load_dataset``: slovenia (12 clear dates), slovenia41 (the 41 dates <= 50 % cloud),
romania20 / romania10 (forest / non-forest, 12 clear dates of 2018)."""
DEFAULT_DATASETS = ("slovenia", "romania20")
"""Data sets of a default run (romania10 is the same scene and labels at 10 m: opt in with --datasets)."""

FoldKind = Literal["north-south", "south-north", "west-east", "east-west", "blocks"]
FOLD_KINDS: tuple[str, ...] = ("north-south", "south-north", "west-east", "east-west", "blocks")
DEFAULT_FOLDS = {
    "slovenia": ("north-south", "south-north", "blocks"),
    "romania": ("west-east", "east-west", "blocks"),
}
"""The 3 folds of ``kind="default"`` by data set family (``labels.attrs["dataset"]``). Slovenia: a west/east cut
leaves 4 shrubland pixels in the east test part and an east/west one no artificial pixel in the west. Romania:
non-forest is almost only in the north, so a north/south cut leaves too few non-forest pixels in one part (2 at
20 m); its folds cut west/east both ways, plus blocks."""
TEST_FRACTION = 0.3
GAP_M = 80.0
"""Unlabelled band between train and test parts (metres): 8 px at 10 m, 4 px at 20 m."""
BLOCK_M = 200.0
"""Block side of the ``blocks`` fold (metres): 20 px at 10 m, 10 px at 20 m."""
BLOCK_SEED = 0


def shared_data_dir() -> Path:
    """``S2PIPE_SHARED_DATA`` or ``<repo>/../shared/data`` (as tests/conftest.py)."""
    return Path(os.environ.get("S2PIPE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _sibling(name: str):
    """Import ``benchmarks/<name>.py`` by path (benchmarks is not a package)."""
    key = f"_s2pipe_bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod
    spec.loader.exec_module(mod)
    return mod


def _resolution(da: xr.DataArray) -> float:
    return float(abs(np.diff(da["x"].values[:2])[0]))


# ---------------------------------------------------------------------------------------------- loaders


def load_slovenia(root: str | os.PathLike | None = None, *, max_cloud: float = 0.05, n_dates: int | None = 12,
                  per_date: bool = False) -> tuple[xr.DataArray, xr.DataArray]:
    """Slovenia NDVI series and LULC labels (see the module docstring).

    Parameters
    ----------
    root : shared data folder (parent of ``eolearn-slovenia-s2``); None: ``shared_data_dir()``.
    max_cloud : keep dates whose s2cloudless cloud fraction is <= this (0..1).
    n_dates : keep the last ``n_dates`` of those (12: 2017-06-20 .. 2017-12-07 with ``max_cloud=0.05``);
        None: all of them (``n_dates=None, max_cloud=0.5``: the 41 dates of ``eval_mapping_slovenia.py``).
    per_date : standardise each date over its clear pixels (``eval_mapping_slovenia.load_slovenia``).

    Returns
    -------
    images : (time, band=["NDVI"], y=101, x=100) float32, clouds NaN.
    labels : (y, x) int64, classes 2 3 4 8, -1 unlabelled.
    """
    ev = _sibling("eval_mapping_slovenia")
    root = shared_data_dir() if root is None else Path(root)
    if not 0.0 <= float(max_cloud) <= 1.0:
        raise InputError(f"load_slovenia max_cloud={max_cloud!r} must be a cloud fraction in 0..1; pass e.g. 0.05")
    images, labels = ev.load_slovenia(root, max_cloud=float(max_cloud), per_date=per_date)
    T = images.sizes["time"]
    if n_dates is not None:
        if isinstance(n_dates, bool) or not isinstance(n_dates, (int, np.integer)) or n_dates < 1:
            raise InputError(f"load_slovenia n_dates={n_dates!r} must be a positive number of dates or None (all)")
        if n_dates > T:
            raise InputError(f"load_slovenia: only {T} dates have cloud fraction <= {max_cloud}, n_dates={n_dates} "
                             "asked; raise max_cloud or lower n_dates")
        frac = images.attrs["cloud_fraction"][T - n_dates:]
        images = images.isel(time=slice(T - n_dates, None)).assign_attrs(cloud_fraction=frac)
    t = pd.DatetimeIndex(images["time"].values)
    sel = (f"{images.sizes['time']} dates with s2cloudless cloud fraction <= {max_cloud}"
           f"{'' if n_dates is None else ' (the last ' + str(n_dates) + ')'}: {t[0].date()} .. {t[-1].date()}")
    classes = {str(k): v for k, v in SLOVENIA_CLASSES.items()}
    images = images.assign_attrs(dataset="slovenia", selection=sel, classes=classes)
    labels = labels.assign_attrs(dataset="slovenia", classes=classes,
                                 selection="LULC reference; 0 (no data) and class 1 (cultivated, 11 px) -> -1")
    return images, labels


def load_romania_forest(root: str | os.PathLike | None = None, *, resolution: Literal[10, 20] = 20,
                        year: int | None = 2018, min_clear: float = 0.8, n_dates: int | None = 12,
                        forest_tcd: float = 50, nonforest_tcd: float = 30) -> tuple[xr.DataArray, xr.DataArray]:
    """Romania L2A series (clouds NaN) and forest / non-forest labels from the tree-cover density 2018.

    Parameters
    ----------
    root : shared data folder (parent of ``nrt-romania-s2l2a``); None: ``shared_data_dir()``.
    resolution : 20 (B03 B04 B8A B11, 50 x 50 px) or 10 (B02 B03 B04 B08, 100 x 100 px), metres.
    year : keep the dates of this year (None: all years, 2015-08 .. 2021-01).
    min_clear : ... whose SCL clear fraction (classes 4 5 6 7) is >= this (0..1);
    n_dates : ... and of those the last ``n_dates`` (None: all: 15 dates in 2018 at 0.8).
    forest_tcd : forest (class 1) = TCD >= this (%).
    nonforest_tcd : non-forest (class 0) = TCD < this (%); TCD in between, and nodata (255), -> -1.

    Returns
    -------
    images : (time, band, y, x) float32 surface reflectance, NaN where SCL is not clear.
    labels : (y, x) int64 on the image grid, 0 non-forest, 1 forest, -1 unlabelled.
    """
    from s2pipe.cloudmask import mask_clouds
    from s2pipe.ml.pixels import align_mask
    from s2pipe.products.maps import read_class_map
    from s2pipe.synthetic.scenes import romania_raw_cube

    if resolution not in (10, 20):
        raise InputError(f"load_romania_forest resolution={resolution!r}: the cube exists at 10 or 20 m; pass 10 or 20")
    if not 0.0 <= float(min_clear) <= 1.0:
        raise InputError(f"load_romania_forest min_clear={min_clear!r} must be a clear fraction in 0..1; pass e.g. 0.8")
    if not 0 < float(nonforest_tcd) <= float(forest_tcd) <= 100:
        raise InputError(f"load_romania_forest needs 0 < nonforest_tcd <= forest_tcd <= 100 (%), got "
                         f"nonforest_tcd={nonforest_tcd!r}, forest_tcd={forest_tcd!r}")
    root = shared_data_dir() if root is None else Path(root)
    raw = romania_raw_cube(root / ROMANIA / f"romania_{resolution}m.npz")
    scl = raw.sel(band="SCL")
    clear = np.isin(scl.values, ROMANIA_CLEAR_CLASSES).mean(axis=(1, 2))
    t = pd.DatetimeIndex(raw["time"].values)
    keep = clear >= float(min_clear)
    if year is not None:
        keep &= t.year == int(year)
    idx = np.flatnonzero(keep)
    if n_dates is not None:
        if isinstance(n_dates, bool) or not isinstance(n_dates, (int, np.integer)) or n_dates < 1:
            raise InputError(f"load_romania_forest n_dates={n_dates!r} must be a positive number of dates or "
                             "None (all)")
        if n_dates > idx.size:
            raise InputError(f"load_romania_forest: only {idx.size} dates of year={year} have SCL clear fraction >= "
                             f"{min_clear}, n_dates={n_dates} asked; lower min_clear or n_dates")
        idx = idx[idx.size - n_dates:]
    if idx.size == 0:
        raise InputError(f"load_romania_forest: no date of year={year} has SCL clear fraction >= {min_clear}; lower "
                         "min_clear or pass another year")
    refl = mask_clouds(raw.isel(time=idx), clear_classes=ROMANIA_CLEAR_CLASSES)
    images = refl.astype(np.float32).transpose("time", "band", "y", "x")
    sel = (f"{idx.size} dates of {'all years' if year is None else year} with SCL clear fraction >= {min_clear}"
           f"{'' if n_dates is None else ' (the last ' + str(n_dates) + ')'}: {t[idx[0]].date()} .. "
           f"{t[idx[-1]].date()}; SCL classes {list(ROMANIA_CLEAR_CLASSES)} clear, others NaN")
    names = {str(k): v for k, v in ROMANIA_CLASSES.items()}
    images = images.assign_attrs(dataset="romania", selection=sel, classes=names,
                                 clear_fraction=[round(float(v), 4) for v in clear[idx]])

    tcd = read_class_map(root / ROMANIA / "tree_cover_density_2018_20m.tif")
    v = tcd.values.astype(np.int64)
    lab = np.full(v.shape, -1, dtype=np.int64)
    valid = v != 255
    lab[valid & (v >= forest_tcd)] = 1
    lab[valid & (v < nonforest_tcd)] = 0
    labels = xr.DataArray(lab, dims=("y", "x"), coords={"y": tcd["y"].values, "x": tcd["x"].values}, name="forest")
    labels = align_mask(labels, images, align="nearest")
    labels = labels.assign_attrs(
        dataset="romania", classes=names, crs=raw.attrs.get("crs"), transform=raw.attrs.get("transform"),
        forest_tcd=float(forest_tcd), nonforest_tcd=float(nonforest_tcd),
        selection=(f"Copernicus HRL TCD 2018 (20 m): forest = TCD >= {forest_tcd} %, non-forest = TCD < "
                   f"{nonforest_tcd} %, between/nodata -1" + (", upsampled x2 (nearest)" if resolution == 10 else "")))
    return images, labels


def load_dataset(name: str, root: str | os.PathLike | None = None, **kw) -> tuple[xr.DataArray, xr.DataArray]:
    """``(images, labels)`` of one of ``DATASETS`` (keyword options go to the loader)."""
    if name == "slovenia":
        return load_slovenia(root, **kw)
    if name == "slovenia41":
        return load_slovenia(root, **{"max_cloud": 0.5, "n_dates": None, **kw})
    if name in ("romania20", "romania10"):
        return load_romania_forest(root, resolution=int(name[-2:]), **kw)
    raise InputError(f"data set {name!r} is not known; pass one of {list(DATASETS)}")


# ---------------------------------------------------------------------------------------------- folds


def fold_counts(labels: xr.DataArray, classes: Sequence[int] | None = None) -> dict[int, int]:
    """{class id: labelled pixels} of a label raster (classes: the ids >= 0 present, or those given)."""
    v = np.asarray(labels.values)
    if classes is None:
        classes = sorted(int(k) for k in np.unique(v[v >= 0]))
    return {int(k): int((v == k).sum()) for k in classes}


def _flip(da: xr.DataArray, dim: str) -> xr.DataArray:
    return da.isel({dim: slice(None, None, -1)})


def _one_fold(labels: xr.DataArray, kind: str, *, test_fraction: float, gap: int, block: int,
              block_seed: int) -> tuple[xr.DataArray, xr.DataArray]:
    from s2pipe.ml.labels import spatial_split

    if kind == "north-south":
        return spatial_split(labels, mode="half", axis="y", test_fraction=test_fraction, gap=gap)
    if kind == "west-east":
        return spatial_split(labels, mode="half", axis="x", test_fraction=test_fraction, gap=gap)
    if kind in ("south-north", "east-west"):
        dim = "y" if kind == "south-north" else "x"
        # spatial_split holds out the far end (south / east): cut the flipped raster, flip the parts back
        tr, te = spatial_split(_flip(labels, dim), mode="half", axis=dim, test_fraction=test_fraction, gap=gap)
        return _flip(tr, dim), _flip(te, dim)
    if kind == "blocks":
        return spatial_split(labels, mode="blocks", test_fraction=test_fraction, gap=gap, block=block, seed=block_seed)
    raise InputError(f"fold kind {kind!r} is not known; pass kind= one or more of {list(FOLD_KINDS)} or 'default'")


def folds(labels: xr.DataArray, *, kind: FoldKind | Literal["default", "all"] | Sequence[FoldKind] = "default",
          test_fraction: float = TEST_FRACTION, gap: int | None = None, block: int | None = None,
          block_seed: int = BLOCK_SEED, check: bool = True) -> list[tuple[str, xr.DataArray, xr.DataArray]]:
    """Spatial folds ``[(name, train_labels, test_labels), ...]`` of a label raster (y, x).

    Parameters
    ----------
    labels : (y, x) integer labels, -1 unlabelled (from ``load_slovenia`` / ``load_romania_forest``).
    kind : "default" (``DEFAULT_FOLDS`` of ``labels.attrs["dataset"]``, else north-south, west-east, blocks),
        "all" (every ``FOLD_KINDS``), one fold kind, or a sequence of them.
    test_fraction : share of the labelled pixels (half cuts) or of the blocks (blocks) held out.
    gap : unlabelled band between the parts (pixels); None: ``GAP_M`` metres (8 px at 10 m).
    block : block side of the ``blocks`` fold (pixels); None: ``BLOCK_M`` metres (20 px at 10 m).
    block_seed : seed of the random choice of test blocks.
    check : raise ``InputError`` when a class of ``labels`` has no pixel in a train or test part.

    Returns
    -------
    list of (fold name, train labels, test labels): same grid as ``labels``, -1 outside each part; the parts are
    disjoint and separated by ``gap`` px. Each train raster carries ``attrs["fold"]``.
    """
    if not isinstance(labels, xr.DataArray) or set(labels.dims) != {"y", "x"}:
        raise InputError(f"folds expects labels as a (y, x) DataArray, got {type(labels).__name__} "
                         f"{getattr(labels, 'dims', '')}")
    labels = labels.transpose("y", "x")
    if isinstance(kind, str):
        if kind == "default":
            kinds = DEFAULT_FOLDS.get(labels.attrs.get("dataset"), ("north-south", "west-east", "blocks"))
        elif kind == "all":
            kinds = FOLD_KINDS
        else:
            kinds = (kind,)
    else:
        kinds = tuple(kind)
    res = _resolution(labels)
    gap = int(round(GAP_M / res)) if gap is None else int(gap)
    block = int(round(BLOCK_M / res)) if block is None else int(block)
    classes = sorted(int(k) for k in np.unique(labels.values[labels.values >= 0]))
    out = []
    for k in kinds:
        tr, te = _one_fold(labels, k, test_fraction=test_fraction, gap=gap, block=block, block_seed=block_seed)
        tr = tr.assign_attrs(fold=k, fold_gap=gap, **({"fold_block": block} if k == "blocks" else {}))
        te = te.assign_attrs(fold=k, fold_gap=gap, **({"fold_block": block} if k == "blocks" else {}))
        if check:
            for part, lab in (("train", tr), ("test", te)):
                missing = [c for c, n in fold_counts(lab, classes).items() if n == 0]
                if missing:
                    raise InputError(f"fold {k!r}: class(es) {missing} have no pixel in the {part} part "
                                     f"(counts {fold_counts(lab, classes)}); pick other kind=, test_fraction= or "
                                     "block_seed=, or pass check=False")
        out.append((k, tr, te))
    return out


# ---------------------------------------------------------------------------------------------- models

MODELS = ("majority", "random-forest", "lightgbm", "unet", "unet-convlstm")
"""Models of the evaluation: ``unet`` is the single-date U-Net (``predict(temporal=False)``, the window's last
date) and ``unet-convlstm`` the sequence (``predict(temporal=True)``) of the same trained mapper."""


def train_trees(images: xr.DataArray, train: xr.DataArray, *, model: str, seed: int, n_estimators: int | None = None,
                n_jobs: int = 1):
    """A per-pixel tree mapper (``model`` "random-forest" or "lightgbm", ``s2pipe.ml.trees``) on all bands x all the
    dates of ``images``: ``s2pipe.mapping.train_mapper(model=..., seq_len=<dates of images>)`` with the library's
    defaults (random forest: 300 trees, scikit-learn defaults otherwise; LightGBM: ``LIGHTGBM_DEFAULTS``),
    ``n_jobs`` training threads (1: the machine is shared)."""
    from s2pipe.mapping import train_mapper

    kw = {} if n_estimators is None else {"n_estimators": int(n_estimators)}
    return train_mapper(images, train, model=model, seed=seed, seq_len=images.sizes["time"], n_jobs=n_jobs, **kw)


def _majority_map(train: xr.DataArray) -> tuple[int, xr.DataArray]:
    v = np.asarray(train.values)
    ids, n = np.unique(v[v >= 0], return_counts=True)
    maj = int(ids[np.argmax(n)])
    return maj, train.copy(data=np.full(v.shape, maj, dtype=np.int64))


def _score(pred, test: xr.DataArray, classes, names) -> dict:
    from s2pipe.ml.metrics import score_map

    s = score_map(pred, test, classes=classes, names=[names[c] for c in classes])
    return {"oa": float(s.overall_accuracy), "macro_f1": float(s.macro_f1), "kappa": float(s.kappa),
            "mean_iou": float(s.mean_iou), "iou": [float(v) for v in s.iou], "f1": [float(v) for v in s.f1],
            "confusion": s.confusion.astype(int).tolist(), "n_pixels": int(s.n_pixels)}


def evaluate_fold(images: xr.DataArray, train: xr.DataArray, test: xr.DataArray, *, seed: int, models=MODELS,
                  classes, names, unet_kw=None, n_estimators=None, verbose=True) -> dict:
    """Train and score the selected ``models`` on one fold and seed; ``images`` is the window (all its dates are
    the tree models' features and the ConvLSTM's sequence; the single-date U-Net reads its last date).
    Returns {model: scores dict with "train_s" and "predict_s"}."""
    import time

    from s2pipe.products.maps import class_map

    out = {}
    T = images.sizes["time"]
    if "majority" in models:
        maj, pred = _majority_map(train)
        out["majority"] = {**_score(pred, test, classes, names), "majority_class": maj, "train_s": 0.0,
                           "predict_s": 0.0}
    for model in ("random-forest", "lightgbm"):
        if model in models:
            t0 = time.perf_counter()
            m = train_trees(images, train, model=model, seed=seed, n_estimators=n_estimators)
            t1 = time.perf_counter()
            pred = class_map(m.predict(images, threads=1))
            out[model] = {**_score(pred, test, classes, names), "train_s": round(t1 - t0, 2),
                          "predict_s": round(time.perf_counter() - t1, 2)}
    if "unet" in models or "unet-convlstm" in models:
        from s2pipe.mapping import train_mapper

        t0 = time.perf_counter()
        mapper = train_mapper(images, train, seq_len=T, seed=seed, **(unet_kw or {}))
        train_s = time.perf_counter() - t0
        cfg = mapper.config
        info = {"epochs": [cfg.fcn_epochs, cfg.temporal_epochs], "patch": cfg.patch,
                "final_loss": {k: round(v[-1], 4) for k, v in mapper.losses.items() if v}}
        for model, temporal in (("unet", False), ("unet-convlstm", True)):
            if model in models:
                t1 = time.perf_counter()
                pred = class_map(mapper.predict(images, temporal=temporal))
                out[model] = {**_score(pred, test, classes, names), "train_s": round(train_s, 2),
                              "predict_s": round(time.perf_counter() - t1, 2), **info}
    if verbose:
        print("      seed %d: " % seed + " | ".join(
            f"{k} OA {v['oa']:.3f} mF1 {v['macro_f1']:.3f} ({v['train_s']:.0f} s)" for k, v in out.items()), flush=True)
    return out


# ---------------------------------------------------------------------------------------------- run / report


def run_dataset(name: str, *, windows=(12,), seeds=(0, 1, 2), models=MODELS, fold_kind="default", unet_kw=None,
                n_estimators=None, root=None, verbose=True) -> dict:
    """Every window x fold x seed of one data set. Returns a JSON-able dict (``records``: one per window, fold,
    seed and model; ``counts``: class counts per fold part; ``summary`` and ``checks``: see ``summarise``)."""
    import time

    t0 = time.perf_counter()
    images, labels = load_dataset(name, root)
    classes = sorted(int(k) for k in np.unique(labels.values[labels.values >= 0]))
    names = {int(k): v for k, v in labels.attrs["classes"].items()}
    fl = folds(labels, kind=fold_kind)
    counts = {"all": fold_counts(labels, classes)}
    for fk, tr, te in fl:
        counts[fk] = {"train": fold_counts(tr, classes), "test": fold_counts(te, classes)}
    if verbose:
        print(f"\n### {name}: images {dict(images.sizes)}, {images.attrs['selection']}; "
              f"NaN {float(np.isnan(images.values).mean()):.1%}")
        print(f"    labels: {labels.attrs['selection']}; classes {names}")
        print(f"    folds (test_fraction {TEST_FRACTION}, gap {fl[0][1].attrs['fold_gap']} px): class counts")
        print(f"    {'part':<22}" + "".join(f"{names[c][:10]:>11}" for c in classes))
        print(f"    {'all labelled':<22}" + "".join(f"{counts['all'][c]:>11}" for c in classes))
        for fk, _, _ in fl:
            for part in ("train", "test"):
                print(f"    {fk + ' ' + part:<22}" + "".join(f"{counts[fk][part][c]:>11}" for c in classes))
    records = []
    T = images.sizes["time"]
    for w in windows:
        if w > T:
            raise InputError(f"--window {w} exceeds the {T} dates of {name}; pass a smaller window")
        win = images.isel(time=slice(T - w, None))
        for fk, tr, te in fl:
            if verbose:
                t = pd.DatetimeIndex(win["time"].values)
                print(f"    window {w} ({t[0].date()} .. {t[-1].date()}), fold {fk}:", flush=True)
            for seed in seeds:
                res = evaluate_fold(win, tr, te, seed=seed, models=models, classes=classes, names=names,
                                    unet_kw=unet_kw, n_estimators=n_estimators, verbose=verbose)
                for model, sc in res.items():
                    records.append({"dataset": name, "window": int(w), "fold": fk, "seed": int(seed), "model": model,
                                    **sc})
    out = {"dataset": name, "images": dict(images.sizes), "selection": images.attrs["selection"],
           "labels": labels.attrs["selection"], "classes": classes, "names": names, "counts": counts,
           "folds": [fk for fk, _, _ in fl], "windows": list(windows), "seeds": list(seeds), "records": records}
    out.update(summarise(out))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def _ms(v) -> list[float]:
    v = np.asarray(v, dtype=float)
    return [float(np.nanmean(v)), float(np.nanstd(v))] if v.size else [float("nan")] * 2


def summarise(res: dict) -> dict:
    """``summary[window][model]``: mean +- sd over all folds and seeds of OA, macro F1, kappa, per-class IoU;
    ``per_fold[window][fold][model]``: mean +- sd over seeds; ``checks[window][fold]``: the issue's criteria on
    the seed means: U-Net+ConvLSTM macro F1 >= RF - 0.03, OA >= RF - 0.02, and sequence macro F1 > single."""
    recs, classes = res["records"], res["classes"]
    summary, per_fold, checks = {}, {}, {}
    for w in res["windows"]:
        rw = [r for r in recs if r["window"] == w]
        models = [m for m in MODELS if any(r["model"] == m for r in rw)]

        def agg(rs):
            return {"oa": _ms([r["oa"] for r in rs]), "macro_f1": _ms([r["macro_f1"] for r in rs]),
                    "kappa": _ms([r["kappa"] for r in rs]),
                    "iou": {c: _ms([r["iou"][i] for r in rs]) for i, c in enumerate(classes)}, "n": len(rs)}

        summary[w] = {m: agg([r for r in rw if r["model"] == m]) for m in models}
        per_fold[w], checks[w] = {}, {}
        for fk in res["folds"]:
            pf = {m: agg([r for r in rw if r["model"] == m and r["fold"] == fk]) for m in models}
            per_fold[w][fk] = pf
            if {"random-forest", "unet-convlstm"} <= set(pf) or {"unet", "unet-convlstm"} <= set(pf):
                seq = pf.get("unet-convlstm")
                c = {}
                if seq and "random-forest" in pf:
                    rf = pf["random-forest"]
                    c["f1_margin"] = seq["macro_f1"][0] - rf["macro_f1"][0]
                    c["oa_margin"] = seq["oa"][0] - rf["oa"][0]
                    c["vs_rf"] = bool(c["f1_margin"] >= -0.03 and c["oa_margin"] >= -0.02)
                if seq and "unet" in pf:
                    c["seq_minus_single_f1"] = seq["macro_f1"][0] - pf["unet"]["macro_f1"][0]
                    c["seq_minus_single_oa"] = seq["oa"][0] - pf["unet"]["oa"][0]
                    c["seq_beats_single"] = bool(c["seq_minus_single_f1"] > 0)
                c["pass"] = bool(c.get("vs_rf", True) and c.get("seq_beats_single", True)) if c else None
                checks[w][fk] = c
    return {"summary": summary, "per_fold": per_fold, "checks": checks}


def _pm(v, d=3) -> str:
    return f"{v[0]:.{d}f}±{v[1]:.{d}f}"


def print_report(res: dict) -> None:
    classes, names = res["classes"], res["names"]
    for w in res["windows"]:
        s = res["summary"][w]
        print(f"\n== {res['dataset']}, window {w} dates: mean ± sd over {len(res['folds'])} folds "
              f"({', '.join(res['folds'])}) × {len(res['seeds'])} seeds ==")
        head = f"{'model':<15}{'OA':>13}{'macro-F1':>13}{'kappa':>13}" + "".join(
            f"{'IoU ' + names[c][:10]:>15}" for c in classes)
        print(head)
        for m, a in s.items():
            print(f"{m:<15}{_pm(a['oa']):>13}{_pm(a['macro_f1']):>13}{_pm(a['kappa']):>13}"
                  + "".join(f"{_pm(a['iou'][c]):>15}" for c in classes))
        print(f"per fold (mean ± sd over seeds): OA / macro-F1")
        print(f"{'model':<15}" + "".join(f"{fk:>26}" for fk in res["folds"]))
        for m in s:
            print(f"{m:<15}" + "".join(
                f"{_pm(res['per_fold'][w][fk][m]['oa']) + ' / ' + _pm(res['per_fold'][w][fk][m]['macro_f1']):>26}"
                for fk in res["folds"]))
        ch = res["checks"][w]
        if ch:
            print("check (seed means): U-Net+ConvLSTM mF1 >= RF mF1 - 0.03 and OA >= RF OA - 0.02; "
                  "sequence mF1 > single")
            for fk, c in ch.items():
                parts = []
                if "vs_rf" in c:
                    parts.append(f"vs RF: ΔmF1 {c['f1_margin']:+.3f} ΔOA {c['oa_margin']:+.3f} "
                                 f"{'PASS' if c['vs_rf'] else 'FAIL'}")
                if "seq_beats_single" in c:
                    parts.append(f"seq - single: ΔmF1 {c['seq_minus_single_f1']:+.3f} "
                                 f"ΔOA {c['seq_minus_single_oa']:+.3f} "
                                 f"{'PASS' if c['seq_beats_single'] else 'FAIL'}")
                print(f"  {fk:<12} " + " | ".join(parts) + f"  => {'PASS' if c['pass'] else 'FAIL'}")
    print(f"{res['dataset']}: wall time {res['wall_s']:.1f} s")


def _code_state() -> dict:
    """Git HEAD and the SHA-1 (first 12 hex digits) of the mapping modules as read at start: the library is under
    development, so a result is tied to the code that produced it."""
    import hashlib
    import subprocess

    out = {}
    try:
        out["head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                     text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["head"] = None
    for f in ("s2pipe/mapping.py", "s2pipe/ml/nets/unet.py", "s2pipe/ml/trees.py"):
        path = REPO / f
        out[f] = hashlib.sha1(path.read_bytes()).hexdigest()[:12] if path.exists() else None
    return out


def main(argv=None) -> int:
    import argparse
    import json
    import time

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS), choices=DATASETS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--window", type=int, nargs="+", default=[12],
                   help="dates of the window (the last N of the data set's dates); several: one run each")
    p.add_argument("--folds", nargs="+", default=["default"], help=f"'default', 'all' or some of {list(FOLD_KINDS)}")
    p.add_argument("--epochs", type=int, default=None, help="train_mapper epochs (None: the library default)")
    p.add_argument("--unet-options", type=json.loads, default=None,
                   help='JSON dict of further train_mapper options, e.g. \'{"patch": 32, "lr": 1e-3}\'')
    p.add_argument("--trees", type=int, default=None,
                   help="n_estimators of both tree models (None: the library's, RF 300, LightGBM 400)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: first seed, smallest window, U-Net 9 epochs, 50 trees")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", type=Path, default=None, help="write everything here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.quick:
        a.seeds, a.window = a.seeds[:1], [min(a.window)]
        a.epochs = 9 if a.epochs is None else a.epochs
        a.trees = 50 if a.trees is None else a.trees
    unet_kw = dict(a.unet_options or {})
    if a.epochs is not None:
        unet_kw["epochs"] = a.epochs
    kind = a.folds[0] if len(a.folds) == 1 and a.folds[0] in ("default", "all") else a.folds
    code = _code_state()
    print(f"code: {code}")
    print(f"torch threads {torch.get_num_threads()}; U-Net options {unet_kw or 'library defaults'}")
    t0 = time.perf_counter()
    results = []
    for name in a.datasets:
        res = run_dataset(name, windows=a.window, seeds=a.seeds, models=a.models, fold_kind=kind, unet_kw=unet_kw,
                          n_estimators=a.trees)
        print_report(res)
        results.append(res)
    wall = time.perf_counter() - t0
    print("\n== summary: macro-F1 (mean ± sd over folds × seeds) and the issue's check per fold ==")
    for res in results:
        for w in res["windows"]:
            s = res["summary"][w]
            line = "  ".join(f"{m} {_pm(a['macro_f1'])}" for m, a in s.items())
            ch = res["checks"][w]
            verdict = ", ".join(f"{fk} {'PASS' if c['pass'] else 'FAIL'}" for fk, c in ch.items()) if ch else "n/a"
            print(f"{res['dataset']:<11} window {w:>2}: {line} | {verdict}")
    print(f"\ntotal wall time {wall:.1f} s")
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"argv": sys.argv[1:] if argv is None else list(argv), "unet_kw": unet_kw,
                                      "code": code,
                                      "wall_s": round(wall, 1), "results": results}, indent=1, default=str))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

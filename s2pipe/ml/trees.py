"""Per-pixel tree classifiers for land-cover mapping: a random forest (scikit-learn) or gradient-boosted trees
(LightGBM) on every band of the window's dates, beside the U-Net + ConvLSTM of ``s2pipe.mapping``.

```python
mapper = train_mapper(images, labels, model="random-forest")   # or model="lightgbm"; s2pipe.mapping
mapper = train_tree_mapper(images, labels, model="lightgbm", seq_len=12, n_estimators=400)
proba = mapper.predict(images)          # (class, y, x) probabilities from the last seq_len dates; Dask: lazy
mapper.save("rf.pt"); mapper = load_mapper("rf.pt")           # tensors + JSON, torch.load(weights_only=True)
```

**Features.** Each pixel is one sample; its features are all bands × the last ``seq_len`` dates of the
window (date-major: date 0 band 0, date 0 band 1, …, date ``seq_len``-1 band B-1), in data units (trees need
no standardisation). The dates are read *by position*: a mapper trained on twelve dates of one year maps a
window of twelve dates with the same calendar layout (the same dates of another year, the same revisit);
a window of other seasons gives other features. NaN (cloud masks, gaps) is allowed everywhere: the random
forest uses scikit-learn's native missing-value support (≥ 1.4: each split learns on which side NaN goes;
a feature with no NaN in training sends NaN to the child with more samples), LightGBM its own.

**No single-date mode.** The trees are trained on ``seq_len`` dates and need all of them;
``predict(temporal=False)`` is refused. Train a single-date tree mapper with ``seq_len=1``.

**Prediction** of a NumPy-backed cube is one in-memory pass over all pixels; a Dask-backed cube is predicted
lazily, chunk by chunk (``dask.array.map_blocks``, keys ``mapper-predict-…``; per-pixel, so no halo), the
inference tasks built inside ``s2pipe.runtime.placement.inference_tasks()`` like the U-Net's. Both give identical
probabilities: every pixel's arithmetic is the same whatever the chunking or the threads.

**Threads.** Training uses ``n_jobs`` threads (scikit-learn ``n_jobs``, LightGBM ``num_threads``).
Prediction uses ``threads``: in memory, None = the cores of this process; in a Dask task, None = the
worker's share of the host's cores (``placement.task_threads``, as the U-Net's torch threads; 1 on the local
threaded scheduler, which already runs one task per core), so trees never oversubscribe the cores.

**Files** hold no pickled code: one ``torch.save`` dict of tensors and JSON strings (``format``
``"s2pipe.tree-mapper/1"``), read with ``torch.load(weights_only=True)``. A random forest is stored as its
trees' node arrays (children, feature, threshold, missing-value direction, impurity, sample counts, class
fractions per node) and rebuilt on load as scikit-learn ``Tree`` objects through ``Tree.__setstate__``
(the node layout is checked against the installed scikit-learn's); LightGBM as its model text
(``Booster.model_to_string``, reloaded with ``lightgbm.Booster(model_str=...)``). Loaded mappers predict
exactly what the trained ones did.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time as _time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import xarray as xr

from s2pipe.errors import InputError
from s2pipe.ml.inputs import (
    check_images,
    check_labels,
    class_names,
    positive_int,
    spatial_coords,
    training_bands,
)
from s2pipe.ml.weights import save_payload
from s2pipe.runtime.placement import available_cores, inference_tasks, task_threads

__all__ = ["FORMAT", "TreeKind", "TreeMapperConfig", "TreeMapper", "train_tree_mapper", "tree_mapper_from_payload",
           "RF_DEFAULTS", "LIGHTGBM_DEFAULTS"]

FORMAT = "s2pipe.tree-mapper/1"
"""``format`` of the saved payload (``TreeMapper.save``)."""

TreeKind = Literal["random-forest", "lightgbm"]
_KINDS = ("random-forest", "lightgbm")

RF_DEFAULTS: dict = {"n_estimators": 300}
"""Random-forest options other than scikit-learn's defaults: 300 trees (sits, the issue's baseline)."""
LIGHTGBM_DEFAULTS: dict = {"n_estimators": 400, "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20,
                           "feature_fraction": 1.0, "bagging_fraction": 1.0, "lambda_l2": 0.0}
"""LightGBM options: 400 boosting rounds at learning rate 0.05 (LightGBM's default 100 × 0.1, run slower and
longer), 31 leaves, 20 samples per leaf; ``deterministic`` and row-wise histograms always (same seed, same model)."""

_PIXEL_BATCH = 65_536
"""Pixels per prediction batch (one thread's work unit)."""


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class TreeMapperConfig:
    """Everything needed to rebuild a trained tree mapper (stored as JSON beside its arrays).

    Attributes
    ----------
    model : str
        ``"random-forest"`` (scikit-learn ``RandomForestClassifier``) or ``"lightgbm"`` (LightGBM booster).
    bands : list
        Band coordinate of the training images (JSON-able values), in feature order within a date.
    classes : list of int
        Class ids (sorted, ≥ 0) of the output channels.
    seq_len : int
        Dates per sample: the last ``seq_len`` dates of the window at prediction (features date-major).
    n_features : int
        Features per pixel, ``seq_len * len(bands)``.
    options : dict
        The estimator's options as trained (RF: ``n_estimators`` and any scikit-learn keyword; LightGBM:
        ``n_estimators`` = boosting rounds, and the LightGBM parameters), JSON-able.
    seed : int
        Seed of the estimator (bootstrap, feature draws) and of ``max_pixels`` sampling.
    train_pixels : int
        Labelled pixels the trees were trained on (after ``max_pixels``).
    class_pixels : dict
        {class id (str): training pixels of that class}.
    names : dict
        {class id (str): name} from the training labels' ``classes`` attribute; {} when unknown. Carried into
        the predictions' ``classes`` attribute, as ``MapperConfig.names``.
    versions : dict
        Versions of the library that trained the trees ({"scikit-learn": ...} or {"lightgbm": ...}).
    first_date : str or None
        First date (ISO day) of the training window's last ``seq_len`` dates, when the images have a time coordinate.
    last_date : str or None
        Last date (ISO day) of the training window.
    """

    model: str
    bands: list
    classes: list
    seq_len: int
    n_features: int
    options: dict
    seed: int
    train_pixels: int
    class_pixels: dict = dataclasses.field(default_factory=dict)
    names: dict = dataclasses.field(default_factory=dict)
    versions: dict = dataclasses.field(default_factory=dict)
    first_date: str | None = None
    last_date: str | None = None


# ------------------------------------------------------------------------------------------ features
def _select_bands(images: xr.DataArray, bands) -> xr.DataArray:
    bands = list(bands) if isinstance(bands, (list, tuple, np.ndarray)) else [bands]
    have = images["band"].values.tolist() if "band" in images.coords else list(range(images.sizes["band"]))
    missing = [b for b in bands if b not in have]
    if missing:
        raise InputError(f"bands={bands!r}: {missing} not in images' bands {have}; pass a subset of them")
    return images.sel(band=bands) if "band" in images.coords else images.isel(band=bands)


def _features(v: np.ndarray) -> np.ndarray:
    """(T, B, y, x) → (y·x, T·B) float32 C-contiguous features, date-major (row-major pixels)."""
    T, B, ny, nx = v.shape
    return np.ascontiguousarray(np.asarray(v, dtype=np.float32).reshape(T * B, ny * nx).T)


def _day(t) -> str:
    return str(np.asarray(t))[:10]


# ------------------------------------------------------------------------------------------ estimators
class _Forest:
    """A random forest's trees as scikit-learn ``Tree`` objects: probability = mean over trees of each tree's
    normalised leaf class fractions (``RandomForestClassifier.predict_proba``, summed in tree order)."""

    def __init__(self, trees: list, n_classes: int):
        self.trees = list(trees)
        self.n_classes = int(n_classes)

    @classmethod
    def from_sklearn(cls, forest) -> "_Forest":
        return cls([e.tree_ for e in forest.estimators_], int(forest.n_classes_))

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """(n, F) float32 → (n, K) float64 (one thread: ``_predict_features`` parallelises over pixels)."""
        out = np.zeros((X.shape[0], self.n_classes), dtype=np.float64)
        for tree in self.trees:
            p = tree.predict(X)[:, :self.n_classes]
            norm = p.sum(axis=1)[:, None]
            norm[norm == 0.0] = 1.0
            out += p / norm
        out /= len(self.trees)
        return out

    # the saved form: concatenated node arrays of all trees
    def arrays(self) -> dict[str, torch.Tensor]:
        states = [t.__getstate__() for t in self.trees]
        nodes = np.concatenate([s["nodes"] for s in states])
        out = {f"node_{name}": torch.from_numpy(np.ascontiguousarray(nodes[name])) for name in nodes.dtype.names}
        out["values"] = torch.from_numpy(np.ascontiguousarray(np.concatenate([s["values"] for s in states])))
        out["node_count"] = torch.tensor([int(s["node_count"]) for s in states], dtype=torch.int64)
        out["max_depth"] = torch.tensor([int(s["max_depth"]) for s in states], dtype=torch.int64)
        return out

    @staticmethod
    def layout() -> list[list[str]]:
        """[[field, numpy dtype str], ...] of scikit-learn's tree node record (checked on load)."""
        from sklearn.tree._tree import NODE_DTYPE

        return [[name, NODE_DTYPE.fields[name][0].str] for name in NODE_DTYPE.names]

    @classmethod
    def from_arrays(cls, arrays: dict, *, layout: list, n_features: int, n_classes: int) -> "_Forest":
        import sklearn
        from sklearn.tree._tree import NODE_DTYPE, Tree

        here = cls.layout()
        if [list(f) for f in layout] != here:
            raise InputError(f"the saved random forest has the tree-node layout {layout}, but scikit-learn "
                             f"{sklearn.__version__} uses {here}; load it with the scikit-learn version that "
                             "trained it (see config.versions), or retrain the mapper")
        counts = arrays["node_count"].numpy()
        depths = arrays["max_depth"].numpy()
        values = arrays["values"].numpy()
        fields = {name: arrays[f"node_{name}"].numpy() for name in NODE_DTYPE.names}
        if values.ndim != 3 or values.shape[1] != 1 or values.shape[2] != n_classes or len(values) != counts.sum():
            raise InputError(f"the saved random forest's values have shape {tuple(values.shape)} for "
                             f"{int(counts.sum())} nodes and {n_classes} classes; the file is damaged: retrain")
        trees, start = [], 0
        for n, depth in zip(counts.tolist(), depths.tolist()):
            nodes = np.empty(n, dtype=NODE_DTYPE)
            for name, a in fields.items():
                nodes[name] = a[start:start + n]
            tree = Tree(int(n_features), np.array([n_classes], dtype=np.intp), 1)
            tree.__setstate__({"max_depth": int(depth), "node_count": int(n), "nodes": nodes,
                               "values": np.ascontiguousarray(values[start:start + n])})
            trees.append(tree)
            start += n
        return cls(trees, n_classes)


class _Boosted:
    """A LightGBM booster: probability = its softmax (multiclass) or sigmoid (two classes) output."""

    def __init__(self, booster, n_classes: int):
        self.booster = booster
        self.n_classes = int(n_classes)

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """(n, F) float32 → (n, K) float64 on ``threads`` LightGBM threads (over rows)."""
        p = np.asarray(self.booster.predict(X, num_threads=int(threads)), dtype=np.float64)
        if self.n_classes == 2:
            p = np.stack([1.0 - p, p], axis=1)
        return p.reshape(X.shape[0], self.n_classes)


# ------------------------------------------------------------------------------------------ mapper
class TreeMapper:
    """A trained per-pixel tree mapper (random forest or LightGBM).

    Attributes
    ----------
    config : TreeMapperConfig
        The configuration (bands, classes, seq_len, options, …).
    classes : numpy.ndarray
        Class ids of the output channels (``config.classes`` as an int64 array).
    model : str
        ``config.model``.
    train_seconds : float
        Wall time of training (s); 0 after loading.
    """

    def __init__(self, config: TreeMapperConfig, estimator, *, train_seconds: float = 0.0):
        self.config = config
        self.classes = np.asarray(config.classes, dtype=np.int64)
        self.train_seconds = float(train_seconds)
        self._estimator = estimator
        self._graph_key: str | None = None

    @property
    def model(self) -> str:
        return self.config.model

    # -------------------------------------------------------------- core
    def _predict_features(self, X: np.ndarray, threads: int) -> np.ndarray:
        """(n, F) float32 → (n, K) float32 probabilities, ``threads`` threads over pixel batches."""
        n = X.shape[0]
        out = np.empty((n, len(self.classes)), dtype=np.float32)
        if n == 0:
            return out
        est = self._estimator
        if isinstance(est, _Boosted):  # LightGBM parallelises over rows itself
            out[:] = est.predict(X, threads)
            return out
        step = max(1024, min(_PIXEL_BATCH, math.ceil(n / threads)))
        batches = [(i, min(n, i + step)) for i in range(0, n, step)]

        def run(b):
            out[b[0]:b[1]] = est.predict(X[b[0]:b[1]])

        if threads > 1 and len(batches) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(run, batches))
        else:
            for b in batches:
                run(b)
        return out

    def _predict_array(self, v: np.ndarray, threads: int) -> np.ndarray:
        """(T, B, y, x) data units → (K, y, x) float32 probabilities."""
        _, _, ny, nx = v.shape
        p = self._predict_features(_features(v), threads)
        return np.ascontiguousarray(p.T.reshape(len(self.classes), ny, nx))

    # -------------------------------------------------------------- predict
    def predict(self, images: xr.DataArray, *, temporal: bool = True, threads: int | None = None) -> xr.DataArray:
        """Class probabilities of the last ``seq_len`` dates of ``images``.

        Parameters
        ----------
        images : xarray.DataArray
            (time, band, y, x) on any grid, with the training bands (selected by the band coordinate when it
            has one) and at least ``seq_len`` dates, whose last ``seq_len`` are read (by position, see the
            module notes); NumPy- or Dask-backed; NaN allowed.
        temporal : bool
            Must be True: a tree mapper has no single-date mode (it was trained on ``seq_len`` dates as one
            feature vector). Train one with ``seq_len=1`` for single-date maps.
        threads : int, optional
            Prediction threads. None: in memory, the cores of this process; in each Dask task, the machine's
            cores divided by the distributed worker's threads (1 off a distributed worker).

        Returns
        -------
        xarray.DataArray
            ``"probability"`` (class, y, x) float32 summing to 1 over ``class`` (coordinate: the class ids),
            with the x/y (and spatial_ref) coordinates and attrs of ``images``, plus ``mapping_mode``
            ("temporal", or "single-date" when ``seq_len`` is 1), ``mapping_model`` (the tree kind),
            ``mapping_dates``, ``mapping_last_date`` and ``classes`` (names, when known). Lazy when ``images`` is
            Dask-backed, with its y/x chunks (tasks ``mapper-predict-…``, GPU-placement aware like the U-Net's).
        """
        cfg = self.config
        if not temporal:
            raise InputError(f"temporal=False: a {cfg.model} mapper has no single-date mode (it reads the last "
                             f"{cfg.seq_len} dates as one feature vector); pass temporal=True, or train a "
                             f"single-date tree mapper with seq_len=1")
        n = cfg.seq_len
        images = check_images(images, min_dates=n)
        images = training_bands(images, cfg.bands)
        if threads is not None:
            threads = positive_int("threads", threads)
        recent = images.isel(time=slice(-n, None))
        K = len(cfg.classes)
        if recent.chunks is None:
            data = self._predict_array(np.asarray(recent.values), threads or available_cores())
        else:
            data = self._predict_dask(recent.data, n_classes=K, threads=threads)
        coords = {"class": self.classes, **spatial_coords(recent)}
        attrs = {**images.attrs, "mapping_mode": "temporal" if n > 1 else "single-date", "mapping_model": cfg.model,
                 "mapping_dates": int(n), "mapping_last_date": _day(recent["time"].values[-1])
                 if "time" in recent.coords else None}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if cfg.names:
            attrs["classes"] = dict(cfg.names)
        return xr.DataArray(data, dims=("class", "y", "x"), coords=coords, name="probability", attrs=attrs)

    def _predict_dask(self, arr, *, n_classes: int, threads: int | None):
        """Lazy (K, y, x): one inference task per y/x chunk (``map_blocks``, keys ``mapper-predict-…``), built in
        ``inference_tasks()``; dates and bands in one chunk (a pixel needs all its features)."""
        import dask
        import dask.array as dsa

        arr = arr.rechunk({0: -1, 1: -1})
        # the mapper is one key of the graph (sent to each worker once), not a part of every task
        if getattr(self, "_graph_key", None) is None:
            self._graph_key = f"tree-mapper-{uuid.uuid4().hex}"
        model = dask.delayed(self, name=self._graph_key, pure=False)

        def block(b, mapper):
            return mapper._predict_array(np.asarray(b), task_threads(threads) or 1)[None]

        with inference_tasks():
            out = dsa.map_blocks(block, arr, model, dtype=np.float32, token="mapper-predict",
                                 chunks=((1,), (n_classes,), arr.chunks[2], arr.chunks[3]),
                                 meta=np.empty((0, 0, 0, 0), dtype=np.float32))
        return out[0]

    # -------------------------------------------------------------- persistence
    def save(self, path) -> Path:
        """Write one ``.pt`` file (a dict of tensors and JSON strings, no pickled code) atomically
        (``s2pipe.ml.weights.save_payload``); return ``path``."""
        path = Path(path)
        cfg = self.config
        payload: dict = {"format": FORMAT, "config": json.dumps(dataclasses.asdict(cfg))}
        est = self._estimator
        if isinstance(est, _Forest):
            payload["forest"] = est.arrays()
            payload["node_layout"] = json.dumps(_Forest.layout())
        else:
            payload["booster"] = est.booster.model_to_string()
        return save_payload(payload, path)

    def __repr__(self) -> str:
        c = self.config
        return (f"TreeMapper(model={c.model!r}, classes={c.classes}, bands={len(c.bands)}, seq_len={c.seq_len}, "
                f"n_estimators={c.options.get('n_estimators')}, train_pixels={c.train_pixels})")


def tree_mapper_from_payload(payload: dict) -> TreeMapper:
    """The ``TreeMapper`` of a payload read by ``s2pipe.ml.weights.read_payload`` (``format == FORMAT``); builds the
    estimator from arrays and text, without unpickling (``s2pipe.mapping.load_mapper`` calls this)."""
    if payload.get("format") != FORMAT:
        raise InputError(f"payload format {payload.get('format')!r} is not {FORMAT!r}; load it with load_mapper")
    cfg = TreeMapperConfig(**json.loads(payload["config"]))
    K = len(cfg.classes)
    if cfg.model == "random-forest":
        est = _Forest.from_arrays(payload["forest"], layout=json.loads(payload["node_layout"]),
                                  n_features=cfg.n_features, n_classes=K)
    elif cfg.model == "lightgbm":
        import lightgbm

        est = _Boosted(lightgbm.Booster(model_str=payload["booster"]), K)
    else:
        raise InputError(f"saved tree mapper has model={cfg.model!r}; this s2pipe knows {list(_KINDS)}: upgrade s2pipe")
    return TreeMapper(cfg, est)


# ------------------------------------------------------------------------------------------ training
def train_tree_mapper(
    images: xr.DataArray,
    labels: xr.DataArray,
    *,
    model: TreeKind,
    seq_len: int | None = None,
    seed: int = 0,
    bands=None,
    progress: Callable[[int, int], None] | None = None,
    n_estimators: int | None = None,
    n_jobs: int | None = None,
    max_pixels: int | None = None,
    **options,
) -> TreeMapper:
    """Train a per-pixel random forest or LightGBM classifier on one labelled image time series.

    Parameters
    ----------
    images : xarray.DataArray
        (time, band, y, x) data (reflectance, NDVI, …), at least ``seq_len`` dates in time order; NumPy- or
        Dask-backed (the window is loaded into memory); NaN allowed (both tree kinds handle it natively).
    labels : xarray.DataArray
        (y, x) integer class ids on the grid of ``images``; negative (-1) = unlabelled, ignored. The classes
        are the distinct ids ≥ 0 (at least 2). Its ``classes`` attribute ({id: name}) names them.
    model : {"random-forest", "lightgbm"}
        The classifier: scikit-learn's ``RandomForestClassifier`` or a LightGBM booster.
    seq_len : int, optional
        Dates per sample, the last ``seq_len`` of ``images`` (and of the window at prediction). None: all the
        dates of ``images``.
    seed : int
        Seed of the estimator and of the ``max_pixels`` draw: same seed, same trees.
    bands : optional
        Band coordinate values to use (None: all bands of ``images``).
    progress : callable, optional
        ``progress(done, total)``: after each tenth of the forest's trees, or after each boosting round.
    n_estimators : int, optional
        Trees of the forest (None: 300), or LightGBM boosting rounds (None: 400).
    n_jobs : int, optional
        Training threads (scikit-learn ``n_jobs``, LightGBM ``num_threads``); None: the cores of this process.
    max_pixels : int, optional
        Train on a uniform random subset of at most this many labelled pixels (None: all).
    **options
        Random forest: any ``RandomForestClassifier`` keyword (``max_depth``, ``min_samples_leaf``,
        ``max_features``, ``class_weight``, …; defaults: scikit-learn's). LightGBM: any LightGBM parameter
        (``learning_rate``, ``num_leaves``, ``min_data_in_leaf``, …; defaults: ``LIGHTGBM_DEFAULTS``).

    Returns
    -------
    TreeMapper
        The trained mapper (``train_seconds`` set).
    """
    if model not in _KINDS:
        raise InputError(f"model={model!r} is not a tree mapper; pass one of {list(_KINDS)}")
    images = check_images(images)
    seq_len = images.sizes["time"] if seq_len is None else positive_int("seq_len", seq_len)
    images = check_images(images, min_dates=seq_len)
    if bands is not None:
        images = _select_bands(images, bands)
    seed = positive_int("seed", seed, lo=0)
    n_jobs = available_cores() if n_jobs is None else positive_int("n_jobs", n_jobs)
    if n_estimators is not None:
        n_estimators = positive_int("n_estimators", n_estimators)
    if max_pixels is not None:
        max_pixels = positive_int("max_pixels", max_pixels)
    for bad in ("n_jobs", "num_threads", "random_state", "seed", "num_class", "objective", "warm_start"):
        if bad in options:
            raise InputError(f"{bad}={options[bad]!r} is set by train_tree_mapper; pass n_jobs=/seed= instead, "
                             "or leave it out")
    target = check_labels(labels, images)
    classes = np.unique(target[target >= 0])
    if len(classes) < 2:
        raise InputError(f"labels holds {len(classes)} class(es) {classes.tolist()} but at least 2 are needed; "
                         "label pixels of several classes (-1 = unlabelled)")
    recent = images.isel(time=slice(-seq_len, None))
    flat = np.flatnonzero(target.ravel() >= 0)
    if max_pixels is not None and len(flat) > max_pixels:
        flat = np.sort(np.random.default_rng(seed).choice(flat, size=max_pixels, replace=False))
    T, B, ny, nx = recent.shape
    v = np.asarray(recent.values, dtype=np.float32).reshape(T * B, ny * nx)
    X = np.ascontiguousarray(v[:, flat].T)  # (n, T·B), date-major
    del v
    y_ids = target.ravel()[flat]
    y = np.searchsorted(classes, y_ids)
    K = len(classes)
    counts = {str(int(c)): int((y_ids == c).sum()) for c in classes}
    t0 = _time.perf_counter()
    if model == "random-forest":
        est, opts, versions = _fit_forest(X, y, n_estimators=n_estimators or RF_DEFAULTS["n_estimators"],
                                          n_jobs=n_jobs, seed=seed, progress=progress, options=options)
    else:
        est, opts, versions = _fit_lightgbm(X, y, n_classes=K, n_estimators=n_estimators or
                                            LIGHTGBM_DEFAULTS["n_estimators"], n_jobs=n_jobs, seed=seed,
                                            progress=progress, options=options)
    seconds = _time.perf_counter() - t0
    band_values = recent["band"].values.tolist() if "band" in recent.coords else list(range(B))
    has_time = "time" in recent.coords
    cfg = TreeMapperConfig(
        model=model, bands=band_values, classes=[int(c) for c in classes], seq_len=int(seq_len), n_features=T * B,
        options=opts, seed=int(seed), train_pixels=int(len(flat)), class_pixels=counts,
        names=class_names(labels, classes), versions=versions,
        first_date=_day(recent["time"].values[0]) if has_time else None,
        last_date=_day(recent["time"].values[-1]) if has_time else None)
    return TreeMapper(cfg, est, train_seconds=seconds)


def _jsonable(options: dict) -> dict:
    try:
        return json.loads(json.dumps(options))
    except TypeError as exc:
        raise InputError(f"tree options {options!r} must be JSON-able (numbers, strings, lists, dicts): "
                         f"{exc}") from None


def _fit_forest(X, y, *, n_estimators: int, n_jobs: int, seed: int, progress, options: dict):
    import sklearn
    from sklearn.ensemble import RandomForestClassifier

    opts = _jsonable({"n_estimators": n_estimators, **options})
    try:
        forest = RandomForestClassifier(**{**opts, "n_estimators": n_estimators}, n_jobs=n_jobs, random_state=seed)
    except TypeError as exc:
        raise InputError(f"random-forest option not understood ({exc}); pass RandomForestClassifier keywords") from None
    if forest.get_params().get("bootstrap") is False and "max_samples" in opts:
        raise InputError("max_samples needs bootstrap=True; leave max_samples out or set bootstrap=True")
    try:
        if progress is None:
            forest.fit(X, y)
        else:  # warm start in tenths: the same trees as one fit (scikit-learn draws the trees' seeds in order)
            steps = sorted({max(1, round(n_estimators * k / 10)) for k in range(1, 11)})
            forest.set_params(warm_start=True)
            for n in steps:
                forest.set_params(n_estimators=n)
                forest.fit(X, y)
                progress(n, n_estimators)
            forest.set_params(warm_start=False)
    except ValueError as exc:
        raise InputError(f"random forest: {exc}; check the tree options {options}") from None
    return _Forest.from_sklearn(forest), opts, {"scikit-learn": sklearn.__version__}


def _fit_lightgbm(X, y, *, n_classes: int, n_estimators: int, n_jobs: int, seed: int, progress, options: dict):
    import lightgbm

    params = _jsonable({**{k: v for k, v in LIGHTGBM_DEFAULTS.items() if k != "n_estimators"}, **options})
    params.update(verbose=-1, seed=int(seed), deterministic=True, force_row_wise=True, num_threads=int(n_jobs))
    if n_classes == 2:
        params["objective"] = "binary"
    else:
        params.update(objective="multiclass", num_class=int(n_classes))
    callbacks = []
    if progress is not None:
        callbacks.append(lambda env: progress(env.iteration + 1, n_estimators))
    try:
        booster = lightgbm.train(params, lightgbm.Dataset(X, label=y, params={"verbose": -1}),
                                 num_boost_round=n_estimators, callbacks=callbacks)
    except lightgbm.basic.LightGBMError as exc:
        raise InputError(f"lightgbm: {exc}; check the tree options {options}") from None
    opts = {"n_estimators": n_estimators, **{k: v for k, v in params.items()
                                             if k not in ("num_threads", "verbose", "seed")}}
    return _Boosted(booster, n_classes), opts, {"lightgbm": lightgbm.__version__}

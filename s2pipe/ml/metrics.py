"""Accuracy of a class map against reference labels: confusion matrix, overall accuracy, per-class IoU/F1.

Conventions: rows of the confusion matrix are the truth, columns the prediction, both in the order of
``classes``. Pixels whose truth is ``ignore`` (-1: unlabelled) are left out; so are pixels whose prediction is
not one of ``classes`` (nodata such as 255, or NaN), which ``Scores.n_unpredicted`` counts. A truth value that
is neither ``ignore`` nor one of ``classes`` is an error (a forgotten class would silently bias the scores).

Per class k with TP = C[k, k], FP = column sum - TP, FN = row sum - TP:
precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN), IoU = TP / (TP + FP + FN).
A ratio whose denominator is 0 is NaN (e.g. the precision of a class never predicted), never an error; means
over classes (``mean_iou``, ``macro_f1``) skip NaN.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from s2pipe.errors import InputError

__all__ = ["confusion_matrix", "score_map", "Scores"]


def confusion_matrix(pred, truth, *, classes: Sequence[int], ignore: int | None = -1) -> np.ndarray:
    """(K, K) int64 pixel counts, rows = truth, columns = prediction, in the order of ``classes`` (K ids).

    ``pred``/``truth``: arrays or DataArrays of the same shape (DataArrays must share their coordinates).
    Counted: truth != ``ignore`` and prediction one of ``classes``.
    """
    cm, _ = _confusion(pred, truth, classes=classes, ignore=ignore)
    return cm


@dataclass(frozen=True, eq=False)
class Scores:
    """Accuracy of a class map (``score_map``); per-class arrays are in the order of ``classes``."""

    classes: tuple[int, ...]
    """Class ids (K)."""
    names: tuple[str, ...]
    """Class names (K)."""
    confusion: np.ndarray
    """(K, K) int64 pixel counts, rows = truth, columns = prediction."""
    n_pixels: int
    """Pixels evaluated (the sum of ``confusion``)."""
    n_unpredicted: int
    """Labelled pixels left out because the prediction was not one of ``classes`` (nodata, NaN)."""
    overall_accuracy: float
    """Share of evaluated pixels predicted correctly (NaN when none was evaluated)."""
    kappa: float
    """Cohen's kappa (agreement beyond chance; NaN when undefined)."""
    iou: np.ndarray
    """(K,) intersection over union TP / (TP + FP + FN)."""
    f1: np.ndarray
    """(K,) F1 score 2 TP / (2 TP + FP + FN)."""
    precision: np.ndarray
    """(K,) TP / (TP + FP): share of the pixels predicted as the class that are right (user's accuracy)."""
    recall: np.ndarray
    """(K,) TP / (TP + FN): share of the class's true pixels found (producer's accuracy)."""
    support: np.ndarray
    """(K,) int64 evaluated truth pixels per class."""

    @property
    def mean_iou(self) -> float:
        """Mean of ``iou`` over the classes where it is defined (NaN if none)."""
        return _nanmean(self.iou)

    @property
    def macro_f1(self) -> float:
        """Mean of ``f1`` over the classes where it is defined (NaN if none)."""
        return _nanmean(self.f1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (NaN as None)."""
        per_class = {
            name: {"class_id": int(c), "iou": _num(self.iou[k]), "f1": _num(self.f1[k]),
                   "precision": _num(self.precision[k]), "recall": _num(self.recall[k]), "support": int(self.support[k])}
            for k, (c, name) in enumerate(zip(self.classes, self.names))
        }
        return {
            "n_pixels": int(self.n_pixels),
            "n_unpredicted": int(self.n_unpredicted),
            "overall_accuracy": _num(self.overall_accuracy),
            "kappa": _num(self.kappa),
            "mean_iou": _num(self.mean_iou),
            "macro_f1": _num(self.macro_f1),
            "classes": [int(c) for c in self.classes],
            "names": list(self.names),
            "per_class": per_class,
            "confusion": self.confusion.astype(int).tolist(),
            "confusion_axes": "rows = truth, columns = prediction",
        }

    def table(self) -> str:
        """Readable text table: one row per class, then the overall scores and the confusion matrix."""
        w = max([len("class")] + [len(n) for n in self.names])
        head = f"{'class':<{w}}  {'id':>4}  {'IoU':>6}  {'F1':>6}  {'prec':>6}  {'recall':>6}  {'support':>9}"
        lines = [head, "-" * len(head)]
        for k, (c, name) in enumerate(zip(self.classes, self.names)):
            lines.append(f"{name:<{w}}  {c:>4}  {_pct(self.iou[k])}  {_pct(self.f1[k])}  {_pct(self.precision[k])}  "
                         f"{_pct(self.recall[k])}  {int(self.support[k]):>9}")
        lines.append("-" * len(head))
        lines.append(f"overall accuracy {_pct(self.overall_accuracy).strip()}  mean IoU {_pct(self.mean_iou).strip()}  "
                     f"macro F1 {_pct(self.macro_f1).strip()}  kappa {_fmt(self.kappa)}  pixels {self.n_pixels}"
                     + (f"  (unpredicted {self.n_unpredicted})" if self.n_unpredicted else ""))
        cw = max(8, max(len(str(int(v))) for v in self.confusion.ravel()) + 1) if self.confusion.size else 8
        lines.append("")
        lines.append("confusion (rows = truth, columns = prediction)")
        lines.append(f"{'':<{w}}  " + "".join(f"{str(c):>{cw}}" for c in self.classes))
        for k, name in enumerate(self.names):
            lines.append(f"{name:<{w}}  " + "".join(f"{int(v):>{cw}}" for v in self.confusion[k]))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def score_map(
    pred,
    truth,
    *,
    classes: Sequence[int],
    names: Sequence[str] | Mapping[int, str] | None = None,
    ignore: int | None = -1,
) -> Scores:
    """Scores of the class map ``pred`` against the labels ``truth`` (arrays or DataArrays of one shape).

    Pixels whose truth is ``ignore`` (or NaN) are left out; so are pixels whose prediction is not one of
    ``classes`` (nodata, NaN), which ``Scores.n_unpredicted`` counts.

    Parameters
    ----------
    pred : array-like or xarray.DataArray
        Predicted class ids (integer or float; NaN: no prediction).
    truth : array-like or xarray.DataArray
        Reference labels of the same shape; two DataArrays must have the same dims (in any order) and
        coordinates.
    classes : sequence of int
        The K class ids scored (and their order).
    names : sequence of str or mapping of int to str, optional
        K names, or {id: name} (ids it lacks: ``class <id>``); None: the ``classes`` attribute of
        ``truth``/``pred`` when they have one, else ``class <id>``.
    ignore : int or None, default -1
        Truth value of unlabelled pixels (None: none).

    Returns
    -------
    Scores
        Confusion matrix (K, K) int64 (rows = truth, columns = prediction), overall accuracy, Cohen's kappa and
        per-class IoU, F1, precision, recall and support in the order of ``classes``; NaN where undefined.

    Raises
    ------
    InputError
        ``classes`` is empty, not integer or lists an id twice; ``pred`` and ``truth`` differ in shape, dims or
        coordinates, or are not numeric; ``truth`` holds a value that is neither ``ignore`` nor one of
        ``classes``; or a ``names`` sequence does not have K entries.
    """
    cm, n_unpredicted = _confusion(pred, truth, classes=classes, ignore=ignore)
    ids = tuple(int(c) for c in classes)
    label_names = _names(names, ids, pred, truth)
    tp = np.diag(cm).astype(float)
    rows, cols = cm.sum(axis=1).astype(float), cm.sum(axis=0).astype(float)
    fp, fn = cols - tp, rows - tp
    n = float(cm.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        iou = _ratio(tp, tp + fp + fn)
        oa = float(tp.sum() / n) if n else math.nan
        pe = float((rows * cols).sum() / n**2) if n else math.nan
        kappa = (oa - pe) / (1 - pe) if n and pe != 1 else math.nan
    return Scores(
        classes=ids, names=label_names, confusion=cm, n_pixels=int(n), n_unpredicted=int(n_unpredicted),
        overall_accuracy=oa, kappa=float(kappa), iou=iou, f1=f1, precision=precision, recall=recall,
        support=cm.sum(axis=1).astype(np.int64),
    )


# ---------------------------------------------------------------------------------------------- helpers


def _confusion(pred, truth, *, classes: Sequence[int], ignore: int | None) -> tuple[np.ndarray, int]:
    ids = _check_classes(classes)
    p, t = _arrays(pred, truth)
    t_valid = np.isfinite(t) if t.dtype.kind == "f" else np.ones(t.shape, dtype=bool)
    if ignore is not None:
        t_valid &= t != ignore
    t_idx, t_known = _index(t, ids)
    unknown = t_valid & ~t_known
    if unknown.any():
        bad = np.unique(t[unknown])
        raise InputError(
            f"truth holds values {bad[:10].tolist()} that are neither in classes={list(ids)} nor ignore={ignore!r}; "
            "add them to classes, or set them to the ignore value"
        )
    p_idx, p_known = _index(p, ids)
    use = t_valid & p_known
    k = len(ids)
    cm = np.bincount(t_idx[use] * k + p_idx[use], minlength=k * k).reshape(k, k).astype(np.int64)
    return cm, int((t_valid & ~p_known).sum())


def _check_classes(classes) -> np.ndarray:
    if classes is None or isinstance(classes, (str, bytes)) or not hasattr(classes, "__len__") or len(classes) == 0:
        raise InputError(f"classes={classes!r} must list the class ids to score, e.g. classes=[1, 2, 3]")
    try:
        ids = np.asarray([int(c) for c in classes], dtype=np.int64)
    except (TypeError, ValueError):
        raise InputError(f"classes={list(classes)!r} must be integer class ids, e.g. classes=[1, 2, 3]") from None
    if len(np.unique(ids)) != len(ids):
        raise InputError(f"classes={list(classes)!r} lists a class twice; pass each id once")
    return ids


def _arrays(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    """Numpy versions of pred and truth, checked for equal shapes (and coordinates for DataArrays)."""
    if isinstance(pred, xr.DataArray) and isinstance(truth, xr.DataArray):
        if set(pred.dims) != set(truth.dims):
            raise InputError(f"pred has dims {pred.dims} and truth {truth.dims}; pass maps on the same grid")
        pred = pred.transpose(*truth.dims)
        try:
            xr.align(pred, truth, join="exact")
        except ValueError:
            raise InputError(
                "pred and truth have different coordinates (another grid or extent); put them on one grid, e.g. "
                "with s2pipe.ml.pixels.align_mask(pred, truth)"
            ) from None
    p, t = np.asarray(getattr(pred, "values", pred)), np.asarray(getattr(truth, "values", truth))
    if p.shape != t.shape:
        raise InputError(f"pred has shape {p.shape} and truth {t.shape}; pass maps of the same shape")
    for name, a in (("pred", p), ("truth", t)):
        if a.dtype.kind not in "biuf":
            raise InputError(f"{name} has dtype {a.dtype}; pass integer class ids")
    return p.ravel(), t.ravel()


def _index(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of each value in ``ids``, whether it is one of them); NaN is never one."""
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        v = np.where(finite, values, ids[0]).astype(np.float64)
        whole = finite & (v == np.round(v))
        v = np.round(v).astype(np.int64)
    else:
        whole = np.ones(values.shape, dtype=bool)
        v = values.astype(np.int64)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, v), 0, len(ids) - 1)
    known = whole & (sorted_ids[pos] == v)
    return order[pos], known


def _names(names, ids: tuple[int, ...], pred, truth) -> tuple[str, ...]:
    if names is None:
        for obj in (truth, pred):
            attr = getattr(obj, "attrs", {}).get("classes") if isinstance(obj, xr.DataArray) else None
            if isinstance(attr, Mapping):
                lookup = {str(k): str(v) for k, v in attr.items()}
                return tuple(lookup.get(str(c), f"class {c}") for c in ids)
        return tuple(f"class {c}" for c in ids)
    if isinstance(names, Mapping):
        lookup = {int(k): str(v) for k, v in names.items()}
        return tuple(lookup.get(c, f"class {c}") for c in ids)
    names = [str(n) for n in names]
    if len(names) != len(ids):
        raise InputError(f"names has {len(names)} entries for {len(ids)} classes {list(ids)}; pass one name per class")
    return tuple(names)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else math.nan


def _num(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _pct(v) -> str:
    v = float(v)
    return f"{'n/a':>6}" if math.isnan(v) else f"{100 * v:>5.1f}%"


def _fmt(v) -> str:
    v = float(v)
    return "n/a" if math.isnan(v) else f"{v:.3f}"

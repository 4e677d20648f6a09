"""Confusion matrix and scores against hand-computed values (3 classes, ignored and unpredicted pixels)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr

from s2pipe.errors import InputError
from s2pipe.ml.metrics import Scores, confusion_matrix, score_map

# truth -1 = unlabelled; prediction 255 = nodata
TRUTH = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, -1], dtype=np.int16)
PRED = np.array([1, 1, 2, 3, 2, 2, 1, 3, 255, 1], dtype=np.uint8)
CM = np.array([[2, 1, 1],
               [1, 2, 0],
               [0, 0, 1]])


def test_confusion_matrix_rows_truth_columns_prediction():
    cm = confusion_matrix(PRED, TRUTH, classes=[1, 2, 3])
    np.testing.assert_array_equal(cm, CM)
    assert cm.dtype == np.int64
    # order follows `classes`
    np.testing.assert_array_equal(confusion_matrix(PRED, TRUTH, classes=[3, 1, 2]), CM[[2, 0, 1]][:, [2, 0, 1]])
    # ignore=None: the -1 truth pixel is an error (not a class), unless -1 is a class
    with pytest.raises(InputError, match=r"\[-1\].*classes"):
        confusion_matrix(PRED, TRUTH, classes=[1, 2, 3], ignore=None)


def test_scores_match_hand_computed_values():
    s = score_map(PRED, TRUTH, classes=[1, 2, 3], names=["water", "mangrove", "road"])
    assert isinstance(s, Scores)
    assert s.n_pixels == 8 and s.n_unpredicted == 1
    assert s.overall_accuracy == pytest.approx(5 / 8)
    np.testing.assert_allclose(s.precision, [2 / 3, 2 / 3, 1 / 2])  # column sums 3, 3, 2
    np.testing.assert_allclose(s.recall, [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(s.f1, [4 / 7, 2 / 3, 2 / 3])
    np.testing.assert_allclose(s.iou, [2 / 5, 1 / 2, 1 / 2])
    np.testing.assert_array_equal(s.support, [4, 3, 1])
    assert s.mean_iou == pytest.approx((2 / 5 + 1 / 2 + 1 / 2) / 3)
    assert s.macro_f1 == pytest.approx((4 / 7 + 2 / 3 + 2 / 3) / 3)
    assert s.kappa == pytest.approx(17 / 41)  # po = 40/64, pe = 23/64


def test_absent_classes_give_nan_not_errors():
    # class 4: in neither map; class 5: predicted but never true; class 3 absent from the prediction
    truth = np.array([1, 1, 2, 3])
    pred = np.array([1, 5, 2, 2])
    s = score_map(pred, truth, classes=[1, 2, 3, 4, 5])
    assert math.isnan(s.iou[3]) and math.isnan(s.f1[3]) and math.isnan(s.precision[3]) and math.isnan(s.recall[3])
    assert s.iou[4] == 0 and s.precision[4] == 0 and math.isnan(s.recall[4])      # never true
    assert s.iou[2] == 0 and s.recall[2] == 0 and math.isnan(s.precision[2])       # never predicted
    assert s.mean_iou == pytest.approx((1 / 2 + 1 / 2 + 0 + 0) / 4)               # NaN skipped
    empty = score_map(np.array([1]), np.array([-1]), classes=[1, 2])
    assert empty.n_pixels == 0 and math.isnan(empty.overall_accuracy) and math.isnan(empty.mean_iou)


def test_dataarrays_float_predictions_and_names_from_attrs():
    y, x = [30.0, 20.0], [5.0, 15.0, 25.0, 35.0, 45.0]
    truth = xr.DataArray(TRUTH.reshape(2, 5), dims=("y", "x"), coords={"y": y, "x": x},
                         attrs={"classes": {"1": "water", "2": "mangrove", "3": "road"}})
    pred = xr.DataArray(np.where(PRED == 255, np.nan, PRED).astype("float32").reshape(2, 5).T, dims=("x", "y"),
                        coords={"y": y, "x": x})  # transposed: aligned by dimension name
    s = score_map(pred, truth, classes=[1, 2, 3])
    np.testing.assert_array_equal(s.confusion, CM)
    assert s.names == ("water", "mangrove", "road") and s.n_unpredicted == 1
    with pytest.raises(InputError, match="different coordinates"):
        score_map(pred.assign_coords(x=np.array(x) + 10), truth, classes=[1, 2, 3])
    with pytest.raises(InputError, match="shape"):
        score_map(PRED[:5], TRUTH, classes=[1, 2, 3])
    with pytest.raises(InputError, match="classes"):
        score_map(PRED, TRUTH, classes=[])
    with pytest.raises(InputError, match=r"values \[3\]"):
        score_map(PRED, TRUTH, classes=[1, 2])


def test_to_dict_is_json_and_table_is_readable():
    s = score_map(PRED, TRUTH, classes=[1, 2, 3, 4], names={1: "water", 2: "mangrove", 3: "road", 4: "urban"})
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["overall_accuracy"] == pytest.approx(0.625) and d["n_pixels"] == 8
    assert d["per_class"]["water"] == {"class_id": 1, "iou": pytest.approx(0.4), "f1": pytest.approx(4 / 7),
                                       "precision": pytest.approx(2 / 3), "recall": 0.5, "support": 4}
    assert d["per_class"]["urban"]["iou"] is None
    assert d["confusion"][0] == [2, 1, 1, 0]
    table = s.table()
    assert "mangrove" in table and "62.5%" in table and "n/a" in table and "rows = truth" in table
    assert str(s) == table

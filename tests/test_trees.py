"""Per-pixel tree mappers (s2pipe.ml.trees): random forest and LightGBM as first-class mappers.

Synthetic data check the contract (features, NaN, classes and names, Dask = NumPy, save/load = trained,
the forest = scikit-learn's own ``predict_proba``, errors); the real Slovenia series (the data and split of
``benchmarks/eval_mapping_slovenia.py``: 41 clear dates, NDVI, north/south hold-out) checks that both beat the
majority class clearly on held-out pixels.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr

from s2pipe.errors import InputError
from s2pipe.mapping import load_mapper, train_mapper
from s2pipe.ml.metrics import score_map
from s2pipe.ml.trees import FORMAT, TreeMapper, train_tree_mapper
from s2pipe.products.maps import class_map

IDS = [1, 5, 7]
NAMES = {"1": "water", "5": "forest", "7": "road"}
FAST = {"random-forest": {"n_estimators": 20}, "lightgbm": {"n_estimators": 30, "min_data_in_leaf": 5}}
KINDS = list(FAST)


@pytest.fixture(scope="module")
def scene():
    """(images (4 dates, 2 bands, 30 x 26), labels (y, x) of classes 1/5/7 with -1, NaN clouds): forest is
    band 0 high; water and road both band 1 high on the last date, the road only from date 2 on (a temporal
    feature: one date cannot tell water from road)."""
    rng = np.random.default_rng(0)
    T, B, ny, nx = 4, 2, 30, 26
    truth = np.full((ny, nx), 1)
    truth[:, 9:18] = 5
    truth[12:15, :] = 7
    v = rng.normal(0, 0.05, (T, B, ny, nx)).astype("float32")
    v[-1, 0] += np.select([truth == 1, truth == 5, truth == 7], [0.0, 1.0, 0.0])
    v[:, 1] += np.where(truth == 1, 1.0, 0.0)   # water: band 1 high on every date ...
    v[2:, 1] += np.where(truth == 7, 1.0, 0.0)  # ... road: only after date 1 (the last date alone cannot tell)
    v[1, :, :6, :6] = np.nan  # a cloud on date 1
    v[:, 1, 20, :] = np.nan   # a stripe with no band 1 at all
    labels = np.where(rng.random((ny, nx)) < 0.6, truth, -1)
    coords = {"y": 1000.0 - 10 * np.arange(ny), "x": 500.0 + 10 * np.arange(nx)}
    attrs = {"crs": "EPSG:32633", "transform": [10.0, 0.0, 495.0, 0.0, -10.0, 1005.0]}
    images = xr.DataArray(v, dims=("time", "band", "y", "x"), attrs=attrs,
                          coords={"time": np.array(["2022-01-01", "2022-02-01", "2022-03-01", "2022-04-01"],
                                                   dtype="datetime64[ns]"), "band": ["B04", "B08"], **coords})
    lab = xr.DataArray(labels, dims=("y", "x"), coords=coords, attrs={"classes": NAMES})
    return images, lab, truth


@pytest.fixture(scope="module", params=KINDS)
def trained(request, scene):
    images, labels, _ = scene
    return train_mapper(images, labels, model=request.param, seed=0, n_jobs=1, **FAST[request.param])


def test_tree_mapper_learns_and_carries_classes_and_grid(trained, scene):
    images, _, truth = scene
    assert isinstance(trained, TreeMapper)
    cfg = trained.config
    assert cfg.classes == IDS and cfg.names == NAMES and cfg.seq_len == 4 and cfg.n_features == 8
    assert cfg.bands == ["B04", "B08"] and cfg.last_date == "2022-04-01"
    assert cfg.train_pixels == int((scene[1] >= 0).sum()) and sum(cfg.class_pixels.values()) == cfg.train_pixels
    proba = trained.predict(images, threads=1)
    assert proba.dims == ("class", "y", "x") and proba.dtype == np.float32 and proba.name == "probability"
    assert proba["class"].values.tolist() == IDS
    np.testing.assert_array_equal(proba.x.values, images.x.values)
    np.testing.assert_allclose(proba.sum("class").values, 1.0, atol=1e-5)
    assert proba.attrs["mapping_mode"] == "temporal" and proba.attrs["mapping_dates"] == 4
    assert proba.attrs["mapping_model"] == cfg.model and proba.attrs["mapping_last_date"] == "2022-04-01"
    assert proba.attrs["classes"] == NAMES and proba.attrs["crs"] == "EPSG:32633"
    pred = class_map(proba).values
    assert (pred == truth).mean() > 0.97, (pred == truth).mean()  # NaN pixels included
    assert (pred[truth == 7] == 7).mean() > 0.9  # the temporal class


def test_dates_are_the_last_seq_len_and_bands_are_selected(scene):
    images, labels, truth = scene
    one = train_tree_mapper(images, labels, model="random-forest", seq_len=1, n_jobs=1, n_estimators=20)
    assert one.config.seq_len == 1 and one.config.n_features == 2 and one.config.first_date == "2022-04-01"
    # extra earlier dates and bands in another order: only the last date's B04, B08 are read
    more = xr.concat([images.isel(time=[0]).assign_coords(time=[np.datetime64("2021-12-01", "ns")]), images], "time")
    more = xr.concat([more, more.isel(band=[0]).assign_coords(band=["B02"])], "band").isel(band=[2, 1, 0])
    a, b = one.predict(images, threads=1), one.predict(more, threads=1)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.attrs["mapping_mode"] == "single-date"
    pred = class_map(a).values  # one date cannot tell road from water: measured road recall 0.60 (4 dates: > 0.9)
    assert (pred[truth == 7] == 7).mean() < 0.8


@pytest.mark.parametrize("dask", [False, True])
def test_numpy_and_dask_predictions_are_identical(trained, scene, dask):
    images, _, _ = scene
    ref = trained.predict(images, threads=1).values
    if dask:
        lazy = trained.predict(images.chunk({"time": 2, "y": 11, "x": 9}))
        assert isinstance(lazy.data, da.Array) and lazy.data.chunks[1:] == ((11, 11, 8), (9, 9, 8))
        assert any(str(k).startswith("mapper-predict") for k in lazy.data.__dask_graph__().layers)
        got = lazy.values
    else:
        got = trained.predict(images, threads=2).values  # threads do not change a pixel's arithmetic
    np.testing.assert_array_equal(got, ref)


def test_random_forest_equals_scikit_learn(scene):
    """The mapper's forest prediction is scikit-learn's RandomForestClassifier.predict_proba of the same trees."""
    from sklearn.ensemble import RandomForestClassifier

    images, labels, _ = scene
    mapper = train_tree_mapper(images, labels, model="random-forest", seed=3, n_jobs=1, n_estimators=15,
                               min_samples_leaf=2)
    v = images.values.reshape(8, -1).T  # date-major features
    lab = labels.values.ravel()
    forest = RandomForestClassifier(n_estimators=15, min_samples_leaf=2, random_state=3, n_jobs=1)
    forest.fit(v[lab >= 0], np.searchsorted(IDS, lab[lab >= 0]))
    want = forest.predict_proba(v).T.reshape(3, *images.shape[2:]).astype("float32")
    np.testing.assert_array_equal(mapper.predict(images, threads=1).values, want)
    # progress in tenths of the forest (warm start) grows the same trees
    ticks = []
    stepped = train_tree_mapper(images, labels, model="random-forest", seed=3, n_jobs=1, n_estimators=15,
                                min_samples_leaf=2, progress=lambda d, t: ticks.append((d, t)))
    assert ticks[-1] == (15, 15) and len(ticks) > 5
    np.testing.assert_array_equal(stepped.predict(images, threads=1).values, want)


def test_save_load_without_pickle_gives_identical_predictions(trained, scene, tmp_path):
    images, _, _ = scene
    path = trained.save(tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # written under a temporary name, renamed
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and json.loads(payload["config"])["model"] == trained.model

    def plain(obj):  # only tensors, strings and containers of them: nothing that runs code on load
        if isinstance(obj, dict):
            return all(isinstance(k, str) and plain(v) for k, v in obj.items())
        return isinstance(obj, (torch.Tensor, str))

    assert plain(payload)
    back = load_mapper(path)
    assert isinstance(back, TreeMapper) and back.config == trained.config and back.train_seconds == 0
    np.testing.assert_array_equal(back.predict(images, threads=1).values, trained.predict(images, threads=1).values)


def test_forest_file_from_another_node_layout_is_refused(scene, tmp_path):
    images, labels, _ = scene
    mapper = train_tree_mapper(images, labels, model="random-forest", n_jobs=1, n_estimators=3)
    path = mapper.save(tmp_path / "rf.pt")
    payload = torch.load(path, weights_only=True)
    layout = json.loads(payload["node_layout"])
    payload["node_layout"] = json.dumps(layout[:-1])  # a scikit-learn without missing_go_to_left
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(InputError, match="tree-node layout.*retrain"):
        load_mapper(tmp_path / "old.pt")


def test_bad_input_errors_name_the_value_and_the_fix(scene, trained):
    images, labels, _ = scene
    with pytest.raises(InputError, match=r"model='xgboost'.*one of"):
        train_mapper(images, labels, model="xgboost")
    with pytest.raises(InputError, match=r"temporal=False.*seq_len=1"):
        trained.predict(images, temporal=False)
    with pytest.raises(InputError, match=r"4 dates but at least 5"):
        train_tree_mapper(images, labels, model="lightgbm", seq_len=5)
    with pytest.raises(InputError, match=r"1 class.*at least 2"):
        train_tree_mapper(images, labels.where(labels != 5, 1).where(labels != 7, 1), model="random-forest")
    with pytest.raises(InputError, match=r"lacks the training bands \['B08'\]"):
        trained.predict(images.sel(band=["B04"]))
    with pytest.raises(InputError, match=r"3 dates but at least 4"):
        trained.predict(images.isel(time=slice(1, None)))
    with pytest.raises(InputError, match=r"n_estimators=0"):
        train_tree_mapper(images, labels, model="random-forest", n_estimators=0)
    with pytest.raises(InputError, match=r"n_jobs=/seed="):
        train_tree_mapper(images, labels, model="random-forest", random_state=1)
    with pytest.raises(InputError, match=r"random-forest option"):
        train_tree_mapper(images, labels, model="random-forest", n_estimators=2, n_jobs=1, num_leaves=3)
    with pytest.raises(InputError, match=r"bands=\['B99'\]"):
        train_tree_mapper(images, labels, model="random-forest", bands=["B99"])


# ------------------------------------------------------------------------------------------ real data
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_mapping_slovenia.py"


@pytest.fixture(scope="module")
def slovenia(shared_data):
    spec = importlib.util.spec_from_file_location("eval_mapping_slovenia", SCRIPT)
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    images, labels = ev.load_slovenia(shared_data)
    train, test = ev.split_slovenia(labels)
    return ev, images, train, test


@pytest.mark.parametrize("kind, options", [("random-forest", {"n_estimators": 100}),
                                           ("lightgbm", {"n_estimators": 150, "learning_rate": 0.1})])
def test_slovenia_trees_beat_the_majority_class_clearly(slovenia, kind, options):
    """Held-out south part, all 41 dates (NDVI with clouds as NaN). Measured (seed 0, 1 thread): random forest
    100 trees OA 0.930 / macro-F1 0.617, LightGBM 150 rounds at learning rate 0.1 OA 0.920 / 0.484; the majority
    class (forest) OA 0.635 / macro-F1 0.194. A constant or a shuffled map fails both bounds."""
    ev, images, train, test = slovenia
    _, majority = ev.majority_oa(train, test)
    mapper = train_mapper(images, train, model=kind, seed=0, n_jobs=1, **options)
    proba = mapper.predict(images, threads=1)
    assert np.isfinite(proba.values).all()  # clouds (NaN) in every date, no NaN out
    scores = score_map(class_map(proba), test, classes=mapper.config.classes)
    assert scores.overall_accuracy > majority + 0.2, (scores.overall_accuracy, majority)
    assert scores.macro_f1 > 0.44, scores.macro_f1  # majority + 0.25

"""Land-cover mapping on real data (issue 11): the U-Net + ConvLSTM mapper (``s2pipe.mapping``, library defaults)
against a per-pixel random forest (``train_mapper(model="random-forest")``, 300 trees) and the majority class, on
one spatial fold of the eo-learn Slovenia patch (101 x 100 px NDVI, 12 clear dates 2017-06-20 .. 2017-12-07,
LULC forest / grassland / shrubland / artificial).

Data, dates and folds come from ``benchmarks/eval_mapping_real.py`` (imported by path): ``load_slovenia`` and
``folds(kind=FOLD)``; every model reads the same 12 dates (the sequence model ``seq_len=12``, the forest all 12
as features, the single-date U-Net the last one). One training of each, seed 0, 1 torch thread / 1 sklearn job.
To keep the test cheap the U-Net stage runs ``FCN_EPOCHS`` (16) epochs instead of the default 40; the ConvLSTM
head (which reads the inputs, not the U-Net) keeps all its defaults (20 epochs of 30 steps, class weights "sqrt").

Measured on this fold with ``benchmarks/eval_mapping_real.py --datasets slovenia --folds south-north --models
majority random-forest unet unet-convlstm --seeds 0 1 2 --unet-options '{"fcn_epochs": 16}'`` (OA / macro F1,
seeds 0, 1, 2): majority 0.730 / 0.211; random forest 0.822 / 0.452, 0.821 / 0.450, 0.822 / 0.452; single-date
U-Net 0.762 / 0.357, 0.776 / 0.366, 0.794 / 0.373 (the full 40 epochs: 0.783 ± 0.022 / 0.369 ± 0.012); sequence
0.832 / 0.617, 0.831 / 0.619, 0.830 / 0.601. Margins, worst seed: sequence − forest OA +0.008, macro F1 +0.149;
sequence − single date OA +0.036, macro F1 +0.228. The assertions sit below them (+0.003 / +0.12; +0.02 / +0.2),
and the former default (the paper's head on the U-Net's probability maps, residual) fails them: 0.774 / 0.353
(seed 0, 16 U-Net epochs; 0.795 / 0.370 over seeds 0-2 with the full 40). With 8 U-Net epochs the single date of seed 2 collapsed to the majority
class, so 16 are kept. 33 s on the shared 2-core machine at a load of ~1 (was ~175 s at a load of ~5 with the full 40 epochs).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from s2pipe.mapping import default_epochs
from s2pipe.ml.metrics import score_map
from s2pipe.products.maps import class_map

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_mapping_real.py"
CLASSES = [2, 3, 4, 8]
FOLD = "south-north"
FCN_EPOCHS = 16
"""U-Net epochs of the test's mapper (library default 40 for this image); the head keeps its defaults."""


def _script():
    spec = importlib.util.spec_from_file_location("eval_mapping_real_for_tests", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fold(shared_data):
    ev = _script()
    images, labels = ev.load_slovenia(shared_data)
    (name, train, test), = ev.folds(labels, kind=FOLD)
    return images, labels, train, test


@pytest.fixture(scope="module")
def scores(fold):
    """Held-out (OA, macro F1) of the majority class, the random forest, the single date and the sequence."""
    from s2pipe.mapping import train_mapper

    images, _, train, test = fold
    T = images.sizes["time"]

    def score(pred):
        s = score_map(pred, test, classes=CLASSES)
        return float(s.overall_accuracy), float(s.macro_f1)

    tr = train.values
    ids, n = np.unique(tr[tr >= 0], return_counts=True)
    out = {"majority": score(train.copy(data=np.full(tr.shape, ids[np.argmax(n)])))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 OpenMP threads on a shared 2-core machine were ~20x slower
    try:
        rf = train_mapper(images, train, model="random-forest", seq_len=T, seed=0, n_jobs=1)
        out["random-forest"] = score(class_map(rf.predict(images, threads=1)))
        mapper = train_mapper(images, train, seq_len=T, seed=0, fcn_epochs=FCN_EPOCHS)
        out["single"] = score(class_map(mapper.predict(images, temporal=False)))
        out["sequence"] = score(class_map(mapper.predict(images, temporal=True)))
    finally:
        torch.set_num_threads(threads)
    out["mapper"] = mapper
    return out


def test_fold_has_every_class_on_both_sides(fold):
    images, labels, train, test = fold
    assert images.dims == ("time", "band", "y", "x") and images.shape == (12, 1, 101, 100)
    assert sorted(np.unique(labels.values[labels.values >= 0]).tolist()) == CLASSES
    for part in (train, test):
        v = part.values
        assert all((v == c).sum() > 0 for c in CLASSES)
    assert not np.any((train.values >= 0) & (test.values >= 0))


def test_random_forest_beats_the_majority_class_clearly(scores):
    (maj_oa, maj_f1), (rf_oa, rf_f1) = scores["majority"], scores["random-forest"]
    assert rf_oa > maj_oa + 0.05, scores  # measured +0.091 .. +0.092 (seeds 0-2)
    assert rf_f1 > maj_f1 + 0.15, scores  # measured +0.239 .. +0.241


def test_sequence_reaches_the_random_forest_and_beats_its_single_date(scores):
    """The issue's bar on a real fold: macro F1 >= RF - 0.03, OA >= RF - 0.02, and the sequence beats the
    single date it ends with."""
    (rf_oa, rf_f1), (one_oa, one_f1), (seq_oa, seq_f1) = (scores[k] for k in ("random-forest", "single", "sequence"))
    assert seq_f1 >= rf_f1 - 0.03, scores
    assert seq_oa >= rf_oa - 0.02, scores
    # the measured margins (worst of seeds 0-2: +0.149 / +0.008 over the forest, +0.228 / +0.036 over the single date)
    assert seq_f1 >= rf_f1 + 0.12, scores
    assert seq_oa >= rf_oa + 0.003, scores
    assert seq_f1 > one_f1 + 0.2, scores
    assert seq_oa > one_oa + 0.02, scores
    cfg = scores["mapper"].config
    assert (cfg.architecture, cfg.seq_len, cfg.head_kernel, cfg.class_weight) == ("inputs", 12, 1, "sqrt")
    assert cfg.fcn_epochs == FCN_EPOCHS and cfg.temporal_epochs == default_epochs(101, 100, cfg.patch)[1] == 20

"""Land-cover mapping on real Sentinel-2 data (eo-learn Slovenia patch): single date vs 5-date sequence.

Data: ``<shared>/eolearn-slovenia-s2/ndvi_timeseries.npz`` (``S2PIPE_SHARED_DATA``, default ``<repo>/../shared/data``),
101 x 100 px at ~10 m, EPSG:32633, 68 irregular dates 2015-07-11 .. 2017-12-22, one band (NDVI from L1C TOA),
s2cloudless cloud mask ``clm`` per date, LULC reference ``lulc`` (0 = no data).

Preparation (``load_slovenia``):

* images (time, band=["NDVI"], y, x) float32, x/y = pixel centres from the affine transform, cloudy pixels
  (``clm == 1``) -> NaN (the mapper standardises and turns NaN into 0, the band mean);
* dates whose cloud fraction is above ``max_cloud`` (default 0.5) are dropped: a fully cloudy date is all NaN,
  i.e. a constant image, and would only dilute the 5-date windows (68 -> 41 dates at 0.5);
* labels (y, x) int64 = the LULC ids as in the file (2 forest, 3 grassland, 4 shrubland, 8 artificial
  surface), 0 -> -1 (unlabelled). Class 1 (cultivated land, 11 px in one spot in the north-east) is set to -1 as
  well (``drop_classes``): it cannot lie in both parts of a spatial split and 11 px cannot be learned/scored.

Spatial hold-out (``split_slovenia``): ``spatial_split(labels, mode="half", axis="y", test_fraction=0.3, gap=8)``:
train on the north, test on the south (every kept class is in both parts, counts printed), 8 px unlabelled band
between them. The training labels are the north part only (south = -1); the whole image is the input (the
test area's *imagery* is seen, its labels never).

Evaluation: for each seed, one ``train_mapper(images, train_labels, seq_len=5, ...)``; then, for every end date
``e`` in 5..T (sliding window), ``mapper.predict(images.isel(time=slice(None, e)), temporal=...)``:
``temporal=True`` (the last 5 dates through U-Net + ConvLSTM) and ``temporal=False`` (the U-Net on date e-1
alone), both scored against the south labels. Reported per seed: mean (and std over windows) of OA, kappa,
macro F1, mean IoU, per-class IoU/F1; the confusion matrix summed over all windows; the fraction of windows in
which the sequence beats the single date; and mean +- std over seeds. Also the majority-class baseline OA.

The figures below were measured with an early version of the mapper (the paper's head on the U-Net's probability
maps, which the library now trains only with ``architecture="paper"``); the multi-fold comparison with a per-pixel
random forest and the current default (a ConvLSTM head on the inputs) is ``benchmarks/eval_mapping_real.py``.
``--architecture`` passes ``train_mapper(architecture=...)``.

Measured then (2 shared CPU cores, 1 torch thread, train_mapper defaults: 12+6 epochs, patch 96, lr 3e-3, seeds 0-2,
~170 s in all): both modes predict forest everywhere on the south part: OA 0.6352 = the majority baseline,
macro F1 0.194, for every seed and window; the sequence gains nothing. Variations tried on seed 0 (per-date
standardisation, patch 32/64/96, lr 1e-3, batch 4, alpha 1, temporal_lr 1e-3/3e-3, up to 60 U-Net epochs,
a 20 px block split) did not beat the majority class either; the ConvLSTM head always output one class.
``--threads`` defaults to 1: with 2 OpenMP threads on the shared machine a training step took ~3.5 s vs ~0.17 s.

```bash
.venv/bin/python benchmarks/eval_mapping_slovenia.py                       # seeds 0 1 2, default epochs
.venv/bin/python benchmarks/eval_mapping_slovenia.py --seeds 0 --epochs 6 --json out/eval/slovenia.json
```
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
DATASET = "eolearn-slovenia-s2"
CLASS_NAMES = {1: "cultivated", 2: "forest", 3: "grassland", 4: "shrubland", 8: "artificial"}
DROP_CLASSES = (1,)
MAX_CLOUD = 0.5
SPLIT = dict(mode="half", axis="y", test_fraction=0.3, gap=8)
SEQ_LEN = 5


def shared_data_dir() -> Path:
    """``S2PIPE_SHARED_DATA`` or ``<repo>/../shared/data`` (as tests/conftest.py)."""
    return Path(os.environ.get("S2PIPE_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_slovenia(root: Path | None = None, *, max_cloud: float = MAX_CLOUD, drop_classes=DROP_CLASSES,
                  per_date: bool = False) -> tuple[xr.DataArray, xr.DataArray]:
    """(images (time, band, y, x) NDVI with clouds NaN, labels (y, x) int64 with -1 = unlabelled).

    ``per_date``: standardise each date over its clear pixels (NDVI - median) / std (no labels used), which
    removes the seasonal NDVI level that a date-agnostic single-image U-Net cannot know.
    """
    root = shared_data_dir() if root is None else Path(root)
    with np.load(root / DATASET / "ndvi_timeseries.npz", allow_pickle=False) as z:
        ndvi, clm, dates = z["ndvi"], z["clm"], z["dates"]
        lulc, tf, crs = z["lulc"], z["transform"], str(z["crs"])
    a, b, c, d, e, f = (float(v) for v in tf)
    if b != 0 or d != 0:
        raise ValueError(f"rotated transform {tf.tolist()} not supported")
    ny, nx = lulc.shape
    x = c + a * (np.arange(nx) + 0.5)
    y = f + e * (np.arange(ny) + 0.5)
    cloud = clm.astype(bool)
    frac = cloud.mean(axis=(1, 2))
    keep = frac <= max_cloud
    v = np.where(cloud, np.nan, ndvi).astype(np.float32)[keep][:, None]  # (T, 1, y, x)
    if per_date:
        med = np.nanmedian(v, axis=(2, 3), keepdims=True)
        sd = np.nanstd(v, axis=(2, 3), keepdims=True)
        v = ((v - med) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
    t = pd.to_datetime(dates[keep])
    attrs = {"crs": crs, "transform": [a, b, c, d, e, f]}
    images = xr.DataArray(v, dims=("time", "band", "y", "x"), name="ndvi",
                          coords={"time": t.values, "band": ["NDVI"], "y": y, "x": x},
                          attrs={**attrs, "cloud_fraction": frac[keep].round(4).tolist()})
    lab = lulc.astype(np.int64)
    lab[lab == 0] = -1
    for k in drop_classes:
        lab[lab == k] = -1
    labels = xr.DataArray(lab, dims=("y", "x"), coords={"y": y, "x": x}, name="lulc", attrs=attrs)
    return images, labels


def split_slovenia(labels: xr.DataArray, **kw) -> tuple[xr.DataArray, xr.DataArray]:
    """(train, test) label rasters: ``spatial_split`` with ``SPLIT`` (overridable by keyword)."""
    from s2pipe.ml.labels import spatial_split

    return spatial_split(labels, **{**SPLIT, **kw})


def class_counts(labels: xr.DataArray, classes) -> dict[int, int]:
    v = np.asarray(labels.values)
    return {int(k): int((v == k).sum()) for k in classes}


def majority_oa(train: xr.DataArray, test: xr.DataArray) -> tuple[int, float]:
    """(majority class of the training labels, OA on the test labels of always predicting it)."""
    tr, te = np.asarray(train.values), np.asarray(test.values)
    ids, n = np.unique(tr[tr >= 0], return_counts=True)
    maj = int(ids[np.argmax(n)])
    te = te[te >= 0]
    return maj, float((te == maj).mean())


def evaluate_windows(mapper, images: xr.DataArray, test: xr.DataArray, *, classes, names, ends=None,
                     seq_len: int = SEQ_LEN) -> dict:
    """Score ``temporal=True`` and ``False`` for each end date; returns per-mode lists of Scores."""
    from s2pipe.ml.metrics import score_map
    from s2pipe.products.maps import class_map

    T = images.sizes["time"]
    ends = list(range(seq_len, T + 1)) if ends is None else list(ends)
    out = {"ends": ends, "single": [], "sequence": []}
    for end in ends:
        sub = images.isel(time=slice(None, end))
        for mode, temporal in (("single", False), ("sequence", True)):
            proba = mapper.predict(sub, temporal=temporal)
            pred = class_map(proba)
            out[mode].append(score_map(pred, test, classes=classes, names=names))
    return out


def _summary(scores: list, classes) -> dict:
    oa = np.array([s.overall_accuracy for s in scores])
    kappa = np.array([s.kappa for s in scores])
    mf1 = np.array([s.macro_f1 for s in scores])
    miou = np.array([s.mean_iou for s in scores])
    iou = np.array([s.iou for s in scores])
    f1 = np.array([s.f1 for s in scores])
    cm = np.sum([s.confusion for s in scores], axis=0)
    return {
        "oa": float(oa.mean()), "oa_std_windows": float(oa.std()), "oa_min": float(oa.min()), "oa_max": float(oa.max()),
        "kappa": float(np.nanmean(kappa)), "macro_f1": float(np.nanmean(mf1)), "macro_f1_std_windows": float(np.nanstd(mf1)),
        "mean_iou": float(np.nanmean(miou)),
        "iou": {int(k): float(np.nanmean(iou[:, i])) for i, k in enumerate(classes)},
        "f1": {int(k): float(np.nanmean(f1[:, i])) for i, k in enumerate(classes)},
        "confusion_sum": cm.tolist(),
        "oa_per_window": oa.round(4).tolist(),
    }


def run(seeds, *, epochs=None, train_kw=None, max_cloud=MAX_CLOUD, per_date=False, device=None,
        verbose=True) -> dict:
    from s2pipe.mapping import train_mapper

    t_all = time.perf_counter()
    images, labels = load_slovenia(max_cloud=max_cloud, per_date=per_date)
    train, test = split_slovenia(labels)
    classes = sorted(int(k) for k in np.unique(labels.values) if k >= 0)
    names = {k: CLASS_NAMES[k] for k in classes}
    maj, base_oa = majority_oa(train, test)
    counts = {"all": class_counts(labels, classes), "train": class_counts(train, classes),
              "test": class_counts(test, classes)}
    T = images.sizes["time"]
    if verbose:
        print(f"images {dict(images.sizes)}: {T} dates with cloud fraction <= {max_cloud} "
              f"({pd.Timestamp(images.time.values[0]).date()} .. {pd.Timestamp(images.time.values[-1]).date()}), "
              f"NaN (cloud) pixels {float(np.isnan(images.values).mean()):.1%}")
        print(f"split {SPLIT}: class counts per part")
        print(f"  {'class':<14}" + "".join(f"{p:>8}" for p in counts))
        for k in classes:
            print(f"  {k:>2} {names[k]:<11}" + "".join(f"{counts[p][k]:>8}" for p in counts))
        print(f"majority class {maj} ({names[maj]}): test OA {base_oa:.4f}")
    train_kw = dict(train_kw or {})
    per_seed = []
    for seed in seeds:
        t0 = time.perf_counter()
        mapper = train_mapper(images, train, seq_len=SEQ_LEN, epochs=epochs, seed=seed, device=device, **train_kw)
        t_train = time.perf_counter() - t0
        t1 = time.perf_counter()
        res = evaluate_windows(mapper, images, test, classes=classes, names=names)
        t_eval = time.perf_counter() - t1
        single, seq = _summary(res["single"], classes), _summary(res["sequence"], classes)
        d_oa = np.array([b.overall_accuracy - a.overall_accuracy for a, b in zip(res["single"], res["sequence"])])
        d_f1 = np.array([b.macro_f1 - a.macro_f1 for a, b in zip(res["single"], res["sequence"])])
        rec = {"seed": int(seed), "train_s": round(t_train, 2), "eval_s": round(t_eval, 2),
               "config": {k: v for k, v in dataclasses.asdict(mapper.config).items() if k not in ("mean", "std")},
               "final_loss": {k: round(v[-1], 4) for k, v in mapper.losses.items()},
               "n_windows": len(res["ends"]), "single": single, "sequence": seq,
               "seq_wins_oa": float((d_oa > 0).mean()), "seq_wins_macro_f1": float((d_f1 > 0).mean()),
               "delta_oa_mean": float(d_oa.mean()), "delta_macro_f1_mean": float(np.nanmean(d_f1))}
        per_seed.append(rec)
        if verbose:
            print(f"seed {seed}: train {t_train:.1f} s (epochs {mapper.config.fcn_epochs}+{mapper.config.temporal_epochs}, "
                  f"patch {mapper.config.patch}, final losses {rec['final_loss']}), eval {t_eval:.1f} s "
                  f"over {len(res['ends'])} windows | OA single {single['oa']:.4f} +- {single['oa_std_windows']:.4f} "
                  f"sequence {seq['oa']:.4f} +- {seq['oa_std_windows']:.4f} | macro F1 single {single['macro_f1']:.4f} "
                  f"sequence {seq['macro_f1']:.4f} | sequence wins OA in {rec['seq_wins_oa']:.0%} of windows",
                  flush=True)
    wall = time.perf_counter() - t_all
    out = {"dataset": DATASET, "dates_used": T, "max_cloud": max_cloud, "per_date": per_date, "drop_classes": list(DROP_CLASSES),
           "split": SPLIT, "classes": classes, "names": names, "class_counts": counts,
           "majority_class": maj, "majority_oa": base_oa, "epochs": epochs, "train_kw": train_kw,
           "seeds": per_seed, "wall_s": round(wall, 1)}
    out["mean"] = _across_seeds(per_seed, classes)
    return out


def _across_seeds(per_seed, classes) -> dict:
    agg = {}
    for mode in ("single", "sequence"):
        m = {}
        for key in ("oa", "kappa", "macro_f1", "mean_iou"):
            v = np.array([r[mode][key] for r in per_seed])
            m[key] = [float(v.mean()), float(v.std())]
        for key in ("iou", "f1"):
            m[key] = {k: [float(np.mean([r[mode][key][k] for r in per_seed])),
                          float(np.std([r[mode][key][k] for r in per_seed]))] for k in classes}
        m["confusion_sum"] = np.sum([r[mode]["confusion_sum"] for r in per_seed], axis=0).tolist()
        agg[mode] = m
    agg["seq_wins_oa"] = float(np.mean([r["seq_wins_oa"] for r in per_seed]))
    agg["delta_oa_mean"] = float(np.mean([r["delta_oa_mean"] for r in per_seed]))
    return agg


def print_table(res: dict) -> None:
    classes, names = res["classes"], res["names"]
    print()
    print(f"== Slovenia LULC, spatial hold-out (train north / test south), {res['dates_used']} dates, "
          f"{res['seeds'][0]['n_windows']} 5-date windows per seed ==")
    print(f"majority baseline OA ({names[res['majority_class']]}): {res['majority_oa']:.4f}")
    head = f"{'seed':<6}{'mode':<10}{'OA':>8}{'±win':>7}{'kappa':>7}{'mF1':>7}{'mIoU':>7}" + \
        "".join(f"{'IoU' + str(k):>7}" for k in classes) + "".join(f"{'F1_' + str(k):>7}" for k in classes)
    print(head)
    for r in res["seeds"]:
        for mode in ("single", "sequence"):
            s = r[mode]
            print(f"{r['seed']:<6}{mode:<10}{s['oa']:>8.4f}{s['oa_std_windows']:>7.3f}{s['kappa']:>7.3f}"
                  f"{s['macro_f1']:>7.3f}{s['mean_iou']:>7.3f}" + "".join(f"{s['iou'][k]:>7.3f}" for k in classes)
                  + "".join(f"{s['f1'][k]:>7.3f}" for k in classes))
    m = res["mean"]
    for mode in ("single", "sequence"):
        s = m[mode]
        print(f"{'mean':<6}{mode:<10}{s['oa'][0]:>8.4f}{'':>7}{s['kappa'][0]:>7.3f}{s['macro_f1'][0]:>7.3f}"
              f"{s['mean_iou'][0]:>7.3f}" + "".join(f"{s['iou'][k][0]:>7.3f}" for k in classes)
              + "".join(f"{s['f1'][k][0]:>7.3f}" for k in classes))
        print(f"{'±std':<6}{'(seeds)':<10}{s['oa'][1]:>8.4f}{'':>7}{s['kappa'][1]:>7.3f}{s['macro_f1'][1]:>7.3f}"
              f"{s['mean_iou'][1]:>7.3f}" + "".join(f"{s['iou'][k][1]:>7.3f}" for k in classes)
              + "".join(f"{s['f1'][k][1]:>7.3f}" for k in classes))
    for mode in ("single", "sequence"):
        cm = np.array(m[mode]["confusion_sum"])
        print(f"confusion ({mode}), rows = truth, cols = predicted, summed over windows and seeds; "
              f"row-normalised %:")
        print("            " + "".join(f"{names[k][:10]:>11}" for k in classes))
        for i, k in enumerate(classes):
            row = cm[i] / max(1, cm[i].sum()) * 100
            print(f"  {names[k][:10]:<10}" + "".join(f"{v:>11.1f}" for v in row))
    print(f"sequence beats single date (OA) in {m['seq_wins_oa']:.0%} of windows; mean OA gain "
          f"{m['delta_oa_mean']:+.4f}; sequence - single macro F1 "
          f"{m['sequence']['macro_f1'][0] - m['single']['macro_f1'][0]:+.4f}")
    print(f"wall time {res['wall_s']:.1f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="total epochs (None: train_mapper default)")
    p.add_argument("--patch", type=int, default=None)
    p.add_argument("--base", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--temporal-lr", type=float, default=None)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--architecture", default=None, choices=["inputs", "inputs+probabilities", "paper"],
                   help="train_mapper architecture (default: the library's)")
    p.add_argument("--max-cloud", type=float, default=MAX_CLOUD,
                   help="drop dates with a larger cloud fraction (1.0 keeps all 68)")
    p.add_argument("--per-date", action="store_true", help="standardise each date (see load_slovenia)")
    p.add_argument("--patch-batch", dest="batch_size", type=int, default=None, help="train_mapper batch_size")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine 2 OpenMP threads ran ~20x slower)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    kw = {k: getattr(a, k)
          for k in ("patch", "base", "hidden", "lr", "temporal_lr", "alpha", "batch_size", "architecture")
          if getattr(a, k) is not None}
    res = run(a.seeds, epochs=a.epochs, train_kw=kw, max_cloud=a.max_cloud, per_date=a.per_date, device=a.device)
    print_table(res)
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

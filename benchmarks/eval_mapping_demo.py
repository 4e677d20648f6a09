"""Evaluate the U-Net + ConvLSTM land-cover mapper (``s2pipe.mapping``) on the demo region, as in the paper
"ConvLSTM for spatio-temporal feature extraction in time-series images": single date vs 5-date sequence.

Two binary tasks, like the paper: **roads** (road vs other, labels rasterized from ``roads.geojson`` with the
per-line ``width_m``) and **mangroves** (mangrove vs other, ``mangroves.geojson``). Each is trained on the west
part of the region and scored on a spatially held-out east part (``spatial_split``, ``mode="half"``, with an
unlabelled gap between the parts). For each seed the same trained mapper is scored

* ``single``: ``mapper.predict(images[:end], temporal=False)`` (the U-Net on the date ``end - 1`` alone);
* ``sequence``: ``mapper.predict(images[:end], temporal=True)`` (U-Net on the 5 dates up to ``end - 1``, then
  the ConvLSTM head);

for several end dates (sliding 5-date windows), because a single date may be cloudy or interpolated; figures
are mean ± standard deviation over the end dates, per seed, and the mean over seeds.

Time window: a new road (``built`` = 2022-02-28) is in ``roads.geojson``; before that date the imagery does not
show it. By default the images are the dates from 2022-03-05 (the first 5-day date after construction) to the
end of 2022, so labels and imagery agree for every training and scoring date.

The cube is gap-filled: dates/pixels without a clear observation are interpolated in time, i.e. a "single
date" is cloud-free and may already be a temporal blend of its neighbours. The script therefore also reports
the single-date scores split by the clear-observation fraction of the scored date (``observed``), and
``--input masked`` trains and scores on the cube with the non-observed values set to NaN (what a real single
cloud-masked acquisition gives; NaN becomes the band mean inside the mapper).

Usage::

    python benchmarks/eval_mapping_demo.py [--seeds 0 1 2] [--epochs N] [--json out/eval/demo.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

PAPER = {  # validation accuracy (%) of the paper, single image -> sequence of 5 images
    "roads": {"single": 91.1, "sequence": 93.4},
    "mangroves": {"single": 80.1, "sequence": 86.3},
}
TRUTH_CLASS = {"roads": 7, "mangroves": 2}  # class of landcover.tif (the generator's truth)
TARGET_NAME = {"roads": "road", "mangroves": "mangrove"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--epochs", type=int, default=None,
                   help="total epochs of train_mapper (split 2:1 U-Net/head); default: the library default")
    p.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    p.add_argument("--tasks", nargs="+", default=["roads", "mangroves"], choices=["roads", "mangroves"])
    p.add_argument("--cube", type=Path, default=ROOT / "out" / "demo-cube.zarr")
    p.add_argument("--vectors", type=Path, default=ROOT / "out" / "demo" / "vectors")
    p.add_argument("--truth", type=Path, default=ROOT / "out" / "demo" / "landcover.tif")
    p.add_argument("--start", default="2022-03-01", help="first date of the image window (default 2022-03-01: "
                   "after the new road of 2022-02-28)")
    p.add_argument("--stop", default="2022-12-31", help="last date of the image window")
    p.add_argument("--n-ends", type=int, default=12, help="number of end dates (sliding 5-date windows) scored")
    p.add_argument("--seq-len", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--gap", type=int, default=16, help="unlabelled pixels between the train and test parts")
    p.add_argument("--axis", default="x", choices=["x", "y"])
    p.add_argument("--input", default="gapfilled", choices=["gapfilled", "masked"],
                   help="gapfilled: the cube as is; masked: non-observed values set to NaN")
    p.add_argument("--bands", nargs="+", default=None, help="bands to use (default all; the paper: B02 B03 B04)")
    p.add_argument("--patch", type=int, default=None, help="train_mapper patch (default: library default)")
    p.add_argument("--lr", type=float, default=None, help="train_mapper lr (default: library default)")
    p.add_argument("--temporal-lr", type=float, default=None, help="train_mapper temporal_lr (default: lr)")
    p.add_argument("--architecture", default=None, choices=["inputs", "inputs+probabilities", "paper"],
                   help="train_mapper architecture (default: the library's, 'inputs'; 'paper': the paper's head)")
    p.add_argument("--alpha", type=float, default=None, help="train_mapper alpha (default: library default)")
    p.add_argument("--device", default=None, help="torch device (default: library default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: os.cpu_count())")
    return p.parse_args(argv)


def truth_on_grid(path: Path, like) -> np.ndarray | None:
    """landcover.tif cut to the cube grid (integer pixel offset), or None when it cannot be aligned."""
    import rasterio

    if not path.is_file():
        return None
    tr = like.attrs.get("transform")
    with rasterio.open(path) as f:
        t = f.transform
        if tr is None or abs(t.a - tr[0]) > 1e-6 or abs(t.e - tr[4]) > 1e-6:
            return None
        c, r = (tr[2] - t.c) / t.a, (tr[5] - t.f) / t.e
        if abs(c - round(c)) > 1e-6 or abs(r - round(r)) > 1e-6:
            return None
        c, r = int(round(c)), int(round(r))
        ny, nx = like.sizes["y"], like.sizes["x"]
        a = f.read(1)
        if r < 0 or c < 0 or r + ny > a.shape[0] or c + nx > a.shape[1]:
            return None
        return a[r:r + ny, c:c + nx]


def counts(lab: np.ndarray) -> dict:
    return {"other": int((lab == 0).sum()), "target": int((lab == 1).sum()), "unlabelled": int((lab < 0).sum())}


def summarize(values):
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def pct(x):
    return "   n/a" if x is None else f"{100 * x:6.2f}"


def pm(s):
    return "      n/a      " if s["mean"] is None else f"{100 * s['mean']:6.2f} ± {100 * s['std']:5.2f}"


def _clean(o):
    """JSON-safe copy: NaN/inf -> None, NumPy scalars -> Python."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    return str(o)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    from s2pipe.mapping import train_mapper
    from s2pipe.ml.labels import LabelSource, rasterize_labels, spatial_split
    from s2pipe.ml.metrics import score_map
    from s2pipe.products.maps import class_map
    from s2pipe.store.zarr import open_cube

    t_all = time.perf_counter()
    cube = open_cube(args.cube)
    win = cube.sel(time=slice(args.start, args.stop))
    images = win["reflectance"]
    if args.bands:
        images = images.sel(band=args.bands)
    images = images.load()
    observed = win["observed"].load().values.astype(bool)  # (time, y, x)
    if args.input == "masked":
        images = images.where(win["observed"].astype(bool))
    T = images.sizes["time"]
    times = [str(np.datetime_as_string(t, unit="D")) for t in images["time"].values]
    obs_frac = observed.reshape(T, -1).mean(axis=1)
    L = args.seq_len
    ends = sorted(set(np.linspace(L, T, args.n_ends).round().astype(int).tolist()))
    print(f"cube {args.cube.name}: {cube.sizes['time']} dates, window {times[0]}..{times[-1]} = {T} dates, "
          f"{images.sizes['band']} bands, {images.sizes['y']}x{images.sizes['x']} px, input={args.input}")
    print(f"end dates scored ({len(ends)}): " + ", ".join(f"{times[e - 1]} (clear {obs_frac[e - 1]:.2f})" for e in ends))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, python {platform.python_version()}")

    truth = truth_on_grid(args.truth, cube)
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "window": {"first": times[0], "last": times[-1], "dates": T},
               "end_dates": [times[e - 1] for e in ends],
               "end_clear_fraction": [float(obs_frac[e - 1]) for e in ends],
               "window_clear_fraction": [float(obs_frac[e - L:e].mean()) for e in ends],
               "paper_accuracy_percent": PAPER, "tasks": {}}

    for task in args.tasks:
        print(f"\n=== {task} ===")
        if task == "roads":
            src = LabelSource(args.vectors / "roads.geojson", class_id=1, width_column="width_m", name="road")
        else:
            src = LabelSource(args.vectors / "mangroves.geojson", class_id=1, name="mangrove")
        labels = rasterize_labels([src], images, background=0)
        train_lab, test_lab = spatial_split(labels, test_fraction=args.test_fraction, axis=args.axis, gap=args.gap,
                                            mode="half")
        tr, te = counts(train_lab.values), counts(test_lab.values)
        x_cut = np.flatnonzero((test_lab.values >= 0).any(axis=0))
        print(f"labels: {counts(labels.values)}; split axis={args.axis} gap={args.gap}px test_fraction="
              f"{args.test_fraction}: test part columns {x_cut.min() if x_cut.size else '-'}..{x_cut.max() if x_cut.size else '-'}")
        print(f"  train part: other {tr['other']:6d}  {TARGET_NAME[task]} {tr['target']:6d}  "
              f"({100 * tr['target'] / max(1, tr['other'] + tr['target']):.1f} %)")
        print(f"  test  part: other {te['other']:6d}  {TARGET_NAME[task]} {te['target']:6d}  "
              f"({100 * te['target'] / max(1, te['other'] + te['target']):.1f} %)")
        all_other_oa = te["other"] / max(1, te["other"] + te["target"])
        print(f"  trivial 'all other' overall accuracy on the test part: {100 * all_other_oa:.2f} %")
        tres = {"label_counts": {"all": counts(labels.values), "train": tr, "test": te},
                "all_other_test_accuracy": all_other_oa, "seeds": {}}
        if truth is not None:  # how well the vector labels match the generator's truth
            t_bin = (truth == TRUTH_CLASS[task]).astype(np.int16)
            agree = score_map(labels.values, t_bin, classes=[0, 1], names=["other", TARGET_NAME[task]])
            tres["labels_vs_truth"] = {"overall_accuracy": agree.overall_accuracy, "iou": float(agree.iou[1]),
                                       "f1": float(agree.f1[1]), "confusion": agree.confusion.tolist()}
            print(f"  rasterized labels vs landcover.tif class {TRUTH_CLASS[task]}: OA {100 * agree.overall_accuracy:.2f} %, "
                  f"IoU {100 * agree.iou[1]:.1f} %, F1 {100 * agree.f1[1]:.1f} %")

        kw = {}
        if args.patch is not None:
            kw["patch"] = args.patch
        if args.lr is not None:
            kw["lr"] = args.lr
        if args.temporal_lr is not None:
            kw["temporal_lr"] = args.temporal_lr
        if args.alpha is not None:
            kw["alpha"] = args.alpha
        if args.architecture is not None:
            kw["architecture"] = args.architecture
        for seed in args.seeds:
            t0 = time.perf_counter()
            mapper = train_mapper(images, train_lab, seq_len=L, epochs=args.epochs, seed=seed, device=args.device, **kw)
            t_train = time.perf_counter() - t0
            cfg = mapper.config
            print(f"seed {seed}: {mapper!r} patch {cfg.patch} batch {cfg.batch_size} lr {cfg.lr:g}/{cfg.temporal_lr:g}; "
                  f"trained in {t_train:.1f} s; final losses U-Net {mapper.losses['fcn'][-1]:.3f} "
                  f"head {mapper.losses['temporal'][-1]:.3f}")
            t0 = time.perf_counter()
            per_end = {"single": [], "sequence": []}
            pooled = {m: np.zeros((2, 2), dtype=np.int64) for m in per_end}
            for e in ends:
                sub = images.isel(time=slice(None, e))
                for mode, temporal in (("single", False), ("sequence", True)):
                    pred = class_map(mapper.predict(sub, temporal=temporal))
                    s = score_map(pred, test_lab, classes=[0, 1], names=["other", TARGET_NAME[task]])
                    pooled[mode] += s.confusion
                    per_end[mode].append({"end": times[e - 1], "clear_fraction": float(obs_frac[e - 1]),
                                          "overall_accuracy": s.overall_accuracy, "kappa": s.kappa,
                                          "iou": float(s.iou[1]), "f1": float(s.f1[1]),
                                          "precision": float(s.precision[1]), "recall": float(s.recall[1]),
                                          "confusion": s.confusion.tolist()})
            t_pred = time.perf_counter() - t0
            sres = {"train_seconds": t_train, "predict_seconds": t_pred,
                    "config": {k: v for k, v in cfg.__dict__.items() if k not in ("mean", "std", "bands")},
                    "losses": mapper.losses}
            for mode in per_end:
                rows = per_end[mode]
                sres[mode] = {"per_end": rows, "pooled_confusion": pooled[mode].tolist(),
                              **{m: summarize([r[m] for r in rows]) for m in ("overall_accuracy", "iou", "f1", "kappa")}}
                clear = [r for r in rows if r["clear_fraction"] >= 0.9]
                cloudy = [r for r in rows if r["clear_fraction"] < 0.9]
                sres[mode]["by_clear_fraction"] = {
                    "clear>=0.9": {m: summarize([r[m] for r in clear]) for m in ("overall_accuracy", "iou", "f1")},
                    "clear<0.9": {m: summarize([r[m] for r in cloudy]) for m in ("overall_accuracy", "iou", "f1")}}
            tres["seeds"][str(seed)] = sres
            print(f"  scored {len(ends)} end dates x 2 modes in {t_pred:.1f} s")
            for mode in per_end:
                print(f"  {mode:8s} OA {pm(sres[mode]['overall_accuracy'])}  IoU {pm(sres[mode]['iou'])}  "
                      f"F1 {pm(sres[mode]['f1'])}  pooled confusion (rows truth other/{TARGET_NAME[task]}, cols pred) "
                      f"{pooled[mode].tolist()}")
            print("  per end date        clear  single OA/IoU/F1       sequence OA/IoU/F1")
            for a, b in zip(per_end["single"], per_end["sequence"]):
                print(f"  {a['end']}  {a['clear_fraction']:5.2f}  {pct(a['overall_accuracy'])} {pct(a['iou'])} {pct(a['f1'])}"
                      f"   {pct(b['overall_accuracy'])} {pct(b['iou'])} {pct(b['f1'])}")
        # mean over seeds (of the per-seed means over end dates)
        tres["mean_over_seeds"] = {}
        for mode in ("single", "sequence"):
            tres["mean_over_seeds"][mode] = {
                m: summarize([tres["seeds"][str(s)][mode][m]["mean"] for s in args.seeds])
                for m in ("overall_accuracy", "iou", "f1", "kappa")}
            tres["mean_over_seeds"][mode]["pooled_confusion"] = np.sum(
                [tres["seeds"][str(s)][mode]["pooled_confusion"] for s in args.seeds], axis=0).tolist()
        diffs = []
        for s in args.seeds:  # paired difference sequence - single, per seed and end date
            a, b = tres["seeds"][str(s)]["single"]["per_end"], tres["seeds"][str(s)]["sequence"]["per_end"]
            diffs += [(y["overall_accuracy"] - x["overall_accuracy"], y["iou"] - x["iou"]) for x, y in zip(a, b)]
        d = np.asarray(diffs)
        tres["sequence_minus_single"] = {"overall_accuracy": summarize(d[:, 0]), "iou": summarize(d[:, 1]),
                                         "sequence_better_oa_fraction": float((d[:, 0] > 0).mean())}
        results["tasks"][task] = tres

    wall = time.perf_counter() - t_all
    results["wall_seconds"] = wall

    # ------------------------------------------------------------------ final table
    print("\n" + "=" * 118)
    print(f"FINAL: test part (spatially held out, gap {args.gap}px), mean ± std over {len(ends)} end dates "
          f"({results['end_dates'][0]}..{results['end_dates'][-1]}), input={args.input}, target-class IoU/F1; % ")
    print(f"{'task':10s} {'mode':9s} {'seed':>5s}  {'OA':>15s}  {'IoU':>15s}  {'F1':>15s}  {'paper acc':>9s}  {'train s':>7s}")
    print("-" * 118)
    for task, tres in results["tasks"].items():
        for mode in ("single", "sequence"):
            for s in args.seeds:
                r = tres["seeds"][str(s)]
                print(f"{task:10s} {mode:9s} {s:5d}  {pm(r[mode]['overall_accuracy'])}  {pm(r[mode]['iou'])}  "
                      f"{pm(r[mode]['f1'])}  {PAPER[task][mode]:9.1f}  {r['train_seconds']:7.1f}")
            m = tres["mean_over_seeds"][mode]
            print(f"{task:10s} {mode:9s} {'mean':>5s}  {pm(m['overall_accuracy'])}  {pm(m['iou'])}  {pm(m['f1'])}  "
                  f"{PAPER[task][mode]:9.1f}   (± over seeds)")
        dd = tres["sequence_minus_single"]
        print(f"{task:10s} seq−single paired over seeds×ends: ΔOA {pm(dd['overall_accuracy'])}  ΔIoU {pm(dd['iou'])}  "
              f"sequence better in {100 * dd['sequence_better_oa_fraction']:.0f} %   paper ΔOA "
              f"{PAPER[task]['sequence'] - PAPER[task]['single']:+.1f}; trivial all-other OA "
              f"{100 * tres['all_other_test_accuracy']:.2f}")
        for mode in ("single", "sequence"):
            print(f"{'':10s} {mode:9s} pooled confusion over seeds×ends (rows truth other/{TARGET_NAME[task]}, "
                  f"cols pred): {tres['mean_over_seeds'][mode]['pooled_confusion']}")
        for mode in ("single", "sequence"):
            by = {k: summarize([tres["seeds"][str(s)][mode]["by_clear_fraction"][k]["iou"]["mean"] for s in args.seeds])
                  for k in ("clear>=0.9", "clear<0.9")}
            n_clear = sum(f >= 0.9 for f in results["end_clear_fraction"])
            print(f"{'':10s} {mode:9s} IoU by clear fraction of the last date: clear>=0.9 ({n_clear} ends) "
                  f"{pm(by['clear>=0.9'])}   <0.9 ({len(ends) - n_clear} ends) {pm(by['clear<0.9'])}")
    print("-" * 118)
    print(f"wall time {wall:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_clean(results), indent=1, allow_nan=False))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does spatial smoothing of class probabilities help on real data? Held-out scores with and without
``s2pipe.products.maps.smooth_probabilities`` (Bayesian smoothing of the logits, as ``sits_smooth``; and a Gaussian filter).

For each data set of ``benchmarks/eval_mapping_real.py`` (its loaders and spatial folds, imported) and each tree
model (random forest, LightGBM: per-pixel, so the raw maps are the noisiest), one mapper is trained per fold
(seed 0, the library's defaults, 1 thread) and its probabilities are scored raw and after each smoothing variant:
OA and macro-F1 per fold and their mean. ``map predict --smooth`` stays opt-in unless every data set gains.

```bash
.venv/bin/python benchmarks/eval_smoothing.py                       # slovenia + romania20, random forest + LightGBM
.venv/bin/python benchmarks/eval_smoothing.py --datasets slovenia --models random-forest --json out/eval/smooth.json
```
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _eval_real():
    spec = importlib.util.spec_from_file_location("eval_mapping_real", HERE / "eval_mapping_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


VARIANTS = [("none", None)] + [(f"bayes w{w} s{s}", dict(window=w, smoothness=s)) for w in (5, 7) for s in (10, 20)] \
    + [(f"gaussian w{w}", dict(window=w, method="gaussian")) for w in (3, 5)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["slovenia", "romania20"])
    p.add_argument("--models", nargs="+", default=["random-forest", "lightgbm"])
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    from s2pipe.mapping import train_mapper
    from s2pipe.ml.metrics import score_map
    from s2pipe.products.maps import class_map, smooth_probabilities

    ev = _eval_real()
    t_all = time.perf_counter()
    out: dict = {}
    for ds in a.datasets:
        images, labels = ev.load_dataset(ds)
        for model in a.models:
            rows: dict[str, list] = {}
            for fold, train, test in ev.folds(labels):
                m = train_mapper(images, train, model=model, seed=0, n_jobs=1)
                proba = m.predict(images, threads=1)
                for name, kw in VARIANTS:
                    q = proba if kw is None else smooth_probabilities(proba, **kw)
                    s = score_map(class_map(q), test, classes=m.config.classes)
                    rows.setdefault(name, []).append((fold, s.overall_accuracy, s.macro_f1))
            out[f"{ds}/{model}"] = rows
            print(f"== {ds}, {model}: OA / macro-F1 per fold, mean; Δ = mean - no smoothing")
            base = np.array([r[1:] for r in rows["none"]])
            for name, r in rows.items():
                v = np.array([x[1:] for x in r])
                folds = "  ".join(f"{f}: {oa:.3f}/{f1:.3f}" for f, oa, f1 in r)
                d = v.mean(0) - base.mean(0)
                print(f"  {name:<15} {folds} | mean {v[:, 0].mean():.3f}/{v[:, 1].mean():.3f} "
                      f"Δ {d[0]:+.3f}/{d[1]:+.3f}", flush=True)
    print(f"wall time {time.perf_counter() - t_all:.0f} s")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

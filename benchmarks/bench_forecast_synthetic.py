"""Table 1 of Estopinan et al. on the synthetic Hapke series: LSTM / Euler / RK4 long-run forecasts.

Trains each scheme twice on the first 960 half-hourly steps (20 days) of the vegetation pixel of
``s2pipe.synthetic.dynamics.hapke_series`` (144 bands): with the paper's plain training (full 288-value state,
one-step MSE, constant lr 1e-3) and with the library default (``training="rollout"``: multi-step loss,
cosine lr, block-normalised reduced state). Forecasts 120 steps from the end of training and prints RMSE
and SAE (spectral angle, **radians**, ×1e-3) at t+12/24/36/120 beside the paper's numbers and persistence.
Then training time per epoch, forecast throughput (pixel-steps/s) and the achieved FLOP rate as a ratio of
a plain 2048² float32 matmul measured in the same run, on CPU and, when present, CUDA.

    .venv/bin/python benchmarks/bench_forecast_synthetic.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_forecast_synthetic.py --quick    # ~1 min, fewer epochs
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from s2pipe.forecast import (
    fit_dynamics,
    resolve_device,
    rmse_by_lead,
    spectral_angle_by_lead,
)
from s2pipe.synthetic.dynamics import HORIZONS, TRAIN_STEPS, hapke_series

PAPER_RMSE = {"lstm": (27.7, 48.5, 27.5, 49.8), "euler": (31.4, 32.9, 92.5, 2367), "rk4": (0.45, 3.01, 2.33, 33.6)}
PAPER_SAE = {"lstm": (4.30, 4.30, 4.30, 4.30), "euler": (18.0, 13.0, 10.9, 23.6), "rk4": (0.01, 0.01, 0.03, 0.67)}


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def forecast_rate(model, history, *, pixels: int, steps: int, device, precision: str = "float32"):
    """(pixel-steps/s, GFLOP/s, forecast) of ``model.forecast`` on ``pixels`` copies of ``history``, best of 3."""
    h = history.expand_dims(x=np.arange(pixels, dtype=float), y=[0.0]).transpose("time", "band", "y", "x")
    h = h.isel(time=slice(-max(model.config.warmup, 1) - model.config.order, None)).copy()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        f = model.forecast(h, steps=steps, device=device, batch_size=pixels, precision=precision)
        best = min(best, time.perf_counter() - t)
    rate = pixels * steps / best
    return rate, rate * model.module.flops_per_step() / 1e9, f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs (~1 min)")
    ap.add_argument("--plain-epochs", type=int, default=None, help="epochs of the paper's training (default 1000)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of the default training (default: library's)")
    ap.add_argument("--hidden", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    plain_epochs = args.plain_epochs or (300 if args.quick else 1000)
    epochs = args.epochs or (200 if args.quick else None)
    device = resolve_device(None)
    print(f"device {device}, torch threads {torch.get_num_threads()}, hidden {args.hidden}")

    da = hapke_series(materials=("vegetation",), seed=args.seed).isel(y=0, x=0)
    train = da.isel(time=slice(0, TRAIN_STEPS))
    truth = da.isel(time=slice(TRAIN_STEPS, TRAIN_STEPS + max(HORIZONS))).values
    idx = [h - 1 for h in HORIZONS]
    rows = []
    pers = np.repeat(train.values[-1:], max(HORIZONS), 0)
    rows.append(("persistence", "-", rmse_by_lead(pers, truth)[idx], spectral_angle_by_lead(pers, truth)[idx], None))
    models = {}
    for mode, kw in (("paper", {"training": "one_step", "epochs": plain_epochs}),
                     ("default", {"epochs": epochs})):
        for scheme in ("lstm", "euler", "rk4"):
            m = fit_dynamics(train, scheme=scheme, hidden=args.hidden, seed=args.seed, **kw)
            f = m.forecast(train, steps=max(HORIZONS)).values
            r, a = rmse_by_lead(f, truth)[idx], spectral_angle_by_lead(f, truth)[idx]
            rows.append((scheme, mode, r, a, m))
            models[(scheme, mode)] = m
            print(f"  trained {scheme:5s} {mode:7s}: {m.config.epochs} epochs, state {m.config.dim}, "
                  f"{m.train_seconds:.1f} s ({1e3 * m.train_seconds / m.config.epochs:.1f} ms/epoch), "
                  f"RMSE t+120 {r[-1]:.2e}", flush=True)

    hz = "/".join(str(h) for h in HORIZONS)
    print(f"\nTable 1 (vegetation pixel, 144 bands): RMSE x1e-3 and SAE x1e-3 rad at t+{hz}")
    print(f"{'model':12s} {'training':8s} | {'RMSE x1e-3':^31s} | {'SAE x1e-3 rad':^31s} | paper RMSE / SAE")
    for scheme, mode, r, a, _ in rows:
        paper = ""
        if scheme in PAPER_RMSE:
            paper = " ".join(f"{v:g}" for v in PAPER_RMSE[scheme]) + " / " + " ".join(f"{v:g}" for v in PAPER_SAE[scheme])
        print(f"{scheme:12s} {mode:8s} | " + " ".join(f"{1e3 * v:7.3f}" for v in r) + " | "
              + " ".join(f"{1e3 * v:7.3f}" for v in a) + f" | {paper}")
    best = min((r[-1], s) for s, mode, r, _, _ in rows if mode == "default")
    rk4 = next(r[-1] for s, mode, r, _, _ in rows if s == "rk4" and mode == "default")
    print(f"default training: best at t+120 = {best[1]}; RK4 RMSE t+120 = {rk4:.2e} (target <= 5e-3, aim 1e-3)")

    print("\nThroughput (forecast 120 steps, pixels batched; FLOP = 2 x multiply-adds of the network only)")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        mm = matmul_gflops(dev)
        print(f"{dev.type}: plain 2048^2 float32 matmul {mm:.1f} GFLOP/s")
        for key in (("rk4", "paper"), ("rk4", "default"), ("euler", "paper"), ("lstm", "paper")):
            m = models[key]
            px = 4096 if dev.type == "cpu" else 65536
            rate, gf, _ = forecast_rate(m, train, pixels=px, steps=120, device=dev)
            flop_train = 3 * m.module.flops_per_step() * m.config.rollout  # fwd + bwd per sample and horizon
            n_samples = (TRAIN_STEPS - m.config.order - m.config.rollout)
            train_gf = flop_train * n_samples / (m.train_seconds / m.config.epochs) / 1e9 if dev.type == "cpu" else float("nan")
            print(f"  {key[0]:5s} {key[1]:7s} state {m.config.dim:3d}: forecast {rate:.3e} pixel-steps/s, "
                  f"{gf:.1f} GFLOP/s = {gf / mm:.2f} of matmul"
                  + (f"; training ~{train_gf:.1f} GFLOP/s = {train_gf / mm:.2f} of matmul (approx.)"
                     if dev.type == "cpu" and key[0] != "lstm" else ""))
        m = models[("rk4", "default")]
        px = 4096 if dev.type == "cpu" else 65536
        _, _, ref = forecast_rate(m, train, pixels=px, steps=120, device=dev)
        for prec in ("bfloat16",) + (("tf32",) if dev.type == "cuda" else ()):
            rate, gf, f = forecast_rate(m, train, pixels=px, steps=120, device=dev, precision=prec)
            dev_rmse = rmse_by_lead(f.values[:, :, 0, :1], truth[:, :, None])[idx]
            print(f"  rk4   default {prec:8s}: forecast {rate:.3e} pixel-steps/s = {gf / mm:.2f} of fp32 matmul; "
                  "RMSE x1e-3 vs truth at t+" + "/".join(map(str, HORIZONS)) + ": "
                  + " ".join(f"{1e3 * v:.3f}" for v in dev_rmse) + f"; max |diff| vs float32 "
                  f"{float(np.abs(f.values - ref.values).max()):.1e}")
        for key in list(models):
            models[key].module.to("cpu")
            models[key].device = torch.device("cpu")
    print(f"rk4_default_rmse_t120 {rk4:.3e}")


if __name__ == "__main__":
    main()

"""Soak: the demo region's cube read through a faulty object store, against the same read undisturbed.

The demo region's COGs (``out/demo``, generated when missing) are served over HTTP on 127.0.0.1 by
``s2pipe.synthetic.faulty_server.FaultyCogServer``. One run reads the raw cube of the demo bbox (all dates, all
bands + SCL) three times, on the local threaded scheduler:

1. from the local files (the reference values);
2. through the server with no fault (the undisturbed HTTP read: the baseline of the timing);
3. through the server with ``--rate`` (default 5 %) of the range requests spoiled: 503, 429 with Retry-After,
   stalls past the time-out, connections closed mid-body and truncated bodies; with ``--token-ttl S`` the server
   also wants SAS tokens that expire every S seconds, and the readers sign each href when they open it
   (``s2pipe.stac.signing``; 403s re-signed).

It prints the requests made, the faults injected by kind, the retries (s2pipe's window re-reads and GDAL's
request retries, counted from their log lines), the wall times and their ratio, and whether the faulty read
equals the local one bit for bit.

    .venv/bin/python benchmarks/bench_faults.py [--rate 0.05] [--seed 1] [--token-ttl 20] [--json out/bench-faults.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from s2pipe.cube import build_cube
from s2pipe.runtime.retry import RetryPolicy
from s2pipe.stac.catalog import load_profile
from s2pipe.stac.items import normalize_item
from s2pipe.stac.signing import HrefSigner
from s2pipe.synthetic.demo import generate_demo
from s2pipe.synthetic.faulty_server import FaultyCogServer, http_items


class _Count(logging.Handler):
    """Counts the retry lines of s2pipe's readers and of GDAL (rasterio's logger)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.s2pipe = self.gdal = 0

    def emit(self, record):
        text = record.getMessage()
        if record.name == "s2pipe" and "; attempt " in text:
            self.s2pipe += 1
        elif "Retrying again" in text:
            self.gdal += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=0.05, help="share of the range requests spoiled")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=2.0, help="GDAL's HTTP time-out (s); stalls last twice as long")
    ap.add_argument("--token-ttl", type=float, default=None, help="faulty run: SAS tokens that expire every S seconds")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    region = generate_demo(Path(load_profile("local-demo").demo_root or "out/demo"))
    features = json.loads(region.items_path.read_text())["features"]
    items = [normalize_item(f, load_profile("local-demo"), sign=False).to_dict() for f in features]
    kw = dict(bbox=region.default_bbox, time_chunks="all", chunk_size=256)
    policy = RetryPolicy(retries=3, backoff=0.2)

    t0 = time.perf_counter()
    local = build_cube(items, **kw).compute(scheduler="threads")
    t_local = time.perf_counter() - t0

    def through(rate: float, token_ttl: float | None = None):
        count = _Count()
        for name in ("s2pipe", "rasterio._env", "rasterio"):
            logging.getLogger(name).addHandler(count)
        try:
            with FaultyCogServer(region.root, rate=rate, seed=args.seed, stall_s=2 * args.timeout,
                                 token_ttl=token_ttl) as server:
                signer = None if token_ttl is None else HrefSigner(
                    token_url=server.token_url, hosts=(server.token_url.split("/")[2],), renew_before=0.0)
                t = time.perf_counter()
                cube = build_cube(http_items(items, server), read_retry=policy, http_timeout=args.timeout,
                                  signer=signer, **kw).compute(scheduler="threads")
                seconds = time.perf_counter() - t
        finally:
            for name in ("s2pipe", "rasterio._env", "rasterio"):
                logging.getLogger(name).removeHandler(count)
        return cube, seconds, dict(server.counts), count

    clean, t_clean, clean_counts, _ = through(0.0)
    faulty, t_faulty, counts, retries = through(args.rate, args.token_ttl)
    faults = {k: v for k, v in counts.items() if k in FaultyCogServer.KINDS}
    figures = {
        "cube": {k: int(v) for k, v in local.sizes.items()}, "assets": sum(len(it["assets"]) for it in items),
        "rate": args.rate, "seed": args.seed, "http_timeout_s": args.timeout,
        "local_read_s": round(t_local, 2), "http_read_s": round(t_clean, 2), "faulty_read_s": round(t_faulty, 2),
        "faulty_vs_http": round(t_faulty / t_clean, 2),
        "requests_undisturbed": clean_counts.get("requests", 0), "requests_faulty": counts.get("requests", 0),
        "faults": faults, "faults_total": sum(faults.values()), "token_ttl_s": args.token_ttl,
        "tokens_issued": counts.get("tokens", 0), "expired_token_403s": counts.get("403", 0),
        "retries_s2pipe_windows": retries.s2pipe, "retries_gdal_requests": retries.gdal,
        "http_equals_local": bool(np.array_equal(clean.values, local.values)),
        "faulty_equals_local": bool(np.array_equal(faulty.values, local.values)),
    }
    for k, v in figures.items():
        print(f"{k:24s} {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

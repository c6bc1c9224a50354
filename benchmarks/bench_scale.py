"""Scaling of ``python -m nngp_gpytorch.scale mnist1d``: exact depth-3 ReLU MLP-NNGP classification of
mnist1d at N training points, Grams tiled on a Dask LocalCluster into float32 Zarr stores, solved by
Cholesky where it fits and by streamed, pivoted-Cholesky-preconditioned CG otherwise.

Each N runs in its own process (its own peak RSS) and prints one row: seconds per phase, CG passes, true
relative residual, peak RSS of the driver and the largest worker, store size and test accuracy.

    python benchmarks/bench_scale.py --n 5000 10000 20000 50000 [--store-root /tmp/nngp-scale] [--method cg]

N = 50,000 keeps ~6 GB of Gram on disk (float32, upper tiles) and runs for tens of minutes on 2 cores;
it is not run by CI (tests/test_scale.py runs the same path at N = 2,000).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--method", default="auto", choices=["auto", "cholesky", "cg"])
    parser.add_argument("--store-root", default=None, help="keep the stores here (default: a temporary folder)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI flags, passed on")
    args = parser.parse_args()
    root = Path(args.store_root or tempfile.mkdtemp(prefix="nngp-scale-"))
    header = (f"{'N':>6s} {'method':>8s} {'gram s':>7s} {'test s':>7s} {'noise s':>7s} {'solve s':>8s} "
              f"{'passes':>6s} {'residual':>9s} {'RSS drv':>7s} {'RSS wkr':>7s} {'disk GB':>7s} {'accuracy':>8s}")
    print(header)
    for n in args.n:
        out = root / f"result-{n}-{args.method}.json"
        command = [sys.executable, "-m", "nngp_gpytorch.scale", "mnist1d", "--n-train", str(n), "--n-test",
                   str(args.n_test), "--store", str(root / f"store-{n}"), "--method", args.method,
                   "--no-progress", "--json", str(out), *args.extra]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        r = json.loads(out.read_text())
        s, rss = r["seconds"], r["peak_rss_gb"]
        workers = max((v for k, v in rss.items() if k != "driver"), default=float("nan"))
        print(f"{n:6d} {r['method']:>8s} {s['train_gram']:7.1f} {s['test_gram']:7.1f} {s['noise']:7.1f} "
              f"{s['solve']:8.1f} {r['cg_passes']:6d} {r['relative_residual']:9.1e} {rss['driver']:7.2f} "
              f"{workers:7.2f} {r['store_gb']:7.2f} {r['test_accuracy']:8.4f}", flush=True)


if __name__ == "__main__":
    main()

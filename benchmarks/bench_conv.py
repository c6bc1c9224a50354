"""Throughput and peak memory of CNNKernel: 3-layer conv ReLU nets (3×3, SAME) on 8×8 and 16×16 images.

Prints kernel entries per second with a Flatten readout (same-position layout, O(P) per pair) and a
global-average-pooling readout (full spatial covariance, O(P²) per pair), the ratio to a 3-layer ReLU
MLP kernel on the same flattened inputs (baseline), and the peak resident memory of one N×N evaluation
with tiling off and on (each measured in a fresh subprocess).

    python benchmarks/bench_conv.py [--n 24] [--channels 1] [--repeats 2] [--memory-n 64]

Throughput runs use the default 64 MiB tiles (the full 16×16 covariance is 65,536 entries per pair of inputs).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from timing import best_time  # benchmarks/timing.py (scripts run from this folder)

from nngp_gpytorch import CNNKernel, MLPKernel


def peak_memory_child(size: int, n: int, readout: str, max_memory: int | None) -> None:
    torch.set_num_threads(1)
    x = torch.randn(n, size * size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kernel = CNNKernel((1, size, size), depth=3, readout=readout, weight_var=2.0, bias_var=0.01,
                       max_memory=max_memory).double()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.no_grad():
        k = kernel(x, x).to_dense()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak / 1024, "baseline_mib": before / 1024, "seconds": seconds,
                      "checksum": float(k.sum())}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=24, help="points for the throughput runs")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-n", type=int, default=64, help="points for the peak-memory runs (8×8, GAP)")
    parser.add_argument("--max-memory", type=int, default=32 * 2**20, help="tile budget of the memory runs (bytes)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, n, readout, budget = args.child
        peak_memory_child(int(size), int(n), readout, None if budget == "none" else int(budget))
        return
    torch.set_num_threads(1)
    print(f"CNNKernel: 3 × (Conv 3×3 SAME, ReLU), readout, Dense; N = {args.n}, C = {args.channels}, float64, "
          "1 thread")
    print(f"{'image':>6s} {'readout':>8s} {'full (s)':>9s} {'entries/s':>11s} {'vs MLP':>9s}")
    for size in (8, 16):
        d = args.channels * size * size
        x = torch.randn(args.n, d, dtype=torch.float64)
        mlp = MLPKernel(depth=3, weight_var=2.0, bias_var=0.01).double()
        with torch.no_grad():
            t_mlp = best_time(lambda mlp=mlp, x=x: mlp(x, x).to_dense(), args.repeats)
        for readout in ("flatten", "gap"):
            kernel = CNNKernel((args.channels, size, size), depth=3, readout=readout, weight_var=2.0,
                               bias_var=0.01).double()  # default tiles of 64 MiB
            with torch.no_grad():
                t = best_time(lambda kernel=kernel, x=x: kernel(x, x).to_dense(), args.repeats)
            rate = args.n * args.n / t
            print(f"{size:>4d}² {readout:>8s} {t:9.3f} {rate:11.3g} {t / t_mlp:8.1f}×")
    print(f"\nPeak resident memory, 8×8 GAP, N = {args.memory_n} (full N×N, no gradients; fresh process each)")
    print(f"{'tiling':>22s} {'peak MiB':>9s} {'after import':>13s} {'kernel':>8s} {'seconds':>8s}")
    results = {}
    for label, budget in (("off", "none"), (f"max_memory={args.max_memory >> 20} MiB", str(args.max_memory))):
        out = subprocess.run([sys.executable, __file__, "--child", "8", str(args.memory_n), "gap", budget],
                             capture_output=True, text=True, check=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        results[label] = res
        print(f"{label:>22s} {res['peak_mib']:9.0f} {res['baseline_mib']:13.0f} "
              f"{res['peak_mib'] - res['baseline_mib']:8.0f} {res['seconds']:8.1f}")
    sums = [r["checksum"] for r in results.values()]
    print(f"same values: {abs(sums[0] - sums[1]) <= 1e-9 * abs(sums[0])} (checksums {sums[0]:.12g}, {sums[1]:.12g})")


if __name__ == "__main__":
    main()

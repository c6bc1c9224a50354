"""Tiles per second per worker for an MLP and a conv NNGP, and the wall time they imply for N = 1M.

One worker = one process with one torch thread (what ``compute_gram``'s LocalCluster runs). Each kernel
computes ``--tiles`` tiles inline (no Dask, no store: the kernel's cost only; writing a 16 MB tile to a
local Zarr store adds ~10 ms), and the script prints entries/s/worker and the wall time of the symmetric
Gram ``N(N + tile)/2`` entries at N = 1,000,000 on k workers, ignoring stragglers and the store's bandwidth.

    python benchmarks/bench_scale_tiles.py [--tiles 3] [--workers 2 16 128 1024]
"""

from __future__ import annotations

import argparse
import time

import torch

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A


def entries_per_second(kernel, d: int, tile: int, tiles: int) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tile * (tiles + 1), d, dtype=torch.float64, generator=g)
    with torch.no_grad():
        kernel(x[:8], x[:8]).to_dense()  # warm-up
        start = time.perf_counter()
        for t in range(tiles):
            kernel(x[:tile], x[(t + 1) * tile:(t + 2) * tile]).to_dense()
    return tiles * tile * tile / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 16, 128, 1024])
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [
        ("MLP depth-3 ReLU, d = 40", NNGPKernel(A.mlp(3), weight_var=2.0, bias_var=0.1).double(), 40, 2048),
        ("1-D CNN: 3×Conv(5) ReLU + GAP, 1×40", NNGPKernel(A.cnn(3, kernel_size=5), input_shape=(1, 40),
                                                             weight_var=2.0, bias_var=0.1).double(), 40, 64),
        ("1-D CNN: 3×Conv(5) ReLU + Flatten, 1×40", NNGPKernel(A.cnn(3, kernel_size=5, readout="flatten"),
                                                                input_shape=(1, 40), weight_var=2.0,
                                                                bias_var=0.1).double(), 40, 256),
    ]
    total = args.n * (args.n + 2048) / 2
    print(f"N = {args.n:,}: {total:.3g} Gram entries (upper tiles); one thread per worker")
    columns = " ".join(f"{f'{k} workers':>12s}" for k in args.workers)
    print(f"{'kernel':42s} {'tile':>5s} {'entries/s/worker':>17s} {columns}")
    for name, kernel, d, tile in cases:
        rate = entries_per_second(kernel, d, tile, args.tiles)
        hours = [total / (rate * k) / 3600 for k in args.workers]
        print(f"{name:42s} {tile:5d} {rate:17.3g} " + " ".join(f"{h:10.3g} h" for h in hours), flush=True)


if __name__ == "__main__":
    main()

"""Throughput of NNGPKernel: depth-10 ReLU MLP, N = 2000 points, d = 64, float32 and float64.

Prints kernel entries per second for the full matrix and the diagonal, and the ratio of the kernel
evaluation to one dense matmul X·Xᵀ (the unavoidable baseline every dot-product kernel pays).

    python benchmarks/bench_kernel.py [--n 2000] [--depth 10] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from timing import best_time  # benchmarks/timing.py (scripts run from this folder)

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"NNGPKernel depth-{args.depth} ReLU MLP, N = {args.n}, d = {args.d}, {args.threads} thread(s)")
    print(f"{'dtype':8s} {'full (s)':>9s} {'entries/s':>11s} {'grad (s)':>9s} {'diag (s)':>9s} {'vs X·Xᵀ':>8s}")
    for dtype in (torch.float32, torch.float64):
        measure(dtype, args)


def measure(dtype: torch.dtype, args) -> None:
    x = torch.randn(args.n, args.d, dtype=dtype, generator=torch.Generator().manual_seed(0))
    kernel = NNGPKernel(A.mlp(args.depth, A.ReLU()), weight_var=2.0, bias_var=0.1).to(dtype)
    with torch.no_grad():
        full = best_time(lambda: kernel(x).to_dense(), args.repeats)
        diag = best_time(lambda: kernel(x, diag=True), args.repeats)
        matmul = best_time(lambda: x @ x.T, args.repeats)

    def with_grad():
        kernel.zero_grad()
        kernel(x).to_dense().sum().backward()

    grad = best_time(with_grad, args.repeats)
    entries = args.n * args.n
    print(f"{str(dtype).split('.')[-1]:8s} {full:9.3f} {entries / full:11.3e} {grad:9.3f} {diag:9.5f} "
          f"{full / matmul:7.1f}×")


if __name__ == "__main__":
    main()

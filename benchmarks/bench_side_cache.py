"""The per-input-set cache (``nngp_gpytorch.algebra.side_cache``) on a preconditioner's kernel rows.

A pivoted-Cholesky preconditioner of rank ``k`` asks for ``k`` rows ``K(x_i, X)`` one at a time
(:class:`nngp_gpytorch.scale.operator.KernelRows`). Without the cache every row redoes ``X``'s own work: the RNN's
diagonal chains and ``K(x, x)`` (as many pair recursions as the row itself), a conv run's same-position chains, roots
and, with a GAP readout, ``K(x, x)`` through all ``P²`` position pairs. Side by side in one process: the cache off
(``MAX_ENTRIES = 0``, the previous behaviour for sets of more than 65,536 numbers) and on (the default). Prints ms per
row, the ratio, the cache's footprint and that the rows agree to the bit.

    python benchmarks/bench_side_cache.py [--n 10000 50000] [--rows 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from nngp_gpytorch import NNGPKernel, arch
from nngp_gpytorch.algebra import conv_stack_sides, recurrent_compiled, side_cache
from nngp_gpytorch.scale.operator import KernelRows


def ms_per_row(rows: KernelRows, count: int) -> tuple[float, torch.Tensor]:
    """Mean ms of rows ``1..count`` after a warm-up row 0 (compilation; fills the cache when it is on)."""
    rows(torch.tensor([0]))
    start = time.perf_counter()
    out = [rows(torch.tensor([i])) for i in range(1, count + 1)]
    return (time.perf_counter() - start) / count * 1e3, torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = {
        "1-D CNN-GP, Flatten": (arch.cnn(3, kernel_size=5, readout="flatten"), (1, 40)),
        "1-D CNN-GP, GAP": (arch.cnn(3, kernel_size=5, readout="gap"), (1, 40)),
        "RNN-GP, erf, mean": (arch.rnn(arch.Erf(), readout="mean"), (40, 1)),
    }
    default_entries = side_cache.MAX_ENTRIES
    print(f"{'kernel':22s} {'N':>7s} {'no cache ms/row':>16s} {'cache ms/row':>13s} {'speed-up':>9s} "
          f"{'cache MB':>9s} equal")
    for name, (description, shape) in kernels.items():
        kernel = NNGPKernel(description, weight_var=2.0, bias_var=0.1, dtype=torch.float64, input_shape=shape)
        for n in args.n:
            x = torch.randn(n, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            rows = KernelRows(kernel, x)
            side_cache.MAX_ENTRIES = 0
            try:
                before, k0 = ms_per_row(rows, args.rows)
            finally:
                side_cache.MAX_ENTRIES = default_entries
            after, k1 = ms_per_row(rows, args.rows)
            cache = conv_stack_sides.SIDES if "CNN" in name else recurrent_compiled.SIDES
            megabytes = cache.nbytes() / 2**20
            print(f"{name:22s} {n:7d} {before:16.1f} {after:13.1f} {before / after:8.1f}× {megabytes:9.0f} "
                  f"{torch.equal(k0, k1)}", flush=True)
            cache.clear()


if __name__ == "__main__":
    main()

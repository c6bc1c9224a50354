"""Kernel rows for the large-N preconditioner: one ``kernel(x[i:i+1], x)`` call per row, as linear_operator's
pivoted Cholesky asks for them through :class:`nngp_gpytorch.scale.operator.KernelRows`.

Side by side in one process: the current exact identical-row mask (integer row keys, then the few candidate pairs
compared) and the previous one (``torch.unique(dim=0)`` over all ``n + 1`` rows, which sorts them on every call;
the previous implementation, kept here verbatim as the baseline). Prints ms per row and the ratio.

    python benchmarks/bench_kernel_rows.py [--n 10000 50000] [--rows 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from nngp_gpytorch import NNGPKernel, arch
from nngp_gpytorch.algebra import state
from nngp_gpytorch.scale.operator import KernelRows


def sorting_identical_rows(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """The previous mask (baseline): ``torch.unique`` over the stacked, batch-tagged rows."""
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    x1 = x1.expand(*batch, *x1.shape[-2:])
    x2 = x2.expand(*batch, *x2.shape[-2:])
    n1, n2, d = x1.shape[-2], x2.shape[-2], x1.shape[-1]
    b = int(torch.Size(batch).numel())
    rows = torch.cat([x1.reshape(b, n1, d), x2.reshape(b, n2, d)], dim=-2)
    tag = torch.arange(b, dtype=rows.dtype).view(b, 1, 1).expand(b, n1 + n2, 1)
    tagged = torch.cat([tag, rows], dim=-1).reshape(b * (n1 + n2), d + 1)
    _, inverse = torch.unique(tagged.detach(), dim=0, return_inverse=True)
    inverse = inverse.view(b, n1 + n2)
    return (inverse[:, :n1, None] == inverse[:, None, n1:]).view(*batch, n1, n2)


def ms_per_row(rows: KernelRows, count: int) -> float:
    rows(torch.tensor([0]))  # warm-up (compilation, caches)
    start = time.perf_counter()
    for i in range(1, count + 1):
        rows(torch.tensor([i]))
    return (time.perf_counter() - start) / count * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernels = {
        "MLP-GP, 3 ReLU layers": (arch.mlp(3), None),
        "1-D CNN-GP, Flatten": (arch.cnn(3, kernel_size=5, readout="flatten"), (1, 40)),
    }
    current = state.identical_rows
    print(f"{'kernel':24s} {'N':>7s} {'previous ms/row':>16s} {'current ms/row':>15s} {'speed-up':>9s}")
    for name, (description, shape) in kernels.items():
        extra = {} if shape is None else {"input_shape": shape}
        kernel = NNGPKernel(description, weight_var=2.0, bias_var=0.1, dtype=torch.float64, **extra)
        for n in args.n:
            x = torch.randn(n, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            rows = KernelRows(kernel, x)
            state.identical_rows = sorting_identical_rows
            try:
                before = ms_per_row(rows, args.rows)
            finally:
                state.identical_rows = current
            after = ms_per_row(rows, args.rows)
            print(f"{name:24s} {n:7d} {before:16.1f} {after:15.1f} {before / after:8.1f}×", flush=True)


if __name__ == "__main__":
    main()

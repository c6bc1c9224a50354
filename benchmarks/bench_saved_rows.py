"""Preconditioner rows evaluated by the kernel against the same rows read back from a row store.

linear_operator's pivoted Cholesky asks for one row ``K[i, :]`` per pivot. ``fit_predict`` evaluates each with
:class:`nngp_gpytorch.scale.KernelRows` and saves it through :class:`nngp_gpytorch.scale.SavedRows`. A rerun
reads the saved rows back. Side by side in one process, on the same pivots: ms per row evaluated (and saved) vs
ms per row read back, and their ratio. The read-back rows are checked to be the evaluated ones, bit for bit.

    python benchmarks/bench_saved_rows.py [--n 50000] [--rows 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from nngp_gpytorch import NNGPKernel, arch
from nngp_gpytorch.scale import KernelRows, SavedRows, rows_fingerprint


def ms_per_row(rows: SavedRows, count: int) -> tuple[float, torch.Tensor]:
    """Ask for rows 1..count one at a time, as the pivoted Cholesky does; ms per row and the rows."""
    start = time.perf_counter()
    got = torch.cat([rows(torch.tensor([i])) for i in range(1, count + 1)])
    return (time.perf_counter() - start) / count * 1e3, got


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = {
        "MLP-GP, 3 ReLU layers": (arch.mlp(3), None),
        "1-D CNN-GP, Flatten": (arch.cnn(3, kernel_size=5, readout="flatten"), (1, 40)),
        "1-D CNN-GP, GAP": (arch.cnn(3, kernel_size=5, readout="gap"), (1, 40)),
    }
    x = torch.randn(args.n, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    print(f"N = {args.n}, {args.rows} rows, {args.threads} thread(s)")
    print(f"{'kernel':24s} {'evaluated ms/row':>17s} {'read back ms/row':>17s} {'ratio':>8s}")
    for name, (description, shape) in kernels.items():
        extra = {} if shape is None else {"input_shape": shape}
        kernel = NNGPKernel(description, weight_var=2.0, bias_var=0.1, dtype=torch.float64, **extra)
        source = KernelRows(kernel, x)
        source(torch.tensor([0]))  # warm-up (compilation, the per-input-set cache)
        with tempfile.TemporaryDirectory() as directory:
            fingerprint = rows_fingerprint(kernel, x)
            evaluated, first = ms_per_row(SavedRows(source, directory, fingerprint, args.n), args.rows)
            reread = SavedRows(source, directory, fingerprint, args.n)
            read, again = ms_per_row(reread, args.rows)
            if not (torch.equal(first, again) and reread.computed == 0):
                raise AssertionError("the rows read back are not the rows evaluated")
        print(f"{name:24s} {evaluated:17.1f} {read:17.2f} {evaluated / read:7.0f}×", flush=True)


if __name__ == "__main__":
    main()

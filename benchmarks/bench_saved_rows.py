"""Preconditioner rows evaluated by the kernel against the same rows read back from a row store.

linear_operator's pivoted Cholesky asks for one row ``K[i, :]`` per pivot. ``fit_predict`` evaluates each with
:class:`nngp_gpytorch.scale.KernelRows` and saves it through :class:`nngp_gpytorch.scale.SavedRows`. A rerun
reads the saved rows back. Side by side in one process, on the same pivots: ms per row evaluated (and saved) vs
ms per row read back, and their ratio. The read-back rows are checked to be the evaluated ones, bit for bit.

With ``--store PATH`` (an existing symmetric Gram store, e.g. a ``scale`` run's ``train.zarr``), also the third
source: the same rows read as strips of tiles from that store (:class:`nngp_gpytorch.scale.StoreRows`), whatever its
kernel (the cost of a strip depends only on ``n`` and the tile).

    python benchmarks/bench_saved_rows.py [--n 50000] [--rows 10] [--threads 1] [--store PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from nngp_gpytorch import NNGPKernel, arch
from nngp_gpytorch.scale import GramStore, KernelRows, SavedRows, StoreRows


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
    parser.add_argument("--store", default=None, help="also time strips of tiles read from this Gram store")
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
            evaluated, first = ms_per_row(SavedRows(source, directory), args.rows)
            reread = SavedRows(source, directory)
            read, again = ms_per_row(reread, args.rows)
            if not (torch.equal(first, again) and reread.computed == 0):
                raise AssertionError("the rows read back are not the rows evaluated")
        print(f"{name:24s} {evaluated:17.1f} {read:17.2f} {evaluated / read:7.0f}×", flush=True)
    if args.store:
        store = GramStore.open(args.store)
        grid = store.grid[0]
        # a row's strip is whole once every tile of its tile row is (a store still being filled has some)
        whole = [i for i in range(grid) if all(store.is_done(min(i, j), max(i, j)) for j in range(grid))]
        if not whole:
            raise SystemExit(f"{args.store} has no tile row whose tiles are all finished")
        index = [whole[k % len(whole)] * store.tile + 7 * k for k in range(args.rows)]
        strips = StoreRows(store)
        start = time.perf_counter()
        for i in index:
            if not torch.isfinite(strips(torch.tensor([i]))).all():
                raise AssertionError(f"row {i} of the store is not finite")
        ms = (time.perf_counter() - start) / args.rows * 1e3
        print(f"strips of {store.tile}-tiles from {args.store} (n = {store.shape[0]}, {len(whole)} whole tile "
              f"rows): {ms:.1f} ms/row")


if __name__ == "__main__":
    main()

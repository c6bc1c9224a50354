"""``python -m nngp_gpytorch.scale mnist1d --n-train 50000 ...``: exact MLP-NNGP classification at scale.

mnist1d (Greydanus 2020) is generated offline by ``mnist1d.data.make_dataset`` with enough samples for
``--n-train`` (its own 80/20 split; the first ``--n-test`` test sequences are used). Inputs are
standardized per feature with the training statistics; targets are one-hot minus 0.1 (zero-mean over the
10 classes, as in Lee et al. 2018); the prediction is the class of the largest posterior mean. Prints each
phase's wall time, the CG passes and true residual, peak RSS (this process and each Dask worker) and the
test accuracy; ``--json`` writes the same as a record.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A

from .pipeline import fit_predict


def mnist1d_split(n_train: int, n_test: int, seed: int = 42) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: mnist1d with ``n_train`` training and ``n_test`` test
    sequences (float64 ``(n, 40)`` inputs standardized with the training statistics, int64 labels)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = max(math.ceil(n_train / args.train_split), math.ceil(n_test / (1 - args.train_split)))
    data = make_dataset(args)
    x = torch.as_tensor(data["x"][:n_train], dtype=torch.float64)
    xt = torch.as_tensor(data["x_test"][:n_test], dtype=torch.float64)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    return ((x - mean) / std, torch.as_tensor(data["y"][:n_train]), (xt - mean) / std,
            torch.as_tensor(data["y_test"][:n_test]))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nngp_gpytorch.scale",
                                     description="Kernel regression with a stored, tiled Gram (docs/scale.md).")
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("mnist1d", help="MLP-NNGP classification of mnist1d, generated offline")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--depth", type=int, default=3, help="hidden ReLU layers of the MLP")
    p.add_argument("--weight-var", type=float, default=2.0)
    p.add_argument("--bias-var", type=float, default=0.1)
    p.add_argument("--store", default="nngp-gram-store", help="directory or fsspec URL of the Zarr stores")
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="stored dtype")
    p.add_argument("--noise", default="mll", help="σ², or 'mll' / 'validation' to choose it on a subset")
    p.add_argument("--noise-subset", type=int, default=3000)
    p.add_argument("--method", choices=["auto", "cholesky", "cg"], default="auto")
    p.add_argument("--tolerance", type=float, default=1e-4, help="CG relative residual (eval_cg_tolerance)")
    p.add_argument("--max-iterations", type=int, default=1000)
    p.add_argument("--preconditioner-rank", type=int, default=100)
    p.add_argument("--float32-products", action="store_true",
                   help="CG multiplies tiles in float32 (faster; residual floor ~2^-24·condition number)")
    p.add_argument("--workers", type=int, default=None, help="embedded LocalCluster size (default: cores)")
    p.add_argument("--scheduler", default=None, help="address of a running dask scheduler instead")
    p.add_argument("--seed", type=int, default=42, help="mnist1d's generation seed")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the command line; returns the record it prints."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    x, y, xt, yt = mnist1d_split(args.n_train, args.n_test, args.seed)
    generated = time.perf_counter() - start
    targets = torch.nn.functional.one_hot(y, 10).to(torch.float64) - 0.1
    kernel = NNGPKernel(A.mlp(args.depth), weight_var=args.weight_var, bias_var=args.bias_var).double()
    noise = args.noise if args.noise in ("mll", "validation") else float(args.noise)
    result = fit_predict(kernel, x, targets, xt, store=args.store, noise=noise, tile=args.tile, dtype=args.dtype,
                         client=args.scheduler, n_workers=args.workers, progress=not args.no_progress,
                         noise_subset=args.noise_subset, method=args.method, tolerance=args.tolerance,
                         max_iterations=args.max_iterations, preconditioner_rank=args.preconditioner_rank,
                         compute_dtype=torch.float32 if args.float32_products else None)
    accuracy = float((result.prediction.mean.argmax(1) == yt).double().mean())
    solved = result.prediction.solve
    record = {
        "n_train": args.n_train, "n_test": args.n_test, "depth": args.depth, "tile": args.tile,
        "dtype": args.dtype, "noise": result.noise, "method": solved.method, "cg_passes": solved.iterations,
        "relative_residual": solved.relative_residual, "test_accuracy": accuracy,
        "products": "float32" if args.float32_products else "float64", "workers": args.workers,
        "seconds": {"generate": generated, **result.seconds, "total": time.perf_counter() - start},
        "peak_rss_gb": {k: v / 1e9 for k, v in result.peak_rss.items()},
        "store_gb": (result.train.stored_bytes + result.test.stored_bytes) / 1e9,
    }
    print(f"mnist1d, {args.n_train} train / {args.n_test} test, depth-{args.depth} ReLU MLP-NNGP "
          f"(σw² {args.weight_var}, σb² {args.bias_var}), Gram stored in {args.dtype}")
    print("phase seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in record["seconds"].items()))
    print(f"noise σ² {result.noise:.4g}; solve: {solved.method}, {solved.iterations} passes, "
          f"relative residual {solved.relative_residual:.2e}")
    print("peak RSS (GB): " + ", ".join(f"{k} {v:.2f}" for k, v in record["peak_rss_gb"].items()))
    print(f"test accuracy {accuracy:.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=2)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])

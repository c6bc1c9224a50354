"""Batch-norm kernel: speed for batches of 32 and 64, quadrature accuracy, width convergence.

Prints, for a depth-2 ReLU batch-norm MLP (``batchnorm_mlp(2)``), d = 16:
* the time of the joint kernel of one batch of B and of two batches of B (within blocks + cross block),
  and its ratio to a depth-2 ReLU MLP kernel (no batch norm) on the same points (baseline);
* the quadrature error: max |V(step 0.1) − V(step 0.05)| and |trace V − B/2|;
* width convergence: mean over 20 networks of the relative squared Frobenius error
  ``‖ΦΦᵀ/n − V‖²/‖V‖²`` of one finite network's post-BN Gram against the kernel, and the log-log slope
  (expected −1).

    python benchmarks/bench_batchnorm.py [--repeats 2] [--skip-64-cross] [--plot PATH.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from timing import best_time  # benchmarks/timing.py (scripts run from this folder)

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters
from nngp_gpytorch.algebra.batchnorm import batchnorm_dual, propagate_batches
from nngp_gpytorch.duals import dual_for
from verification.report import plot_convergence
from verification.statistics import width_convergence
from verification.twins.batchnorm import sample_batch_ensemble


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-64-cross", action="store_true")
    parser.add_argument("--plot", default=None, help="save the width-convergence plot to this PNG path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hyper = Hyperparameters.constant(2.0, 0.1)
    arch = A.batchnorm_mlp(2)
    print("batch  sets      kernel_s   mlp_baseline_s   ratio")
    for b in (32, 64):
        for batches in (1, 2):
            if b == 64 and batches == 2 and args.skip_64_cross:
                continue
            x = torch.randn(b * batches, 16, dtype=torch.float64)
            sizes = (b,) * batches
            with torch.no_grad():
                t_bn = best_time(lambda x=x, sizes=sizes: propagate_batches(arch, x, sizes, hyper), args.repeats)
                mlp = NNGPKernel(A.mlp(2), weight_var=2.0, bias_var=0.1, dtype=torch.float64)
                t_mlp = best_time(lambda x=x, mlp=mlp: mlp(x).to_dense(), max(args.repeats, 5))
            print(f"{b:5d}  {batches}x{b:<6d} {t_bn:9.3f}   {t_mlp:14.5f}   {t_bn / t_mlp:8.0f}")

    relu = dual_for(A.ReLU())
    print("\nquadrature accuracy (one BN-ReLU layer, Σ = x xᵀ/d, d = 16)")
    for b in (32, 64):
        x = torch.randn(b, 16, dtype=torch.float64)
        sigma = x @ x.T / 16
        v = batchnorm_dual(sigma, relu, 1)
        fine = batchnorm_dual(sigma, relu, 1, step=0.05)
        print(f"B={b}: max|V(0.1) − V(0.05)| = {float((v - fine).abs().max()):.1e}, "
              f"|trace V − B/2| = {abs(float(v.trace()) - b / 2):.1e}")

    print("\nwidth convergence (batchnorm_mlp(2) body, batches 6+4, 20 networks per width)")
    body = A.Serial(*arch.layers[:-1])
    x = torch.randn(10, 4, dtype=torch.float64)
    with torch.no_grad():
        v = propagate_batches(body, x, (6, 4), hyper).k12
    by_width = {}
    for w in [2**p for p in range(6, 13)]:
        phi = sample_batch_ensemble(arch, x, (6, 4), 20, w, seed=w, weight_var=hyper, return_features=True)
        by_width[w] = phi @ phi.transpose(-1, -2) / w
    result = width_convergence(by_width, v)
    for w, e in zip(result.widths, result.errors, strict=True):
        print(f"  width {w:5d}: relative squared Frobenius error {e:.3e}")
    print(f"  log-log slope {result.slope:.3f} (expected −1)")
    if args.plot:
        print("  plot:", plot_convergence(result, Path(args.plot), title="batchnorm_mlp(2), batches 6+4"))

if __name__ == "__main__":
    main()

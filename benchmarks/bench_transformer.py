"""Transformer kernel: two sequences of 7 and 9 tokens, depth 2; width convergence of finite transformers.

Prints the time of the 2×2 NNGP kernel and of NNGP+NTK together (masked to T = 9, d = 16), the ratio to
a depth-2 ReLU MLP kernel on the same flattened inputs (baseline), the time for 64 sequences of 9 tokens,
and the width convergence of one finite transformer's kernel estimate ``σw²·ΦΦᵀ/n + σb²`` (relative squared
Frobenius error against the kernel, mean over 20 networks, widths 64…4096, log-log slope expected −1).

    python benchmarks/bench_transformer.py [--repeats 5] [--plot PATH.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from timing import best_time  # benchmarks/timing.py (scripts run from this folder)

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.sequences import pack_sequences
from verification.ensembles import sample_ensemble
from verification.report import plot_convergence
from verification.statistics import width_convergence


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plot", default=None, help="save the width-convergence plot to this PNG path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = pack_sequences([torch.randn(7, 16, generator=g, dtype=torch.float64),
                        torch.randn(9, 16, generator=g, dtype=torch.float64)])
    nngp = NNGPKernel(A.transformer(2, masked=True), input_shape=(9, 17), weight_var=1.5, bias_var=0.1,
                      dtype=torch.float64)
    ntk = NTKKernel(A.transformer(2, masked=True), input_shape=(9, 17), weight_var=1.5, bias_var=0.1,
                    dtype=torch.float64)
    mlp = NNGPKernel(A.mlp(2), weight_var=1.5, bias_var=0.1, dtype=torch.float64)
    with torch.no_grad():
        t_k = best_time(lambda: nngp(x).to_dense(), args.repeats)
        t_both = best_time(lambda: ntk.nngp_and_ntk(x), args.repeats)
        t_mlp = best_time(lambda: mlp(x).to_dense(), args.repeats)
        print(f"2 sequences (7, 9 tokens), depth 2: NNGP {t_k * 1e3:.2f} ms, NNGP+NTK {t_both * 1e3:.2f} ms; "
              f"MLP baseline {t_mlp * 1e3:.3f} ms (ratio {t_k / t_mlp:.0f}×)")
        k, theta = ntk.nngp_and_ntk(x)
        print(f"  K = {k.tolist()}\n  Θ = {theta.tolist()}")
        x64 = torch.randn(64, 9 * 16, dtype=torch.float64)
        big = NNGPKernel(A.transformer(2), input_shape=(9, 16), dtype=torch.float64)
        t_big = best_time(lambda: big(x64).to_dense(), 2)
        print(f"64 sequences of 9 tokens (64×64 kernel): {t_big:.3f} s")

    print("\nwidth convergence (transformer depth 2, 4 sequences of 5 tokens, 20 networks per width)")
    hyper = Hyperparameters.constant(1.5, 0.1)
    arch = A.transformer(2)
    xs = torch.randn(4, 5 * 3, generator=g, dtype=torch.float64)
    kernel, _ = evaluate(arch, xs, xs, hyper, input_shape=(5, 3))
    by_width = {}
    for w in [2**p for p in range(6, 13)]:
        sample = sample_ensemble(arch, xs, 20, w, seed=w, weight_var=hyper, input_shape=(5, 3))
        by_width[w] = sample.covariances
    result = width_convergence(by_width, kernel)
    for w, e in zip(result.widths, result.errors, strict=True):
        print(f"  width {w:5d}: relative squared Frobenius error {e:.3e}")
    print(f"  log-log slope {result.slope:.3f} (expected −1)")
    if args.plot:
        print("  plot:", plot_convergence(result, Path(args.plot), title="transformer depth 2"))


if __name__ == "__main__":
    main()

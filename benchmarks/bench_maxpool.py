"""MaxPool kernel: accuracy against the number of quasi-Monte Carlo samples, and cost against the same network with
average pooling (the closest kernel with a closed form), side by side in one process.

    python benchmarks/bench_maxpool.py [--n 6] [--reference-samples 131072]

Network: Conv(3, same) → ReLU → MaxPool(2×2) → Conv(3, same) → ReLU → GlobalAvgPool → Dense on 2×8×8 inputs
(and the 1-D Gaussian window-of-two case, which is exact). Errors are max |K − K_ref| / max diag K_ref over the
Gram, with K_ref at ``--reference-samples``; the reported standard error is the kernel's own (replicate spread).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A


def net(pool, samples=None):
    layer = A.MaxPool((2, 2), samples=samples) if pool == "max" else A.AvgPool((2, 2))
    return A.Serial(A.Conv(3, padding="same"), A.ReLU(), layer, A.Conv(3, padding="same"), A.ReLU(),
                    A.GlobalAvgPool(), A.Dense())


def timed(fn, repeats=2):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--reference-samples", type=int, default=2**17)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = (2, 8, 8)
    x = torch.randn(args.n, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    entries = args.n * (args.n + 1) / 2

    def gram(samples, ntk=False):
        cls = NTKKernel if ntk else NNGPKernel
        return cls(net("max", samples), input_shape=shape, weight_var=1.6, bias_var=0.1).double()(x).to_dense()

    with torch.no_grad():
        ref = gram(args.reference_samples)
        scale = ref.diagonal().max()
        print(f"MaxPool 2x2 after ReLU, {args.n} inputs 2x8x8, float64, one thread; reference {args.reference_samples} "
              "samples")
        print(f"{'samples':>8} {'rel. error':>11} {'ms/entry':>9}")
        for samples in (2**10, 2**12, 2**13, 2**15):
            k, t = timed(lambda s=samples: gram(s))
            print(f"{samples:>8} {float((k - ref).abs().max() / scale):>11.2e} {1e3 * t / entries:>9.2f}")
        half = args.n // 2
        cross = NNGPKernel(net("max", 2**13), input_shape=shape, weight_var=1.6, bias_var=0.1).double()
        _, t_cross = timed(lambda: cross(x[:half], x[half:]).to_dense())
        block = (gram(2**13)[:half, half:] - cross(x[:half], x[half:]).to_dense()).abs().max() / scale
        per_cross = 1e3 * t_cross / (half * (args.n - half))
        print(f"cross kernel K(X1, X2) ({half}x{args.n - half}, 8192 samples) {per_cross:.2f} ms/entry; "
              f"max |K(X, X) block - K(X1, X2)| / max diag = {float(block):.1e}")
        avg_kernel = NNGPKernel(net("avg"), input_shape=shape, weight_var=1.6, bias_var=0.1).double()
        _, t_avg = timed(lambda: avg_kernel(x).to_dense())
        _, t_max = timed(lambda: gram(2**13))
        _, t_ntk = timed(lambda: gram(2**13, ntk=True))
        print(f"AvgPool (closed form) {1e3 * t_avg / entries:.2f} ms/entry; MaxPool (8192 samples) "
              f"{1e3 * t_max / entries:.2f} ms/entry = {t_max / t_avg:.0f}x; NTK {t_ntk / t_max:.1f}x the NNGP")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

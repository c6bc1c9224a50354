"""Cost of the NTK riding along: NNGP alone vs NNGP + NTK from one pass.

Cases (issue 9): a depth-10 ReLU MLP on N = 2000 points of dimension d = 64 (full N×N), and a 3-layer
conv ReLU net (3×3 SAME) with global average pooling on 8×8 single-channel images (N = 64 by default).
Prints best-of-``repeats`` wall times and the ratio NTK+NNGP / NNGP (target ≤ 2), forward only (no
gradients) and forward + backward to the hyperparameters (σw², σb²).

    python benchmarks/bench_ntk.py [--n 2000] [--conv-n 64] [--repeats 2] [--dtype float64] [--threads 1]
                                   [--cases mlp,conv]
"""

from __future__ import annotations

import argparse

import torch
from timing import best_time  # benchmarks/timing.py (scripts run from this folder)

from nngp_gpytorch import arch as A
from nngp_gpytorch.kernels import NNGPKernel


def compare(name: str, kernel, x: torch.Tensor, repeats: int) -> None:
    def nngp_only():
        with torch.no_grad():
            return kernel(x, x).to_dense()

    def both():
        with torch.no_grad():
            return kernel.nngp_and_ntk(x, x)

    def nngp_grad():
        kernel.zero_grad()
        kernel(x, x).to_dense().sum().backward()

    def both_grad():
        kernel.zero_grad()
        k, t = kernel.nngp_and_ntk(x, x)
        (k.sum() + t.sum()).backward()

    for label, f_nngp, f_both in (("forward", nngp_only, both), ("fwd+bwd", nngp_grad, both_grad)):
        f_nngp()  # warm up (quadrature nodes, caches)
        t_nngp, t_both = best_time(f_nngp, repeats), best_time(f_both, repeats)
        print(f"{name:>34s} {label:>8s} {t_nngp:9.3f} {t_both:11.3f} {t_both / t_nngp:7.2f}×", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--conv-n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default="mlp,conv", help="comma-separated subset of mlp,conv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)
    print(f"NNGP alone vs NNGP+NTK in one pass; {args.dtype}, {args.threads} thread(s), device {dev}")
    print(f"{'case':>34s} {'mode':>8s} {'NNGP (s)':>9s} {'NNGP+NTK (s)':>11s} {'ratio':>8s}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=g, dtype=dtype).to(dev)
    cases = set(args.cases.split(","))
    if "mlp" in cases:
        mlp = NNGPKernel(A.mlp(10, A.ReLU())).to(dtype=dtype, device=dev)
        mlp.weight_var, mlp.bias_var = 2.0, 0.01
        compare(f"ReLU MLP depth 10, N={args.n}, d={args.d}", mlp, x, args.repeats)
    if "conv" not in cases:
        return
    try:
        from nngp_gpytorch import CNNKernel
    except ImportError:
        print("conv case skipped: CNNKernel not available")
        return
    xc = torch.randn(args.conv_n, 64, generator=g, dtype=dtype).to(dev)
    cnn = CNNKernel((1, 8, 8), depth=3, readout="gap", weight_var=2.0, bias_var=0.01).to(dtype=dtype, device=dev)
    compare(f"3×conv3×3+GAP 8×8, N={args.conv_n}", cnn, xc, args.repeats)


if __name__ == "__main__":
    main()

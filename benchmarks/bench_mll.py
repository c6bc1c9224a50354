"""Time of one exact marginal-likelihood step (forward + backward) with NNGPKernel vs GPyTorch's RBFKernel.

Both kernels sit in the same ExactGP (constant mean, ScaleKernel, Gaussian likelihood) on the same data; the
solve uses GPyTorch's CG + Lanczos path (``max_cholesky_size`` set below N, as GPyTorch does by default for
N > 800). Prints CPU seconds per step (median of ``--repeats``) and the ratio NNGP / RBF (target ≤ 1.5×).

    python benchmarks/bench_mll.py                   # float32 at N = 2000 and 10000, float64 at N = 2000
    python benchmarks/bench_mll.py --sizes 2000 --depth 3 --dtype float64 --profile

``--profile`` prints the hottest functions of one NNGP step (cProfile, by internal time).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import statistics
import time

import gpytorch
import torch
from gpytorch.kernels import RBFKernel, ScaleKernel

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.models import NNGPRegressionModel


def make_data(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1:].sum(-1) / d ** 0.5 + 0.1 * torch.randn(n, generator=g, dtype=dtype)
    return x, y


def mll_step_seconds(kernel, x, y, repeats: int, profile: bool = False) -> float:
    """Median CPU time (one thread ≈ wall time on an idle machine) of ``-mll(model(x), y)`` + ``backward()``
    (one optimizer step's work)."""
    model = NNGPRegressionModel(x, y, ScaleKernel(kernel))
    model.likelihood.noise = 0.1
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    model.train()

    def step():
        model.zero_grad()
        with gpytorch.settings.max_cholesky_size(0):  # force the CG + Lanczos path at every N
            loss = -mll(model(x), y)
            loss.backward()

    step()  # warm-up
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    times = []
    for _ in range(repeats):
        torch.manual_seed(0)  # same Lanczos probe vectors for both kernels
        start = time.process_time()  # CPU time: robust to other processes on a shared machine
        step()
        times.append(time.process_time() - start)
    return statistics.median(times)


#: N²-sized tensors alive at the peak of an NNGP step (measured: 22 at N = 4000, depth-2 ReLU, float32).
SAVED_MATRICES = 24


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def kernel_step_seconds(kernel, x, repeats: int) -> float:
    """Median CPU time of the kernel matrix alone: forward + backward of ``sum(K ⊙ R)`` (no solve)."""
    weights = torch.randn(x.shape[0], x.shape[0], dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    times = []
    for _ in range(repeats + 1):
        kernel.zero_grad()
        start = time.process_time()
        (kernel(x).to_dense() * weights).sum().backward()
        times.append(time.process_time() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="default: 2000 10000 (float32) and 2000 (float64)")
    parser.add_argument("--d", type=int, default=8, help="input features")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers of the ReLU MLP")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None, help="default: both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--force", action="store_true", help="run sizes that may not fit in available memory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.sizes is None and args.dtype is None:
        plan = [("float32", [2000, 10000]), ("float64", [2000])]
    else:
        plan = [(args.dtype or "float32", args.sizes or [2000, 10000])]
    for dtype_name, sizes in plan:
        run(getattr(torch, dtype_name), sizes, args)


def run(dtype: torch.dtype, sizes: list[int], args) -> None:
    print(f"one MLL step (forward + backward, CG path), depth-{args.depth} ReLU MLP NNGP vs RBF, d={args.d}, "
          f"{str(dtype).split('.')[-1]}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'N':>7} {'NNGP s':>9} {'RBF s':>9} {'ratio':>7}   {'kernel only: NNGP s':>20} {'RBF s':>7} {'ratio':>7}"
          f" {'peak RSS GiB':>13}")
    for n in sizes:
        need = SAVED_MATRICES * n * n * torch.finfo(dtype).bits // 8
        free = available_bytes()
        if free is not None and need > 0.8 * free and not args.force:
            print(f"{n:>7} skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available (--force to try)")
            continue
        x, y = make_data(n, args.d, dtype)
        rbf = mll_step_seconds(RBFKernel(), x, y, args.repeats)
        nngp = mll_step_seconds(NNGPKernel(A.mlp(args.depth), bias_var=0.1), x, y, args.repeats, profile=args.profile)
        k_rbf = kernel_step_seconds(RBFKernel().to(dtype), x, args.repeats)
        k_nngp = kernel_step_seconds(NNGPKernel(A.mlp(args.depth), bias_var=0.1).to(dtype), x, args.repeats)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{n:>7} {nngp:>9.3f} {rbf:>9.3f} {nngp / rbf:>6.2f}x   {k_nngp:>20.3f} {k_rbf:>7.3f} "
              f"{k_nngp / k_rbf:>6.2f}x {peak:>13.2f}", flush=True)


if __name__ == "__main__":
    main()

"""GPU timings, each printed beside its baseline run the same way in the same process.

    python benchmarks/bench_gpu.py                 # everything (needs CUDA)
    python benchmarks/bench_gpu.py --only mll,kernel

Sections (times are medians of ``--repeats`` after a warm-up, with ``torch.cuda.synchronize()`` around each
call; peak memory from ``torch.cuda.max_memory_allocated``):

* ``mll``: one exact marginal-likelihood step (forward + backward, CG + Lanczos path forced) of an ExactGP
  with ``ScaleKernel(NNGPKernel(A.mlp(2)))`` vs the same model with GPyTorch's ``RBFKernel``; ratio NNGP / RBF.
* ``kernel``: depth-10 ReLU MLP Gram, NNGP alone vs NNGP + NTK in one pass, float32 and float64, and the
  same on this machine's CPU (all its threads) for the GPU speed-up.
* ``conv``: 3-layer CNN with global average pooling on 8×8 inputs (the peers' memory blow-up case): time and
  peak GPU memory with the default tiling.
* ``recurrent``: GRU and LSTM 64×64 Grams of length-8 sequences, GPU vs CPU.
* ``ensembles``: verification throughput (random finite networks per second, Gram-conditional sampler,
  width 1024), GPU vs CPU.
"""

from __future__ import annotations

import argparse

import gpytorch
import torch
from gpytorch.kernels import RBFKernel, ScaleKernel
from timing import median_time  # benchmarks/timing.py (scripts run from this folder)

from nngp_gpytorch import CNNKernel, NNGPKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.models import NNGPRegressionModel


def data(n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1:].sum(-1) / d ** 0.5 + 0.1 * torch.randn(n, generator=g, dtype=dtype)
    return x.to(device), y.to(device)


def mll_step(kernel, x, y, repeats: int, device: torch.device) -> float:
    model = NNGPRegressionModel(x, y, ScaleKernel(kernel)).to(device=device, dtype=x.dtype)
    model.likelihood.noise = 0.1
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    model.train()

    def step():
        model.zero_grad()
        torch.manual_seed(0)  # same Lanczos probes for both kernels
        with gpytorch.settings.max_cholesky_size(0):
            (-mll(model(x), y)).backward()

    return median_time(step, repeats)


def section_mll(args, dev):
    print("\n[mll] one marginal-likelihood step (CG path), depth-2 ReLU MLP NNGP vs RBFKernel, d = 8")
    print(f"{'N':>7} {'dtype':>8} {'NNGP s':>9} {'RBF s':>9} {'ratio':>6}")
    for dtype in (torch.float32, torch.float64):
        for n in args.mll_sizes:
            x, y = data(n, 8, dtype, dev)
            t_nngp = mll_step(NNGPKernel(A.mlp(2)), x, y, args.repeats, dev)
            t_rbf = mll_step(RBFKernel(), x, y, args.repeats, dev)
            print(f"{n:>7} {str(dtype)[6:]:>8} {t_nngp:>9.4f} {t_rbf:>9.4f} {t_nngp / t_rbf:>6.2f}", flush=True)


def section_kernel(args, dev):
    print("\n[kernel] depth-10 ReLU MLP Gram (d = 64): NNGP alone vs NNGP+NTK in one pass; GPU vs this CPU")
    print(f"{'N':>7} {'dtype':>8} {'device':>6} {'NNGP s':>9} {'+NTK s':>9} {'NTK/NNGP':>8} {'Mentries/s':>10}")
    kernel = NNGPKernel(A.mlp(10, A.ReLU()))
    for dtype in (torch.float32, torch.float64):
        for n in args.kernel_sizes:
            for device in (dev, torch.device("cpu")):
                if device.type == "cpu" and n > 4000:
                    continue
                x, _ = data(n, 64, dtype, device)
                k = kernel.to(device=device, dtype=dtype)
                with torch.no_grad():
                    t_nngp = median_time(lambda: k(x).to_dense(), args.repeats)  # noqa: B023
                    t_both = median_time(lambda: k.nngp_and_ntk(x, x), args.repeats)  # noqa: B023
                print(f"{n:>7} {str(dtype)[6:]:>8} {device.type:>6} {t_nngp:>9.4f} {t_both:>9.4f} "
                      f"{t_both / t_nngp:>8.2f} {n * n / t_nngp / 1e6:>10.1f}", flush=True)


def section_conv(args, dev):
    print("\n[conv] 3-layer CNN + global average pooling, 1×8×8 inputs, by tile budget (max_memory)")
    print(f"{'N':>7} {'device':>6} {'tile MiB':>9} {'seconds':>9} {'peak GPU MiB':>12}")
    for n in args.conv_sizes:
        for device in (dev, torch.device("cpu")):
            if device.type == "cpu" and n > 64:
                continue
            budgets = args.conv_tiles if device.type == "cuda" else args.conv_tiles[:1]
            for mib in budgets:
                x, _ = data(n, 64, torch.float32, device)
                k = CNNKernel((1, 8, 8), depth=3, readout="gap", max_memory=mib * 2**20).to(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                with torch.no_grad():
                    t = median_time(lambda: k(x).to_dense(), max(1, args.repeats // 2))  # noqa: B023
                peak = ((torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda"
                        else float("nan"))
                print(f"{n:>7} {device.type:>6} {mib:>9} {t:>9.3f} {peak:>12.0f}", flush=True)


def section_recurrent(args, dev):
    print("\n[recurrent] 64×64 Gram of length-8 sequences (d = 4), default QMC samples")
    print(f"{'kernel':>7} {'device':>6} {'seconds':>9}")
    x, _ = data(64, 32, torch.float64, torch.device("cpu"))
    for name, build in (("GRU", A.gru), ("LSTM", A.lstm)):
        for device in (dev, torch.device("cpu")):
            k = NNGPKernel(build(), input_shape=(8, 4), per_layer=True, dtype=torch.float64).to(device)
            xd = x.to(device)
            with torch.no_grad():
                t = median_time(lambda: k(xd).to_dense(), 1)  # noqa: B023
            print(f"{name:>7} {device.type:>6} {t:>9.3f}", flush=True)


def section_ensembles(args, dev):
    from verification import default_inputs, sample_ensemble

    print("\n[ensembles] random finite networks per second (Dense-ReLU-Dense-Erf-Dense, width 1024, 8 inputs)")
    print(f"{'device':>6} {'networks':>9} {'seconds':>9} {'nets/s':>9}")
    mlp = A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense())
    for device, networks in ((dev, 20000), (torch.device("cpu"), 2000)):
        inputs = default_inputs().to(device)
        t = median_time(lambda: sample_ensemble(mlp, inputs, networks, 1024, seed=0), 1)  # noqa: B023
        print(f"{device.type:>6} {networks:>9} {t:>9.3f} {networks / t:>9.0f}", flush=True)


SECTIONS = {"mll": section_mll, "kernel": section_kernel, "conv": section_conv, "recurrent": section_recurrent,
            "ensembles": section_ensembles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mll-sizes", type=int, nargs="+", default=[2000, 10000, 20000])
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--conv-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--conv-tiles", type=int, nargs="+", default=[64, 1024, 8192], help="tile budgets, MiB")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs CUDA")
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}; torch {torch.__version__}; gpytorch {gpytorch.__version__}; "
          f"CPU threads {torch.get_num_threads()}")
    for name in args.only.split(","):
        SECTIONS[name.strip()](args, dev)


if __name__ == "__main__":
    main()

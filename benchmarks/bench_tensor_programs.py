"""Program kernel (tensor_programs) vs dedicated kernel: wall time and agreement.

* depth-5 ReLU MLP, N = 500 points (Gram 500×500): closed-form dispatch should keep the program kernel
  within 3× of :class:`nngp_gpytorch.MLPKernel`;
* erf-GRU Gram of 16 sequences of length 6 (program: RQMC over up to 24-dim Gaussians; dedicated
  :class:`nngp_gpytorch.kernels.recurrent.GRUKernel`, if present).

* NTK vs NNGP of the same programs (:class:`TensorProgramNTKKernel` gives ``(K, Θ)`` in one pass): the MLP
  (closed forms throughout) and the GRU program.

Prints ratios (program / dedicated, NTK / NNGP); one torch thread. Run:
``python benchmarks/bench_tensor_programs.py`` (``--quick`` for a shorter GRU: 8 sequences of length 4).
"""

from __future__ import annotations

import argparse
import time

import torch

from nngp_gpytorch import MLPKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.tensor_programs import Accuracy, TensorProgramKernel, TensorProgramNTKKernel
from nngp_gpytorch.tensor_programs.examples import gru_program, mlp_program


def best_of(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def bench_mlp(n: int = 500, depth: int = 5, repeats: int = 5) -> None:
    x = torch.randn(n, 10, dtype=torch.float64)
    dedicated = MLPKernel(depth, A.ReLU()).double()
    dedicated.weight_var, dedicated.bias_var = 1.6, 0.1
    program = TensorProgramKernel(mlp_program(depth, 10, A.ReLU())).double()
    program.set_variances(weight_var=1.6, bias_var=0.1)
    t_d, k_d = best_of(lambda: dedicated(x).to_dense(), repeats)
    t_p, k_p = best_of(lambda: program(x).to_dense(), repeats)
    print(f"MLP depth {depth} ReLU, N={n}: dedicated {t_d * 1e3:.1f} ms, program {t_p * 1e3:.1f} ms, "
          f"ratio {t_p / t_d:.2f}x (target <= 3x); max |diff| {(k_p - k_d).abs().max():.1e}")


def bench_gru(n: int, length: int, qmc_points: int) -> None:
    d = 3
    x = torch.randn(n, length * d, dtype=torch.float64)
    program = TensorProgramKernel(gru_program(length, d, bias_var=0.1),
                                  accuracy=Accuracy(qmc_points=qmc_points)).double()
    start = time.perf_counter()
    with torch.no_grad():
        result = program.evaluate_with_error(x)
    t_p = time.perf_counter() - start
    print(f"GRU Gram {n} sequences x length {length}: program {t_p:.1f} s "
          f"(RQMC {qmc_points} points x {program.accuracy.qmc_replicates} replicates, max dim "
          f"{result.methods['max_dim']}, max stderr {result.stderr.max():.1e})")
    try:
        from nngp_gpytorch.kernels.recurrent import GRUKernel
    except ImportError:
        print("  dedicated GRUKernel not available: comparison skipped")
        return
    dedicated = GRUKernel((length, d)).double()
    dedicated.weight_var, dedicated.bias_var = [1.0, 1.0, 1.0], [0.1, 0.0, 0.0]
    t_d, k_d = best_of(lambda: dedicated(x).to_dense(), 1)
    diff = (result.kernel - k_d).abs()
    print(f"  dedicated GRUKernel {t_d:.1f} s; ratio {t_p / t_d:.1f}x; max |diff| {diff.max():.1e} "
          f"({(diff / result.stderr.clamp_min(1e-12)).max():.1f} program stderr)")


def bench_ntk(n_mlp: int = 500, depth: int = 5, n_gru: int = 8, length: int = 4, qmc_points: int = 2**10) -> None:
    """NTK (with the NNGP, one pass) vs NNGP alone, for the MLP and GRU programs."""
    x = torch.randn(n_mlp, 10, dtype=torch.float64)
    nngp = TensorProgramKernel(mlp_program(depth, 10, A.ReLU(), weight_var=1.6, bias_var=0.1)).double()
    ntk = TensorProgramNTKKernel(mlp_program(depth, 10, A.ReLU(), weight_var=1.6, bias_var=0.1)).double()
    t_k, _ = best_of(lambda: nngp(x).to_dense(), 3)
    t_t, _ = best_of(lambda: ntk(x).to_dense(), 3)
    print(f"NTK, MLP depth {depth} ReLU, N={n_mlp}: NNGP {t_k * 1e3:.1f} ms, NNGP+NTK {t_t * 1e3:.1f} ms "
          f"({t_t / t_k:.2f}x)")
    d = 3
    x = torch.randn(n_gru, length * d, dtype=torch.float64)
    accuracy = Accuracy(qmc_points=qmc_points)
    program = gru_program(length, d, bias_var=0.1)
    t_k, _ = best_of(lambda: TensorProgramKernel(program, accuracy=accuracy).double()(x).to_dense(), 1)
    kernel = TensorProgramNTKKernel(program, accuracy=accuracy).double()
    t_t, _ = best_of(lambda: kernel(x).to_dense(), 1)
    r = kernel.last_result
    print(f"NTK, GRU Gram {n_gru} sequences x length {length}: NNGP {t_k:.1f} s, NNGP+NTK {t_t:.1f} s "
          f"({t_t / t_k:.1f}x); max stderr K {r.kernel_stderr.max():.1e}, Θ {r.ntk_stderr.max():.1e} "
          f"(Θ diagonal mean {r.ntk.diagonal().mean():.3f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bench_mlp()
    if args.quick:
        bench_gru(8, 4, 2**10)
        bench_ntk(n_mlp=200, n_gru=8, length=4)
    else:
        bench_gru(16, 6, 2**10)
        bench_ntk(n_gru=16, length=6)


if __name__ == "__main__":
    main()

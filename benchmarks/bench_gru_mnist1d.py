"""Cost of the erf-GRU NNGP on mnist1d's 40-step sequences (why docs/experiments.md has no GRU-GP row).

A symmetric Gram of the first ``n`` training sequences (``n(n−1)/2`` pairs and ``n`` self tables), one thread,
σw² = 2, σb² = 0.1, float64, for each (readout, QMC points) setting: CPU seconds, CPU ms per pair, the smallest
eigenvalue of the returned (PSD-projected) Gram, and the kernel's warnings (a Gram whose negative eigenvalue exceeds
its own error bound is reported before projection). Baseline in the same run: the erf Elman RNN-GP of the same
experiment, the recurrent kernel whose rows docs/experiments.md has.

Then the GRU-GP (mean readout) estimated instead from random finite GRUs (:func:`verification.monte_carlo.
monte_carlo_gram`, ``--mc-networks`` of width ``--mc-width``) on the same sequences, compared entrywise with the
QMC kernels: the largest difference relative to the mean prior variance, and in the estimate's standard errors.

    python benchmarks/bench_gru_mnist1d.py [--n 10] [--mc-networks 128] [--mc-width 512]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import lee2018_width as lee  # noqa: E402

from nngp_gpytorch import NNGPKernel  # noqa: E402
from nngp_gpytorch import arch as A  # noqa: E402
from verification.monte_carlo import monte_carlo_gram, relative_error  # noqa: E402

SETTINGS = (("last", 2**10), ("last", 2**12), ("mean", 2**10), ("mean", 2**12))


def measure(description, x: torch.Tensor) -> tuple[float, float, list[str], torch.Tensor]:
    """CPU seconds of ``K(x, x)``, its smallest eigenvalue, the warnings raised, the Gram."""
    kernel = NNGPKernel(description, weight_var=2.0, bias_var=0.1, dtype=torch.float64, input_shape=(40, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.process_time()
        gram = kernel(x, x).to_dense().detach()
        seconds = time.process_time() - start
    return seconds, float(torch.linalg.eigvalsh(gram)[0]), [str(w.message)[:110] for w in caught], gram


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--mc-networks", type=int, default=128)
    parser.add_argument("--mc-width", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # scaled by the std of the first 100 training sequences, as in the figures of docs/experiments.md
    x = lee.load_mnist1d(max(args.n, 100), 10)[0][:args.n]
    pairs = args.n * (args.n - 1) // 2
    print(f"{'kernel':28s} {'CPU s':>7s} {'ms/pair':>8s} {'min eig':>9s}  warnings")
    rnn, _ = lee.architecture("rnn")
    measure(rnn, x[:2])  # compile the RNN loops outside the timing
    rows = [("erf RNN-GP, mean (baseline)", rnn)]
    rows += [(f"GRU-GP, {readout}, 2^{samples.bit_length() - 1} QMC", A.gru(readout=readout, samples=samples))
             for readout, samples in SETTINGS]
    grams = {}
    for name, description in rows:
        seconds, smallest, caught, grams[name] = measure(description, x)
        print(f"{name:28s} {seconds:7.2f} {seconds / pairs * 1e3:8.2f} {smallest:9.2e}  {'; '.join(caught)}",
              flush=True)
    start = time.process_time()
    mc = monte_carlo_gram(A.gru(readout="mean"), x, args.mc_networks, args.mc_width, weight_var=2.0, bias_var=0.1,
                          input_shape=(40, 1), networks_per_chunk=16, progress=False)
    seconds = time.process_time() - start
    name = f"GRU-GP, mean, MC {args.mc_networks}x{args.mc_width}"
    smallest = float(torch.linalg.eigvalsh(mc.mean)[0])
    print(f"{name:28s} {seconds:7.2f} {seconds / pairs * 1e3:8.2f} {smallest:9.2e}  "
          "(its cost grows with the sequences, not the pairs)")
    scale = mc.mean.diagonal().mean()
    print("\nlargest |difference| / mean prior variance, and in the Monte Carlo estimate's standard errors:")
    for other in ("mean, 2^10", "mean, 2^12"):
        diff = grams[f"GRU-GP, {other} QMC"] - mc.mean
        print(f"  MC vs QMC {other}: {float(diff.abs().max() / scale):.4f}  "
              f"({float((diff.abs() / mc.standard_error).max()):.1f} se; MC resolution {relative_error(mc):.4f})")


if __name__ == "__main__":
    main()

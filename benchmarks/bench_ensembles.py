"""Networks per CPU-second: vectorized finite-network ensembles vs a naive per-network loop.

Depth-3 width-512 ReLU MLP (σw² = 2, σb² = 0.1) on 8 inputs in 4-D, one torch thread. Compared:

* ``naive loop``: one ``torch.nn.Sequential`` built and initialised per network, one output unit;
* ``literal``: :func:`verification.sample_ensemble` with explicit weight matrices, vectorized over networks;
* ``gram``: the exact Gram-conditional sampler (no weight matrices);
  each with one sampled readout unit (same output as the loop) and with the analytic readout.

CPU time (``time.process_time``) is used because the machine is shared. Run:
``python benchmarks/bench_ensembles.py [--networks 2000] [--width 512]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from nngp_gpytorch import arch as A
from verification.ensembles import default_inputs, sample_ensemble

WEIGHT_VAR, BIAS_VAR = 2.0, 0.1


def naive_loop(x: torch.Tensor, networks: int, width: int, depth: int = 3) -> torch.Tensor:
    """``(networks, k, k)`` covariances f fᵀ from one freshly initialised ``nn.Sequential`` per network."""
    out = []
    with torch.no_grad():
        for _ in range(networks):
            dims = [x.shape[-1]] + [width] * depth + [1]
            layers = []
            for i in range(depth + 1):
                lin = torch.nn.Linear(dims[i], dims[i + 1])
                torch.nn.init.normal_(lin.weight, std=math.sqrt(WEIGHT_VAR / dims[i]))
                torch.nn.init.normal_(lin.bias, std=math.sqrt(BIAS_VAR))
                layers.append(lin)
                if i < depth:
                    layers.append(torch.nn.ReLU())
            f = torch.nn.Sequential(*layers)(x).to(torch.float64)
            out.append(f @ f.T)
    return torch.stack(out)


def rate(fn, networks: int) -> float:
    start = time.process_time()
    fn()
    return networks / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--networks", type=int, default=2000)
    parser.add_argument("--loop-networks", type=int, default=200)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    arch = A.mlp(3, A.ReLU())
    x = default_inputs(k=8, d=4)
    xf = x.float()
    n, w = args.networks, args.width

    def ens(sampler, analytic, networks=n):
        return lambda: sample_ensemble(arch, x, networks=networks, width=w, seed=0, weight_var=WEIGHT_VAR,
                                       bias_var=BIAS_VAR, sampler=sampler, analytic_readout=analytic)

    naive_loop(xf, 5, w)  # warm-up
    rates = {"naive nn.Sequential loop": rate(lambda: naive_loop(xf, args.loop_networks, w), args.loop_networks)}
    rates["literal, 1 sampled readout unit"] = rate(ens("literal", False, n // 4), n // 4)
    rates["literal, analytic readout"] = rate(ens("literal", True, n // 4), n // 4)
    rates["gram, 1 sampled readout unit"] = rate(ens("gram", False), n)
    rates["gram, analytic readout"] = rate(ens("gram", True), n)
    base = rates["naive nn.Sequential loop"]
    print(f"depth-3 ReLU MLP, width {w}, 8 inputs, 1 thread ({torch.__version__})")
    print(f"{'sampler':34s} {'networks/CPU-s':>15s} {'× loop':>8s}")
    for name, r in rates.items():
        print(f"{name:34s} {r:15.0f} {r / base:8.1f}")


if __name__ == "__main__":
    main()

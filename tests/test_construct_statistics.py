"""Calibration and power (slow) of two constructs issue #18 added: composed nonlinearities and dropout.

Calibration: the correct kernel is rejected in at most α + 3 binomial standard deviations of 100 seeds at
α = 0.01 (Holm over the Gram's entries, as ``verification.verify``). Power: a planted mutant is rejected in at least
95% of 40 seeds at the same α — the composite dual applied in the wrong order (``relu∘sigmoid`` for
``sigmoid∘relu``), and a
dropout rate off by 10% (0.33 for 0.3). Fixed seeds; ~1 min on one core.
"""

from __future__ import annotations

import pytest
import torch

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A
from verification.verify import rejection_counts

W, B = 1.5, 0.1
ALPHA, SEEDS, POWER_SEEDS = 0.01, 100, 40
NETWORKS, WIDTH = 256, 1024

CASES = {
    # sigmoid∘relu ≥ 1/2 everywhere, relu∘sigmoid = sigmoid (erf∘relu would not do: it equals relu∘erf)
    "composite": (A.Serial(A.Dense(), A.ReLU(), A.Sigmoid(), A.Dense(), A.ReLU(), A.Dense()),
                  A.Serial(A.Dense(), A.Sigmoid(), A.ReLU(), A.Dense(), A.ReLU(), A.Dense())),
    "dropout": (A.Serial(A.Dense(), A.ReLU(), A.Dropout(0.3), A.Dense(), A.ReLU(), A.Dense()),
                A.Serial(A.Dense(), A.ReLU(), A.Dropout(0.33), A.Dense(), A.ReLU(), A.Dense())),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_calibration_and_power_over_seeds(name, check_rejection_rates):
    net, mutant = CASES[name]
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(11))
    right = NNGPKernel(net, weight_var=W, bias_var=B).double()(x.double()).to_dense().detach()
    wrong = NNGPKernel(mutant, weight_var=W, bias_var=B).double()(x.double()).to_dense().detach()
    false_alarms, detections = rejection_counts(net, x, right, wrong, seeds=SEEDS, power_seeds=POWER_SEEDS,
                                                alpha=ALPHA, networks=NETWORKS, width=WIDTH, first_seed=40_000,
                                                weight_var=W, bias_var=B)
    check_rejection_rates(f"{name} (power vs the mutant)", false_alarms, SEEDS, detections, POWER_SEEDS, ALPHA)

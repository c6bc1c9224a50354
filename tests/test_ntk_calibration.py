"""Slow statistical runs of the NTK verification: calibration over seeds and power on planted mutants.

Budgets measured (docs/ntk.md): depth-2 MLPs, k = 8 inputs, α = 1e-4 (per-entry t-tests + Holm):
the dropped-derivative mutant is rejected 100% already at width 256, M = 64; the derivative dual
scaled by 1.05 needs width 512, M = 128 for ReLU (100% of 20 seeds; 55% at M = 64).
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from nngp_gpytorch import arch as A
from verification.ensembles import default_inputs
from verification.ntk import analytic_ntk, empirical_ntk
from verification.statistics import mean_test

pytestmark = pytest.mark.slow

ARCHS = {"relu": (A.mlp(2, A.ReLU()), 0.1), "erf": (A.mlp(2, A.Erf()), 0.1)}


@pytest.mark.parametrize("name", list(ARCHS))
def test_calibration_over_seeds(name):
    """Correct Θ rejected at rate ≤ α = 0.01 (+ binomial slack: the 99.9% quantile of Bin(seeds, α))."""
    torch.set_num_threads(1)
    arch, b = ARCHS[name]
    x = default_inputs()
    theta = analytic_ntk(arch, x, 1.0, b)[1]
    seeds, alpha = 100, 0.01
    rejections = sum(not mean_test(empirical_ntk(arch, x, 64, 256, seed=10_000 + s, bias_var=b).ntks, theta,
                                   alpha=alpha, width=256).passed for s in range(seeds))
    assert rejections <= stats.binom.ppf(0.999, seeds, alpha), rejections


@pytest.mark.parametrize("mutant,width,networks", [("dropped_derivative", 256, 64), ("derivative_scaled", 512, 128)])
def test_power_on_mutants(mutant, width, networks):
    """Power ≥ 95% at α = 1e-4 (all of 20 seeds rejected; one miss allowed)."""
    torch.set_num_threads(1)
    arch, b = ARCHS["relu"]
    x = default_inputs()
    wrong = analytic_ntk(arch, x, 1.0, b, mutant=mutant, mutant_scale=1.05)[1]
    seeds = 20
    rejected = sum(not mean_test(empirical_ntk(arch, x, networks, width, seed=20_000 + s, bias_var=b).ntks, wrong,
                                 alpha=1e-4, width=width).passed for s in range(seeds))
    assert rejected >= seeds - 1, rejected

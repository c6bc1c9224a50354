"""Power: planted bugs in the analytic kernel must be rejected at the CI budget (seeded, α = 1e-4).

The slow sweep measures the rejection rate over many seeds (target ≥ 95%); the correct kernel's
false-alarm rate is measured on the same ensembles (tests/test_verification_calibration.py).
"""

import pytest
import torch

from verification import MUTANTS, verify
from verification.ensembles import as_hyperparameters, default_inputs, sample_ensemble
from verification.statistics import mean_test
from verification.verify import analytic_kernel

torch.set_num_threads(1)
ALPHA = 1e-4


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_rejected(name):
    m = MUTANTS[name]
    result = verify(m.architecture, networks=256, width=4096, seed=1, weight_var=m.weight_var, bias_var=m.bias_var,
                    alpha=ALPHA, analytic=m.kernel)
    assert not result.passed, f"mutant {name} survived: {result.summary()}"


def test_mutant_kernels_differ_from_the_correct_one():
    x = default_inputs()
    for m in MUTANTS.values():
        hyper = as_hyperparameters(m.weight_var, m.bias_var)
        K = analytic_kernel(m.architecture, x, hyper)
        assert (m.kernel(m.architecture, x, hyper) - K).abs().max() > 1e-3, m.name


@pytest.mark.slow
def test_power_sweep(capsys):
    """Rejection rate of every mutant over 60 seeds at α = 1e-4 (target ≥ 95%); one ensemble per seed
    and architecture is shared by all the mutants of that architecture."""
    seeds, x = 60, default_inputs()
    groups = {}
    for m in MUTANTS.values():
        groups.setdefault((m.architecture, m.weight_var, m.bias_var), []).append(m)
    rates = {}
    for (arch, w, b), mutants in groups.items():
        hyper = as_hyperparameters(w, b)
        kernels = {m.name: m.kernel(arch, x, hyper) for m in mutants}
        counts = dict.fromkeys(kernels, 0)
        for seed in range(seeds):
            sample = sample_ensemble(arch, x, networks=256, width=4096, seed=10_000 + seed, weight_var=hyper)
            for name, K in kernels.items():
                counts[name] += not mean_test(sample.covariances, K, alpha=ALPHA, width=4096).passed
        rates.update({name: c / seeds for name, c in counts.items()})
    with capsys.disabled():
        print("\npower at alpha=1e-4, M=256, width=4096 over", seeds, "seeds:",
              {k: round(v, 3) for k, v in rates.items()})
    assert all(rate >= 0.95 for rate in rates.values()), rates

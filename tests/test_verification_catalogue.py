"""Every catalogue architecture against its analytic kernel: a seeded Monte Carlo test at the CI budget.

Budget (reference/verification.md "A budget that works"): width 4096, M = 256 networks, analytic readout,
per-entry t-tests with Holm, α = 1e-4 per architecture (a ~16-architecture suite then false-alarms on
≈ 0.2% of seeds; the seeds are fixed, so the suite is deterministic).
"""

import pytest
import torch

from verification import ARCHITECTURES, verify

torch.set_num_threads(1)
ALPHA = 1e-4


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_catalogue_architecture_matches_its_kernel(name):
    entry = ARCHITECTURES[name]
    result = verify(entry.architecture, entry.make_inputs(), networks=entry.networks or 256,
                    width=entry.width or 4096, seed=0, analytic=entry.analytic,
                    weight_var=entry.hyper, alpha=ALPHA, input_shape=entry.input_shape)
    assert result.passed, f"{name}: {result.summary()}"
    assert result.relative_error < 0.02, result.summary()


def test_deterministic_diagonal_is_compared_exactly():
    entry = ARCHITECTURES["sign_mlp1_nobias"]
    result = verify(entry.architecture, entry.make_inputs(), networks=64, width=1024, weight_var=entry.hyper)
    assert result.deterministic.diagonal().all() and result.passed

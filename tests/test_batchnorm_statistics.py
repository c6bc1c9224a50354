"""Batch-norm kernel against literal finite batch-norm networks (per-batch statistics, eps = 0).

Budget (reference/verification.md): width 4096, M = 256 networks, analytic readout, per-entry t-tests
with Holm at α = 1e-4 per architecture. Finite-width bias is O(1/width) (bias_to_noise is reported by
the test and stays < 1 here). Power: planted mutants must be rejected at the same budget.
"""

from __future__ import annotations

import pytest
import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.algebra.batchnorm import evaluate_batches
from verification.statistics import mean_test
from verification.twins.batchnorm import sample_batch_ensemble

ALPHA = 1e-4
WIDTH, NETWORKS = 4096, 256


def inputs(n: int, d: int = 4, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


CASES = [
    ("relu depth 2, batches 6+4", A.batchnorm_mlp(2), (6, 4), Hyperparameters.constant(1.5, 0.1)),
    ("abs depth 1, batch 7", A.batchnorm_mlp(1, A.Abs()), (7,), Hyperparameters.constant(1.0, 0.3)),
    ("leaky depth 1, batches 3+5", A.batchnorm_mlp(1, A.LeakyReLU(0.2)), (3, 5), Hyperparameters.constant(2.0, 0.0)),
    ("step depth 1, batches 4+4", A.batchnorm_mlp(1, A.Step()), (4, 4), Hyperparameters.constant(1.0, 0.2)),
    ("relu depth 1, rank-deficient batch 9 (d=2)", A.batchnorm_mlp(1), (9,), Hyperparameters.constant(1.0, 0.0)),
]


@pytest.mark.parametrize("name,arch,sizes,hyper", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_finite_networks(name, arch, sizes, hyper):
    torch.set_num_threads(1)
    x = inputs(sum(sizes), d=2 if "rank-deficient" in name else 4)
    with torch.no_grad():
        k = evaluate_batches(arch, x, sizes, hyper)
    sample = sample_batch_ensemble(arch, x, sizes, NETWORKS, WIDTH, seed=17, weight_var=hyper)
    result = mean_test(sample.covariances, k, alpha=ALPHA, width=WIDTH)
    assert result.passed, (name, result.p_value, result.max_abs_t, result.relative_error)


def test_mutants_are_rejected():
    """Power at the CI budget: a readout σw² off by 3%, batch norm ignored (plain ReLU MLP kernel), and
    the two batches pooled into one batch (wrong set semantics) are all rejected."""
    torch.set_num_threads(1)
    arch, sizes, hyper = CASES[0][1], CASES[0][2], CASES[0][3]
    x = inputs(10)
    sample = sample_batch_ensemble(arch, x, sizes, NETWORKS, WIDTH, seed=18, weight_var=hyper)
    with torch.no_grad():
        k = evaluate_batches(arch, x, sizes, hyper)
        mutants = {
            "readout σw² × 1.03": 1.03 * (k - 0.1) + 0.1,
            "no batch norm": evaluate(A.mlp(2), x, x, hyper)[0],
            "batches pooled": evaluate_batches(arch, x, (10,), hyper),
        }
    assert mean_test(sample.covariances, k, alpha=ALPHA, width=WIDTH).passed
    for label, wrong in mutants.items():
        assert not mean_test(sample.covariances, wrong, alpha=ALPHA, width=WIDTH).passed, label


@pytest.mark.slow
def test_literal_and_gram_samplers_agree_with_kernel():
    """The Gram-conditional sampler is exact for dense layers feeding batch norm; the literal sampler
    (explicit weight matrices) is the reference."""
    torch.set_num_threads(1)
    arch, sizes, hyper = CASES[0][1], CASES[0][2], CASES[0][3]
    x = inputs(10)
    with torch.no_grad():
        k = evaluate_batches(arch, x, sizes, hyper)
    sample = sample_batch_ensemble(arch, x, sizes, 128, 2048, seed=19, weight_var=hyper, sampler="literal")
    assert mean_test(sample.covariances, k, alpha=ALPHA, width=2048).passed


@pytest.mark.slow
def test_calibration_over_seeds():
    """Correct kernel rejected at most at rate α + binomial slack over 20 seeds (α = 0.01 here)."""
    torch.set_num_threads(1)
    arch, sizes, hyper = CASES[0][1], CASES[0][2], CASES[0][3]
    x = inputs(10)
    with torch.no_grad():
        k = evaluate_batches(arch, x, sizes, hyper)
    rejections = sum(
        not mean_test(sample_batch_ensemble(arch, x, sizes, NETWORKS, WIDTH, seed=100 + s, weight_var=hyper)
                      .covariances, k, alpha=0.01, width=WIDTH).passed
        for s in range(20)
    )
    assert rejections <= 2  # P(Binomial(20, 0.01) ≥ 3) ≈ 1e-3

"""Transformer / attention kernels against literal finite transformers (tensor-program regime).

Budget (reference/verification.md): M = 256 networks, analytic readout, per-entry t-tests with Holm at
α = 1e-4 per architecture; width 2048 here (bias_to_noise is reported and stays ≲ 1.5: the attention
weights are deterministic only in the limit, their O(1/width) fluctuation is part of the finite-width
bias). Power: planted mutants must be rejected at the same budget.
"""

from __future__ import annotations

import pytest
import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.sequences import pack_sequences
from verification.ensembles import sample_ensemble
from verification.ntk import analytic_ntk, empirical_ntk
from verification.statistics import mean_test

ALPHA = 1e-4
WIDTH, NETWORKS = 2048, 256
HYPER = Hyperparameters.constant(1.5, 0.2)


def fixed_inputs(k=4, t=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, t * d, generator=g, dtype=torch.float64), (t, d)


def masked_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(length, 3, generator=g, dtype=torch.float64) for length in (3, 6, 4, 6)]
    return pack_sequences(seqs), (6, 4)


CASES = {
    "transformer depth 2": (A.transformer(2), fixed_inputs),
    "causal transformer, last-token readout": (A.transformer(1, causal=True, readout="last"), fixed_inputs),
    "temperature 0.3, masked lengths 3-6": (A.transformer(1, temperature=0.3, masked=True), masked_inputs),
    "attention without residual": (A.Serial(A.TokenDense(), A.SelfAttention(residual=False), A.ReLU(), A.TokenDense(),
                                            A.SequenceReadout(), A.Dense()), fixed_inputs),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_finite_transformers(name):
    torch.set_num_threads(1)
    arch, make = CASES[name]
    x, shape = make()
    k, _ = evaluate(arch, x, x, HYPER, input_shape=shape)
    sample = sample_ensemble(arch, x, NETWORKS, WIDTH, seed=7, weight_var=HYPER, input_shape=shape)
    result = mean_test(sample.covariances, k, alpha=ALPHA, width=WIDTH)
    assert result.passed, (name, result.p_value, result.max_abs_t, result.relative_error)


def test_mutants_are_rejected():
    """Power: attention dropped, temperature doubled, a causal kernel for a non-causal network, readout
    σw² × 1.03 — each rejected at the CI budget."""
    torch.set_num_threads(1)
    x, shape = fixed_inputs(seed=3)
    arch = A.Serial(A.TokenDense(), A.SelfAttention(residual=False), A.ReLU(), A.TokenDense(), A.SequenceReadout(),
                    A.Dense())
    sample = sample_ensemble(arch, x, NETWORKS, WIDTH, seed=8, weight_var=HYPER, input_shape=shape)
    k, _ = evaluate(arch, x, x, HYPER, input_shape=shape)
    assert mean_test(sample.covariances, k, alpha=ALPHA, width=WIDTH).passed

    def kernel_of(attention):
        a = A.Serial(A.TokenDense(), attention, A.ReLU(), A.TokenDense(), A.SequenceReadout(), A.Dense())
        return evaluate(a, x, x, HYPER, input_shape=shape)[0]

    mutants = {
        "uniform attention": kernel_of(A.SelfAttention(residual=False, queries="independent")),
        "temperature × 2": kernel_of(A.SelfAttention(residual=False, temperature=2.0)),
        "causal": kernel_of(A.SelfAttention(residual=False, causal=True)),
        "readout σw² × 1.03": 1.03 * (k - 0.2) + 0.2,
    }
    for label, wrong in mutants.items():
        assert not mean_test(sample.covariances, wrong, alpha=ALPHA, width=WIDTH).passed, label


def test_ntk_matches_empirical_ntk():
    """Θ carried through attention with deterministic weights matches the mean empirical NTK J·Jᵀ of
    literal transformers (the softmax path's contribution is O(1/width)); the NTK of a mutant
    (temperature × 2) is rejected by the same sample."""
    torch.set_num_threads(1)
    x, shape = fixed_inputs(k=3, t=4, d=3, seed=5)
    arch = A.transformer(1)
    sample = empirical_ntk(arch, x, 64, 512, seed=9, weight_var=HYPER, input_shape=shape)
    theta = analytic_ntk(arch, x, HYPER, input_shape=shape)[1]
    result = mean_test(sample.ntks, theta, alpha=ALPHA, width=512)
    assert result.passed, (result.p_value, result.max_abs_t, result.relative_error)
    wrong = analytic_ntk(A.transformer(1, temperature=2.0), x, HYPER, input_shape=shape)[1]
    assert not mean_test(sample.ntks, wrong, alpha=ALPHA, width=512).passed


@pytest.mark.slow
def test_literal_sampler_agrees():
    torch.set_num_threads(1)
    arch, make = CASES["transformer depth 2"]
    x, shape = make()
    k, _ = evaluate(arch, x, x, HYPER, input_shape=shape)
    sample = sample_ensemble(arch, x, 128, 1024, seed=11, weight_var=HYPER, input_shape=shape, sampler="literal")
    assert mean_test(sample.covariances, k, alpha=ALPHA, width=1024).passed

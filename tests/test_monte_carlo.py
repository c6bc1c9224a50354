"""The Monte Carlo Gram (verification.monte_carlo): unbiased where the finite-width kernel is the limit, resumable
exactly, positive semi-definite, clear about misuse."""

from __future__ import annotations

import pytest
import torch

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A
from verification import default_inputs
from verification.monte_carlo import monte_carlo_gram, relative_error

# Bonferroni bound over the 10 distinct entries of a 4 × 4 Gram: P(|Z| > 4.5) = 6.8e-6 each, so a correct kernel
# fails with probability < 1e-4 (normal approximation to the t statistic on 400 networks; the seed is fixed).
Z_LIMIT = 4.5


def _one_hidden_layer():
    """Dense → ReLU → Dense: the finite-width kernel equals the NNGP at every width (one average over units)."""
    x = default_inputs(k=4, d=3)
    estimate = monte_carlo_gram(A.mlp(1), x, networks=400, width=64, weight_var=2.0, bias_var=0.1,
                                networks_per_chunk=50, seed=3, progress=False)
    return x, estimate


def _max_z(estimate, kernel) -> float:
    return float(((estimate.mean - kernel) / estimate.standard_error).abs().max())


def test_mean_matches_the_nngp_within_its_standard_errors():
    x, estimate = _one_hidden_layer()
    exact = NNGPKernel(A.mlp(1), weight_var=2.0, bias_var=0.1, dtype=torch.float64)(x, x).to_dense().detach()
    assert _max_z(estimate, exact) < Z_LIMIT
    assert 0 < relative_error(estimate) < 0.05


def test_power_against_a_wrong_weight_variance():
    """The same estimate rejects the kernel with σw² off by 15% (power of the check above)."""
    x, estimate = _one_hidden_layer()
    wrong = NNGPKernel(A.mlp(1), weight_var=2.3, bias_var=0.1, dtype=torch.float64)(x, x).to_dense().detach()
    assert _max_z(estimate, wrong) > Z_LIMIT


def test_resume_from_a_checkpoint_equals_one_uninterrupted_run(tmp_path):
    x = default_inputs(k=3, d=2)
    kwargs = dict(width=16, weight_var=1.5, bias_var=0.2, networks_per_chunk=2, seed=7, progress=False)
    whole = monte_carlo_gram(A.mlp(2), x, networks=8, **kwargs)
    path = tmp_path / "gram.pt"
    first = monte_carlo_gram(A.mlp(2), x, networks=4, checkpoint=path, **kwargs)  # "interrupted" after 4 networks
    resumed = monte_carlo_gram(A.mlp(2), x, networks=8, checkpoint=path, **kwargs)
    assert not torch.equal(first.mean, whole.mean)
    assert torch.equal(resumed.mean, whole.mean)
    assert torch.equal(resumed.standard_error, whole.standard_error)
    with pytest.raises(ValueError, match="more than the 6 asked for"):
        monte_carlo_gram(A.mlp(2), x, networks=6, checkpoint=path, **kwargs)
    with pytest.raises(ValueError, match="another architecture"):
        monte_carlo_gram(A.mlp(3), x, networks=8, checkpoint=path, **kwargs)
    with pytest.raises(ValueError, match="another architecture"):
        monte_carlo_gram(A.mlp(2), x + 1, networks=8, checkpoint=path, **kwargs)


def test_gru_estimate_is_positive_semidefinite_and_finite():
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    estimate = monte_carlo_gram(A.gru(readout="mean"), x, networks=4, width=32, weight_var=2.0, bias_var=0.1,
                                input_shape=(3, 2), progress=False)
    assert torch.isfinite(estimate.mean).all() and torch.isfinite(estimate.standard_error).all()
    assert torch.allclose(estimate.mean, estimate.mean.T)
    assert torch.linalg.eigvalsh(estimate.mean)[0] > -1e-10 * estimate.mean.diagonal().mean()


@pytest.mark.parametrize("networks, per_chunk", [(5, 2), (1, 2), (4, 1)])
def test_bad_network_counts_are_refused(networks, per_chunk):
    with pytest.raises(ValueError, match="networks"):
        monte_carlo_gram(A.mlp(1), default_inputs(k=2, d=2), networks=networks, width=4,
                         networks_per_chunk=per_chunk, progress=False)


def test_recurrent_builtin_readout_is_averaged_exactly():
    """At width 1 the sampled readout multiplies each network's ``φφᵀ`` by ``v² ~ χ²₁`` (variance ratio ≥ 3 over the
    exact average ``σv²·φφᵀ``; measured 2.5 with this seed). Were the readout sampled in both runs (ratio 1), a ratio
    above 1.5 over 400 networks would have F-test p < 1e-4 (for normal data; these are heavier-tailed)."""
    from verification import sample_ensemble

    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kwargs = dict(networks=400, width=1, seed=5, weight_var=1.5, bias_var=0.0, input_shape=(4, 2))
    rnn = A.rnn(A.Erf(), readout="mean")
    sampled = sample_ensemble(rnn, x, **kwargs).covariances[:, 0, 0]
    exact = sample_ensemble(rnn, x, exact_builtin_readout=True, **kwargs).covariances[:, 0, 0]
    assert sampled.var() / exact.var() > 1.5

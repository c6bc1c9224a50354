"""The Gram-conditional sampler draws the same distribution as literal weight matrices (seeded).

Two-sample tests on the per-network covariances ``C_m`` (literal vs Gram, independent seeds) of a depth-2
ReLU network with biases on 4 inputs: Kolmogorov–Smirnov on each of the 10 upper-triangle entries, Holm
over the 10, α = 1e-3. A positive control (Gram at width 2n against literal at width n: the per-network
variance differs by ~2×) must be detected by the same test.
"""

import torch
from scipy import stats

from nngp_gpytorch import arch as A
from verification.ensembles import default_inputs, sample_ensemble
from verification.statistics import holm

torch.set_num_threads(1)
ARCH = A.mlp(2, A.ReLU())
X = default_inputs(k=4, d=3)


def _entries(sampler, width, seed, networks=3000):
    c = sample_ensemble(ARCH, X, networks=networks, width=width, seed=seed, weight_var=2.0, bias_var=0.1,
                        sampler=sampler).covariances
    iu = torch.triu_indices(4, 4)
    return c[:, iu[0], iu[1]].numpy()


def _two_sample_p(a, b):
    p = torch.tensor([stats.ks_2samp(a[:, e], b[:, e]).pvalue for e in range(a.shape[1])], dtype=torch.float64)
    return float(holm(p).min())


def test_gram_sampler_matches_literal_sampler():
    literal = _entries("literal", 64, seed=1)
    gram = _entries("gram", 64, seed=2)
    assert _two_sample_p(literal, gram) > 1e-3
    assert _two_sample_p(literal, _entries("gram", 128, seed=3)) < 1e-3  # positive control: power


def test_literal_sampler_with_sampled_readout_units():
    """Sampled readout units (no Rao–Blackwell) have the same mean as the analytic readout."""
    a = sample_ensemble(ARCH, X, networks=2000, width=64, seed=4, weight_var=2.0, bias_var=0.1,
                        analytic_readout=False, readout_units=8).covariances
    b = sample_ensemble(ARCH, X, networks=2000, width=64, seed=5, weight_var=2.0, bias_var=0.1).covariances
    diff = a.mean(0) - b.mean(0)
    se = (a.var(0) / 2000 + b.var(0) / 2000).sqrt()
    assert (diff.abs() / se).max() < 4.5

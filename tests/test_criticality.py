"""Signal propagation (nngp_gpytorch.criticality): closed-form values, the critical lines, and Monte Carlo
agreement of the correlation map with finite deep networks."""

from __future__ import annotations

import math

import pytest
import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.criticality import (
    correlation_map,
    critical_weight_var,
    length_map,
    plot_phase_diagram,
    signal_propagation,
)


def test_relu_is_critical_at_weight_variance_two_for_every_bias():
    bias = torch.tensor([0.0, 0.05, 0.5, 2.0])
    torch.testing.assert_close(critical_weight_var(A.ReLU(), bias), torch.full((4,), 2.0, dtype=torch.float64),
                               rtol=1e-9, atol=0)
    sp = signal_propagation(A.ReLU(), torch.tensor([1.0, 1.9], dtype=torch.float64), 0.1)
    torch.testing.assert_close(sp.chi_1, torch.tensor([0.5, 0.95], dtype=torch.float64), rtol=1e-12, atol=0)
    # ordered: q* = σb²/(1 − σw²/2), c* = 1, ξ_c = −1/ln(σw²/2)
    torch.testing.assert_close(sp.q_star, 0.1 / (1 - torch.tensor([0.5, 0.95], dtype=torch.float64)), rtol=1e-9,
                               atol=0)
    torch.testing.assert_close(sp.c_star, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(sp.xi_c, -1 / torch.log(torch.tensor([0.5, 0.95], dtype=torch.float64)), rtol=1e-6,
                               atol=0)
    assert sp.phase == ["ordered", "ordered"]
    chaotic = signal_propagation(A.ReLU(), 2.5, 0.1)
    assert math.isinf(float(chaotic.q_star)) and math.isnan(float(chaotic.chi_1))  # the length map diverges


def test_erf_critical_line_starts_at_pi_over_four_and_rises_with_the_bias():
    # at σb² → 0 the fixed point is q* = 0 and χ₁ = σw²·E[erf'(0)²] = σw²·4/π
    line = critical_weight_var(A.Erf(), torch.tensor([1e-10, 0.05, 0.2]))
    assert abs(float(line[0]) - math.pi / 4) < 1e-3
    assert bool((line[1:] > line[:-1]).all())  # Schoenholz et al. 2017, Fig. 1: the boundary moves right with σb²


def test_depth_scale_diverges_at_the_critical_line():
    sp = signal_propagation(A.Tanh(), torch.tensor([0.5, 0.9, 0.97, 1.05, 1.1, 2.0]), 1e-6, q0=1e-4)
    xi = sp.xi_c
    assert bool(xi[2] > 10 * xi[0]) and bool(xi[3] > 10 * xi[5])
    assert sp.phase[:3] == ["ordered"] * 3 and sp.phase[3:] == ["chaotic"] * 3
    assert bool((sp.c_star[3:] < 1).all()) and bool((sp.c_star[:3] > 1 - 1e-6).all())


def _finite_network_correlations(activation, weight_var, bias_var, q0, c0, depth, width, networks, seed):
    """Empirical correlation of two inputs' pre-activations after each layer of ``networks`` random MLPs."""
    g = torch.Generator().manual_seed(seed)
    cov = q0 * torch.tensor([[1.0, c0], [c0, 1.0]], dtype=torch.float64)
    h = torch.randn(networks, width, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    out = []
    for _ in range(depth):
        w = torch.randn(networks, width, width, generator=g, dtype=torch.float64) * math.sqrt(weight_var / width)
        b = torch.randn(networks, width, 1, generator=g, dtype=torch.float64) * math.sqrt(bias_var)
        h = w @ activation(h) + b
        k = torch.einsum("mip,miq->mpq", h, h) / width
        out.append(k[:, 0, 1] / torch.sqrt(k[:, 0, 0] * k[:, 1, 1]))
    return torch.stack(out)  # (depth, networks)


@pytest.mark.parametrize("activation,weight_var,bias_var", [(A.Tanh(), 1.8, 0.05), (A.Erf(), 0.6, 0.1),
                                                            (A.ReLU(), 1.6, 0.2)])
def test_correlation_map_matches_finite_deep_networks(activation, weight_var, bias_var):
    """Width 512, 32 networks, 12 layers: the mean empirical correlation after each layer agrees with the
    iterated maps within 4 standard errors over networks plus the O(1/width) finite-width bias (allowed: 2/width;
    the measured null |z| is at most 1.3 here).
    False-alarm rate per layer ≈ 6e-5 under a normal approximation; fixed seed."""
    q, c = torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    emp = _finite_network_correlations(activation, weight_var, bias_var, 1.3, 0.6, 12, 512, 32, seed=5)
    for layer in range(12):
        q, c = (length_map(activation, weight_var, bias_var, q),
                correlation_map(activation, weight_var, bias_var, q, c))
        mean, se = emp[layer].mean(), emp[layer].std() / math.sqrt(emp.shape[1])
        assert abs(float(mean - c)) <= 4 * float(se) + 2 / 512, (layer, float(mean), float(c), float(se))


def test_correlation_map_is_wrong_for_a_mutated_weight_variance():
    """Power: the same test rejects maps computed with σw² × 1.15 (tanh, chaotic side) from layer 6 on (z grows
    from 0.5 to 7.6 over the 12 layers: the first layers are close for any σw²)."""
    q, c = torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    emp = _finite_network_correlations(A.Tanh(), 1.8, 0.05, 1.3, 0.6, 12, 512, 32, seed=5)
    rejected = 0
    for layer in range(12):
        q, c = length_map(A.Tanh(), 1.8 * 1.15, 0.05, q), correlation_map(A.Tanh(), 1.8 * 1.15, 0.05, q, c)
        mean, se = emp[layer].mean(), emp[layer].std() / math.sqrt(emp.shape[1])
        rejected += abs(float(mean - c)) > 4 * float(se) + 2 / 512
    assert rejected >= 6


def test_bad_grids_are_refused_and_the_phase_diagram_draws(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        signal_propagation(A.ReLU(), 0.0, 0.1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_phase_diagram(A.Erf(), torch.linspace(0.5, 3.0, 8), torch.linspace(0.0, 0.3, 4))
    ax.figure.savefig(tmp_path / "phase.png")
    plt.close(ax.figure)
    assert (tmp_path / "phase.png").stat().st_size > 1000

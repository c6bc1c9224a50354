"""Empirical NTK of finite networks (verification.ntk): δ-trick vs brute-force jacobians, and the
statistical test of its mean against the analytic Θ."""

from __future__ import annotations

import math

import pytest
import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters
from verification.ensembles import default_inputs
from verification.ntk import analytic_ntk, empirical_ntk, verify_ntk


def brute_force_ntk(x, widths, weight_var, bias_var, act, seed, networks, units):
    """Per-network J·Jᵀ by torch.func.jacrev over explicit ω, β drawn in the twins' order
    (per Dense: weight (M, fan_in, width), then bias (M, 1, width); then the readout vectors v)."""
    g = torch.Generator().manual_seed(seed)
    m, (k, d) = networks, x.shape
    params = []
    fan = d
    for w in widths:
        params.append((torch.randn(m, fan, w, generator=g), torch.randn(m, 1, w, generator=g)))
        fan = w
    v = torch.randn(units, m, 1, fan, generator=g)  # readout weights, one column per readout unit
    out = torch.zeros(m, k, k, dtype=torch.float64)
    for net in range(m):
        flat = [p for layer in params for p in (layer[0][net], layer[1][net])]
        for r in range(units):
            beta = torch.zeros(())  # readout bias value irrelevant for J; only its derivative (σb) matters

            def f(ps, vr, beta, xi):
                h = xi
                for i in range(len(widths)):
                    w_, b_ = ps[2 * i], ps[2 * i + 1]
                    h = h @ w_ * math.sqrt(weight_var / h.shape[-1]) + math.sqrt(bias_var) * b_[0]
                    h = act(h)
                return (h @ vr) * math.sqrt(weight_var / h.shape[-1]) + math.sqrt(bias_var) * beta

            jac = torch.func.vmap(torch.func.jacrev(f, argnums=(0, 1, 2)), in_dims=(None, None, None, 0))(
                flat, v[r, net, 0], beta, x.to(torch.float32))
            parts = [j.reshape(k, -1) for j in jac[0]] + [jac[1].reshape(k, -1), jac[2].reshape(k, 1)]
            rows = torch.cat(parts, dim=1).double()
            out[net] += rows @ rows.T / units
    return out


@pytest.mark.parametrize("act", [A.ReLU(), A.Erf(), A.Tanh()])
def test_delta_trick_matches_jacrev(act):
    x = default_inputs(k=5, d=3)
    widths, units = [7, 6], 3
    arch = A.Serial(A.Dense(), act, A.Dense(), act, A.Dense())
    sample = empirical_ntk(arch, x, networks=3, width=7, seed=11, weight_var=1.3, bias_var=0.2,
                           readout_units=units)
    # the twin uses ctx.width for every hidden layer: use equal widths for the brute force
    widths = [7, 7]
    brute = brute_force_ntk(x, widths, 1.3, 0.2, act, seed=11, networks=3, units=units)
    torch.testing.assert_close(sample.ntks, brute, rtol=2e-5, atol=2e-5)


def test_readout_term_is_the_nngp_estimate_and_ntk_dominates():
    x = default_inputs(k=4)
    arch = A.mlp(1, A.ReLU())
    s = empirical_ntk(arch, x, networks=4, width=64, seed=0, bias_var=0.1)
    assert s.ntks.shape == (4, 4, 4) and s.covariances.shape == (4, 4, 4)
    # Θ̂ = readout term + PSD body terms
    assert (torch.linalg.eigvalsh(s.ntks - s.covariances) > -1e-8).all()


def test_without_plain_readout_all_records_used():
    """A network ending in an activation-free Dense of fixed width: the general path (sampled units)."""
    x = default_inputs(k=4)
    arch = A.Serial(A.Dense(), A.ReLU(), A.Dense(width=2))
    s = empirical_ntk(arch, x, networks=2, width=16, seed=0, readout_units=2)
    assert torch.isfinite(s.ntks).all()


def test_verify_ntk_passes_and_rejects_dropped_derivative():
    torch.manual_seed(0)
    arch = A.mlp(2, A.ReLU())
    x = default_inputs()
    res = verify_ntk(arch, x, networks=64, width=512, seed=3, bias_var=0.1)
    assert res.passed, res.summary()
    # mutant: the NTK without the derivative dual's factor (Θ ← Θ through activations)
    _, mutant = analytic_ntk(arch, x, 1.0, 0.1, mutant="dropped_derivative")
    res_m = verify_ntk(arch, x, networks=64, width=512, seed=3, bias_var=0.1, analytic=mutant)
    assert not res_m.passed


def test_per_layer_hyperparameters():
    x = default_inputs(k=4)
    arch = A.mlp(1, A.Erf())
    hyper = Hyperparameters(torch.tensor([1.5, 0.8]), torch.tensor([0.1, 0.3]))
    res = verify_ntk(arch, x, networks=64, width=512, seed=5, weight_var=hyper)
    assert res.passed, res.summary()


STRUCTURED = [
    (A.Serial(A.Conv(kernel_size=3, padding="same"), A.ReLU(), A.Conv(kernel_size=3, padding="same"), A.ReLU(),
              A.GlobalAvgPool(), A.Dense()), (2, 4, 4)),
    (A.Serial(A.Conv(kernel_size=3, padding="valid"), A.Erf(), A.Flatten(), A.Dense()), (2, 4, 4)),
    (A.Serial(A.Dense(), A.Residual(A.Serial(A.ReLU(), A.Dense())), A.LayerNorm(), A.ReLU(), A.Dense()), None),
]


@pytest.mark.parametrize("arch,shape", STRUCTURED, ids=["conv-gap", "conv-flatten", "residual-layernorm"])
def test_structured_families_pass_and_reject_dropped_derivative(arch, shape):
    """Weights shared over positions (conv): records with positions; residual sums and layer norm on Θ."""
    x = default_inputs(k=6, d=32)
    width = 64 if shape else 256
    res = verify_ntk(arch, x, networks=32, width=width, seed=7, bias_var=0.1, readout_units=1, input_shape=shape)
    assert res.passed, res.summary()
    mutant = analytic_ntk(arch, x, 1.0, 0.1, input_shape=shape, mutant="dropped_derivative")[1]
    res_m = verify_ntk(arch, x, networks=32, width=width, seed=7, bias_var=0.1, readout_units=1, input_shape=shape,
                       analytic=mutant)
    assert not res_m.passed


def test_conv_delta_trick_matches_jacrev():
    """Weight sharing over positions: δ-trick NTK of a tiny conv net equals Σ over all ω, β of ∂f ∂f."""
    x = default_inputs(k=3, d=1 * 3 * 3)
    arch = A.Serial(A.Conv(kernel_size=2, padding="valid"), A.ReLU(), A.Flatten(), A.Dense())
    s = empirical_ntk(arch, x, networks=2, width=3, seed=4, weight_var=1.2, bias_var=0.3, readout_units=1,
                      input_shape=(1, 3, 3))
    g = torch.Generator().manual_seed(4)
    m, width, taps = 2, 3, 4
    bias = torch.randn(m, 1, width, generator=g)  # the conv twin draws its bias first, then the weight
    weight = torch.randn(m, taps, width, generator=g)
    v = torch.randn(1, m, 1, 4 * width, generator=g)
    img = x.to(torch.float32).reshape(3, 3, 3)
    for net in range(m):
        def f(w_, b_, v_, beta, im, net=net):
            patches = torch.stack([im[i:i + 2, j:j + 2].reshape(-1) for i in range(2) for j in range(2)])  # (4, taps)
            z = patches @ w_ * (1.2 / taps) ** 0.5 + 0.3**0.5 * b_[0]
            h = torch.relu(z).reshape(-1)  # flatten (position-major, channels last)
            return h @ v_ * (1.2 / h.shape[0]) ** 0.5 + 0.3**0.5 * beta

        jac = torch.func.vmap(torch.func.jacrev(f, argnums=(0, 1, 2, 3)), in_dims=(None, None, None, None, 0))(
            weight[net], bias[net], v[0, net, 0], torch.zeros(()), img)
        rows = torch.cat([j.reshape(3, -1) for j in jac], dim=1).double()
        torch.testing.assert_close(s.ntks[net], rows @ rows.T, rtol=2e-5, atol=2e-5)


def _graph():
    adj = torch.zeros(6, 6, dtype=torch.float64)
    for i in range(6):  # a 6-cycle plus one chord
        adj[i, (i + 1) % 6] = adj[(i + 1) % 6, i] = 1.0
    adj[0, 3] = adj[3, 0] = 1.0
    return adj


def test_graph_conv_interacting_inputs_match_jacrev():
    """Nodes interact through Â: per-output δ's (interacting mode) against brute-force jacobians."""
    adj = _graph()
    layer = A.GraphConv(adj)
    arch = A.Serial(layer, A.ReLU(), A.Dense())
    x = default_inputs(k=6, d=3)
    s = empirical_ntk(arch, x, networks=2, width=4, seed=9, weight_var=1.4, bias_var=0.2, readout_units=1)
    g = torch.Generator().manual_seed(9)
    w1, b1 = torch.randn(2, 3, 4, generator=g), torch.randn(2, 1, 4, generator=g)
    v = torch.randn(1, 2, 1, 4, generator=g)
    a_hat = layer.adjacency.to(torch.float32)
    for net in range(2):
        def f(w_, b_, v_, beta):
            z = a_hat @ x.to(torch.float32) @ w_ * (1.4 / 3) ** 0.5 + 0.2**0.5 * b_
            return torch.relu(z) @ v_ * (1.4 / 4) ** 0.5 + 0.2**0.5 * beta  # (6,) all nodes at once

        jac = torch.func.jacrev(f, argnums=(0, 1, 2, 3))(w1[net], b1[net], v[0, net, 0], torch.zeros(()))
        rows = torch.cat([j.reshape(6, -1) for j in jac], dim=1).double()
        torch.testing.assert_close(s.ntks[net], rows @ rows.T, rtol=2e-5, atol=2e-5)


def test_graph_conv_ntk_passes_and_needs_interacting_deltas():
    adj = _graph()
    arch = A.Serial(A.GraphConv(adj), A.ReLU(), A.GraphConv(adj), A.Erf(), A.Dense())
    x = default_inputs(k=6)
    assert verify_ntk(arch, x, networks=64, width=256, seed=2, bias_var=0.1).passed
    mutant = analytic_ntk(arch, x, 1.0, 0.1, mutant="dropped_derivative")[1]
    assert not verify_ntk(arch, x, networks=64, width=256, seed=2, bias_var=0.1, analytic=mutant).passed
    # positive control: the per-input δ shortcut is wrong when nodes interact, and the test sees it
    assert not verify_ntk(arch, x, networks=64, width=256, seed=2, bias_var=0.1, interacting=False).passed


def test_interacting_mode_is_exact_for_independent_inputs():
    x = default_inputs(k=5)
    arch = A.mlp(2, A.ReLU())
    a = empirical_ntk(arch, x, 3, 16, seed=1, bias_var=0.1, interacting=False).ntks
    b = empirical_ntk(arch, x, 3, 16, seed=1, bias_var=0.1, interacting=True).ntks
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

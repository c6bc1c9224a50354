"""Statistical verification of the conv / pool / residual / layer-norm kernels against random finite networks.

Each test samples M independent finite networks (verification.sample_ensemble via verification.verify:
analytic readout, per-network covariances) and tests ``H0: E[C_m] = K`` with per-entry t-tests and Holm
over the k(k+1)/2 entries at family-wise α = 1e-4 (verification.statistics.mean_test). Budgets keep
M/width ≤ 1/4, where the O(1/width) finite-width bias is small against the standard error
(reference/verification.md); seeds are fixed. Power: planted mutants (wrong padding, σw² × 1.03, pooling
window, no mean subtraction in layer norm) must be rejected at the same budget. Measured over seeds for
the circular-conv + pooling net at M = 128, width 512: 0/40 false alarms at α = 0.01 and at 1e-4; power at
1e-4: padding 40/40, pooling window 40/40, σw² × 1.03 20/20, σb² + 0.05 20/20.
"""

from __future__ import annotations

import pytest
import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, RuleContext, evaluate, input_state, propagate
from nngp_gpytorch.algebra.layernorm import normalize
from verification.ntk import verify_ntk
from verification.verify import verify

torch.set_num_threads(1)
ALPHA = 1e-4
W, B = 1.7, 0.1


def images(k: int, shape: tuple[int, ...], seed: int = 11) -> torch.Tensor:
    x = torch.randn(k, int(torch.Size(shape).numel()), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    x[1] = x[0] + 0.1 * x[2]  # a nearly parallel pair
    return x


CONV_CASES = {
    # name: (architecture, input_shape)
    "1d_same_stride2": (A.Serial(A.Conv(3, stride=2), A.ReLU(), A.Conv(2), A.Erf(), A.Flatten(), A.Dense()), (2, 7)),
    "2d_valid_dilated": (A.Serial(A.Conv(2, padding="valid", dilation=2), A.ReLU(), A.Conv(2, padding="valid"),
                                  A.ReLU(), A.Flatten(), A.Dense()), (2, 5, 5)),
    "2d_circular_avgpool": (A.Serial(A.Conv(3, padding="circular"), A.ReLU(), A.AvgPool(2, padding="same"),
                                     A.Conv((2, 3), stride=(1, 2)), A.Abs(), A.GlobalAvgPool(), A.Dense()), (2, 5, 4)),
    "2d_same_gap_relu3": (A.Serial(A.Conv(3), A.ReLU(), A.Conv(3), A.ReLU(), A.Conv(3), A.ReLU(), A.GlobalAvgPool(),
                                   A.Dense()), (1, 4, 4)),
    "3d_same_avgpool": (A.Serial(A.Conv(2), A.ReLU(), A.AvgPool((1, 2, 2), padding="valid"), A.Flatten(),
                                 A.Dense()), (1, 2, 3, 4)),
    "resnet_conv_layernorm": (A.Serial(A.Conv(3), A.Residual(A.Serial(A.ReLU(), A.Conv(3))), A.LayerNorm(),
                                       A.Residual(A.Serial(A.Erf(), A.Conv(3))), A.ReLU(), A.LayerNorm(),
                                       A.GlobalAvgPool(), A.Dense()), (2, 4, 4)),
}

FLAT_CASES = {
    "residual_relu_erf": A.Serial(A.Dense(), A.Residual(A.Serial(A.ReLU(), A.Dense())),
                                  A.Residual(A.Serial(A.Erf(), A.Dense())), A.ReLU(), A.Dense()),
    "parallel": A.Serial(A.Dense(), A.ReLU(), A.Parallel(A.Dense(), A.Serial(A.Dense(), A.Erf(), A.Dense())),
                         A.ReLU(), A.Dense()),
    "layernorm_pre": A.Serial(A.Dense(), A.LayerNorm(), A.ReLU(), A.Dense()),
    "layernorm_after_relu": A.Serial(A.Dense(), A.ReLU(), A.LayerNorm(), A.Dense(), A.GELU(), A.LayerNorm(),
                                     A.Dense()),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv_family_matches_finite_networks(name):
    net, shape = CONV_CASES[name]
    r = verify(net, images(6, shape), networks=128, width=512, seed=1, weight_var=W, bias_var=B, alpha=ALPHA,
               input_shape=shape, sampler="gram")
    assert r.passed, r.summary()


@pytest.mark.parametrize("name", sorted(FLAT_CASES))
def test_flat_structures_match_finite_networks(name):
    x = images(6, (4,))
    r = verify(FLAT_CASES[name], x, networks=256, width=2048, seed=2, weight_var=W, bias_var=B, alpha=ALPHA)
    assert r.passed, r.summary()


def test_literal_conv_sampler_matches_kernel():
    """The literal sampler (explicit filters shared over positions, grouped conv) is the reference."""
    net, shape = CONV_CASES["2d_circular_avgpool"]
    r = verify(net, images(5, shape), networks=64, width=256, seed=3, weight_var=W, bias_var=B, alpha=ALPHA,
               input_shape=shape, sampler="literal", chunk_size=16)
    assert r.passed, r.summary()


def test_conv_ntk_matches_empirical_ntk():
    """Θ of conv + pooling nets against J·Jᵀ of literal finite networks (patches recorded per position)."""
    for net, shape in (CONV_CASES["2d_circular_avgpool"], CONV_CASES["1d_same_stride2"]):
        r = verify_ntk(net, images(5, shape), networks=64, width=256, seed=4, weight_var=W, bias_var=B,
                       input_shape=shape)
        assert r.passed, r.summary()


def test_residual_layernorm_ntk_matches_empirical_ntk():
    net = A.Serial(A.Dense(), A.Residual(A.Serial(A.ReLU(), A.Dense())), A.LayerNorm(), A.Erf(), A.Dense(),
                   A.ReLU(), A.LayerNorm(), A.Dense())
    r = verify_ntk(net, images(5, (4,)), networks=64, width=256, seed=5, weight_var=W, bias_var=B)
    assert r.passed, r.summary()


@pytest.mark.parametrize("mutant", ["padding", "weight_var", "pool_window", "layernorm_mean"])
def test_mutants_are_rejected(mutant):
    """Power: a kernel with a planted bug is rejected by the same test at the same budget."""
    if mutant == "layernorm_mean":
        net = FLAT_CASES["layernorm_after_relu"]

        def wrong(_arch, x, hyper):  # the first LayerNorm normalizes without subtracting the ReLU mean
            ctx = RuleContext(hyper=hyper)
            state = propagate(A.Serial(*net.layers[:2]), input_state(x, x, False, False), ctx)
            state = propagate(A.Serial(*net.layers[3:]), normalize(state), ctx)
            return state.k12

        r = verify(net, images(6, (4,)), networks=256, width=2048, seed=2, weight_var=W, bias_var=B, alpha=ALPHA,
                   analytic=wrong)
        assert not r.passed, r.summary()
        return
    shape = (2, 5, 4)
    net = CONV_CASES["2d_circular_avgpool"][0]
    if mutant == "padding":
        wrong = A.Serial(A.Conv(3, padding="same"), *net.layers[1:])
    elif mutant == "weight_var":
        # σw² × 1.03 in every layer: rejected in 20/20 seeds at this budget (σw² × 1.03 in the first conv
        # alone: only 11/40 — that small a change needs a larger budget)
        hyper_wrong = Hyperparameters.constant(W * 1.03, B)
        wrong = net
    else:
        wrong = A.Serial(*net.layers[:2], A.AvgPool(2, stride=1, padding="same"), *net.layers[3:])
    hyper = Hyperparameters.constant(W, B)
    if mutant != "weight_var":
        hyper_wrong = hyper
    r = verify(net, images(6, shape), networks=128, width=512, seed=1, weight_var=hyper, alpha=ALPHA,
               input_shape=shape, sampler="gram",
               analytic=evaluate(wrong, images(6, shape), images(6, shape), hyper_wrong, input_shape=shape)[0])
    assert not r.passed, r.summary()

"""Dropout (inverted, train mode): the kernel rule against its finite twin (NNGP and NTK), its power
against the kernel that forgets the mask, and the structural errors. Each statistical test has
family-wise false-alarm rate ALPHA = 1e-4 (Holm over the Gram's entries) and a fixed seed."""

from __future__ import annotations

import pytest
import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.arch.base import ArchitectureError
from verification import verify, verify_ntk

ALPHA = 1e-4
W, B = 1.5, 0.1
MLP = A.Serial(A.Dense(), A.ReLU(), A.Dropout(0.3), A.Dense(), A.ReLU(), A.Dense())


def test_rate_zero_is_the_identity_and_only_the_diagonal_of_the_next_layer_grows():
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = NNGPKernel(A.mlp(1), weight_var=W, bias_var=B).double()
    for rate, tol in ((0.0, 0.0), (0.4, None)):
        net = A.Serial(A.Dense(), A.ReLU(), A.Dropout(rate), A.Dense())
        k = NNGPKernel(net, weight_var=W, bias_var=B).double()(x).to_dense()
        ref = plain(x).to_dense()
        if tol == 0.0:
            assert torch.equal(k, ref)
        else:  # K' = σw²·(E[φφ'] + 1[x = x']·E[φ²]·(1/q − 1)) + σb²
            off = ~torch.eye(7, dtype=torch.bool)
            assert torch.equal(k[off], ref[off])
            expected = B + (ref.diagonal() - B) / (1 - rate)
            torch.testing.assert_close(k.diagonal(), expected, rtol=1e-14, atol=0)
    diag = NNGPKernel(MLP, weight_var=W, bias_var=B).double()
    torch.testing.assert_close(diag(x, diag=True), diag(x).to_dense().diagonal(), rtol=1e-14, atol=0)


def test_mlp_nngp_matches_the_finite_twin():
    r = verify(MLP, networks=2048, width=512, seed=0, weight_var=W, bias_var=B, alpha=ALPHA)
    assert r.passed, r


def test_forgetting_the_mask_is_detected():
    """Power: the kernel of the same network without dropout is rejected by the same test (mask rate 0.3
    changes every diagonal entry by tens of standard errors at 2048 networks)."""
    no_mask = NNGPKernel(A.mlp(2), weight_var=W, bias_var=B).double()
    wrong = lambda arch, inputs, hyper: no_mask(inputs.double()).to_dense().detach()  # noqa: E731
    r = verify(MLP, networks=2048, width=512, seed=0, weight_var=W, bias_var=B, alpha=ALPHA, analytic=wrong)
    assert not r.passed, r


def test_mlp_ntk_matches_the_empirical_ntk():
    r = verify_ntk(MLP, networks=128, width=1024, seed=1, weight_var=W, bias_var=B, alpha=ALPHA)
    assert r.passed, r


def test_conv_dropout_before_pooling_matches_the_finite_twin():
    net = A.Serial(A.Conv(3), A.ReLU(), A.Dropout(0.25), A.GlobalAvgPool(), A.Dense())
    x = torch.randn(6, 2 * 5 * 5, generator=torch.Generator().manual_seed(3))
    r = verify(net, x, networks=512, width=256, seed=2, weight_var=W, bias_var=B, alpha=ALPHA,
               input_shape=(2, 5, 5))
    assert r.passed, r


@pytest.mark.parametrize("after", [A.ReLU(), A.LayerNorm()], ids=["activation", "layer-norm"])
def test_non_affine_layers_after_dropout_are_refused(after):
    net = A.Serial(A.Dense(), A.ReLU(), A.Dropout(0.3), after, A.Dense())
    with pytest.raises(ArchitectureError, match="Dropout|channel mean"):
        NNGPKernel(net)(torch.randn(3, 4)).to_dense()


@pytest.mark.parametrize("rate", [1.0, -0.1, True, "0.5"])
def test_invalid_rates_are_refused(rate):
    with pytest.raises(ArchitectureError, match="rate"):
        A.Dropout(rate)


def test_dropout_on_the_raw_input_is_refused():
    with pytest.raises(ArchitectureError, match="raw input"):
        NTKKernel(A.Serial(A.Dropout(0.2), A.Dense()))

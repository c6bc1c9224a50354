"""GRU/LSTM NTKs (tensor-program NTKs of the cells) with variable-length sequences and per-gate parameters, against
the mean empirical NTK of the dedicated finite twins (verification/twins/recurrent.py, masks read by the twin's
own readout weights, literal weights shared over time). Calibrated tests at α = 1e-4 (per-entry t-tests + Holm);
power: the masked program's uncorrected NTK (its auxiliary readout matrix's own term ``K − σvb²`` left in) and a
dropped 10% of the gradient terms are rejected."""

from __future__ import annotations

import pytest
import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters
from nngp_gpytorch.sequences import pack_sequences
from verification import empirical_ntk
from verification.statistics import mean_test

DT = torch.float64
SHAPE = (3, 3)  # T = 3 tokens of 2 features + the mask channel (the slow tests; the default one: T = 2)
HYPER = Hyperparameters(torch.tensor([1.0, 1.5, 1.2], dtype=DT), torch.tensor([0.1, 0.0, 0.0], dtype=DT))
CASES = {
    "gru": A.GRU(masked=True, gate_bias_mean=(0.5, -0.7, 0.3), gate_hidden_var=(None, 0.6, None)),
    "lstm": A.LSTM(masked=True, readout="mean", gate_bias_mean=(0.4, 1.0, -0.5, 0.3)),
}


def _inputs(lengths):
    g = torch.Generator().manual_seed(1)
    return pack_sequences([torch.randn(L, 2, generator=g, dtype=DT) for L in lengths], max(lengths))


def _check(layer, lengths=(1, 3, 2), networks=96, width=512):
    x = _inputs(lengths)
    shape = (max(lengths), 3)
    kernel = NTKKernel(layer, input_shape=shape, weight_var=[1.0, 1.5, 1.2], bias_var=[0.1, 0.0, 0.0]).double()
    with torch.no_grad():
        result = kernel.evaluate_with_error(x)
    theta, K = result.ntk, result.kernel
    # the masked program's NNGP is the dedicated algebra's: 6 program standard errors + 3e-4 (dedicated QMC at 2¹⁵)
    cell = A.GRU if isinstance(layer, A.GRU) else A.LSTM
    dedicated = NNGPKernel(cell(**_fields(layer)), input_shape=shape, per_layer=True, weight_var=[1.0, 1.5, 1.2],
                           bias_var=[0.1, 0.0, 0.0]).double()
    with torch.no_grad():
        assert ((K - dedicated(x).to_dense()).abs() <= 6 * result.kernel_stderr + 3e-4).all()
    sample = empirical_ntk(layer, x, networks=networks, width=width, seed=1, weight_var=HYPER, input_shape=shape)
    test = mean_test(sample.ntks, theta, alpha=1e-4, width=width)
    assert test.passed, test
    assert not mean_test(sample.ntks, theta + K, alpha=1e-4, width=width).passed  # correction left out
    assert not mean_test(sample.ntks, K + 0.9 * (theta - K), alpha=1e-4, width=width).passed


def _fields(layer):
    return dict(masked=True, readout=layer.readout, samples=2**15, gate_bias_mean=layer.gate_bias_mean,
                gate_hidden_var=layer.gate_hidden_var)


def test_masked_per_gate_gru_ntk_matches_finite_networks_small():
    """Lengths 2, 1 (T = 2), 64 networks of width 256: the default-suite version."""
    _check(CASES["gru"], lengths=(2, 1), networks=64, width=256)


@pytest.mark.slow
def test_masked_per_gate_gru_ntk_matches_finite_networks():
    """Lengths 1, 3, 2 (T = 3); measured max|t| = 1.02, the two mutants rejected (~25 s on one core)."""
    _check(CASES["gru"])


@pytest.mark.slow
def test_masked_per_gate_lstm_ntk_matches_finite_networks():
    """Mean readout; measured max|t| = 1.22."""
    _check(CASES["lstm"])


def test_masked_ntk_rejects_bad_masks():
    kernel = NTKKernel(A.gru(masked=True), input_shape=(2, 2)).double()
    x = torch.tensor([[0.3, 1.0, 0.2, 1.0], [0.1, 0.0, 0.5, 1.0]], dtype=DT)  # second mask not a prefix
    with pytest.raises(ValueError, match="prefix"):
        kernel(x).to_dense()
    with pytest.raises(ValueError, match="D >= 2"):
        NTKKernel(A.gru(masked=True), input_shape=(2, 1))

"""The GRU/LSTM NNGP kernels' QMC error bars (issue 19: ``qmc_error_bar`` / ``kernel.last_error``) cover the actual
error against the independent nested-quadrature references of tests/test_gated_per_gate.py."""

from __future__ import annotations

import functools

import pytest
import torch
from test_gated_per_gate import GRU_GATES, LSTM_GATES, _pack, _sequences, gru_reference, lstm_reference

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra.gated import qmc_error_bar


@functools.cache
def _gru_case():
    seqs = _sequences((1, 2, 2))
    return A.GRU, GRU_GATES, _pack(seqs), (2, 3), torch.tensor(gru_reference(seqs, *GRU_GATES.values(), 1.2, 0.05))


@functools.cache
def _lstm_case():
    seqs = _sequences((1, 1, 1), seed=5)
    ref = lstm_reference(seqs, *LSTM_GATES.values(), 1.2, 0.05, length_two=False)
    return A.LSTM, LSTM_GATES, _pack(seqs, 1), (1, 3), torch.tensor([[ref[(a, b)] for b in range(3)] for a in range(3)])


@pytest.mark.parametrize("case", [_gru_case, _lstm_case], ids=["gru", "lstm"])
@pytest.mark.parametrize("seed", [0, pytest.param(3, marks=pytest.mark.slow)])
def test_error_bar_covers_the_actual_error(case, seed):
    """2¹⁰ points, 8 scramblings: every entry's bar ≥ |K − reference| (measured bar/error ≥ 1.6 here), and the
    bar is informative (≤ 1e-3 while |K| ~ 0.1–0.4)."""
    cell, gates, x, shape, reference = case()
    kernel = NNGPKernel(cell(masked=True, samples=2**10, qmc_seed=seed, readout_var=1.2, readout_bias_var=0.05,
                             **gates), input_shape=shape).double()
    bar = qmc_error_bar(kernel, x)
    with torch.no_grad():
        K = kernel(x).to_dense()
    torch.testing.assert_close(bar.kernel, K, rtol=0, atol=1e-12)  # the bar is about the kernel's own value
    assert kernel.last_error is bar.error
    assert ((K - reference).abs() <= bar.error).all()
    assert bar.error.max() <= 1e-3


def test_error_bar_rejects_other_layers():
    kernel = NNGPKernel(A.rnn(), input_shape=(2, 2)).double()
    with pytest.raises(ValueError, match="GRU or LSTM"):
        qmc_error_bar(kernel, torch.randn(2, 4, dtype=torch.float64))

"""GRUNTKKernel / LSTMNTKKernel: the gated cells' NTKs (tensor-program NTK of the cell) against the dedicated
NNGP algebra and against the empirical NTK of the dedicated finite twins (verification/twins/recurrent.py —
written independently of the programs)."""

from __future__ import annotations

import pytest
import torch

from nngp_gpytorch import GRUKernel, GRUNTKKernel, LSTMKernel, LSTMNTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters
from verification import empirical_ntk
from verification.statistics import mean_test

DT = torch.float64
SHAPE = (3, 2)
VARIANCES = dict(input_var=1.0, hidden_var=1.5, bias_var=0.1, readout_var=1.2)
HYPER = Hyperparameters(torch.tensor([1.0, 1.5, 1.2], dtype=DT), torch.tensor([0.1, 0.0, 0.0], dtype=DT))
CELLS = [(GRUNTKKernel, GRUKernel, A.GRU), (LSTMNTKKernel, LSTMKernel, A.LSTM)]


def _inputs(n=4, seed=0):
    return torch.randn(n, SHAPE[0] * SHAPE[1], generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("ntk_cls,nngp_cls,layer", CELLS, ids=["gru", "lstm"])
def test_gated_ntk_matches_dedicated_nngp_and_finite_networks(ntk_cls, nngp_cls, layer):
    x = _inputs()
    kernel = ntk_cls(SHAPE, samples=2**12, **VARIANCES).double()
    with torch.no_grad():
        result = kernel.evaluate_with_error(x)
    theta, K = result.ntk, result.kernel
    # the program's NNGP is the dedicated algebra's (same cell, same variance mapping). Bound: 6 QMC standard
    # errors of the program (8 replicates: P(|t₇| > 6) ≈ 5e-4 per entry) + 3e-4 for the dedicated rule's own
    # QMC error at 2¹⁵ points (docs/recurrent.md: ≤ 7e-5 on a 7×9 pair).
    dedicated = nngp_cls(SHAPE, samples=2**15, weight_var=[1.0, 1.5, 1.2], bias_var=[0.1, 0.0, 0.0]).double()
    with torch.no_grad():
        K_dedicated = dedicated(x).to_dense()
    assert ((K - K_dedicated).abs() <= 6 * result.kernel_stderr + 3e-4).all()
    # Θ ⪰ K on the diagonal (Θ − K is a sum of squared gradients), symmetric
    assert (theta.diagonal() >= K.diagonal()).all()
    torch.testing.assert_close(theta, theta.T)
    # the mean empirical NTK of 96 random finite networks (width 512) of the dedicated twin: calibrated test
    # at α = 1e-4 (QMC error of Θ ≈ 0.3× the Monte Carlo standard error, measured)
    sample = empirical_ntk(layer(), x, networks=96, width=512, seed=1, weight_var=HYPER, input_shape=SHAPE)
    test = mean_test(sample.ntks, theta, alpha=1e-4, width=512)
    assert test.passed, test
    # power: forgetting the weight-sharing cross-time terms changes Θ by several percent and is caught
    wrong = mean_test(sample.ntks, K + 0.9 * (theta - K), alpha=1e-4, width=512)
    assert not wrong.passed


def test_gated_ntk_errors_are_clear():
    with pytest.raises(ValueError, match="D >= 2"):
        GRUNTKKernel((3, 1), masked=True)
    with pytest.raises(ValueError, match=r"input_shape=\(T, D\)"):
        LSTMNTKKernel((6,))
    kernel = GRUNTKKernel(SHAPE, samples=2**6).double()
    with pytest.raises(ValueError, match="features"):
        kernel(torch.randn(3, 5, dtype=DT)).to_dense()


def test_gated_ntk_hyperparameters_are_learnable():
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    kernel = GRUNTKKernel((2, 2), samples=2**6, **VARIANCES).double()
    kernel(x).to_dense().sum().backward()
    grads = [p.grad for p in kernel.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)

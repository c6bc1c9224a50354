"""Infinite-width training dynamics (nngp_gpytorch.dynamics, Lee et al. 2019 eq. 16)."""

from __future__ import annotations

import math

import pytest
import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.dynamics import GradientDescentDynamics, nngp_posterior, predict
from nngp_gpytorch.kernels import NTKKernel


def _data(n=12, m=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + m, d, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True)) + 0.1 * torch.randn(n + m, 2, generator=g, dtype=torch.float64)
    return x[:n], y[:n], x[n:]


def _kernel():
    k = NTKKernel(A.mlp(2, A.ReLU())).double()
    k.bias_var = 0.1
    return k


def _blocks(kernel, xtr, xte):
    xa = torch.cat([xtr, xte])
    with torch.no_grad():
        K, T = kernel.nngp_and_ntk(xa)
    n = xtr.shape[0]
    return K[:n, :n], T[:n, :n], K[n:, :n], T[n:, :n], K[n:, n:]


def _reference(kb, tb, kxb, txb, ksb, y, eta, t):
    """Direct formula with matrix_exp and solve (Lee et al. 2019 eq. 16)."""
    n = tb.shape[0]
    u = torch.eye(n, dtype=tb.dtype) - torch.linalg.matrix_exp(-eta * t * tb)
    a = txb @ torch.linalg.solve(tb, u)
    mean = a @ y
    cov = ksb + a @ kb @ a.T - a @ kxb.T - kxb @ a.T
    return mean, cov


@pytest.mark.parametrize("t", [0.0, 0.3, 2.0, 50.0])
def test_matches_matrix_exponential(t):
    xtr, y, xte = _data()
    blocks = _blocks(_kernel(), xtr, xte)
    dyn = GradientDescentDynamics(*blocks, y, learning_rate=0.7)
    mean, cov = _reference(*blocks, y, 0.7, t)
    torch.testing.assert_close(dyn.mean(t), mean, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(dyn.covariance(t), cov, rtol=1e-7, atol=1e-9)


def test_time_zero_is_the_prior_and_infinity_is_the_limit():
    xtr, y, xte = _data()
    blocks = _blocks(_kernel(), xtr, xte)
    dyn = GradientDescentDynamics(*blocks, y)
    assert torch.allclose(dyn.mean(0.0), torch.zeros_like(dyn.mean(0.0)))
    torch.testing.assert_close(dyn.covariance(0.0), blocks[4])
    torch.testing.assert_close(dyn.mean(1e6), dyn.mean(math.inf), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(dyn.covariance(1e6), dyn.covariance(math.inf), rtol=1e-6, atol=1e-8)


def test_training_points_follow_the_ode_and_interpolate():
    """On the training set μ_t = (I − e^{−ηΘt})Y solves ḟ = −ηΘ(f − Y); at t = ∞ it interpolates, variance 0."""
    xtr, y, _ = _data()
    kb, tb, *_ = _blocks(_kernel(), xtr, xtr)
    dyn = GradientDescentDynamics(kb, tb, kb, tb, kb, y, learning_rate=0.5)
    t, h = 1.3, 1e-5
    deriv = (dyn.mean(t + h) - dyn.mean(t - h)) / (2 * h)
    torch.testing.assert_close(deriv, -0.5 * tb @ (dyn.mean(t) - y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dyn.mean(math.inf), y, rtol=1e-6, atol=1e-6)
    assert dyn.covariance(math.inf).abs().max() < 1e-6


def test_theta_equal_k_gives_the_gp_posterior():
    xtr, y, xte = _data()
    kb, _, kxb, _, ksb = _blocks(_kernel(), xtr, xte)
    dyn = GradientDescentDynamics(kb, kb, kxb, kxb, ksb, y)
    post = nngp_posterior(kb, kxb, ksb, y)
    torch.testing.assert_close(dyn.mean(math.inf), post.mean, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(dyn.covariance(math.inf), post.covariance, rtol=1e-6, atol=1e-8)


def test_discrete_steps_match_iterated_linear_gd():
    xtr, y, xte = _data()
    kb, tb, kxb, txb, ksb = _blocks(_kernel(), xtr, xte)
    eta = 1.0 / float(torch.linalg.eigvalsh(tb).max())  # a stable step
    dyn = GradientDescentDynamics(kb, tb, kxb, txb, ksb, y, learning_rate=eta, discrete=True)
    f_tr, f_te = torch.zeros_like(y), torch.zeros(xte.shape[0], 2, dtype=y.dtype)
    for _ in range(25):  # the linearized network: f ← f − η Θ(·, X)(f(X) − Y)
        r = f_tr - y
        f_tr, f_te = f_tr - eta * tb @ r, f_te - eta * txb @ r
    torch.testing.assert_close(dyn.mean(25), f_te, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="whole"):
        dyn.mean(2.5)


def test_linearized_averages_to_the_mean():
    xtr, y, xte = _data()
    blocks = _blocks(_kernel(), xtr, xte)
    dyn = GradientDescentDynamics(*blocks, y)
    z0 = dyn.linearized(3.0, torch.zeros_like(y), torch.zeros(xte.shape[0], 2, dtype=y.dtype))
    torch.testing.assert_close(z0, dyn.mean(3.0))


def test_predict_one_call_full_and_diag():
    xtr, y, xte = _data()
    kernel = _kernel()
    with torch.no_grad():
        full = predict(kernel, xtr, y[:, 0], xte, t=[0.5, math.inf], noise=1e-3)
        diag = predict(kernel, xtr, y[:, 0], xte, t=0.5, noise=1e-3, diag=True)
    assert full.nngp.mean.shape == (5,) and full.nngp.covariance.shape == (5, 5)
    assert isinstance(full.ntk, list) and len(full.ntk) == 2
    torch.testing.assert_close(diag.ntk.variance, full.ntk[0].variance)
    torch.testing.assert_close(diag.nngp.variance, full.nngp.variance)
    torch.testing.assert_close(diag.ntk.mean, full.ntk[0].mean)
    assert (full.ntk[1].variance > -1e-9).all() and (full.nngp.variance > -1e-9).all()


def test_bad_arguments():
    xtr, y, xte = _data()
    blocks = _blocks(_kernel(), xtr, xte)
    with pytest.raises(ValueError, match="learning_rate"):
        GradientDescentDynamics(*blocks, y, learning_rate=0.0)
    with pytest.raises(ValueError, match="rows"):
        GradientDescentDynamics(*blocks, y[:-1])
    with pytest.raises(ValueError, match="time"):
        GradientDescentDynamics(*blocks, y).mean(-1.0)
    with pytest.raises(ValueError, match="noise"):
        nngp_posterior(blocks[0], blocks[2], blocks[4], y, noise=-1.0)

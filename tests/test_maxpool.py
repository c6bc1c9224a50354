"""MaxPool: its kernel (exact for windows of two Gaussian cells, quasi-Monte Carlo otherwise) against an
independent Monte Carlo reference, against its finite twin (NNGP and NTK, 1-D and 2-D, all paddings), its power
against the average-pool kernel, and the errors. Each statistical test against finite networks has
family-wise false-alarm rate ALPHA = 1e-4 (Holm over the Gram's entries) and a fixed seed."""

from __future__ import annotations

import math

import pytest
import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.algebra.maxpool import max_pool_moments
from nngp_gpytorch.arch.base import ArchitectureError
from verification import verify, verify_ntk

torch.set_num_threads(1)
ALPHA = 1e-4
W, B = 1.6, 0.1
HYPER = Hyperparameters.constant(W, B)


def _inputs(n, shape, seed=0):
    x = torch.randn(n, math.prod(shape), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x[-1] = x[0]  # an exact duplicate
    return x


def _random_covariance(m, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, m + 2, dtype=torch.float64, generator=g)
    return a @ a.T / (m + 2)


@pytest.mark.parametrize("activation", [A.Identity(), A.ReLU(), A.Erf(), A.Abs()], ids=lambda a: a.describe())
def test_moments_agree_with_plain_monte_carlo(activation):
    """E[max φ(u)·max φ(v)] and the NTK weights E[φ'(u_a)1[a*]·φ'(v_b)1[b*]] for windows of 3 cells against 2·10⁶
    plain pseudo-random samples (tolerance 5 standard errors of the reference plus 5 of the kernel's own)."""
    sigma = _random_covariance(6, 11)
    value, error, weights = max_pool_moments(sigma, 3, activation, samples=2**14, with_ntk=True)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2_000_000, 6, dtype=torch.float64, generator=g) @ torch.linalg.cholesky(sigma).T
    f = activation(z)
    fu, iu = f[:, :3].max(-1)
    fv, iv = f[:, 3:].max(-1)
    prod = fu * fv
    ref, ref_err = prod.mean(), prod.std() / math.sqrt(len(prod))
    assert abs(value - ref) <= 5 * ref_err + 5 * error, (value, ref, ref_err, error)
    z.requires_grad_(True)
    d = torch.autograd.grad(activation(z).sum(), z)[0].detach()
    du = d[:, :3].gather(1, iu[:, None])[:, 0]
    dv = d[:, 3:].gather(1, iv[:, None])[:, 0]
    hu = torch.nn.functional.one_hot(iu, 3).double() * du[:, None]
    hv = torch.nn.functional.one_hot(iv, 3).double() * dv[:, None]
    ref_w = hu.T @ hv / len(hu)
    torch.testing.assert_close(weights, ref_w, atol=0.01, rtol=0)  # 10⁻² ≈ 10 reference standard errors


def test_window_of_two_exact_formula_equals_quasi_monte_carlo():
    """The closed form for two Gaussian cells (|a − b| dual and orthant probabilities) against the QMC path
    (forced with an identity callable that is not the named Identity) within 5 standard errors."""
    for seed in range(4):
        sigma = _random_covariance(4, seed)
        exact, none, w_exact = max_pool_moments(sigma, 2, A.Identity(), with_ntk=True)
        assert none == 0.0
        qmc, err, w_qmc = max_pool_moments(sigma, 2, A.Activation(lambda t: t * 1.0, name="id"), samples=2**15,
                                           with_ntk=True)
        assert abs(exact - qmc) <= 5 * err + 1e-12, (exact, qmc, err)
        torch.testing.assert_close(w_exact, w_qmc, atol=5e-3, rtol=0)


@pytest.mark.parametrize("net, shape", [
    (A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.MaxPool(2), A.Flatten(), A.Dense()), (2, 8)),
    (A.Serial(A.Conv(2), A.MaxPool(2, stride=1), A.Flatten(), A.Dense()), (1, 5)),
    (A.Serial(A.Conv(3, padding="same"), A.Erf(), A.MaxPool(3, padding="same"), A.GlobalAvgPool(), A.Dense()),
     (2, 7)),
    (A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.MaxPool((2, 2)), A.Conv(2), A.ReLU(), A.GlobalAvgPool(),
              A.Dense()), (2, 4, 4)),
], ids=["relu-1d-flatten", "gaussian-window2-exact", "erf-same-gap", "relu-2d-then-conv"])
def test_nngp_matches_the_finite_twin(net, shape):
    x = _inputs(5, shape)
    r = verify(net, x.float(), networks=1024, width=256, seed=0, weight_var=W, bias_var=B, alpha=ALPHA,
               input_shape=shape)
    assert r.passed, r


@pytest.mark.parametrize("net, shape", [
    (A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.MaxPool(2), A.Flatten(), A.Dense()), (2, 6)),
    (A.Serial(A.Conv(2), A.MaxPool(2, stride=1), A.Flatten(), A.Dense()), (1, 5)),
], ids=["relu-1d", "gaussian-window2"])
def test_ntk_matches_the_empirical_ntk(net, shape):
    x = _inputs(4, shape, seed=1)
    r = verify_ntk(net, x.float(), networks=128, width=512, seed=1, weight_var=W, bias_var=B, alpha=ALPHA,
                   input_shape=shape)
    assert r.passed, r


def test_the_average_pool_kernel_is_rejected():
    """Power: the same network's kernel with AvgPool in place of MaxPool is rejected by the same test."""
    net = A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.MaxPool(2), A.Flatten(), A.Dense())
    avg = A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.AvgPool(2), A.Flatten(), A.Dense())
    shape = (2, 8)
    wrong_kernel = NNGPKernel(avg, input_shape=shape, weight_var=W, bias_var=B).double()
    wrong = lambda arch, inputs, hyper: wrong_kernel(inputs.double()).to_dense().detach()  # noqa: E731
    r = verify(net, _inputs(5, shape).float(), networks=1024, width=256, seed=0, weight_var=W, bias_var=B,
               alpha=ALPHA, input_shape=shape, analytic=wrong)
    assert not r.passed, r


def test_kernel_is_deterministic_symmetric_and_consistent_with_diag():
    net = A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.MaxPool(2), A.Conv(2), A.ReLU(), A.Flatten(), A.Dense())
    shape = (2, 8)
    x = _inputs(5, shape, seed=3)
    k = NNGPKernel(net, input_shape=shape, weight_var=W, bias_var=B).double()
    full = k(x).to_dense()
    assert torch.equal(full, k(x).to_dense())
    torch.testing.assert_close(full, full.T, rtol=0, atol=0)
    torch.testing.assert_close(k(x, diag=True), full.diagonal(), rtol=1e-12, atol=0)
    torch.testing.assert_close(full[0], full[-1], rtol=1e-12, atol=0)  # duplicated input
    assert torch.linalg.eigvalsh(full).min() > -1e-3 * full.diagonal().max()
    nngp, ntk = NTKKernel(net, input_shape=shape, weight_var=W, bias_var=B).double().nngp_and_ntk(x)
    torch.testing.assert_close(nngp.to_dense(), full, rtol=1e-12, atol=0)
    assert (ntk.to_dense().diagonal() >= full.diagonal()).all()


def _swap_sides(sigma: torch.Tensor, w: int) -> torch.Tensor:
    """``P Σ P`` with ``P`` exchanging the first ``w`` coordinates (side ``u``) with the last ``w`` (side ``v``)."""
    perm = torch.cat([torch.arange(w, 2 * w), torch.arange(w)])
    return sigma[..., perm[:, None], perm[None, :]]


@pytest.mark.parametrize("activation", [A.ReLU(), A.Erf()], ids=lambda a: a.describe())
def test_moments_are_symmetric_in_the_two_sides(activation):
    """The estimate is a function of the pair's covariance that does not depend on which side comes first:
    exchanging u and v gives the same value and standard error and the transposed NTK weights (to rounding)."""
    sigma = torch.stack([_random_covariance(6, s) for s in range(5)])
    # a tie of the canonical order: the v side rescaled to u's total variance, cross block not symmetric
    scale = torch.ones(6, dtype=torch.float64)
    scale[3:] = (sigma[0].diagonal()[:3].sum() / sigma[0].diagonal()[3:].sum()).sqrt()
    tie = sigma[0] * scale[:, None] * scale[None, :]
    assert abs(float(tie.diagonal()[:3].sum() - tie.diagonal()[3:].sum())) < 1e-12
    sigma = torch.cat([sigma, tie[None]])
    value, err, weights = max_pool_moments(sigma, 3, activation, samples=2**10, with_ntk=True)
    value_s, err_s, weights_s = max_pool_moments(_swap_sides(sigma, 3), 3, activation, samples=2**10, with_ntk=True)
    torch.testing.assert_close(value_s, value, rtol=1e-13, atol=0)
    torch.testing.assert_close(err_s, err, rtol=1e-10, atol=1e-16)
    torch.testing.assert_close(weights_s, weights.transpose(-1, -2), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("kernel_class", [NNGPKernel, NTKKernel], ids=["nngp", "ntk"])
def test_blocks_of_the_gram_equal_the_cross_kernel(kernel_class):
    """Determinism promised by the QMC route: each entry is a fixed function of its pair's joint covariance (same
    Sobol points for every entry, symmetric in the two sides), so a block of K(X, X) equals K(X1, X2) on the same
    inputs, and K(X2, X1) = K(X1, X2)ᵀ, to rounding (1e-12 relative; the QMC error is ~1e-3)."""
    net = A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.MaxPool(3, padding="same"), A.Conv(3, padding="same"),
                   A.ReLU(), A.GlobalAvgPool(), A.Dense())
    shape = (2, 7)
    x = _inputs(5, shape, seed=6)
    k = kernel_class(_with_samples(net, 2**10), input_shape=shape, weight_var=W, bias_var=B).double()
    with torch.no_grad():
        full = k(x).to_dense()
        cross = k(x[:2], x[2:]).to_dense()
        back = k(x[2:], x[:2]).to_dense()
    scale = full.diagonal().max()
    torch.testing.assert_close(cross, full[:2, 2:], rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(back, cross.T, rtol=0, atol=1e-12 * scale)


def _with_samples(net: A.Serial, samples: int) -> A.Serial:
    """``net`` with every MaxPool's ``samples`` replaced (fewer QMC points keep the tests fast) and its warning
    tolerance raised: these tests are about determinism, not accuracy."""
    import dataclasses

    return A.Serial(*(dataclasses.replace(layer, samples=samples, tolerance=1.0) if isinstance(layer, A.MaxPool)
                      else layer for layer in net.layers))


def test_window_of_one_is_exact_subsampling():
    """MaxPool(1) is the identity and MaxPool(1, stride=2) keeps every other position, exactly (no QMC)."""
    x = _inputs(4, (2, 6))
    body = (A.Conv(3, padding="same"), A.ReLU())
    for pool, ref in ((A.MaxPool(1), A.Flatten()), (A.MaxPool(1, stride=2), A.AvgPool(1, stride=2))):
        net = A.Serial(*body, pool, A.Flatten(), A.Dense())
        same = A.Serial(*body, ref, A.Flatten(), A.Dense())
        k, t = evaluate(net, x, x, HYPER, with_ntk=True, input_shape=(2, 6))
        k0, t0 = evaluate(same, x, x, HYPER, with_ntk=True, input_shape=(2, 6))
        torch.testing.assert_close(k, k0, rtol=1e-13, atol=0)
        torch.testing.assert_close(t, t0, rtol=1e-13, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=0), "window"), (dict(window=(2, -1)), "window"), (dict(stride=0), "stride"),
    (dict(padding="reflect"), "padding"), (dict(samples=1), "samples"), (dict(tolerance=0.0), "tolerance"),
])
def test_invalid_parameters_are_refused(kwargs, match):
    with pytest.raises(ArchitectureError, match=match):
        A.MaxPool(**kwargs)


def test_structural_errors_name_the_layer():
    with pytest.raises(ArchitectureError, match="MaxPool.*raw input"):
        NNGPKernel(A.Serial(A.MaxPool(2), A.Dense()), input_shape=(1, 4))
    with pytest.raises(ArchitectureError, match="larger than the input"):
        NNGPKernel(A.Serial(A.Conv(1), A.MaxPool(5), A.Dense()), input_shape=(1, 4))
    with pytest.raises(ArchitectureError, match="MaxPool"):
        NNGPKernel(A.Serial(A.Conv(1), A.MaxPool(2), A.ReLU(), A.Dense()), input_shape=(1, 4))


def test_hyperparameter_gradients_match_finite_differences():
    """The QMC estimate is a fixed, piecewise-smooth function of the covariances: autograd through the recomputed
    chunks agrees with central differences in σw² (relative 1e-5)."""
    net = A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.MaxPool(3, stride=2, padding="same"), A.Flatten(),
                   A.Dense())
    x = _inputs(3, (2, 7), seed=4)
    k = NNGPKernel(net, input_shape=(2, 7), weight_var=W, bias_var=B).double()
    k(x).to_dense().sum().backward()
    grad = k.raw_weight_var.grad.clone()

    def total(raw):
        with torch.no_grad():
            k.raw_weight_var.fill_(raw)
            return float(k(x).to_dense().sum())

    raw = float(k.raw_weight_var)
    h = 1e-5
    fd = (total(raw + h) - total(raw - h)) / (2 * h)
    total(raw)
    assert abs(float(grad) - fd) <= 1e-5 * abs(fd), (float(grad), fd)


@pytest.mark.slow
def test_calibration_and_power_over_seeds(check_rejection_rates):
    """Calibration: the correct MaxPool kernel is rejected in ≤ α + 3 binomial standard deviations of 120 seeds at
    α = 0.01. Power: the AvgPool kernel of the same network is rejected in ≥ 95% of 40 seeds at α = 0.01."""
    from verification.verify import rejection_counts

    net = A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.MaxPool(2), A.Flatten(), A.Dense())
    avg = A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.AvgPool(2), A.Flatten(), A.Dense())
    shape, alpha, seeds, power_seeds = (2, 8), 0.01, 120, 40
    x = _inputs(5, shape).float()
    right = NNGPKernel(net, input_shape=shape, weight_var=W, bias_var=B).double()(x.double()).to_dense().detach()
    wrong = NNGPKernel(avg, input_shape=shape, weight_var=W, bias_var=B).double()(x.double()).to_dense().detach()
    false_alarms, detections = rejection_counts(net, x, right, wrong, seeds=seeds, power_seeds=power_seeds,
                                                alpha=alpha, networks=256, width=256, first_seed=30_000, weight_var=W,
                                                bias_var=B, input_shape=shape)
    check_rejection_rates("MaxPool (power vs AvgPool)", false_alarms, seeds, detections, power_seeds, alpha)

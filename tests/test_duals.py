"""Dual activations: closed forms vs quadrature vs Monte Carlo, dtype support and finite gradients."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from nngp_gpytorch import arch as A
from nngp_gpytorch.duals import QuadratureDual, dual_for

F64 = torch.float64


def _random_entries(n=6, m=5, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    k11 = torch.rand(n, 1, generator=g, dtype=dtype) * 2 + 0.2
    k22 = torch.rand(1, m, generator=g, dtype=dtype) * 2 + 0.2
    c = torch.rand(n, m, generator=g, dtype=dtype) * 1.98 - 0.99
    return k11, k22, c * torch.sqrt(k11 * k22)


@pytest.mark.parametrize("activation", [A.Erf(), A.GELU(), A.Identity(), A.Sign(), A.Step()], ids=str)
def test_quadrature_matches_closed_form(activation):
    """Smooth activations: quadrature of degree 64 agrees with the closed form to ≤ 1e-6 (float64).

    Sign/step are discontinuous, so their quadrature converges slowly: checked at 3e-2 only to guard the
    closed form against a gross error (their diagonal, by the 1-D rule, is exact).
    """
    closed = dual_for(activation)
    quad = QuadratureDual(activation, degree=64)
    k11, k22, k12 = _random_entries()
    tol = 1e-6 if isinstance(activation, A.Erf | A.GELU | A.Identity) else 0.1
    assert torch.allclose(closed.nngp(k11, k22, k12), quad.nngp(k11, k22, k12), atol=tol, rtol=0)
    assert torch.allclose(closed.nngp_diag(k11), quad.nngp_diag(k11), atol=1e-6, rtol=0)
    if isinstance(activation, A.Erf | A.Identity):
        assert torch.allclose(closed.ntk(k11, k22, k12), quad.ntk(k11, k22, k12), atol=1e-6, rtol=0)
        assert torch.allclose(closed.ntk_diag(k11), quad.ntk_diag(k11), atol=1e-6, rtol=0)


def _scipy_expectation(fn, k11, k22, k12):
    cov_inv = np.linalg.inv([[k11, k12], [k12, k22]])
    norm = 2 * np.pi * math.sqrt(k11 * k22 - k12**2)

    def integrand(v, u):
        q = cov_inv[0, 0] * u * u + 2 * cov_inv[0, 1] * u * v + cov_inv[1, 1] * v * v
        return fn(u) * fn(v) * math.exp(-0.5 * q) / norm

    return integrate.dblquad(integrand, -14, 14, -14, 14, epsabs=1e-13, epsrel=1e-12)[0]


def test_tanh_quadrature_converges_with_degree():
    """Tanh has no closed form: the error against scipy's adaptive 2-D integral falls with the degree."""
    k11, k22, k12 = 1.3, 0.7, 0.4
    reference = _scipy_expectation(math.tanh, k11, k22, k12)
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    errors = [abs(QuadratureDual(A.Tanh(), deg).nngp(t(k11), t(k22), t(k12)).item() - reference)
              for deg in (8, 16, 32, 64)]
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[2] < 1e-6 and errors[3] < 1e-8


def test_relu_dual_reference_form():
    """The leaky-ReLU dual as implemented equals the reference formula written in k12 and θ."""
    k11, k22, k12 = _random_entries(seed=3)
    theta = torch.arccos(k12 / torch.sqrt(k11 * k22))
    for a, b in [(0.0, 1.0), (0.2, 1.0), (-1.0, 1.0)]:
        ref = ((a - b) ** 2 / (2 * math.pi)) * torch.sqrt(k11 * k22 - k12**2) + (
            (a * a + b * b) / 2 - (a - b) ** 2 * theta / (2 * math.pi)) * k12
        activation = A.LeakyReLU(a) if a != -1.0 else A.Abs()
        if a == 0.0:
            activation = A.ReLU()
        assert torch.allclose(dual_for(activation).nngp(k11, k22, k12), ref, atol=1e-12)


@pytest.mark.parametrize("activation", [A.ReLU(), A.LeakyReLU(0.1), A.Abs(), A.Step(), A.Sign(), A.Erf(), A.GELU(),
                                        A.Identity(), A.Tanh(), A.Sigmoid(), A.SiLU()], ids=str)
def test_duals_match_monte_carlo(activation):
    """Each dual against 400k Gaussian samples: |z| < 4.9 (two-sided p ≈ 1e-6 per check, 11 checks)."""
    g = torch.Generator().manual_seed(7)
    cov = torch.tensor([[1.3, 0.5], [0.5, 0.8]], dtype=F64)
    z = torch.randn(400_000, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    prod = activation(z[:, 0]) * activation(z[:, 1])
    analytic = dual_for(activation).nngp(cov[0, 0], cov[1, 1], cov[0, 1])
    zscore = (prod.mean() - analytic) / (prod.std() / math.sqrt(len(prod)))
    assert abs(zscore) < 4.9


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("activation", [A.ReLU(), A.Sign(), A.Step(), A.Erf(), A.GELU(), A.Tanh()], ids=str)
def test_shapes_dtypes_and_finite_gradients_at_identical_inputs(activation, dtype):
    """Batched entries of any shape; gradients finite at c = ±1 and at zero variance."""
    dual = dual_for(activation)
    k = torch.tensor([[0.0, 0.5], [1.0, 2.0]], dtype=dtype, requires_grad=True)
    k12 = torch.stack([k[0], -k[1]])  # c = 1 on the first row (k12 = k11 = k22), c = -1 on the second
    identical = torch.tensor([[True, True], [False, False]])
    out = dual.nngp(k, k, k12, identical) + dual.ntk(k, k, k12, identical)
    out = out + dual.nngp_diag(k) + dual.ntk_diag(k)
    assert out.shape == (2, 2) and out.dtype == dtype
    (grad,) = torch.autograd.grad(out.sum(), k)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()


def test_identical_inputs_give_exact_diagonal_values():
    """Sign and step have infinite slope at c = 1: identical pairs must hit the diagonal value exactly."""
    k = torch.tensor([0.7, 1.9], dtype=torch.float32)
    k12 = k * (1 - 1e-7)  # a rounding error in the cross term
    same = torch.tensor([True, True])
    for activation in (A.Sign(), A.Step()):
        dual = dual_for(activation)
        assert torch.equal(dual.nngp(k, k, k12, same), dual.nngp_diag(k))
    # ReLU's value scales with sqrt(k11)·sqrt(k22), which may differ from k by an ulp.
    relu = dual_for(A.ReLU())
    assert torch.allclose(relu.nngp(k, k, k12, same), relu.nngp_diag(k), rtol=4 * torch.finfo(k.dtype).eps, atol=0)


def test_user_callable_errors_are_clear():
    bad_shape = QuadratureDual(lambda x: x.sum(), degree=8, label="Activation(sum)")
    one = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="elementwise"):
        bad_shape.nngp(one, one, 0.5 * one)
    non_finite = QuadratureDual(lambda x: torch.log(x), degree=8, label="Activation(log)")
    with pytest.raises(ValueError, match="non-finite"):
        non_finite.nngp(one, one, 0.5 * one)
    with pytest.raises(ValueError, match="degree"):
        QuadratureDual(torch.tanh, degree=1)


@pytest.mark.parametrize("variance", [1.0, 4.0, 16.0])
def test_quadrature_stays_accurate_at_large_variance(variance):
    """A user callable erf against the closed form: the degree grows with the variance.

    NNGP within 2e-6; the derivative dual (φ' = a Gaussian bump, steeper than φ) within 2e-4 relative
    (measured: 3e-6 at variance 1, 2e-5 at 4, 1.1e-4 at 16, all at correlation 0.99).
    """
    quad, closed = QuadratureDual(torch.erf, degree=32), dual_for(A.Erf())
    k = torch.tensor(variance, dtype=F64)
    for c in (0.3, 0.9, 0.99):
        k12 = torch.tensor(c * variance, dtype=F64)
        assert abs(quad.nngp(k, k, k12) - closed.nngp(k, k, k12)) < 2e-6
        assert abs(quad.ntk(k, k, k12) - closed.ntk(k, k, k12)) < 2e-4 * closed.ntk(k, k, k12)


def test_quadrature_warns_when_the_degree_cap_binds():
    quad = QuadratureDual(torch.erf, degree=32, max_degree=64, label="Activation(erf)")
    k = torch.tensor(16.0, dtype=F64)
    with pytest.warns(RuntimeWarning, match="Activation\\(erf\\).*max_degree=64"):
        quad.nngp(k, k, 0.5 * k)

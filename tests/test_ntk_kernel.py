"""Analytic NTK Θ: gradients, Θ ⪰ K on the diagonal, positive semidefiniteness, clear errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate, kernel_rule
from nngp_gpytorch.arch import ArchitectureError
from nngp_gpytorch.kernels import NNGPKernel, NTKKernel

ACTIVATIONS = [A.ReLU(), A.LeakyReLU(0.2), A.Abs(), A.Erf(), A.GELU(), A.Tanh(), A.Identity(), A.SiLU()]


def _theta(arch, x1, x2, w, b, degree=None):
    return evaluate(arch, x1, x2, Hyperparameters(w, b), with_ntk=True, quadrature_degree=degree)


@pytest.mark.parametrize("act", [A.ReLU(), A.Erf(), A.GELU(), A.LeakyReLU(0.1), A.Tanh()])
def test_gradcheck_hyperparameters_and_inputs_including_identical_pairs(act):
    arch = A.Serial(A.Dense(), act, A.Dense(), act, A.Dense())
    deg = 8  # quadrature activations (GELU, tanh): a low degree keeps gradcheck fast; accuracy is not tested here
    fast = isinstance(act, A.GELU | A.Tanh)  # ~50 ms per evaluation (torch.func φ'): random-projection gradcheck
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x2 = torch.cat([x[:2], torch.randn(1, 2, generator=g, dtype=torch.float64)])  # rows 0, 1 shared: x == x'
    w = torch.tensor([1.3], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w_, b_: _theta(arch, x, x2, w_, b_, deg)[1], (w, b), fast_mode=fast)
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: _theta(arch, a, a, w.detach(), b.detach(), deg)[1], (xr,), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda a: _theta(arch, a, x2, w.detach(), b.detach(), deg)[1], (xr,),
                                    fast_mode=fast)
    # diagonal layout: every pair identical
    assert torch.autograd.gradcheck(
        lambda a: evaluate(arch, a, a, Hyperparameters(w, b), diag=True, with_ntk=True, quadrature_degree=deg)[1],
        (xr,), fast_mode=fast)


@st.composite
def mlps(draw):
    depth = draw(st.integers(1, 3))
    layers = [A.Dense()]
    for _ in range(depth):
        layers += [draw(st.sampled_from(ACTIVATIONS)), A.Dense()]
    slots = depth + 1
    w = draw(st.lists(st.floats(0.3, 2.5), min_size=slots, max_size=slots))
    b = draw(st.lists(st.floats(0.0, 0.8), min_size=slots, max_size=slots))
    n = draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2**16))
    return A.Serial(*layers), torch.tensor(w, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), n, seed


@settings(max_examples=25, deadline=None)
@given(mlps())
def test_theta_psd_and_dominates_k_on_diagonal(case):
    arch, w, b, n, seed = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x[-1] = x[0]  # a duplicated point
    K, T = _theta(arch, x, x, w, b)
    assert torch.isfinite(T).all()
    torch.testing.assert_close(T, T.T)
    scale = float(T.diagonal().max())
    assert float(torch.linalg.eigvalsh(T).min()) >= -1e-9 * scale
    assert (T.diagonal() >= K.diagonal() - 1e-12 * scale).all()
    # the diagonal layout agrees with the full matrix
    _, Td = evaluate(arch, x, x, Hyperparameters(w, b), diag=True, with_ntk=True)
    torch.testing.assert_close(Td, T.diagonal())


def test_relu_closed_form_against_hand_recursion():
    """Depth-2 ReLU, σw² = 1, σb² = 0.1, unit-norm inputs: Θ_ii = 1.025 (kernels.md NTK recursion)."""
    x = torch.ones(1, 4, dtype=torch.float64)
    K, T = _theta(A.mlp(2, A.ReLU()), x, x, torch.tensor([1.0], dtype=torch.float64),
                  torch.tensor([0.1], dtype=torch.float64))
    torch.testing.assert_close(K, torch.tensor([[0.425]], dtype=torch.float64))
    torch.testing.assert_close(T, torch.tensor([[1.025]], dtype=torch.float64))


def test_one_pass_gives_both_kernels():
    kernel = NTKKernel(A.mlp(2, A.Erf())).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        K, T = kernel.nngp_and_ntk(x)
        torch.testing.assert_close(T, kernel(x).to_dense())
        nngp = NNGPKernel(A.mlp(2, A.Erf())).double()
        torch.testing.assert_close(K, nngp(x).to_dense())


@dataclass(frozen=True)
class _NoNTKLayer(A.Layer):
    """Stand-in for a layer without an NTK (batch norm): identity on the NNGP."""

    has_ntk = False

    def propagate(self, signal, path):
        return signal


kernel_rule(_NoNTKLayer)(lambda layer, state, ctx: state)


def test_layer_without_ntk_is_a_clear_error_naming_it():
    arch = A.Serial(A.Dense(), _NoNTKLayer(), A.ReLU(), A.Dense())
    x = torch.randn(4, 3)
    assert NNGPKernel(arch)(x).to_dense().shape == (4, 4)
    with pytest.raises(ArchitectureError, match="_NoNTKLayer.*no neural tangent kernel"):
        NTKKernel(arch)(x).to_dense()


def test_user_callable_without_autograd_derivative_is_a_clear_error():
    x = torch.randn(4, 3)
    numpy_tanh = A.Serial(A.Dense(), A.Activation(lambda t: torch.from_numpy(np.tanh(t.detach().numpy())),
                                                  name="numpy_tanh"), A.Dense())
    detached = A.Serial(A.Dense(), A.Activation(lambda t: torch.tanh(t.detach()), name="detached"), A.Dense())
    assert NNGPKernel(numpy_tanh)(x).to_dense().shape == (4, 4)
    with pytest.raises(ValueError, match="numpy_tanh.*autograd"):
        NTKKernel(numpy_tanh)(x).to_dense()
    with pytest.raises(ValueError, match="autograd cannot give the derivative of Activation\\(detached\\)"):
        NTKKernel(detached)(x).to_dense()


def test_user_callable_with_autograd_matches_named_activation():
    # unit-variance inputs: quadrature of erf' = (2/√π)e^{-x²} loses accuracy at large variances (steep integrand)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x / x.norm(dim=-1, keepdim=True) * 3**0.5
    a = NTKKernel(A.mlp(2, A.Activation(torch.erf, name="erf"))).double()
    b = NTKKernel(A.mlp(2, A.Erf())).double()
    with torch.no_grad():
        # quadrature vs closed form: ~1e-4 near correlation 1 at the default degree (duals/quadrature.py)
        torch.testing.assert_close(a(x).to_dense(), b(x).to_dense(), rtol=3e-4, atol=1e-6)


def test_ntk_kernel_diag_tiling_batch_and_priors_behave_like_nngp():
    import gpytorch

    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    arch = A.mlp(2, A.ReLU())
    plain = NTKKernel(arch, bias_var=0.1).double()
    tiled = NTKKernel(arch, bias_var=0.1, block_size=3).double()
    with torch.no_grad():
        full = plain(x).to_dense()
        torch.testing.assert_close(tiled(x).to_dense(), full)
        torch.testing.assert_close(plain(x, diag=True), full.diagonal())
    batched = NTKKernel(arch, per_layer=True, batch_shape=torch.Size([2]),
                        weight_var_prior=gpytorch.priors.GammaPrior(2.0, 2.0)).double()
    with torch.no_grad():
        out = batched(x).to_dense()
    assert out.shape == (2, 7, 7)
    assert any(name.startswith("weight_var_prior") for name, *_ in batched.named_priors())
    # gradients reach the hyperparameters through Θ
    plain(x).to_dense().sum().backward()
    assert plain.raw_weight_var.grad is not None and torch.isfinite(plain.raw_weight_var.grad).all()

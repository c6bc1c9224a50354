"""NNGPKernel / NTKKernel on MLPs: values, PSD, gradients, diag, batches, per-layer variances."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate

F64 = torch.float64
ACTIVATIONS = [A.ReLU(), A.LeakyReLU(0.2), A.Abs(), A.Erf(), A.Step(), A.Sign(), A.GELU(), A.Identity(), A.Tanh(),
               A.Sigmoid(), A.SiLU()]


def _double(kernel, weight_var, bias_var):
    """Move to float64 first, then set the variances (so they are not rounded to float32 on the way)."""
    kernel = kernel.double()
    kernel.weight_var, kernel.bias_var = weight_var, bias_var
    return kernel


def _inputs(n=7, d=3, seed=0, dtype=F64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_relu_mlp_matches_arc_cosine_recursion():
    """Depth-2 ReLU MLP against the arc-cosine recursion written out by hand (Cho & Saul 2009)."""
    x = _inputs()
    w, b = 1.7, 0.3
    k = w * x @ x.T / x.shape[1] + b
    for _ in range(2):
        d = torch.sqrt(torch.diagonal(k))
        c = (k / torch.outer(d, d)).clamp(-1, 1)
        theta = torch.arccos(c)
        k = w * torch.outer(d, d) * (torch.sin(theta) + (math.pi - theta) * c) / (2 * math.pi) + b
    kernel = _double(NNGPKernel(A.mlp(2, A.ReLU())), w, b)
    assert torch.allclose(kernel(x).to_dense(), k, atol=1e-12)


def test_linear_kernel_convention():
    """depth 0: K = σw²·x·x'/d + σb² (the documented input covariance)."""
    x1, x2 = _inputs(4), _inputs(5, seed=1)
    kernel = _double(NNGPKernel(A.mlp(0)), 2.5, 0.4)
    assert torch.allclose(kernel(x1, x2).to_dense(), 2.5 * x1 @ x2.T / 3 + 0.4, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_diag_equals_diagonal_of_full_matrix(activation):
    x = _inputs()
    for cls in (NNGPKernel, NTKKernel):
        kernel = cls(A.mlp(2, activation), weight_var=1.3, bias_var=0.2).double()
        full = kernel(x).to_dense()
        assert torch.allclose(kernel(x, diag=True), torch.diagonal(full), atol=1e-10)


@given(
    depth=st.integers(0, 4),
    activation=st.sampled_from(ACTIVATIONS),
    weight_var=st.floats(0.2, 4.0),
    bias_var=st.floats(0.0, 2.0),
    n=st.integers(1, 12),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    duplicate=st.booleans(),
)
def test_kernel_is_positive_semidefinite(depth, activation, weight_var, bias_var, n, d, seed, duplicate):
    """min eigenvalue ≥ −1e-8·trace (float64) for NNGP and NTK, including duplicate and zero inputs."""
    x = _inputs(n, d, seed)
    if duplicate and n > 2:
        x[1] = x[0]
        x[2] = 0.0
    k, t = evaluate(A.mlp(depth, activation), x, x, Hyperparameters.constant(weight_var, bias_var), with_ntk=True)
    for mat in (k, t):
        assert torch.isfinite(mat).all()
        assert torch.allclose(mat, mat.T, atol=1e-12)
        assert torch.linalg.eigvalsh(mat).min() >= -1e-8 * torch.trace(mat)
    assert (torch.diagonal(t) >= torch.diagonal(k) - 1e-12).all()  # Θ ⪰ K on the diagonal


@pytest.mark.parametrize("activation", [A.ReLU(), A.Erf(), A.GELU(), A.Tanh(), A.Abs()], ids=str)
def test_gradcheck_hyperparameters_and_inputs(activation):
    """torch.autograd.gradcheck for σw², σb² and the inputs, with x1 == x2 (the kernel's diagonal)."""
    x = _inputs(4, 3).requires_grad_(True)
    arch = A.mlp(2, activation)

    def kernel_of(w, b, inputs):
        k, t = evaluate(arch, inputs, inputs, Hyperparameters(w, b), with_ntk=True)
        return k, t

    w = torch.tensor([1.4], dtype=F64, requires_grad=True)
    b = torch.tensor([0.3], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(kernel_of, (w, b, x), atol=1e-6, rtol=1e-4)


def test_gradient_is_finite_for_sign_and_step_on_identical_inputs():
    x = _inputs(5, 2)
    x[1] = x[0]
    for activation in (A.Sign(), A.Step()):
        kernel = NNGPKernel(A.mlp(3, activation), weight_var=1.5, bias_var=0.2).double()
        kernel(x).to_dense().sum().backward()
        assert torch.isfinite(kernel.raw_weight_var.grad).all() and torch.isfinite(kernel.raw_bias_var.grad).all()


def test_identical_inputs_give_the_exact_diagonal_in_float32():
    """A depth-4 sign MLP: an identical pair must equal the variance, not drift by sqrt(rounding)."""
    x = _inputs(6, 5, dtype=torch.float32) * 3
    x = torch.cat([x, x[:2]])
    kernel = NNGPKernel(A.mlp(4, A.Sign()), weight_var=1.0, bias_var=0.0)
    k = kernel(x).to_dense()
    assert torch.equal(k[6, 0], k[0, 0]) and torch.equal(k[7, 1], k[1, 1])


def test_batch_shape_and_batched_inputs():
    x = torch.randn(2, 5, 3, dtype=F64)
    kernel = NNGPKernel(A.mlp(2, A.Erf()), batch_shape=torch.Size([2])).double()
    kernel.weight_var = torch.tensor([[1.0], [2.0]])
    batched = kernel(x).to_dense()
    assert batched.shape == (2, 5, 5)
    for i, w in enumerate((1.0, 2.0)):
        single = NNGPKernel(A.mlp(2, A.Erf()), weight_var=w).double()
        assert torch.allclose(batched[i], single(x[i]).to_dense(), atol=1e-12)


def test_per_layer_variances_match_fixed_layers():
    x = _inputs()
    per_layer = _double(NNGPKernel(A.mlp(2, A.ReLU()), per_layer=True), [1.0, 2.0, 0.5], [0.1, 0.2, 0.3])
    fixed = A.Serial(A.Dense(1.0, 0.1), A.ReLU(), A.Dense(2.0, 0.2), A.ReLU(), A.Dense(0.5, 0.3))
    k_fixed, _ = evaluate(fixed, x, x, Hyperparameters.constant())
    assert per_layer.weight_var.shape == (3,)
    assert torch.allclose(per_layer(x).to_dense(), k_fixed, atol=1e-12)


def test_active_dims_and_block_size_do_not_change_values():
    x = _inputs(9, 5)
    plain = NNGPKernel(A.mlp(3, A.Tanh())).double()
    sliced = NNGPKernel(A.mlp(3, A.Tanh()), active_dims=[0, 2, 4]).double()
    assert torch.allclose(sliced(x).to_dense(), plain(x[:, [0, 2, 4]]).to_dense(), atol=1e-12)
    blocked = NNGPKernel(A.mlp(3, A.Tanh()), block_size=2).double()
    assert torch.allclose(blocked(x).to_dense(), plain(x).to_dense(), atol=1e-12)


def test_nngp_and_ntk_from_one_pass():
    x1, x2 = _inputs(4), _inputs(6, seed=3)
    arch = A.mlp(3, A.GELU())
    k, t = NNGPKernel(arch).double().nngp_and_ntk(x1, x2)
    assert torch.allclose(k, NNGPKernel(arch).double()(x1, x2).to_dense(), atol=1e-12)
    assert torch.allclose(t, NTKKernel(arch).double()(x1, x2).to_dense(), atol=1e-12)


def test_ntk_of_relu_mlp_matches_hand_recursion():
    """Θ^{l+1} = K^{l+1} + σw²·V_ReLU'(K^l)·Θ^l with V_ReLU' = (π − θ)/(2π) (Jacot et al. 2018)."""
    x = _inputs()
    w, b = 2.0, 0.1
    k = w * x @ x.T / 3 + b
    t = k.clone()
    for _ in range(2):
        d = torch.sqrt(torch.diagonal(k))
        c = (k / torch.outer(d, d)).clamp(-1, 1)
        theta = torch.arccos(c)
        dk = (math.pi - theta) / (2 * math.pi)
        k = w * torch.outer(d, d) * (torch.sin(theta) + (math.pi - theta) * c) / (2 * math.pi) + b
        t = k + w * dk * t
    assert torch.allclose(_double(NTKKernel(A.mlp(2)), w, b)(x).to_dense(), t, atol=1e-10)


@pytest.mark.parametrize("activation", [A.ReLU(), A.Erf(), A.GELU(), A.Sign(), A.Step()], ids=str)
def test_kernel_module_agrees_with_monte_carlo(activation):
    """The GPyTorch module's matrix against 256 random width-4096 networks (Holm t-tests, α = 1e-4)."""
    from verification import default_inputs, verify

    x = default_inputs(k=6, d=4)
    kernel = _double(NNGPKernel(A.mlp(2, activation)), 1.6, 0.2)
    with torch.no_grad():
        analytic = kernel(x).to_dense()
    result = verify(A.mlp(2, activation), x, weight_var=1.6, bias_var=0.2, seed=11, analytic=analytic)
    assert result.passed, result.summary()


@pytest.mark.parametrize("activation", [A.ReLU(), A.Erf(), A.Tanh(), A.Sign()], ids=str)
def test_float32_deep_kernel_with_duplicates_is_symmetric_finite_and_psd(activation):
    """Peers' users report NaN and non-PSD float32 kernels: depth 8, 20 duplicated rows, float32."""
    x = _inputs(120, 10, seed=5, dtype=torch.float32)
    x = torch.cat([x, x[:20]])
    with torch.no_grad():
        k = NNGPKernel(A.mlp(8, activation), weight_var=2.0, bias_var=0.05)(x).to_dense()
    assert torch.isfinite(k).all() and torch.equal(k, k.T)
    eig = torch.linalg.eigvalsh(k.double())
    assert eig.min() >= -1e-6 * eig.sum()  # float32 rounding (eps ≈ 1.2e-7) scale, not a sqrt(eps) defect

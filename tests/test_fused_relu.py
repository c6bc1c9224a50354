"""The fused ReLU layer (nngp_gpytorch/duals/fused.py) against the generic autograd path it replaces.

The generic path is :class:`~nngp_gpytorch.duals.closed_form.LeakyReLUDual` through
:func:`~nngp_gpytorch.duals.safe_math.correlation` with autograd; the fused path is switched off by making
its entry points decline (``relu_nngp``/``relu_nngp_ntk`` return ``None`` for layouts they do not handle).
"""

import math

import pytest
import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate, fuse_relu_chains
from nngp_gpytorch.algebra.fusion import ReLUChain
from nngp_gpytorch.algebra.state import identical_rows
from nngp_gpytorch.duals import LeakyReLUDual, closed_form, dense_maps, fused
from nngp_gpytorch.duals.safe_math import arccos_kernel_j1, correlation

F64, F32 = torch.float64, torch.float32


@pytest.fixture
def generic(monkeypatch):
    """Context in which the ReLU layers take the generic (unfused) path."""

    class _Switch:
        def __enter__(self):
            monkeypatch.setattr(closed_form, "relu_nngp", lambda *a, **k: None)
            monkeypatch.setattr(closed_form, "relu_nngp_ntk", lambda *a, **k: None)

        def __exit__(self, *exc):
            monkeypatch.undo()

    return _Switch()


def _awkward_inputs(n=9, d=4, dtype=F64, seed=0):
    """Random rows plus the edge cases: a duplicated row, a zero row, a parallel and an antiparallel pair."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x[1] = x[0]  # duplicate: c = 1 by the identical mask
    x[2] = 0.0  # zero norm
    x[3] = 2.0 * x[4]  # parallel: c = 1 up to rounding (clamped or snapped)
    x[5] = -3.0 * x[6]  # antiparallel: c = −1 up to rounding
    return x


def _evaluate(x1, x2, w, b, depth=3, with_ntk=False):
    return evaluate(A.mlp(depth, A.ReLU()), x1, x2, Hyperparameters(w, b), with_ntk=with_ntk)


def _hyper(dtype, w=1.7, b=0.2):
    return (torch.tensor([w], dtype=dtype, requires_grad=True), torch.tensor([b], dtype=dtype, requires_grad=True))


# --- values ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_ntk", [False, True], ids=["nngp", "ntk"])
@pytest.mark.parametrize("bias", [0.2, 0.0], ids=["bias", "no-bias"])
@pytest.mark.parametrize("same", [True, False], ids=["x1-is-x2", "x1-vs-x2"])
def test_values_match_the_generic_path_in_float64(generic, with_ntk, bias, same):
    x1 = _awkward_inputs()
    x2 = x1 if same else torch.cat([x1[:4], _awkward_inputs(7, seed=1)])
    w, b = _hyper(F64, b=bias)
    k, t = _evaluate(x1, x2, w, b, with_ntk=with_ntk)
    with generic:
        k_ref, t_ref = _evaluate(x1, x2, w, b, with_ntk=with_ntk)
    torch.testing.assert_close(k, k_ref, rtol=1e-12, atol=1e-14)
    if with_ntk:
        torch.testing.assert_close(t, t_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("with_ntk", [False, True], ids=["nngp", "ntk"])
def test_values_match_the_generic_path_in_float32(generic, with_ntk):
    """Same operations up to the order of two products (``(α·s)·J1`` vs ``(J1·s)·α``) and ``addcmul`` for
    ``σw²·K + σb²``: a few ulps per layer, compounded over 3 layers and the NTK sum (tolerance: 64 ulps)."""
    x = _awkward_inputs(dtype=F32)
    w, b = _hyper(F32)
    k, t = _evaluate(x, x, w, b, with_ntk=with_ntk)
    with generic:
        k_ref, t_ref = _evaluate(x, x, w, b, with_ntk=with_ntk)
    tol = 64 * torch.finfo(F32).eps
    torch.testing.assert_close(k, k_ref, rtol=tol, atol=tol * k_ref.abs().max().item())
    if with_ntk:
        torch.testing.assert_close(t, t_ref, rtol=tol, atol=tol * t_ref.abs().max().item())


def test_matches_the_arc_cosine_formula_directly():
    """``(1/2π)·√(k11k22)·(sin θ + (π − θ)cos θ)`` (Cho & Saul 2009) on a hand-made block, edge cases included."""
    x = _awkward_inputs()
    k12 = x @ x.T / x.shape[1]
    k11 = (x * x).sum(-1, keepdim=True) / x.shape[1]
    same = identical_rows(x, x)
    v = fused.relu_nngp(k11, k11.mT, k12, same)
    c, s = correlation(k11, k11.mT, k12, same)
    theta = torch.arccos(c)
    ref = s * (torch.sin(theta) + (math.pi - theta) * c) / (2 * math.pi)
    torch.testing.assert_close(v, ref, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(torch.diagonal(v), k11[:, 0] / 2, rtol=4e-16, atol=0)  # c = 1: V = k/2
    assert torch.equal(v[1, 0], v[0, 0])  # the duplicate pair too


def test_output_is_exactly_symmetric_and_the_diagonal_exact_in_float32():
    x = _awkward_inputs(40, 6, dtype=F32)
    kernel = NNGPKernel(A.mlp(4), weight_var=1.6, bias_var=0.1)
    k = kernel(x).to_dense()
    assert torch.equal(k, k.mT)
    assert torch.equal(k[1, 0], k[0, 0])  # identical inputs give exactly the variance


@pytest.mark.parametrize("with_ntk", [False, True], ids=["nngp", "ntk"])
def test_chunking_does_not_change_values_or_gradients(monkeypatch, with_ntk):
    """Chunks of 1 row, and chunks with a partial last block, with a batch dimension."""
    x = torch.stack([_awkward_inputs(7, seed=0), _awkward_inputs(7, seed=3)])
    w = torch.tensor([[1.3], [2.1]], dtype=F64, requires_grad=True)
    b = torch.tensor([[0.1], [0.0]], dtype=F64, requires_grad=True)

    def run():
        k, t = evaluate(A.mlp(2, A.ReLU()), x, x, Hyperparameters(w, b), with_ntk=with_ntk)
        out = k if t is None else k + t
        return (out, *torch.autograd.grad((out * out).sum(), (w, b)))

    reference = run()
    for chunk in (1, 30):  # 1 row per chunk; 2 rows per chunk of 7 (last one partial)
        monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk)
        for got, want in zip(run(), reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)


# --- gradients -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_ntk", [False, True], ids=["nngp", "ntk"])
@pytest.mark.parametrize("bias", [0.2, 0.0], ids=["bias", "no-bias"])
def test_gradients_match_the_generic_path(generic, with_ntk, bias):
    """End-to-end gradients w.r.t. σw², σb² and the inputs, with duplicates, a zero row and (anti)parallel rows.

    At pinned entries (c = ±1) the two paths split the derivative differently between ``k12`` and the
    variances, but the total is the same: there ``∂c/∂x = 0`` (c is extremal), so ``∂k12/∂x = ∂s/∂x``.
    """
    x0 = _awkward_inputs()
    weights = torch.randn(9, 9, dtype=F64, generator=torch.Generator().manual_seed(5))

    def grads():
        x = x0.clone().requires_grad_(True)
        w, b = _hyper(F64, b=bias)
        k, t = _evaluate(x, x, w, b, with_ntk=with_ntk)
        out = (k * weights).sum() + (0.0 if t is None else (t * weights.mT).sum())
        return torch.autograd.grad(out, (w, b, x))

    got = grads()
    with generic:
        want = grads()
    for g, r in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9 * r.abs().max().item())


@pytest.mark.parametrize("with_ntk", [False, True], ids=["nngp", "ntk"])
def test_gradcheck_hyperparameters_and_inputs(with_ntk):
    """torch.autograd.gradcheck through the fused layers, x1 == x2 (its diagonal pinned at c = 1)."""
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)

    def kernel_of(w, b, inputs):
        k, t = _evaluate(inputs, inputs, w, b, depth=2, with_ntk=with_ntk)
        return k if t is None else (k, t)

    w, b = _hyper(F64, w=1.4, b=0.3)
    assert torch.autograd.gradcheck(kernel_of, (w, b, x), atol=1e-6, rtol=1e-4)


def test_gradcheck_with_duplicated_rows():
    """The NNGP is differentiable at duplicated inputs (c is maximal there, ∂c/∂x = 0): gradcheck passes although
    the perturbation breaks the identical-row mask. (The NTK's ReLU factor π − θ has a kink there, so no NTK.)"""
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    x[3] = x[1]
    x.requires_grad_(True)
    w, b = _hyper(F64, w=1.4, b=0.3)
    assert torch.autograd.gradcheck(lambda w, b, x: _evaluate(x, x, w, b, depth=2)[0], (w, b, x), atol=1e-6,
                                    rtol=1e-4)


@pytest.mark.parametrize("with_ntk", [False, True], ids=["nngp", "ntk"])
def test_zero_rows_without_bias_take_the_underflow_branch(generic, with_ntk):
    """σb² = 0 and a zero input: s = 0 in every layer. Gradients w.r.t. σw² pass gradcheck; input gradients are
    finite (|x| has a kink at 0, so no gradcheck there) and equal those of the generic path."""
    x0 = _awkward_inputs()
    b = torch.zeros(1, dtype=F64)

    def of_w(w):
        k, t = _evaluate(x0, x0, w, b, depth=2, with_ntk=with_ntk)
        return k if t is None else (k, t)

    w = torch.tensor([1.5], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(of_w, (w,), atol=1e-6, rtol=1e-4)

    def input_grad():
        x = x0.clone().requires_grad_(True)
        k, t = _evaluate(x, x, w, b, depth=2, with_ntk=with_ntk)
        return torch.autograd.grad(k.sum() + (0.0 if t is None else t.sum()), x)[0]

    got = input_grad()
    with generic:
        want = input_grad()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * want.abs().max().item())


def test_layer_gradients_match_autograd_away_from_pinned_entries():
    """∂V/∂k12 = (π − θ)/2π, ∂V/∂k11 = sin θ·√(k22/k11)/4π on a block with |c| < 1 everywhere."""
    x = torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(7))
    y = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(8))
    k12 = (x @ y.T / 4).requires_grad_(True)
    k11 = ((x * x).sum(-1, keepdim=True) / 4).requires_grad_(True)
    k22 = ((y * y).sum(-1, keepdim=True).mT / 4).requires_grad_(True)
    weights = torch.randn(6, 5, dtype=F64)
    got = torch.autograd.grad((fused.relu_nngp(k11, k22, k12) * weights).sum(), (k11, k22, k12))
    c, s = correlation(k11, k22, k12)
    want = torch.autograd.grad((s * arccos_kernel_j1(c) / (2 * math.pi) * weights).sum(), (k11, k22, k12))
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)
    theta = torch.arccos(c.detach())
    torch.testing.assert_close(got[2], weights * (math.pi - theta) / (2 * math.pi), rtol=1e-12, atol=1e-14)
    analytic11 = (weights * torch.sin(theta) * (k22 / k11).detach().sqrt() / (4 * math.pi)).sum(-1, keepdim=True)
    torch.testing.assert_close(got[0], analytic11, rtol=1e-12, atol=1e-14)


def test_identical_entries_are_pinned():
    """At an identical pair c stays 1 under any perturbation: ∂V/∂k12 = 0 and V = s/2 carries the gradient."""
    k11 = torch.tensor([[1.3], [0.7]], dtype=F64, requires_grad=True)
    k12 = torch.tensor([[1.3, 0.2], [0.2, 0.7]], dtype=F64, requires_grad=True)
    same = torch.eye(2, dtype=torch.bool)
    v = fused.relu_nngp(k11, k11.mT, k12, same)
    g11, g12 = torch.autograd.grad(v[0, 0], (k11, k12))
    assert g12[0, 0] == 0.0
    torch.testing.assert_close(g11[0, 0], torch.tensor(0.5, dtype=F64))  # V = √(k11·k11)/2 = k11/2


def test_second_derivatives_raise_instead_of_being_wrong():
    k11 = torch.tensor([[1.3], [0.7]], dtype=F64, requires_grad=True)
    k12 = torch.tensor([[1.3, 0.2], [0.2, 0.7]], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(fused.relu_nngp(k11, k11.mT, k12).sum(), (k12,), create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_other_layouts_fall_back():
    """Diagonal layout (``diag=True``) and leaky ReLU use the generic path; values agree with the full matrix."""
    k = torch.rand(5, dtype=F64)
    assert fused.relu_nngp(k, k, k * 0.5) is None
    x = _awkward_inputs()
    kernel = NNGPKernel(A.mlp(2), weight_var=1.2, bias_var=0.3).double()
    torch.testing.assert_close(kernel(x, diag=True), torch.diagonal(kernel(x).to_dense()), rtol=1e-13, atol=0)
    assert LeakyReLUDual(0.1, 1.0).nngp(k[:, None], k[None], torch.outer(k, k) * 0.3).shape == (5, 5)


def test_ntk_kernel_module_uses_the_fused_layer_and_matches_the_nngp_kernel():
    x = _awkward_inputs(12, 5)
    ntk = NTKKernel(A.mlp(3), weight_var=1.5, bias_var=0.2).double()
    nngp = NNGPKernel(A.mlp(3), weight_var=1.5, bias_var=0.2).double()
    k, t = ntk.nngp_and_ntk(x)
    torch.testing.assert_close(k, nngp(x).to_dense(), rtol=0, atol=0)
    assert torch.equal(t, t.mT) and (torch.diagonal(t) >= torch.diagonal(k)).all()


# --- the dense layer -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (2, 1, 1)], ids=["scalar", "batched"])
def test_affine_gradcheck_and_gradgradcheck(shape):
    x = torch.randn(4, 5, dtype=F64, requires_grad=True)
    w = torch.rand(shape, dtype=F64).add(0.5).requires_grad_(True)
    b = torch.rand(shape, dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(dense_maps.affine, (x, w, b))
    assert torch.autograd.gradgradcheck(dense_maps.affine, (x, w, b))


def test_affine_chunked_weight_gradient_equals_the_plain_sum(monkeypatch):
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 3)  # dot products over chunks of 12 entries, last one partial
    x = torch.randn(7, 9, dtype=F64, requires_grad=True)
    w = torch.tensor([[1.7]], dtype=F64, requires_grad=True)
    b = torch.tensor([[0.1]], dtype=F64, requires_grad=True)
    g = torch.randn(7, 9, dtype=F64)
    got = torch.autograd.grad(dense_maps.affine(x, w, b), (x, w, b), g)
    want = torch.autograd.grad(w * x + b, (x, w, b), g)
    for a, r in zip(got, want, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-13, atol=1e-13)


# --- the final symmetrization of K(X, X) -------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 5), (2, 130, 130), (257, 257)], ids=["small", "batched", "blocks"])
def test_symmetrize_equals_the_plain_average_bit_for_bit(shape):
    k = torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    got, want = dense_maps.symmetrize(k), (k + k.mT) / 2
    assert torch.equal(got, want) and torch.equal(got, got.mT)
    g = torch.randn(*shape, dtype=F64)
    torch.testing.assert_close(torch.autograd.grad(got, k, g)[0], torch.autograd.grad(want, k, g)[0], rtol=0,
                               atol=1e-15)


def test_symmetrize_gradcheck_and_passthrough_of_symmetric_input():
    k = torch.randn(6, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(dense_maps.symmetrize, (k,))
    assert torch.autograd.gradgradcheck(dense_maps.symmetrize, (k,))
    sym = torch.randn(300, 300, dtype=F64)
    sym = sym + sym.mT
    assert dense_maps.is_exactly_symmetric(sym) and dense_maps.symmetrize(sym) is sym
    sym[299, 0] += 1.0  # a single asymmetric pair, in the last block
    assert not dense_maps.is_exactly_symmetric(sym)


# --- the ReLU fusion pass (algebra/fusion.py): Dense → ReLU → ... → Dense as one rule ------------------------------
class _LayerByLayer(torch.nn.Module):
    """The same kernel evaluated without the optimization passes (each layer's own rule)."""

    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel

    def forward(self, x1, x2=None):
        same = x2 is None or x2 is x1
        x2 = x1 if x2 is None else x2
        k = evaluate(self.kernel.architecture, x1, x2, self.kernel.hyperparameters_for_algebra(),
                     optimize=False)[0]
        # the kernel's own last step for K(X, X): BLAS may round x·x'ᵀ and x'·xᵀ differently on some CPUs
        return dense_maps.symmetrize(k) if same else k


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("bias", [0.2, 0.0], ids=["bias", "no-bias"])
def test_mlp_kernel_chain_equals_the_layer_by_layer_algebra(dtype, bias):
    """Same operations in the same order (the dense map computed chunk by chunk): equal bit for bit."""
    x = _awkward_inputs(11, dtype=dtype)
    fused_k = NNGPKernel(A.mlp(3), weight_var=1.7, bias_var=bias).to(dtype)
    plain_k = NNGPKernel(A.mlp(3), weight_var=1.7, bias_var=bias).to(dtype)
    assert isinstance(fuse_relu_chains(fused_k.architecture), ReLUChain)
    for x2 in (x, x[:5]):
        assert torch.equal(fused_k(x, x2).to_dense(), _LayerByLayer(plain_k)(x, x2))
    weights = torch.randn(11, 11, dtype=dtype, generator=torch.Generator().manual_seed(3))
    grads = []
    for kernel, run in ((fused_k, lambda k, xi: k(xi).to_dense()), (plain_k, lambda k, xi: _LayerByLayer(k)(xi))):
        xi = x.clone().requires_grad_(True)
        (run(kernel, xi) * weights).sum().backward()
        grads.append((xi.grad, kernel.raw_weight_var.grad, kernel.raw_bias_var.grad))
    tol = 1e-12 if dtype == F64 else 1e-5  # float32: the σ gradients are sums of 121 terms in another order
    for g, r in zip(*grads, strict=True):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol * r.abs().max().item())


def test_mlp_kernel_chain_with_batches_and_per_layer_variances():
    x = torch.randn(2, 9, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    x[:, 1] = x[:, 0]
    w = torch.tensor([[1.0, 1.5, 2.0], [2.0, 1.2, 0.7]], dtype=F64)
    b = torch.tensor([[0.1, 0.0, 0.3], [0.2, 0.4, 0.0]], dtype=F64)
    kernels = [NNGPKernel(A.mlp(2), batch_shape=torch.Size([2]), per_layer=True).double(),
               NNGPKernel(A.mlp(2), batch_shape=torch.Size([2]), per_layer=True).double()]
    for kernel in kernels:
        kernel.weight_var, kernel.bias_var = w, b
    runs = (lambda inputs: kernels[0](inputs).to_dense(), _LayerByLayer(kernels[1]))
    for inputs in (x, x[0]):
        got, want = (run(inputs) for run in runs)
        assert got.shape == (2, 9, 9) and torch.equal(got, want)
    for run in runs:
        run(x).square().sum().backward()
    torch.testing.assert_close(kernels[0].raw_weight_var.grad, kernels[1].raw_weight_var.grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(kernels[0].raw_bias_var.grad, kernels[1].raw_bias_var.grad, rtol=1e-12, atol=0)


def test_mlp_kernel_chain_gradcheck_inputs_and_hyperparameters():
    """gradcheck through the kernel's forward (the fused chain) w.r.t. the raw σw², σb² and the inputs, x1 == x2
    with a duplicated row."""
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(6))
    x[4] = x[0]
    kernel = NNGPKernel(A.mlp(2), weight_var=1.3, bias_var=0.2).double()

    def of(raw_w, raw_b, inputs):
        params = {"raw_weight_var": raw_w, "raw_bias_var": raw_b}
        return torch.func.functional_call(kernel, params, (inputs, inputs)).to_dense()

    raw = (kernel.raw_weight_var.detach().clone().requires_grad_(True),
           kernel.raw_bias_var.detach().clone().requires_grad_(True))
    assert torch.autograd.gradcheck(of, (*raw, x.requires_grad_(True)), atol=1e-6, rtol=1e-4)


def test_mlp_kernel_falls_back_for_other_activations_diag_and_blocks():
    x = _awkward_inputs()
    leaky = NNGPKernel(A.mlp(2, A.LeakyReLU(0.1)), weight_var=1.2, bias_var=0.3).double()
    assert fuse_relu_chains(leaky.architecture) is leaky.architecture  # nothing to fuse: the same tree
    relu = NNGPKernel(A.mlp(2), weight_var=1.2, bias_var=0.3).double()
    blocked = NNGPKernel(A.mlp(2), weight_var=1.2, bias_var=0.3, block_size=4).double()
    full = relu(x).to_dense()
    assert torch.equal(blocked(x).to_dense(), full)
    torch.testing.assert_close(relu(x, diag=True), torch.diagonal(full), rtol=1e-13, atol=0)


@pytest.mark.parametrize("with_ntk", [False, True], ids=["nngp", "ntk"])
def test_no_grad_evaluation_gives_the_same_values(with_ntk):
    """Without autograd θ is not kept for a backward pass (a chunk-sized temporary instead): same values."""
    x = _awkward_inputs(40, 5)
    kernel = (NTKKernel if with_ntk else NNGPKernel)(A.mlp(3), weight_var=1.4, bias_var=0.1).double()
    with torch.no_grad():
        quiet = kernel(x).to_dense()
    assert torch.equal(quiet, kernel(x).to_dense().detach())


def test_pair_indices_broadcast_over_batched_hyperparameters():
    """Identical pairs given as ``(nnz, 2)`` indices apply to every batch element of a batched output."""
    x = _awkward_inputs()
    k12 = x @ x.T / x.shape[1]
    k11 = (x * x).sum(-1, keepdim=True) / x.shape[1]
    w = torch.tensor([1.2, 2.0, 0.7], dtype=F64).reshape(3, 1, 1, 1).expand(3, 2, 1, 1)
    b = torch.tensor([0.1, 0.0], dtype=F64).reshape(1, 2, 1, 1)
    pre11 = torch.addcmul(b, w, k11)
    with_pairs = fused.relu_after_affine(k12, w, b, pre11, pre11.mT, torch.nonzero(identical_rows(x, x)))
    with_mask = fused.relu_after_affine(k12, w, b, pre11, pre11.mT, identical_rows(x, x))
    assert with_pairs.shape == (3, 2, 9, 9) and torch.equal(with_pairs, with_mask)


@pytest.mark.parametrize("with_ntk", [False, True], ids=["nngp", "ntk"])
@pytest.mark.parametrize("bias", [0.2, 0.0], ids=["bias", "no-bias"])
def test_recomputing_theta_in_the_backward_pass_gives_the_same_gradients(monkeypatch, with_ntk, bias):
    """Large blocks recompute θ instead of keeping it (RECOMPUTE_BYTES): the same bits, so the same gradients."""
    x0 = _awkward_inputs()

    def grads():
        x = x0.clone().requires_grad_(True)
        w, b = _hyper(F64, b=bias)
        k, t = _evaluate(x, x, w, b, with_ntk=with_ntk)
        out = (k * k).sum() + (0.0 if t is None else (t * t).sum())
        chain = NNGPKernel(A.mlp(2), weight_var=1.3, bias_var=bias).double()
        chain_out = chain(x).to_dense().square().sum()
        return (*torch.autograd.grad(out, (w, b, x)), *torch.autograd.grad(chain_out, (chain.raw_weight_var, x)))

    kept = grads()
    monkeypatch.setattr(fused, "RECOMPUTE_BYTES", 0)
    for got, want in zip(grads(), kept, strict=True):
        assert torch.equal(got, want)

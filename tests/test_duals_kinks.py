"""Quadrature duals of activations with a kink at 0 (composites and weightless sums with ReLU, abs, step inside).

A tensor-product Gauss–Hermite rule across a kink converges only algebraically: ``erf∘relu``, ``x + relu(x)`` and a
ReLU skip were 1e-3–4e-3 off in K and up to 2e-2 in Θ at the default degree. The dual now probes its function for a
kink or jump at 0 and splits both coordinates there (``numerics.split_product_nodes``), so these kernels agree with
the compiled tensor program, whose kink-split expectations are independent of the duals, to ~1e-9.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.duals.quadrature import QuadratureDual
from nngp_gpytorch.tensor_programs.compiled_kernel import CompiledNNGPKernel, CompiledNTKKernel

KINKED = [
    A.Serial(A.Dense(), A.ReLU(), A.Erf(), A.Dense()),
    A.Serial(A.Dense(), A.Parallel(A.Identity(), A.ReLU()), A.Dense()),
    A.Serial(A.Dense(), A.Residual(A.ReLU()), A.LayerNorm(), A.Dense()),
    A.Serial(A.Dense(), A.Erf(), A.Abs(), A.Dense(), A.ReLU(), A.Dense()),
]


@pytest.mark.parametrize("net", KINKED, ids=lambda n: n.describe()[:40])
def test_kinked_composites_equal_the_compiled_program(net):
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[4] = x[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for ours, program in ((NNGPKernel, CompiledNNGPKernel), (NTKKernel, CompiledNTKKernel)):
            k = ours(net, weight_var=1.5, bias_var=0.1).double()(x).to_dense()
            ref = program(net, weight_var=1.5, bias_var=0.1).double()(x).to_dense()
            # before the split: 1e-3–2e-2; the compiled program's own error is ~1e-9 (its default accuracy)
            torch.testing.assert_close(k, ref, rtol=0, atol=1e-8)
            assert torch.equal(k, k.mT) and k[1, 4] == k[1, 1]


def test_kinks_are_found_where_they_are():
    relu_erf = QuadratureDual(lambda v: torch.erf(torch.relu(v)))
    assert relu_erf.kinked(relu_erf.fn) and relu_erf.kinked(relu_erf.derivative)  # a kink, and a jump in φ'
    for smooth in (torch.tanh, torch.sigmoid, torch.nn.functional.silu, lambda v: torch.relu(v - 1.0) * 0 + v):
        dual = QuadratureDual(smooth)
        assert not dual.kinked(dual.fn)


def test_split_rule_converges_geometrically_where_the_plain_rule_does_not():
    f = lambda v: torch.erf(torch.relu(v))  # noqa: E731
    k11, k22 = torch.tensor([1.3], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64)
    k12 = torch.tensor([0.4], dtype=torch.float64)
    values = [QuadratureDual(f, degree=d, adaptive=False).nngp(k11, k22, k12) for d in (16, 32, 64, 128)]
    steps = [float((a - b).abs()) for a, b in zip(values, values[1:], strict=False)]
    assert steps[-1] < 1e-13 and steps[1] < 1e-10  # the plain rule's steps were ~1e-4, 3e-5, 1e-5


def test_gradients_through_the_split_rule_match_finite_differences():
    dual = QuadratureDual(lambda v: torch.erf(torch.relu(v)), degree=24, adaptive=False)
    k11, k22 = torch.tensor([1.3], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64)
    k12 = torch.tensor([0.4], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(dual.nngp(k11, k22, k12).sum(), k12)
    h = 1e-6
    with torch.no_grad():
        fd = (dual.nngp(k11, k22, k12 + h) - dual.nngp(k11, k22, k12 - h)) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)

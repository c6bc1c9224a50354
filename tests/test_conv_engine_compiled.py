"""The compiled CPU loops of the positional engine (algebra/conv_stack_jit) against the engine's torch path.

Both compute the same recurrences in a different order (per pair in cache vs per chunk of pairs), so they must agree
to rounding: 1e-13 relative in float64 on ReLU/erf/linear conv stacks of every geometry the engine takes (1-, 2-, 3-D,
stride, dilation, same/valid/circular padding, convs without an activation, GAP and Flatten), NNGP and NTK, full
blocks, ``K(X, X)``, diagonals and duplicated inputs; float32 within float32 rounding of float64.
"""

from __future__ import annotations

import pytest
import torch

import nngp_gpytorch.algebra.conv_stack as conv_stack
import nngp_gpytorch.algebra.conv_stack_jit as conv_stack_jit
from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate

pytestmark = pytest.mark.skipif(not conv_stack_jit.AVAILABLE, reason="numba is not installed")

H = Hyperparameters.constant(1.7, 0.2)

STACKS = [
    (A.cnn(depth=3, readout="gap"), (3, 6, 5)),
    (A.cnn(depth=2, readout="flatten"), (2, 7, 6)),
    (A.Serial(A.Conv(3, stride=2), A.ReLU(), A.Conv((2, 3), dilation=2, padding="valid"), A.ReLU(),
              A.Conv(3, padding="circular"), A.GlobalAvgPool(), A.Dense(), A.ReLU(), A.Dense()), (2, 11, 13)),
    (A.Serial(A.Conv(5), A.ReLU(), A.Conv(5, stride=2, padding="circular"), A.ReLU(), A.Flatten(), A.Dense()),
     (2, 17)),
    (A.Serial(A.Conv(3), A.ReLU(), A.Conv(3), A.GlobalAvgPool(), A.ReLU(), A.Dense()), (1, 4, 5, 3)),
    (A.Serial(A.Conv(3, stride=(1, 2)), A.Conv(2, padding="valid"), A.ReLU(), A.Flatten(), A.Dense()), (2, 6, 7)),
    (A.Serial(A.Conv(3), A.Erf(), A.Conv(3, stride=2), A.ReLU(), A.Conv(3), A.Erf(), A.GlobalAvgPool(), A.Dense()),
     (2, 7, 6)),
    (A.Serial(A.Conv(3, padding="circular"), A.Erf(), A.Conv(3), A.Erf(), A.Flatten(), A.Dense()), (3, 9)),
    (A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.Erf(), A.AvgPool(2, stride=1, padding="same"),
              A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense()), (2, 8, 7)),
    (A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(3, stride=2, padding="circular"), A.Conv(2), A.ReLU(), A.AvgPool(2),
              A.GlobalAvgPool(), A.Dense()), (2, 11)),
    (A.Serial(A.Conv(2), A.ReLU(), A.AvgPool((2, 1, 2)), A.Conv(3), A.GlobalAvgPool(), A.Dense()), (1, 4, 3, 5)),
    (A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.Erf(), A.Flatten(), A.Dense()), (2, 8, 7)),
]


@pytest.fixture
def calls(monkeypatch):
    """Counts the compiled engine's calls (so a test knows the compiled path ran)."""
    counter = {"n": 0}
    for name in ("gap_pairs", "flatten_pairs"):
        original = getattr(conv_stack_jit, name)

        def counted(*args, _original=original):
            counter["n"] += 1
            return _original(*args)

        monkeypatch.setattr(conv_stack_jit, name, counted)
    return counter


@pytest.mark.parametrize("net,shape", STACKS, ids=lambda v: v.describe()[:30] if isinstance(v, A.Layer) else "")
@pytest.mark.parametrize("ntk", [False, True])
def test_compiled_loops_equal_the_torch_path(net, shape, ntk, calls, monkeypatch, paired_inputs):
    d = int(torch.Size(shape).numel())
    x1, x2 = paired_inputs(d)
    for a, b, diag in ((x1, x1, False), (x1, x2, False), (x1, x1, True), (x1[:4], x2, True)):
        with torch.no_grad():
            k1, t1 = evaluate(net, a, b, H, diag=diag, with_ntk=ntk, input_shape=shape)
            monkeypatch.setattr(conv_stack, "COMPILED", False)
            k0, t0 = evaluate(net, a, b, H, diag=diag, with_ntk=ntk, input_shape=shape)
            monkeypatch.setattr(conv_stack, "COMPILED", True)
        torch.testing.assert_close(k1, k0, rtol=1e-13, atol=1e-15)
        if ntk:
            torch.testing.assert_close(t1, t0, rtol=1e-13, atol=1e-15)
    assert calls["n"] > 0


def test_duplicated_inputs_keep_an_exact_diagonal_correlation():
    net, shape = A.cnn(depth=3, readout="gap"), (2, 5, 5)
    x = torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = torch.cat([x, x[:1]])
    with torch.no_grad():
        k, t = NTKKernel(net, input_shape=shape, weight_var=2.0, bias_var=0.1).double().nngp_and_ntk(x)
    assert k[0, 3] == k[0, 0] and t[0, 3] == t[0, 0]
    assert torch.equal(k, k.mT) and torch.equal(t, t.mT)


def test_autograd_takes_the_torch_path(calls):
    kernel = NNGPKernel(A.cnn(depth=2, readout="gap"), input_shape=(2, 4, 4), weight_var=1.5, bias_var=0.1).double()
    x = torch.randn(3, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kernel(x).to_dense().sum().backward()  # hyperparameters require gradients: the differentiable path
    assert calls["n"] == 0 and kernel.raw_weight_var.grad is not None
    with torch.no_grad():
        kernel(x).to_dense()
    assert calls["n"] > 0


def test_float32_agrees_with_float64_and_stays_positive_definite():
    net, shape = A.cnn(depth=4, readout="gap"), (3, 8, 8)
    x = torch.randn(8, 192, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        k64, t64 = NTKKernel(net, input_shape=shape, weight_var=2.0, bias_var=0.01).double().nngp_and_ntk(x)
        k32, t32 = NTKKernel(net, input_shape=shape, weight_var=2.0, bias_var=0.01).nngp_and_ntk(x.float())
    assert k32.dtype == torch.float32
    torch.testing.assert_close(k32.double(), k64, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(t32.double(), t64, rtol=2e-6, atol=1e-7)
    assert torch.linalg.eigvalsh(k32.double()).min() > 0


def test_other_activations_take_the_torch_path(calls):
    net = A.Serial(A.Conv(3), A.Tanh(), A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense())
    x = torch.randn(3, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        evaluate(net, x, x, H, input_shape=(2, 4, 4))
    assert calls["n"] == 0


def test_arcsin_polynomial_matches_libm():
    x = torch.linspace(-1.0, 1.0, 20_001, dtype=torch.float64)
    ours = torch.tensor([conv_stack_jit.arcsin(float(v)) for v in x], dtype=torch.float64)
    assert (ours - torch.arcsin(x)).abs().max() < 1e-15


def test_arccos_polynomial_matches_libm():
    x = torch.linspace(-1.0, 1.0, 200_001, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([0.5, -0.5, 0.5 + 1e-16, 1 - 1e-16, -1 + 1e-16])])
    ours = torch.tensor([conv_stack_jit.arccos(float(v)) for v in x[::97]] + [conv_stack_jit.arccos(float(v))
                                                                              for v in x[-5:]], dtype=torch.float64)
    ref = torch.arccos(torch.cat([x[::97], x[-5:]]))
    assert (ours - ref).abs().max() < 1e-15

"""The compiled CPU loops of the positional engine (algebra/conv_stack_jit) against the engine's torch path.

Both compute the same recurrences in a different order (per pair in cache vs per chunk of pairs), so they must agree
to rounding: 1e-13 relative in float64 on ReLU/erf/linear conv stacks of every geometry the engine takes (1-, 2-, 3-D,
stride, dilation, same/valid/circular padding, convs without an activation, GAP and Flatten), NNGP and NTK, full
blocks, ``K(X, X)``, diagonals and duplicated inputs; float32 within float32 rounding of float64.
"""

from __future__ import annotations

import pytest
import torch

import nngp_gpytorch.algebra.compiled_math as compiled_math
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
    ours = torch.tensor([compiled_math.arcsin(float(v)) for v in x], dtype=torch.float64)
    assert (ours - torch.arcsin(x)).abs().max() < 1e-15


def test_arccos_polynomial_matches_libm():
    x = torch.linspace(-1.0, 1.0, 200_001, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([0.5, -0.5, 0.5 + 1e-16, 1 - 1e-16, -1 + 1e-16])])
    ours = torch.tensor([compiled_math.arccos(float(v)) for v in x[::97]] + [compiled_math.arccos(float(v))
                                                                              for v in x[-5:]], dtype=torch.float64)
    ref = torch.arccos(torch.cat([x[::97], x[-5:]]))
    assert (ours - ref).abs().max() < 1e-15


# ---- position-pair blocks: the full layout in bands of rows (algebra/conv_stack_bands) ----

BANDED = [
    (A.cnn(depth=3, readout="gap"), (2, 9, 7)),
    (A.Serial(A.Conv(3, stride=2), A.ReLU(), A.Conv((2, 3), dilation=2, padding="valid"), A.ReLU(),
              A.Conv(3, padding="circular"), A.GlobalAvgPool(), A.Dense()), (2, 13, 11)),
    (A.Serial(A.Conv(3), A.Erf(), A.Conv(3, stride=2), A.ReLU(), A.Conv(3, dilation=2), A.Erf(), A.GlobalAvgPool(),
              A.Dense()), (2, 12, 6)),
    (A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.Erf(), A.AvgPool(2, stride=1, padding="same"),
              A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense()), (2, 12, 7)),
    (A.Serial(A.Conv((3, 5), stride=(2, 1), dilation=(2, 1)), A.ReLU(), A.AvgPool(3, stride=2),
              A.Conv(3, padding="valid"), A.ReLU(), A.GlobalAvgPool(), A.Dense()), (2, 19, 9)),
    (A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(3, stride=2, padding="circular"), A.Conv(2), A.ReLU(), A.AvgPool(2),
              A.GlobalAvgPool(), A.Dense()), (2, 11, 9)),
    (A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.Erf(), A.Flatten(), A.Dense()), (2, 10, 7)),
    (A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(3, stride=1, padding="valid"), A.Conv(3), A.GlobalAvgPool(), A.Dense()),
     (1, 10, 8)),
]


@pytest.mark.parametrize("net,shape", BANDED, ids=lambda v: v.describe()[:30] if isinstance(v, A.Layer) else "")
@pytest.mark.parametrize("ntk", [False, True])
def test_bands_of_rows_equal_whole_tables(net, shape, ntk, monkeypatch, paired_inputs):
    """A budget below one pair's four tables takes the compiled loops in bands of rows (stride, dilation, valid/same/
    circular padding, pools with stride ≠ window, ReLU/erf, Flatten after pools): the values of the whole tables, for
    every band height (forced here), with duplicated inputs (the exact diagonal) and on diagonals."""
    import nngp_gpytorch.algebra.conv_stack_bands as conv_stack_bands
    import nngp_gpytorch.algebra.conv_stack_compiled as conv_stack_compiled

    heights, plan = [], conv_stack_compiled.band_plan
    original = conv_stack_bands.band_pairs

    def counted(*args):
        heights.append(args[-3])
        return original(*args)

    monkeypatch.setattr(conv_stack_bands, "band_pairs", counted)
    d = int(torch.Size(shape).numel())
    x1, x2 = paired_inputs(d)
    x2 = torch.cat([x2, x1[:1]])
    with torch.no_grad():
        whole = [evaluate(net, a, b, H, diag=diag, with_ntk=ntk, input_shape=shape)
                 for a, b, diag in ((x1, x1, False), (x1, x2, False), (x1[:3], x2[:3], True))]
        assert not heights  # no budget: the whole tables, as before
        for height in (1, 2, 3, 1000):
            monkeypatch.setattr(conv_stack_compiled, "band_plan", lambda g, i, b, h=height: (plan(g, i, b)[0], h))
            for (a, b, diag), (k0, t0) in zip(((x1, x1, False), (x1, x2, False), (x1[:3], x2[:3], True)), whole,
                                              strict=True):
                k1, t1 = evaluate(net, a, b, H, diag=diag, with_ntk=ntk, input_shape=shape, chunk_bytes=1)
                torch.testing.assert_close(k1, k0, rtol=1e-13, atol=1e-15)
                if ntk:
                    torch.testing.assert_close(t1, t0, rtol=1e-13, atol=1e-15)
    assert {1, 2, 3, 1000} <= set(heights)


def test_band_height_follows_the_budget():
    """The tallest band whose scratch fits the budget per thread; at least one row."""
    import nngp_gpytorch.algebra.conv_stack_compiled as conv_stack_compiled

    net = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense())
    stack = conv_stack.fuse_conv_stacks(net).layers[0]
    groups = conv_stack._groups(stack, (32, 32), None)
    geometry = conv_stack_compiled.geometry_of(groups)
    one = conv_stack_compiled.band_bytes(geometry, 8, 1)
    assert one == conv_stack.band_minimum_bytes(stack, (1, 32, 32), torch.float64) < 4 * 1024**2 * 8 // 3
    assert conv_stack_compiled.band_height(geometry, 8, one - 1) == 1
    for budget in (one, 2 * one, 4 * one, 4 * 1024**2 * 8):
        h = conv_stack_compiled.band_height(geometry, 8, budget)
        assert conv_stack_compiled.band_bytes(geometry, 8, h) <= budget
        assert h == 16 or conv_stack_compiled.band_bytes(geometry, 8, h + 1) > budget


def test_the_refusal_names_one_band_where_the_compiled_loops_run():
    """An explicit ``max_memory`` below one band of one row (with its halos) is refused naming that minimum; under
    autograd, or with the compiled loops off, the torch path's one-pair minimum applies as before."""
    net = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense())
    shape = (1, 16, 16)
    stack = conv_stack.fuse_conv_stacks(net).layers[0]
    band = conv_stack.band_minimum_bytes(stack, shape, torch.float64)
    pair = conv_stack.stack_pair_bytes(stack, shape, False, torch.float64)
    assert band < 4 * 256**2 * 8 < pair
    x = torch.randn(3, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = NNGPKernel(net, input_shape=shape, weight_var=2.0, bias_var=0.1).double()(x).to_dense()
        with pytest.raises(ValueError, match=f"at least {band}$"):
            NNGPKernel(net, input_shape=shape, max_memory=band - 1).double()(x).to_dense()
        k = NNGPKernel(net, input_shape=shape, weight_var=2.0, bias_var=0.1, max_memory=band).double()(x).to_dense()
    torch.testing.assert_close(k, reference, rtol=1e-13, atol=1e-15)
    kernel = NNGPKernel(net, input_shape=shape, max_memory=band).double()
    with pytest.raises(ValueError, match=f"at least {pair}$"):
        kernel(x).to_dense()  # hyperparameters require gradients: the torch path
    conv_stack.COMPILED = False
    try:
        with torch.no_grad(), pytest.raises(ValueError, match=f"at least {pair}$"):
            NNGPKernel(net, input_shape=shape, max_memory=band).double()(x).to_dense()
    finally:
        conv_stack.COMPILED = True
    with torch.no_grad(), pytest.raises(ValueError, match="torch path"):  # the engine's own check
        evaluate(A.Serial(A.Conv(3), A.Tanh(), A.GlobalAvgPool(), A.Dense()), x, x, H, input_shape=shape,
                 chunk_bytes=band)


_BAND_PEAK_SCRIPT = """
import sys, torch
from nngp_gpytorch import NNGPKernel, arch as A

def status(key):  # kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

net = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense())
with torch.no_grad():  # load the compiled loops (whole and banded) on small inputs first
    small = torch.randn(2, 64, dtype=torch.float64)
    NNGPKernel(net, input_shape=(1, 8, 8), dtype=torch.float64)(small).to_dense()
    NNGPKernel(net, input_shape=(1, 8, 8), max_memory=125_000, dtype=torch.float64)(small).to_dense()
kernel = NNGPKernel(net, input_shape=(1, 32, 32), weight_var=2.0, bias_var=0.1, max_memory=int(sys.argv[1]),
                    dtype=torch.float64)
x = torch.randn(8, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
with torch.no_grad():
    kernel(x).to_dense()
print((status("VmHWM:") - before) * 1024)
"""


def test_peak_memory_of_the_bands_follows_max_memory():
    """A pooled CNN on 32×32 inputs: one pair's four tables are 4·1024²·8 B = 32 MiB per thread (and the torch
    path's pooled self chain holds each input's 1024² self covariance), so the engine used to refuse any budget
    below its one-pair minimum (80 MiB). Under a 24 MiB budget the pairs and the per-input variances go in bands of
    rows: the peak RSS of a fresh process grows by less than one pair's tables, measured from before the first
    32×32 evaluation (compiled loops already loaded): 10.1 MiB at 24 MiB, 5.5 MiB at 12 MB (122 MiB for the whole
    tables at a 100 MB budget)."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    budget = 24 << 20
    out = subprocess.run([sys.executable, "-c", _BAND_PEAK_SCRIPT, str(budget)], capture_output=True, text=True,
                         check=True, timeout=600)
    growth = int(out.stdout.split()[-1])
    assert growth < 4 * 1024**2 * 8, growth

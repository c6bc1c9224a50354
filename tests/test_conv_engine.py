"""The fast positional engine (algebra/conv_stack) and memory tiling for every kernel (kernels/tiling).

The engine computes the layer-by-layer algebra's values in another order, so it is tested against that algebra
(``evaluate(..., optimize=False)``) on its whole domain: 1-, 2- and 3-D convolutions with strides, dilation, valid,
same and circular padding, closed-form and quadrature activations, GAP and Flatten readouts followed by more
layers, NNGP and NTK, full blocks, ``K(X, X)`` (pairs i ≤ j) and diagonals, duplicated inputs (``c = 1``).
"""

from __future__ import annotations

import pytest
import torch

import nngp_gpytorch.algebra.conv_stack as conv_stack
from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate, fuse_conv_stacks
from nngp_gpytorch.algebra.conv_stack import ConvStack
from nngp_gpytorch.kernels.tiling import entries_per_pair, tile_sizes

H = Hyperparameters.constant(1.7, 0.2)

CLOSED_FORM = [
    (A.cnn(depth=3, readout="gap"), (3, 6, 5)),
    (A.cnn(depth=2, readout="flatten"), (2, 7, 6)),
    (A.Serial(A.Conv(3, stride=2), A.Erf(), A.Conv((2, 3), dilation=2, padding="valid"), A.LeakyReLU(0.2),
              A.Conv(3, padding="circular"), A.GlobalAvgPool(), A.Dense(), A.ReLU(), A.Dense()), (2, 11, 13)),
    (A.Serial(A.Conv(5), A.ReLU(), A.Conv(5, stride=2), A.ReLU(), A.Flatten(), A.Dense()), (2, 17)),
    (A.Serial(A.Conv(3), A.ReLU(), A.Conv(3), A.GlobalAvgPool(), A.ReLU(), A.Dense()), (1, 4, 5, 3)),
    # average pools between the convolutions (Myrtle-style CNN-GPs): valid/same/circular, stride ≠ window, 1-3-D
    (A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.Erf(), A.AvgPool(2, stride=1, padding="same"),
              A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense()), (2, 8, 7)),
    (A.Serial(A.Conv(3), A.LeakyReLU(0.1), A.AvgPool(3, stride=2, padding="circular"), A.Conv(2), A.ReLU(),
              A.AvgPool(2), A.GlobalAvgPool(), A.Dense()), (2, 11)),
    (A.Serial(A.Conv(2), A.ReLU(), A.AvgPool((2, 1, 2)), A.Conv(3), A.GlobalAvgPool(), A.Dense()), (1, 4, 3, 5)),
    (A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.ReLU(), A.Flatten(), A.Dense()), (2, 8, 7)),  # LeNet
]


def test_fusion_pass_rewrites_only_conv_runs_ending_in_gap_or_flatten():
    net = A.Serial(A.Conv(3), A.ReLU(), A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense(), A.ReLU(), A.Dense())
    fused = fuse_conv_stacks(net)
    assert isinstance(fused.layers[0], ConvStack) and len(fused.layers[0].layers) == 5
    assert fused.layers[1:] == net.layers[5:]
    pooled = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense())
    assert isinstance(fuse_conv_stacks(pooled).layers[0], ConvStack)  # pools between convs, GAP readout
    # not fused: a quadrature dual in a pooled run (its adaptive degree would depend on the chunk of inputs), a
    # layer norm inside the run, a pool before the first conv
    for layers in ((A.Conv(3), A.Tanh(), A.AvgPool(2), A.Conv(3), A.GlobalAvgPool()),
                   (A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.LayerNorm(), A.ReLU(), A.Flatten()),
                   (A.AvgPool(2), A.Conv(3), A.ReLU(), A.GlobalAvgPool())):
        assert not isinstance(fuse_conv_stacks(A.Serial(*layers, A.Dense())).layers[0], ConvStack)
    assert fuse_conv_stacks(A.mlp(depth=2)) == A.mlp(depth=2)


@pytest.mark.parametrize("net,shape", CLOSED_FORM, ids=lambda v: v.describe()[:30] if isinstance(v, A.Layer) else "")
@pytest.mark.parametrize("ntk", [False, True])
def test_engine_equals_the_layer_by_layer_algebra(net, shape, ntk, paired_inputs):
    d = int(torch.Size(shape).numel())
    x1, x2 = paired_inputs(d)
    for a, b, diag in ((x1, x1, False), (x1, x2, False), (x1, x1, True), (x1[:4], x2, True)):
        k0, t0 = evaluate(net, a, b, H, diag=diag, with_ntk=ntk, input_shape=shape, optimize=False)
        k1, t1 = evaluate(net, a, b, H, diag=diag, with_ntk=ntk, input_shape=shape)
        torch.testing.assert_close(k1, k0, rtol=1e-12, atol=1e-14)
        if ntk:
            torch.testing.assert_close(t1, t0, rtol=1e-12, atol=1e-14)
    k = evaluate(net, x1, x1, H, input_shape=shape)[0]
    assert torch.equal(k, k.mT)  # pairs i ≤ j mirrored: exactly symmetric


def test_engine_values_do_not_depend_on_the_chunking(monkeypatch, paired_inputs):
    # a quadrature dual (tanh): its adaptive degree is fixed per layer from both sides' largest variance
    net, shape = A.Serial(A.Conv(3), A.Tanh(), A.Conv(3), A.Tanh(), A.GlobalAvgPool(), A.Dense()), (2, 5, 5)
    x1, x2 = paired_inputs(50)
    big = evaluate(net, x1, x2, H, with_ntk=True, input_shape=shape)
    monkeypatch.setattr(conv_stack, "CPU_CHUNK_BYTES", 1)  # one pair per chunk
    small = evaluate(net, x1, x2, H, with_ntk=True, input_shape=shape)
    assert torch.equal(big[0], small[0]) and torch.equal(big[1], small[1])
    generic = evaluate(net, x1, x2, H, with_ntk=True, input_shape=shape, optimize=False)
    torch.testing.assert_close(big[0], generic[0], rtol=1e-6, atol=0)  # the generic path's degree is per block


@pytest.mark.parametrize("net", [A.cnn(depth=2, readout="gap"),
                                 A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.ReLU(), A.GlobalAvgPool(),
                                          A.Dense())], ids=["cnn", "pooled"])
def test_engine_gradients_match_the_layer_by_layer_algebra(net, paired_inputs):
    shape = (2, 5, 4)
    x1, x2 = paired_inputs(40)

    def grads(optimize):
        w = torch.tensor([1.7], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
        k, t = evaluate(net, x1, x2, Hyperparameters(w, b), with_ntk=True, input_shape=shape, optimize=optimize)
        return torch.autograd.grad((k.sum() + t.sum()), (w, b))

    for g_fast, g_slow in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-11, atol=0)


def test_chunks_hold_a_bounded_number_of_pairs():
    assert conv_stack.chunk_pairs((16, 16), True, False, torch.float64, "cpu") == 1
    per_pair = conv_stack.LIVE_TENSORS * 8 * 256  # Flatten: P entries per pair
    flat = conv_stack.chunk_pairs((16, 16), False, False, torch.float64, "cpu")
    assert flat == conv_stack.CPU_CHUNK_BYTES // per_pair


def test_every_kernel_tiles_within_max_memory_with_identical_values(paired_inputs):
    mlp = A.mlp(depth=3, activation=A.Erf())
    x1, x2 = paired_inputs(7)
    plain = NTKKernel(mlp, weight_var=1.5, bias_var=0.1, max_memory=None, dtype=torch.float64)
    tiled = NTKKernel(mlp, weight_var=1.5, bias_var=0.1, max_memory=16 * 8 * 6, dtype=torch.float64)
    assert tiled.entries_per_pair() == 1 and tiled.tile_sizes(6, 4, torch.float64) == (2, 3)
    with torch.no_grad():
        for a, b in ((x1, x2), (x1, x1)):
            k_t, t_t = tiled.nngp_and_ntk(a, b)
            k_p, t_p = plain.nngp_and_ntk(a, b)
            torch.testing.assert_close(k_t, k_p, rtol=1e-15, atol=0)
            torch.testing.assert_close(t_t, t_p, rtol=1e-15, atol=0)
        torch.testing.assert_close(tiled(x1, x1, diag=True), plain(x1, x1, diag=True), rtol=0, atol=0)


def test_generic_conv_kernel_memory_estimate_follows_the_layout():
    flat_seq = A.Serial(A.Conv(5), A.ReLU(), A.Conv(5), A.ReLU(), A.Flatten(), A.Dense())
    assert entries_per_pair(flat_seq, (1, 40)) == 1  # the engine chunks its own pairs
    pooled = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense())
    assert entries_per_pair(pooled, (3, 8, 8)) == 1  # in the engine
    normed = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.LayerNorm(), A.ReLU(), A.Flatten(), A.Dense())
    assert entries_per_pair(normed, (3, 8, 8)) == 64 * 64  # layer by layer, full spatial covariances
    assert tile_sizes(1000, 1000, 64 << 20, 64 * 64, torch.float64) == (11, 11)
    kernel = NNGPKernel(flat_seq, input_shape=(1, 40), weight_var=2.0, bias_var=0.1, max_memory="auto")
    assert kernel.tile_budget() == 64 << 20


def test_elman_rnn_is_tiled_over_time_pair_tables(monkeypatch):
    """The RNN rule's torch path forms (n1, n2, T, T) tables: it is tiled (T² entries per pair), values identical,
    NTK too. Its compiled loops hold O(T) per pair: where they run (a CPU, no gradient) a pair counts one entry."""
    import nngp_gpytorch.algebra.recurrent as recurrent

    net = A.rnn(A.Erf(), readout="mean")
    x = torch.randn(7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[-1] = x[0]
    assert entries_per_pair(net, (6, 2)) == 36 and entries_per_pair(net, (6, 2), compiled_rnn=True) == 1
    assert entries_per_pair(A.rnn(A.Tanh()), (6, 2), compiled_rnn=True) == 36  # tanh: the torch path
    plain = NTKKernel(net, input_shape=(6, 2), weight_var=1.5, bias_var=0.1, max_memory=None, dtype=torch.float64)
    tiled = NTKKernel(net, input_shape=(6, 2), weight_var=1.5, bias_var=0.1, max_memory=16 * 8 * 36 * 4,
                      dtype=torch.float64)
    assert tiled.tile_sizes(7, 7, torch.float64) == (2, 2)  # the hyperparameters require grad: the torch path
    with torch.no_grad():
        assert tiled.tile_sizes(7, 7, torch.float64) == (7, 7)  # the compiled loops
    monkeypatch.setattr(recurrent, "COMPILED", False)
    with torch.no_grad():
        assert tiled.tile_sizes(7, 7, torch.float64) == (2, 2)
        for a, b in ((x, x), (x[:4], x[2:])):
            for got, want in zip(tiled.nngp_and_ntk(a, b), plain.nngp_and_ntk(a, b), strict=True):
                # not bitwise: the input Gram x·x' of a tile is a smaller matmul (other BLAS blocking), 1e-16 apart
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("bad", ["big", -1, 0, True])
def test_bad_max_memory_is_refused(bad):
    with pytest.raises(ValueError, match="max_memory"):
        NNGPKernel(A.mlp(depth=1), max_memory=bad)


def test_max_memory_below_one_pair_names_the_minimum():
    x = torch.randn(3, 16, dtype=torch.float64)
    # a layer norm inside the run keeps it out of the engine: layer by layer, full spatial covariances
    pooled = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.LayerNorm(), A.ReLU(), A.Flatten(), A.Dense())
    with pytest.raises(ValueError, match=r"below one tile's minimum of 32768 bytes"):  # 16 · 16² entries · 8 B
        NNGPKernel(pooled, input_shape=(1, 4, 4), max_memory=1000, dtype=torch.float64)(x).to_dense()
    # the engine gets max_memory as its chunk budget: one pair of a GAP run is 10 tensors of P² = 256 entries
    gap = A.cnn(depth=1, readout="gap")
    with pytest.raises(ValueError, match=r"minimum of 20480 bytes \(the conv engine's least unit of work"):
        NNGPKernel(gap, input_shape=(1, 4, 4), max_memory=20479, dtype=torch.float64)(x).to_dense()
    with pytest.raises(ValueError, match=r"minimum of 28672 bytes"):  # with Θ: 4 tensors more
        NTKKernel(gap, input_shape=(1, 4, 4), max_memory=20480, dtype=torch.float64)(x).to_dense()
    exact = NNGPKernel(gap, input_shape=(1, 4, 4), max_memory=20480, dtype=torch.float64)(x).to_dense()
    plain = NNGPKernel(gap, input_shape=(1, 4, 4), max_memory=None, dtype=torch.float64)(x).to_dense()
    torch.testing.assert_close(exact, plain, rtol=1e-15, atol=0)
    big = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.LayerNorm(), A.ReLU(), A.Flatten(), A.Dense())
    auto = NNGPKernel(big, input_shape=(3, 32, 32), dtype=torch.float64)  # 1024² entries per pair: 128 MiB > 64
    assert auto.tile_sizes(10, 10, torch.float64) == (1, 1)  # "auto" never refuses: one pair per tile


def test_a_gram_that_cannot_fit_is_refused_before_any_work(monkeypatch):
    import nngp_gpytorch.kernels.tiling as tiling
    from nngp_gpytorch import GramTooLargeError

    monkeypatch.setattr(tiling, "available_memory", lambda device: 10_000)
    monkeypatch.setattr("nngp_gpytorch.kernels.base.evaluate_in_tiles",
                        lambda *a, **k: pytest.fail("work started"))
    kernel = NTKKernel(A.mlp(depth=1), dtype=torch.float64)
    x = torch.randn(30, 4, dtype=torch.float64)
    with pytest.raises(GramTooLargeError, match=r"\(30, 30\).*nngp_gpytorch\.scale"):
        kernel.nngp_and_ntk(x)  # 2 × 30² × 8 bytes = 14,400 > 10,000
    assert isinstance(GramTooLargeError("x"), MemoryError)


_PEAK_SCRIPT = """
import sys, torch
from nngp_gpytorch import NNGPKernel, arch as A

def status(key):  # kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

torch.set_num_threads(1)
net = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.LayerNorm(), A.ReLU(), A.Flatten(), A.Dense())
budget = int(sys.argv[1])
kernel = NNGPKernel(net, input_shape=(2, 8, 8), weight_var=2.0, bias_var=0.1, max_memory=budget, dtype=torch.float64)
x = torch.randn(96, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    kernel(x[:4]).to_dense()
    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS: imports' peaks do not hide the evaluation's
    kernel(x).to_dense()
print((status("VmHWM:") - before) * 1024)
"""


def test_peak_memory_of_a_full_position_conv_kernel_follows_max_memory():
    """A pooled CNN outside the engine (a layer norm inside the run) keeps full spatial covariances: P² = 4096 entries
    per pair, so one untiled N = 96 Gram's intermediates would be 96² · 4096 · 8 B = 0.3 GB per live tensor (16 of
    them). The measured peak growth of the process stays within a few budgets whatever N, and grows with the budget
    (measured: 8.7 MiB at 16 MiB, 26.8 MiB at 64 MiB)."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")

    def peak(budget: int) -> int:
        out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(budget)], capture_output=True, text=True,
                             check=True, timeout=600)
        return int(out.stdout.split()[-1])

    small, large = peak(16 << 20), peak(64 << 20)
    untiled = 96 ** 2 * 4096 * 8
    assert small < 3 * (16 << 20) + (16 << 20) < untiled / 4, small
    assert large < 3 * (64 << 20) + (16 << 20), large
    assert large > small


_ENGINE_PEAK_SCRIPT = """
import sys, torch
import nngp_gpytorch.algebra.conv_stack as cs
from nngp_gpytorch import NNGPKernel, arch as A

def status(key):  # kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

torch.set_num_threads(1)
cs.COMPILED = sys.argv[2] == "compiled"
net = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2), A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense())
kernel = NNGPKernel(net, input_shape=(1, 32, 32), weight_var=2.0, bias_var=0.1, max_memory=int(sys.argv[1]),
                    dtype=torch.float64)
x = torch.randn(8, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    kernel(x[:2]).to_dense()
    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    kernel(x).to_dense()
print((status("VmHWM:") - before) * 1024)
"""


@pytest.mark.parametrize("path", ["torch", "compiled"])
def test_peak_memory_of_the_engine_follows_max_memory(path):
    """A pooled CNN in the engine on 32×32 inputs: one pair holds P² = 1024² entries (8 MiB per table; the torch
    path's chunk counts 10 tables per pair), so the 36 pairs of an N = 8 Gram would hold ~2.9 GB at once. With
    ``max_memory`` the engine's chunks (torch path), its per-input self chains and its threads' scratch (compiled
    loops) stay within the budget plus a fixed slack: measured growth of the peak RSS after warm-up 102.6 MiB at a
    100 MB (95.4 MiB) budget and 127.9 MiB at 400 MB (torch path); 0.02 and 95.8 MiB with the compiled loops."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")

    def peak(budget: int) -> int:
        out = subprocess.run([sys.executable, "-c", _ENGINE_PEAK_SCRIPT, str(budget), path], capture_output=True,
                             text=True, check=True, timeout=600)
        return int(out.stdout.split()[-1])

    slack = 32 << 20  # the result, the inputs' per-layer variances, allocator rounding
    for budget in (100_000_000, 400_000_000):
        assert peak(budget) < budget + slack < 36 * 10 * (8 << 20) / 4

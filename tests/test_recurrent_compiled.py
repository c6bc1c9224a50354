"""The Elman RNN's compiled CPU loops (algebra/recurrent_jit, recurrent_compiled) against the rule's torch path.

Both compute the same recursion (reference kernels.md "Simple RNN"; the NTK of Alemohammad et al. 2021) in a
different order (per pair with O(T) scratch vs per tile of pairs over time), so they must agree to rounding: 1e-12
relative in float64 for ReLU, erf and identity, NNGP and NTK, both readouts, masked and unmasked sequences, full
blocks, ``K(X, X)``, diagonals, duplicated sequences and shared prefixes (the exact ``c = 1`` of identical prefixes),
zero-variance steps; float32 within float32 rounding of float64.
"""

from __future__ import annotations

import pytest
import torch

import nngp_gpytorch.algebra.recurrent as recurrent
import nngp_gpytorch.algebra.recurrent_compiled as recurrent_compiled
import nngp_gpytorch.algebra.recurrent_jit as recurrent_jit
import nngp_gpytorch.algebra.side_cache as side_cache
from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.sequences import pack_sequences

pytestmark = pytest.mark.skipif(not recurrent_jit.AVAILABLE, reason="numba is not installed")

DT = torch.float64
#: (σu², σw², σv²), (σb², ·, σvb²)
HYPER = Hyperparameters(torch.tensor([1.0, 1.5, 1.2], dtype=DT), torch.tensor([0.1, 0.0, 0.05], dtype=DT))
T, D = 7, 2


@pytest.fixture
def calls(monkeypatch):
    """Counts the compiled loops' calls (so a test knows which path ran)."""
    counter = {"n": 0}
    original = recurrent_jit.rnn_pairs

    def counted(*args):
        counter["n"] += 1
        return original(*args)

    monkeypatch.setattr(recurrent_jit, "rnn_pairs", counted)
    return counter


def _both(monkeypatch, *args, **kwargs):
    """``evaluate`` through the compiled loops and through the torch path, under ``no_grad``."""
    with torch.no_grad():
        compiled = evaluate(*args, **kwargs)
        monkeypatch.setattr(recurrent, "COMPILED", False)
        reference = evaluate(*args, **kwargs)
        monkeypatch.setattr(recurrent, "COMPILED", True)
    return compiled, reference


def _close(a, b, rtol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


def unmasked(seed=0):
    """``(x1, x2)``: 6 and 4 sequences of ``T`` tokens of ``D`` features; ``x1[3] = x1[0]`` (a duplicate),
    ``x1[4]`` shares a 3-token prefix with ``x1[1]``, ``x2[1] = x1[2]``, ``x2[2]`` shares 5 tokens with ``x1[5]``."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(6, T * D, generator=g, dtype=DT)
    x2 = torch.randn(4, T * D, generator=g, dtype=DT)
    x1[3] = x1[0]
    x1[4, :3 * D] = x1[1, :3 * D]
    x2[1] = x1[2]
    x2[2, :5 * D] = x1[5, :5 * D]
    return x1, x2, (T, D)


def masked(seed=0):
    """Variable lengths 1–7 with the mask channel; a duplicate and a common prefix of different lengths."""
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, D, generator=g, dtype=DT) for n in (1, 3, 7, 5, 7, 2)]
    seqs[3] = seqs[2][:5].clone()  # a prefix of sequence 2, shorter
    seqs.append(seqs[1].clone())
    others = [torch.randn(n, D, generator=g, dtype=DT) for n in (4, 7, 2)] + [seqs[2].clone()]
    return pack_sequences(seqs, T), pack_sequences(others, T), (T, D + 1)


@pytest.mark.parametrize("activation", [A.Erf(), A.ReLU(), A.Identity()], ids=lambda a: a.describe())
@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("is_masked", [False, True], ids=["full-length", "masked"])
@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
def test_compiled_loops_equal_the_torch_path(activation, readout, is_masked, ntk, calls, monkeypatch):
    x1, x2, shape = (masked if is_masked else unmasked)()
    layer = A.RNN(activation=activation, readout=readout, masked=is_masked, readout_bias_var=None)
    n = min(x1.shape[0], x2.shape[0])
    for a, b, diag in ((x1, x1, False), (x1, x2, False), (x2, x1, False), (x1, x1, True), (x1[:n], x2[:n], True)):
        (k1, t1), (k0, t0) = _both(monkeypatch, layer, a, b, HYPER, diag=diag, with_ntk=ntk, input_shape=shape)
        _close(k1, k0)
        if ntk:
            _close(t1, t0)
    assert calls["n"] > 0


@pytest.mark.parametrize("activation", [A.Erf(), A.ReLU()], ids=lambda a: a.describe())
def test_public_kernels_in_tiles(activation, calls, monkeypatch):
    """``NNGPKernel``/``NTKKernel`` over several tiles (a small ``max_memory``), with a test cross-Gram and the
    diagonal: the same values as the torch path."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(23, 12, generator=g, dtype=DT), torch.randn(9, 12, generator=g, dtype=DT)
    x[7] = x[2]
    net = A.rnn(activation, readout="mean")
    for cls in (NNGPKernel, NTKKernel):
        kernel = cls(net, input_shape=(12, 1), per_layer=True, max_memory=16 * 8 * 144 * 40).double()
        kernel.weight_var = [1.3, 1.7, 0.9]
        kernel.bias_var = [0.2, 0.0, 0.1]
        with torch.no_grad():
            out1 = [kernel(x).to_dense(), kernel(x, y).to_dense(), kernel(x, y[:1].expand(23, 12), diag=True)]
            monkeypatch.setattr(recurrent, "COMPILED", False)
            out0 = [kernel(x).to_dense(), kernel(x, y).to_dense(), kernel(x, y[:1].expand(23, 12), diag=True)]
            monkeypatch.setattr(recurrent, "COMPILED", True)
        for a, b in zip(out1, out0, strict=True):
            _close(a, b)
    assert calls["n"] > 0


def test_duplicated_sequences_keep_an_exact_diagonal_correlation(calls):
    x1, _, shape = unmasked()
    layer = A.RNN(activation=A.ReLU(), readout="last")
    with torch.no_grad():
        k, t = evaluate(layer, x1, x1, HYPER, with_ntk=True, input_shape=shape)
    assert k[0, 3] == k[0, 0] == k[3, 3] and t[0, 3] == t[0, 0]
    assert torch.equal(k, k.mT) and torch.equal(t, t.mT)
    assert calls["n"] > 0


@pytest.mark.parametrize("activation", [A.Erf(), A.ReLU()], ids=lambda a: a.describe())
def test_identical_sequences_give_the_self_value_exactly(activation, calls):
    """A pair of equal sequences (found by comparing tokens, the torch path's ``same12``) takes ``c = 1`` at every
    ``(t, t)``, as the self tables do: ``K(x, x')`` with ``x' = x`` equals ``K(x, x)`` to the bit."""
    x1, _, shape = masked()
    layer = A.RNN(activation=activation, readout="mean", masked=True)
    with torch.no_grad():
        own = evaluate(layer, x1, x1, HYPER, diag=True, with_ntk=True, input_shape=shape)
        pair = evaluate(layer, x1, x1.clone(), HYPER, diag=True, with_ntk=True, input_shape=shape)
    assert torch.equal(own[0], pair[0]) and torch.equal(own[1], pair[1])
    assert calls["n"] > 0


def test_side_cache_is_keyed_by_content(calls, monkeypatch):
    """The per-side cache (``side_cache``) never serves stale values: new variances, an input changed in
    place, NNGP after NTK — each equals a fresh evaluation without the cache, to the bit."""
    x1, x2, shape = unmasked(5)
    layer = A.RNN(activation=A.ReLU(), readout="mean")
    other = Hyperparameters(torch.tensor([0.7, 2.0, 1.1], dtype=DT), torch.tensor([0.3, 0.0, 0.0], dtype=DT))

    def run(hyper, ntk):
        with torch.no_grad():
            cached = evaluate(layer, x1, x2, hyper, with_ntk=ntk, input_shape=shape)
            monkeypatch.setattr(side_cache, "MAX_ENTRIES", 0)
            fresh = evaluate(layer, x1, x2, hyper, with_ntk=ntk, input_shape=shape)
            monkeypatch.setattr(side_cache, "MAX_ENTRIES", 32)
        assert torch.equal(cached[0], fresh[0])
        if ntk:
            assert torch.equal(cached[1], fresh[1])
        return cached[0]

    first = run(HYPER, True)
    run(HYPER, False)
    assert not torch.equal(run(other, True), first)
    x1[2, 5] += 1.0
    assert not torch.equal(run(HYPER, True)[2], first[2])
    assert calls["n"] > 0


def test_a_readout_weighting_padded_steps_is_read_in_full(calls, monkeypatch):
    """The loops stop at each sequence's length only where its readout weights vanish beyond it."""
    def every_step(lengths, steps, readout, dtype):
        return torch.full((*lengths.shape, steps), 1.0 / steps, dtype=dtype)

    monkeypatch.setattr(recurrent, "readout_weights", every_step)
    monkeypatch.setattr(recurrent_compiled, "readout_weights", every_step)
    monkeypatch.setattr(side_cache, "MAX_ENTRIES", 0)  # sides cached with the real weights must not serve
    x1, x2, shape = masked(7)
    layer = A.RNN(activation=A.Erf(), readout="mean", masked=True)
    (k1, t1), (k0, t0) = _both(monkeypatch, layer, x1, x2, HYPER, with_ntk=True, input_shape=shape)
    _close(k1, k0)
    _close(t1, t0)
    assert calls["n"] > 0


def test_zero_variance_steps(calls, monkeypatch):
    """With σb² = 0 a zero token at step 0 has ``Σ(0,0) = 0``: correlation 0 there, as the torch path sets it."""
    hyper = Hyperparameters(torch.tensor([1.0, 1.5, 1.2], dtype=DT), torch.tensor([0.0, 0.0, 0.0], dtype=DT))
    x1, x2, shape = unmasked(1)
    x1[1, :D] = 0.0
    x2[0, :2 * D] = 0.0
    for activation in (A.Erf(), A.ReLU()):
        layer = A.RNN(activation=activation, readout="mean")
        (k1, t1), (k0, t0) = _both(monkeypatch, layer, x1, x2, hyper, with_ntk=True, input_shape=shape)
        _close(k1, k0)
        _close(t1, t0)
    assert calls["n"] > 0


def test_threads_give_the_same_values():
    x1, x2, shape = unmasked(2)
    layer = A.RNN(activation=A.Erf(), readout="mean")
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = evaluate(layer, x1, x2, HYPER, with_ntk=True, input_shape=shape)
            torch.set_num_threads(2)
            two = evaluate(layer, x1, x2, HYPER, with_ntk=True, input_shape=shape)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_float32_agrees_with_float64(calls):
    x1, x2, shape = unmasked(3)
    layer = A.RNN(activation=A.Erf(), readout="mean")
    hyper32 = Hyperparameters(HYPER.weight_var.float(), HYPER.bias_var.float())
    with torch.no_grad():
        k64, t64 = evaluate(layer, x1, x2, HYPER, with_ntk=True, input_shape=shape)
        k32, t32 = evaluate(layer, x1.float(), x2.float(), hyper32, with_ntk=True, input_shape=shape)
    assert k32.dtype == t32.dtype == torch.float32
    torch.testing.assert_close(k32.double(), k64, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(t32.double(), t64, rtol=1e-6, atol=1e-7)
    assert calls["n"] > 0


def test_gram_is_symmetric_positive_definite(calls):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, 20, generator=g, dtype=DT)
    for cls, activation in ((NNGPKernel, A.Erf()), (NTKKernel, A.ReLU())):
        kernel = cls(A.rnn(activation, readout="mean"), input_shape=(20, 1), per_layer=True).double()
        kernel.bias_var = [0.1, 0.0, 0.0]
        with torch.no_grad():
            K = kernel(x).to_dense()
        assert torch.equal(K, K.mT)
        assert float(torch.linalg.eigvalsh(K).min()) > 0
    assert calls["n"] > 0


def test_autograd_takes_the_torch_path(calls):
    kernel = NNGPKernel(A.rnn(A.Erf(), readout="mean"), input_shape=(5, 2), per_layer=True).double()
    x = torch.randn(4, 10, dtype=DT, generator=torch.Generator().manual_seed(1))
    kernel(x).to_dense().sum().backward()  # hyperparameters require gradients: the differentiable path
    assert calls["n"] == 0 and kernel.raw_weight_var.grad is not None
    with torch.no_grad():
        kernel(x).to_dense()
    assert calls["n"] > 0


def test_other_cases_take_the_torch_path(calls, monkeypatch):
    x1, x2, shape = unmasked()
    with torch.no_grad():
        evaluate(A.RNN(activation=A.Tanh()), x1, x2, HYPER, input_shape=shape)  # no loop for tanh
        assert calls["n"] == 0
        batched = Hyperparameters(HYPER.weight_var.expand(2, 3), HYPER.bias_var.expand(2, 3))
        k, _ = evaluate(A.RNN(activation=A.Erf()), x1, x2, batched, input_shape=shape)  # batch_shape (2,)
        assert calls["n"] == 0 and k.shape == (2, 6, 4)
        monkeypatch.setattr(recurrent, "COMPILED", False)
        evaluate(A.RNN(activation=A.Erf()), x1, x2, HYPER, input_shape=shape)
        assert calls["n"] == 0
        monkeypatch.setattr(recurrent, "COMPILED", True)
        evaluate(A.RNN(activation=A.Erf()), x1, x2, HYPER, input_shape=shape)
    assert calls["n"] > 0

"""Attention / transformer kernel: reference formula, masks, causal, NTK shape, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.sequences import pack_sequences

DT = torch.float64


def _relu_dual(s: torch.Tensor) -> torch.Tensor:
    d = s.diagonal().sqrt()
    norm = d[:, None] * d[None, :]
    c = (s / norm).clamp(-1, 1)
    c.fill_diagonal_(1.0)
    theta = torch.arccos(c)
    return norm * (torch.sin(theta) + (math.pi - theta) * c) / (2 * math.pi)


def _corr(s: torch.Tensor) -> torch.Tensor:
    d = s.diagonal().rsqrt()
    return s * d[:, None] * d[None, :]


def reference_kernel(seqs: list[torch.Tensor], depth: int, w: float, b: float, temperature: float = 1.0,
                     causal: bool = False, readout: str = "mean") -> torch.Tensor:
    """reference/kernels.md "Attention", written out on the joint token covariance of all sequences."""
    lengths = [s.shape[0] for s in seqs]
    x = torch.cat(seqs)
    sigma = x @ x.T / x.shape[1]
    starts = [sum(lengths[:i]) for i in range(len(seqs))]
    for _ in range(depth):
        sigma = w * sigma + b
        a = torch.zeros_like(sigma)
        for first, length in zip(starts, lengths, strict=True):
            block = sigma[first:first + length, first:first + length] / temperature
            if causal:
                block = block.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
            a[first:first + length, first:first + length] = torch.eye(length, dtype=DT) + torch.softmax(block, -1)
        hat = _corr(a @ sigma @ a.T)
        f = w * _relu_dual(w * hat + b) + b
        sigma = _corr(f + hat)
    out = torch.zeros(len(seqs), len(seqs), dtype=DT)
    for i, (si, li) in enumerate(zip(starts, lengths, strict=True)):
        for j, (sj, lj) in enumerate(zip(starts, lengths, strict=True)):
            block = sigma[si:si + li, sj:sj + lj]
            out[i, j] = block.mean() if readout == "mean" else block[-1, -1]
    return w * out + b


def sequences(lengths, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(length, d, generator=g, dtype=DT) for length in lengths]


@pytest.mark.parametrize("depth,temperature,causal,readout", [(1, 1.0, False, "mean"), (2, 0.5, True, "last"),
                                                              (3, 2.0, False, "last")])
def test_matches_reference_formula(depth, temperature, causal, readout):
    seqs = sequences([6, 6, 6], seed=depth)
    kernel = NNGPKernel(A.transformer(depth, temperature=temperature, causal=causal, readout=readout),
                        input_shape=(6, 4), weight_var=1.7, bias_var=0.2).double()
    x = torch.stack([s.reshape(-1) for s in seqs])
    w, b = float(kernel.weight_var), float(kernel.bias_var)  # as stored (float32 parameters, then .double())
    expected = reference_kernel(seqs, depth, w, b, temperature, causal, readout)
    assert torch.allclose(kernel(x).to_dense(), expected, atol=1e-12, rtol=0)
    assert torch.allclose(kernel(x, diag=True), expected.diagonal(), atol=1e-12, rtol=0)


def test_variable_lengths_via_mask_channel():
    """Sequences of 7 and 9 tokens padded to T = 9: each entry equals the unpadded reference."""
    seqs = sequences([7, 9, 4], seed=5)
    x = pack_sequences(seqs)
    for causal, readout in [(False, "mean"), (True, "last")]:
        kernel = NNGPKernel(A.transformer(2, masked=True, causal=causal, readout=readout),
                            input_shape=(9, 5), weight_var=1.3, bias_var=0.1).double()
        w, b = float(kernel.weight_var), float(kernel.bias_var)
        expected = reference_kernel(seqs, 2, w, b, causal=causal, readout=readout)
        assert torch.allclose(kernel(x).to_dense(), expected, atol=1e-12, rtol=0)


def test_padding_values_are_ignored():
    seqs = sequences([3, 5], seed=2)
    x = pack_sequences(seqs).reshape(2, 5, 5)
    x2 = x.clone()
    x2[0, 3:, :4] = 7.0  # garbage in padded tokens (mask 0)
    kernel = NNGPKernel(A.transformer(1, masked=True), input_shape=(5, 5)).double()
    assert torch.allclose(kernel(x.reshape(2, -1)).to_dense(), kernel(x2.reshape(2, -1)).to_dense(), atol=0)


def test_ntk_and_gradients():
    seqs = sequences([5, 5], seed=3)
    x = torch.stack([s.reshape(-1) for s in seqs])
    ntk = NTKKernel(A.transformer(2), input_shape=(5, 4), weight_var=1.5, bias_var=0.1).double()
    k, theta = ntk.nngp_and_ntk(x)
    assert torch.allclose(k, NNGPKernel(A.transformer(2), input_shape=(5, 4), weight_var=1.5, bias_var=0.1).double()(x)
                          .to_dense(), atol=1e-13)
    assert torch.allclose(theta, theta.T) and float(torch.linalg.eigvalsh(theta).min()) > 0
    assert (theta.diagonal() > k.diagonal()).all()
    kernel = NNGPKernel(A.transformer(2), input_shape=(5, 4)).double()
    kernel(x).to_dense().sum().backward()
    assert torch.isfinite(kernel.raw_weight_var.grad).all() and torch.isfinite(kernel.raw_bias_var.grad).all()


def test_independent_queries_give_uniform_attention():
    arch = A.Serial(A.TokenDense(), A.SelfAttention(queries="independent", residual=False), A.SequenceReadout(),
                    A.Dense())
    seqs = sequences([4, 4], seed=4)
    x = torch.stack([s.reshape(-1) for s in seqs])
    k, _ = evaluate(arch, x, x, Hyperparameters.constant(1.0, 0.0), input_shape=(4, 4))
    means = torch.stack([s.mean(0) for s in seqs])
    assert torch.allclose(k, means @ means.T / 4, atol=1e-13)


def test_unsupported_regimes_and_misuse_raise():
    with pytest.raises(A.ArchitectureError, match="not have a Gaussian"):
        A.SelfAttention(scaling="1/sqrt(n)")
    with pytest.raises(A.ArchitectureError, match="queries"):
        A.SelfAttention(queries="shared")
    with pytest.raises(A.ArchitectureError, match="Gaussian keys"):
        A.Serial(A.TokenDense(), A.ReLU(), A.SelfAttention(), A.SequenceReadout(), A.Dense()).validate((4, 3))
    with pytest.raises(A.ArchitectureError, match="Residual"):
        A.Serial(A.TokenDense(), A.Residual(A.SelfAttention()), A.SequenceReadout(), A.Dense()).validate((4, 3))
    with pytest.raises(A.ArchitectureError, match="input_shape"):
        A.Serial(A.TokenDense(), A.SequenceReadout(), A.Dense()).validate()
    with pytest.raises(ValueError, match="input_shape"):
        NNGPKernel(A.transformer(1))


@settings(max_examples=15)
@given(depth=st.integers(1, 3), lengths=st.lists(st.integers(1, 6), min_size=2, max_size=5),
       w=st.floats(0.3, 3.0), b=st.floats(0.0, 1.0), temperature=st.floats(0.2, 5.0), causal=st.booleans(),
       seed=st.integers(0, 1000))
def test_kernel_is_psd_and_matches_reference_property(depth, lengths, w, b, temperature, causal, seed):
    seqs = sequences(lengths, d=3, seed=seed)
    x = pack_sequences(seqs)
    arch = A.transformer(depth, temperature=temperature, causal=causal, masked=True)
    k, _ = evaluate(arch, x, x, Hyperparameters.constant(w, b), input_shape=(max(lengths), 4))
    assert torch.allclose(k, reference_kernel(seqs, depth, w, b, temperature, causal), atol=1e-10, rtol=1e-10)
    assert float(torch.linalg.eigvalsh(k).min()) > -1e-10

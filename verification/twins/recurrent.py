"""Finite twins of the recurrent layers: RNN, erf-gated GRU, standard sigmoid/tanh LSTM.

Weights are drawn ONCE per network and literally shared across time steps (``U ~ N(0, σu²/d)``,
``W ~ N(0, σw²/n)``, ``b ~ N(0, σb²)``, one set per gate). All ``T`` steps are run on the padded inputs
(causality makes padded steps harmless) and each sequence is read at its own length with the same
readout weights as the kernel (:func:`nngp_gpytorch.sequences.readout_weights`).

The readout ``f = v·Φ_read·σv/√n + σvb·β`` has ``n`` output units: literal weights with the literal
sampler, or — exactly equivalent given ``Φ_read`` — Gram-conditional draws ``N(0, σv²ΦΦᵀ/n + σvb²)``
with the ``gram`` sampler. (The description holds its own readout, so ``sample_ensemble`` averages the
units: ``C_m = (1/n)·Σ_units f fᵀ``.)
"""

from __future__ import annotations

import math

import torch

from nngp_gpytorch.arch.recurrent import GRU, LSTM, RNN, RecurrentLayer
from nngp_gpytorch.sequences import readout_weights, split_sequences

from .dense import gram_conditional_preactivations
from .registry import TwinContext, finite_twin


def _affine_maps(ctx: TwinContext, m: int, d: int, n: int, wu: float, b: float, ww: float, gates: int):
    """Per gate: input weights ``(M, d, n)``, hidden weights ``(M, n, n)``, bias ``(M, 1, n)``, scaled."""
    out = []
    for _ in range(gates):
        U = ctx.randn(m, d, n) * math.sqrt(wu / d)
        W = ctx.randn(m, n, n) * math.sqrt(ww / n)
        bias = ctx.randn(m, 1, n) * math.sqrt(b)
        out.append((U, W, bias))
    return out


def _gate(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x))


def recurrent_features(layer: RecurrentLayer, tokens: torch.Tensor, ctx: TwinContext, wu: float, b: float,
                       ww: float, n: int) -> torch.Tensor:
    """Per-step features that the readout reads, ``(M, k, T, n)``: ``φ(h_t)`` for the RNN, ``h_t`` for
    the GRU and LSTM. ``tokens``: ``(M, k, T, d)``."""
    m, k, T, d = tokens.shape
    feats = []
    if isinstance(layer, RNN):
        ((U, W, bias),) = _affine_maps(ctx, m, d, n, wu, b, ww, 1)
        prev = None
        for t in range(T):
            pre = tokens[:, :, t] @ U + bias
            if prev is not None:
                pre = pre + prev @ W
            prev = layer.activation(pre)
            feats.append(prev)
    elif isinstance(layer, GRU):
        (Uz, Wz, bz), (Ur, Wr, br), (Uh, Wh, bh) = _affine_maps(ctx, m, d, n, wu, b, ww, 3)
        h = torch.zeros(m, k, n, dtype=tokens.dtype, device=tokens.device)
        for t in range(T):
            x = tokens[:, :, t]
            z = _gate(x @ Uz + h @ Wz + bz)
            r = _gate(x @ Ur + h @ Wr + br)
            cand = torch.erf(x @ Uh + (h * r) @ Wh + bh)
            h = (1 - z) * h + z * cand
            feats.append(h)
    elif isinstance(layer, LSTM):
        (Ui, Wi, bi), (Uf, Wf, bf), (Uo, Wo, bo), (Ug, Wg, bg) = _affine_maps(ctx, m, d, n, wu, b, ww, 4)
        h = torch.zeros(m, k, n, dtype=tokens.dtype, device=tokens.device)
        c = torch.zeros_like(h)
        for t in range(T):
            x = tokens[:, :, t]
            i = torch.sigmoid(x @ Ui + h @ Wi + bi)
            f = torch.sigmoid(x @ Uf + h @ Wf + bf)
            o = torch.sigmoid(x @ Uo + h @ Wo + bo)
            g = torch.tanh(x @ Ug + h @ Wg + bg)
            c = f * c + i * g
            h = o * torch.tanh(c)
            feats.append(h)
    else:  # pragma: no cover
        raise TypeError(layer)
    return torch.stack(feats, -2)


@finite_twin(RNN, GRU, LSTM)
def recurrent_twin(layer: RecurrentLayer, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    if ctx.input_shape is None or len(ctx.input_shape) != 2:
        raise ValueError(f"{layer.describe()}: the ensemble needs input_shape=(T, D)")
    m, k, _ = h.shape
    T, D = ctx.input_shape
    tokens, lengths = split_sequences(h.reshape(m, k, T, D), layer.masked)
    (wu, b), (ww, _), (wv, bv) = [ctx.variances(layer, w, bb) for w, bb in layer.slot_requests()]
    n = layer.width or ctx.width
    feats = recurrent_features(layer, tokens, ctx, wu, b, ww, n)
    weights = readout_weights(lengths, T, layer.readout, feats.dtype)  # (M, k, T)
    phi = (weights.unsqueeze(-1) * feats).sum(-2)  # (M, k, n)
    if ctx.sampler == "gram":
        return gram_conditional_preactivations(phi, n, wv, bv, ctx)
    v = ctx.randn(m, n, n) * math.sqrt(wv / n)
    beta = ctx.randn(m, 1, n) * math.sqrt(bv)
    return phi @ v + beta

"""Finite twins of the recurrent layers: RNN, erf-gated GRU, standard sigmoid/tanh LSTM.

Weights are drawn ONCE per network and literally shared across time steps (``U ~ N(0, σu²/d)``,
``W ~ N(0, σw²/n)``, ``b ~ N(μ_b, σb²)``, one set per gate, each gate with its own variances and bias mean
where the description gives them: :meth:`~nngp_gpytorch.arch.recurrent.GatedLayer.gate_values`). All ``T``
steps are run on the padded inputs
(causality makes padded steps harmless) and each sequence is read at its own length with the same
readout weights as the kernel (:func:`nngp_gpytorch.sequences.readout_weights`).

The readout ``f = v·Φ_read·σv/√n + σvb·β`` has ``n`` output units: literal weights with the literal
sampler, or — exactly equivalent given ``Φ_read`` — Gram-conditional draws ``N(0, σv²ΦΦᵀ/n + σvb²)``
with the ``gram`` sampler. (The description holds its own readout, so ``sample_ensemble`` averages the
units: ``C_m = (1/n)·Σ_units f fᵀ``.)

**Record mode** (``ctx.record_affine``, for the empirical NTK of :mod:`verification.ntk`): weights are
literal and every affine map is kept as an :class:`~verification.twins.registry.AffineRecord` whose
positions are the ``T`` time steps: per gate, the input map ``U`` (inputs ``x_t`` ``(M, k, T, d)``, with
the gate's bias ``b``), and the hidden map ``W`` (inputs ``φ(h_{t−1})`` for the RNN, ``h_{t−1}`` for the
LSTM and the GRU's z, r gates, ``h_{t−1} ⊙ r_t`` for the GRU candidate; zeros at ``t = 0``), both with
the list of the gate's ``T`` pre-activations as outputs. The weights are shared over time, so the
δ-trick's double sum ``Σ_{t,s}(a_t·a'_s)(δ_t·δ'_s)`` over steps holds the cross-time terms. Padded steps
(``t ≥ L``) do not reach the readout (causality, zero readout weight), so their ``δ_t`` vanish. The
readout ``v`` (inputs ``Φ_read`` ``(M, k, n)``) is recorded last, marked ``readout=True``.
"""

from __future__ import annotations

import math

import torch

from nngp_gpytorch.arch.recurrent import GRU, LSTM, RNN, GatedLayer, RecurrentLayer
from nngp_gpytorch.numerics import erf_gate
from nngp_gpytorch.sequences import readout_weights, split_sequences

from .dense import gram_conditional_preactivations
from .registry import AffineRecord, TwinContext, finite_twin


def gate_variances(layer: RecurrentLayer, wu: float, b: float, ww: float) -> list[tuple[float, float, float, float]]:
    """Per gate ``(σu², σw², σb², μ_b)`` as floats (the RNN: one gate with the slot values and mean 0)."""
    if isinstance(layer, GatedLayer):
        return [tuple(float(v) for v in row) for row in layer.gate_values(wu, b, ww)]
    return [(wu, ww, b, 0.0)]


def _affine_maps(ctx: TwinContext, m: int, d: int, n: int, gates: list[tuple[float, float, float, float]]):
    """Per gate: input weights ``(M, d, n)``, hidden weights ``(M, n, n)``, bias ``(M, 1, n)`` ``~ N(μ, σb²)``."""
    out = []
    for wu, ww, b, mean in gates:
        U = ctx.randn(m, d, n) * math.sqrt(wu / d)
        W = ctx.randn(m, n, n) * math.sqrt(ww / n)
        bias = ctx.randn(m, 1, n) * math.sqrt(b)
        if mean:
            bias = bias + mean
        out.append((U, W, bias))
    return out




class _GateRecorder:
    """Per-step inputs and pre-activation of one gate, turned into two :class:`AffineRecord` (``U``/``b`` and ``W``)."""

    def __init__(self) -> None:
        self.xs: list[torch.Tensor] = []
        self.hs: list[torch.Tensor] = []
        self.outs: list[torch.Tensor] = []

    def flush(self, ctx: TwinContext, wu: float, b: float, ww: float, d: int, n: int) -> None:
        ctx.records.append(AffineRecord(torch.stack(self.xs, -2), self.outs, wu, b, d))
        ctx.records.append(AffineRecord(torch.stack(self.hs, -2), self.outs, ww, 0.0, n))


def _preactivation(gate, x: torch.Tensor, hin: torch.Tensor | None, rec: _GateRecorder | None,
                   bias_first: bool = False) -> torch.Tensor:
    """``x·U + hin·W + b`` ``(M, k, n)`` (no hidden term when ``hin`` is ``None``), recorded when ``rec`` is given.

    ``bias_first`` only fixes the floating-point summation order (``(x·U + b) + hin·W``, the RNN's)."""
    U, W, bias = gate
    pre = x @ U
    if bias_first:
        pre = pre + bias
    if hin is not None:
        pre = pre + hin @ W
    if not bias_first:
        pre = pre + bias
    if rec is not None:
        if not pre.requires_grad:  # first step: no path from an earlier record; make it a graph leaf
            pre.requires_grad_(True)
        rec.xs.append(x)
        rec.hs.append(torch.zeros(*x.shape[:-1], W.shape[-1], dtype=x.dtype, device=x.device) if hin is None else hin)
        rec.outs.append(pre)
    return pre


def recurrent_features(layer: RecurrentLayer, tokens: torch.Tensor, ctx: TwinContext, wu: float, b: float,
                       ww: float, n: int) -> torch.Tensor:
    """Per-step features that the readout reads, ``(M, k, T, n)``: ``φ(h_t)`` for the RNN, ``h_t`` for
    the GRU and LSTM. ``tokens``: ``(M, k, T, d)``. With ``ctx.record_affine`` every gate's ``U`` and ``W``
    maps are appended to ``ctx.records`` (positions = the ``T`` steps; see the module docstring)."""
    m, k, T, d = tokens.shape
    values = gate_variances(layer, wu, b, ww)
    gates = len(values)
    maps = _affine_maps(ctx, m, d, n, values)
    recs = [_GateRecorder() for _ in range(gates)] if ctx.record_affine else [None] * gates
    feats = recurrent_steps(layer, tokens, maps, recs)
    for rec, (gu, gw, gb, _) in zip(recs, values, strict=True):
        if rec is not None:
            rec.flush(ctx, gu, gb, gw, d, n)
    return torch.stack(feats, -2)


def recurrent_steps(layer: RecurrentLayer, tokens: torch.Tensor, maps: list, recorders: list | None = None
                    ) -> list[torch.Tensor]:
    """The cell's recursion over given weights: the features ``[f_1, …, f_T]`` the readout reads, each
    ``(M, k, n)`` (``φ(h_t)`` for the RNN, ``h_t`` for the GRU and LSTM; equations in :mod:`nngp_gpytorch.arch.
    recurrent`). ``tokens``: ``(M, k, T, d)``; ``maps``: per gate (in :func:`gate_variances`' order) input weights
    ``(M, d, n)``, hidden weights ``(M, n, n)`` and bias ``(M, 1, n)``, random here and trainable parameters in
    ``experiments/lee2018_width.py``'s finite networks; ``recorders``: per gate, or ``None``."""
    m, k, T, _ = tokens.shape
    n = maps[0][0].shape[-1]
    recs = [None] * len(maps) if recorders is None else recorders
    feats = []
    if isinstance(layer, RNN):
        prev = None
        for t in range(T):
            prev = layer.activation(_preactivation(maps[0], tokens[:, :, t], prev, recs[0], bias_first=True))
            feats.append(prev)
    elif isinstance(layer, GRU):
        h = torch.zeros(m, k, n, dtype=tokens.dtype, device=tokens.device)
        for t in range(T):
            x, hin = tokens[:, :, t], (h if t > 0 else None)
            z = erf_gate(_preactivation(maps[0], x, hin, recs[0]))
            r = erf_gate(_preactivation(maps[1], x, hin, recs[1]))
            cand = torch.erf(_preactivation(maps[2], x, None if t == 0 else h * r, recs[2]))
            h = (1 - z) * h + z * cand
            feats.append(h)
    elif isinstance(layer, LSTM):
        h = torch.zeros(m, k, n, dtype=tokens.dtype, device=tokens.device)
        c = torch.zeros_like(h)
        for t in range(T):
            x, hin = tokens[:, :, t], (h if t > 0 else None)
            i = torch.sigmoid(_preactivation(maps[0], x, hin, recs[0]))
            f = torch.sigmoid(_preactivation(maps[1], x, hin, recs[1]))
            o = torch.sigmoid(_preactivation(maps[2], x, hin, recs[2]))
            g = torch.tanh(_preactivation(maps[3], x, hin, recs[3]))
            c = f * c + i * g
            h = o * torch.tanh(c)
            feats.append(h)
    else:  # pragma: no cover
        raise TypeError(layer)
    return feats


@finite_twin(RNN, GRU, LSTM)
def recurrent_twin(layer: RecurrentLayer, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    """Finite recurrent network with its readout: ``(M, k, T·D)`` → ``(M, k, n)`` (``n`` readout units)."""
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
    if ctx.exact_readout_of is layer and not ctx.record_affine:
        ctx.readout_variances = (wv, bv)  # the ensemble averages the readout exactly
        return phi
    if ctx.sampler == "gram" and not ctx.record_affine:
        return gram_conditional_preactivations(phi, n, wv, bv, ctx)
    v = ctx.randn(m, n, n) * math.sqrt(wv / n)
    beta = ctx.randn(m, 1, n) * math.sqrt(bv)
    out = phi @ v + beta
    if ctx.record_affine:
        ctx.records.append(AffineRecord(phi, out, wv, bv, n, readout=True))
    return out

"""Kernel rule of the LSTM (NNGP), derived with the tensor-program master theorem (Yang 2019).

Cell (standard, logistic gates σ, tanh): ``c_t = σ(f̃_t)⊙c_{t−1} + σ(ĩ_t)⊙tanh(g̃_t)``,
``h_t = σ(õ_t)⊙tanh(c_t)``, ``h_0 = c_0 = 0``, each gate pre-activation ``ũ_t = U x_t + W h_{t−1} + b``
with its own ``U, W, b`` shared over time.

Limit. Per hidden unit the four gate families are independent Gaussian processes over (sequence, step)
— different weight matrices give independent G-variables; reusing one matrix over time correlates the
steps — each with covariance ``Σ(t,s) = σu²·C(t,s) + σw²·K(t−1,s−1) + σb²`` where
``K(t,s) = lim ⟨h_t, h'_s⟩/n`` and ``C`` is the token Gram. Because the output gate is independent of
the cell state,

    K(t,s) = E[σ(õ_t)σ(õ'_s)] · E[tanh(c_t)·tanh(c'_s)].

The first factor is the 2-D sigmoid dual (Gauss–Hermite). The second depends on the ``3·(t+s)``-
dimensional Gaussian of the ``i, f, g`` families on both sequences: it is computed by running the cell
recursion on a fixed scrambled Sobol sample of that limiting Gaussian (:class:`~.orthant.InterleavedGaussian`,
revealed step by step because Σ at step ``ℓ`` needs ``K`` at ``ℓ − 1``). The result is deterministic;
its error is that of the QMC rule, ``~N^-1`` for this smooth integrand (measured in docs/recurrent.md);
``LSTM(samples=…)`` is the knob. Cost ``O(P·N·T²)`` for ``P`` pairs of length ``T``.
"""

from __future__ import annotations

import functools

import torch

from ..arch import Sigmoid
from ..arch.recurrent import LSTM
from .orthant import InterleavedGaussian
from .recurrent import SequencePair, _gated_tables, gated_output, pair_block, recurrent_variances, same_inputs
from .registry import RuleContext, kernel_rule
from .state import CovState


def lstm_tables(c, c11, c22, k11, k22, wu, b, ww, normals, sig_dual=None) -> torch.Tensor:
    """Hidden-state kernel ``K(t, s)`` ``(P, T, T)`` of the LSTM for ``P`` pairs (self or cross mode,
    same arguments as :func:`~.recurrent.gru_tables`; ``normals`` ``(N, 3·T)`` or ``(N, 6·T)``)."""
    self_mode = k11 is None
    T = c.shape[-1]
    per = T if self_mode else 2 * T
    samplers = [InterleavedGaussian(normals[:, i * per:(i + 1) * per], self_mode) for i in range(3)]
    K: dict = {}
    Z: dict = {}
    tau1: list = []
    tau2: list = []
    cell1 = cell2 = None

    def kprev(t, s):
        if t == 0 or s == 0:
            return torch.zeros_like(c[:, 0, 0])
        return K[(t - 1, s - 1)]

    def sigma(t, s):
        if (t, s) not in Z:
            Z[(t, s)] = wu * c[:, t, s] + ww * kprev(t, s) + b
        return Z[(t, s)]

    if not self_mode:
        def self_sigma(cc, kk):
            kp = torch.zeros_like(cc)
            kp[:, 1:, 1:] = kk[:, :-1, :-1]
            return wu[:, None, None] * cc + ww[:, None, None] * kp + b[:, None, None]

        z11, z22 = self_sigma(c11, k11), self_sigma(c22, k22)

    def diag1(t):
        return sigma(t, t) if self_mode else z11[:, t, t]

    def diag2(s):
        return sigma(s, s) if self_mode else z22[:, s, s]

    for ell in range(T):
        if self_mode:
            cov = torch.stack([torch.stack([sigma(min(i, j), max(i, j)) for j in range(ell + 1)], -1)
                               for i in range(ell + 1)], -2)
            draws = [s.step(cov, None, None) for s in samplers]
        else:
            cov12 = torch.stack([torch.stack([sigma(i, j) for j in range(ell + 1)], -1) for i in range(ell + 1)], -2)
            a, bb = z11[:, : ell + 1, : ell + 1], z22[:, : ell + 1, : ell + 1]
            draws = [s.step(a, bb, cov12) for s in samplers]
        (i1, i2), (f1, f2), (g1, g2) = draws
        new1 = torch.sigmoid(i1) * torch.tanh(g1)
        new2 = torch.sigmoid(i2) * torch.tanh(g2)
        cell1 = new1 if cell1 is None else torch.sigmoid(f1) * cell1 + new1
        cell2 = new2 if cell2 is None else torch.sigmoid(f2) * cell2 + new2
        tau1.append(torch.tanh(cell1))
        tau2.append(tau1[-1] if self_mode else torch.tanh(cell2))
        for s in range(ell + 1):
            o = sig_dual.nngp_diag(diag1(ell)) if (self_mode and s == ell) else \
                sig_dual.nngp(diag1(ell), diag2(s), sigma(ell, s))
            K[(ell, s)] = o * (tau1[ell] * tau2[s]).mean(-1)
        for t in range(ell):
            K[(t, ell)] = K[(ell, t)] if self_mode else \
                sig_dual.nngp(diag1(t), diag2(ell), sigma(t, ell)) * (tau1[t] * tau2[ell]).mean(-1)
    return torch.stack([torch.stack([K[(t, s)] for s in range(T)], -1) for t in range(T)], -2)


@kernel_rule(LSTM)
def lstm_rule(layer: LSTM, state: CovState, ctx: RuleContext) -> CovState:
    if state.has_ntk:
        raise NotImplementedError(f"{layer.describe()}: the LSTM NTK is not implemented yet (NNGP only)")
    seq = SequencePair.from_state(layer, state)
    (wu, b), (ww, _), (wv, bv) = recurrent_variances(layer, ctx)
    fn = functools.partial(_lstm_flat, sig_dual=ctx.dual(Sigmoid()))
    fn.qmc_dims = lambda T, self_mode: 3 * (T if self_mode else 2 * T)
    symmetric = same_inputs(state)
    k12, k11, k22 = _gated_tables(layer, seq, wu, b, ww, fn, pair_block(layer.samples, seq.T), symmetric)
    return gated_output(layer, state, seq, k12, k11, k22, wv, bv, symmetric)


def _lstm_flat(c, c11, c22, k11, k22, wu, b, ww, normals, sig_dual):
    return lstm_tables(c, c11, c22, k11, k22, wu, b, ww, normals, sig_dual)

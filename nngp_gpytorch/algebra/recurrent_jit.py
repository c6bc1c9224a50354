r"""Compiled CPU loops of the Elman RNN's kernel (:func:`.recurrent.rnn_rule`): each pair of sequences in cache.

The rule's torch path loops over time in Python, each step a dozen element-wise passes over ``(n1, n2, T)``
tensors. Here one compiled loop (numba) takes each pair of sequences ``(a, b)`` through the whole recursion with
``O(T)`` scratch (the previous and the current row of the time-pair table), never forming a table:

* the diagonals (one sequence with itself, :func:`chain`): ``Σ_a(t,t) = σu²·C_a(t,t) + σb² + σw²·V̂_φ(Σ_a(t−1,t−1))``
  (``V̂_φ(k) = E[φ(u)²]``, ``u ~ N(0, k)``; no ``σw²`` term at ``t = 0``);
* row ``t`` of the pair table (:func:`rnn_pairs`): ``Σ(t,s) = σu²·C(t,s) + σb² + σw²·V(t−1,s−1)·[t,s>0]``
  with ``C(t,s) = x_t·x'_s/d`` (reference kernels.md, "Simple RNN"), then the dual
  ``V(t,s) = V_φ(Σ_a(t,t), Σ_b(s,s), Σ(t,s))`` and, with the NTK (NTK parameterization, weights shared over time
  accumulate; Alemohammad et al. 2021, "The recurrent neural tangent kernel"),
  ``Θ(t,s) = Σ(t,s) + σw²·Ḋ(t−1,s−1)·[t,s>0]`` and ``Ḋ(t,s) = V_φ'(Σ)(t,s)·Θ(t,s)``;
* the readout of each row as it is made: ``R_V = Σ_{t,s} w_a[t]·V(t,s)·w_b[s]`` and ``R_Θ`` likewise of ``Ḋ``
  (``w`` from :func:`~nngp_gpytorch.sequences.readout_weights`; the driver adds ``σv²``, ``σvb²``).

Rows and columns stop at each sequence's own length (the readout weights vanish beyond it and row ``t`` reads only
row ``t − 1``). The duals are the conv loops' (:mod:`.compiled_math`: ``erf_dual`` (Williams 1997), ``relu_dual``
(Cho & Saul 2009), polynomial ``arcsin``/``arccos`` within 1e-15 of libm), fed the per-step roots ``√v``, ``1/√v``
(0 where ``v = 0``: the correlation is then 0, as :func:`~nngp_gpytorch.duals.safe_math.correlation` sets it)
and ``1/√(1 + 2v)`` of the diagonals. The torch path's identity convention is kept: ``c = 1`` exactly at ``(t, t)``
where the two sequences' prefixes up to ``t`` coincide (``same12`` there), at every ``(t, t)`` of a self pair.
Each row is one branch-free pass over ``s`` (the affine map, the dual, ``Θ``, the readout's column sums), which
vectorizes. Everything is float64.

numba's cache (``jit_function``) keys these loops on this file only: after a change to the duals in
:mod:`.compiled_math` (inlined here), touch this file (or clear ``__pycache__``) so that they are recompiled.
"""

from __future__ import annotations

import math

import numpy as np

from .compiled_math import AVAILABLE, erf_dual, jit_function, relu_dual

#: activation codes of the loops
IDENTITY, RELU, ERF = 0, 1, 2


@jit_function(nogil=True)
def chain(x, lengths, wu, b, ww, act, out):
    """Diagonals ``Σ(t,t)`` ``(n, T)`` into ``out`` for sequences ``x`` ``(n, T, d)`` (module docstring; steps at or
    beyond a sequence's length are computed too, on its zeroed tokens, as the torch path does). ``V̂_φ``: identity
    ``k``, ReLU ``k/2``, erf ``(2/π)·arcsin(2k/(1 + 2k))`` (libm's ``asin``: the torch path's ``nngp_diag``)."""
    n, T, d = x.shape[0], x.shape[1], x.shape[2]
    for i in range(n):
        prev = 0.0
        for t in range(T):
            c = 0.0
            for k in range(d):
                c += x[i, t, k] * x[i, t, k]
            s = wu * (c / d) + b
            if t > 0:
                if act == ERF:
                    v = (2.0 / math.pi) * math.asin(2.0 * prev / (1.0 + 2.0 * prev))
                elif act == RELU:
                    v = prev * 0.5
                else:
                    v = prev
                s = s + ww * v
            out[i, t] = s
            prev = s


@jit_function(inline="always")
def _prefix(x1, x2t, a, b, T):
    """Number of leading steps at which tokens ``x1[a, t]`` and ``x2[b, t]`` are equal (``x2t`` is ``(n, d, T)``)."""
    d = x1.shape[2]
    for t in range(T):
        for k in range(d):
            if x1[a, t, k] != x2t[b, k, t]:
                return t
    return T


@jit_function(inline="always")
def _keep(row, col, s, wt, value):
    """``row[s + 1] = value`` (the table's current row) and the readout's column sum ``col[s] += wt·value``."""
    row[s + 1] = value
    col[s] += wt * value


@jit_function(nogil=True)
def rnn_pairs(x1, x2t, ia, ib, self_pairs, len1, len2, q1, iq1, r1, q2, iq2, r2, w1, w2, wu, b, ww, act, snap, ntk,
              out_k, out_t):
    """Readouts ``(R_V, R_Θ)`` (module docstring) of the pairs ``(x1[ia[m]], x2[ib[m]])`` into ``out_k``, ``out_t``
    ``(m,)``.

    ``x1`` ``(n1, T, d)``, ``x2t`` ``(n2, d, T)`` (the second side's tokens transposed: rows contiguous in time);
    ``self_pairs``: every pair is a sequence with itself (``c = 1`` on the whole diagonal, the torch path's self
    tables); ``len1``, ``len2`` lengths; ``q``, ``iq``, ``r`` ``(n, T)``: ``√v``, ``1/√v`` (0 at ``v = 0``),
    ``1/√(1 + 2v)`` of the diagonals ``v = Σ(t,t)``; ``w1``, ``w2`` ``(n, T)`` readout weights; ``wu``, ``b``, ``ww``:
    ``σu²``, ``σb²``, ``σw²``; ``act``: :data:`IDENTITY`, :data:`RELU` or :data:`ERF`; ``snap``: ReLU correlations
    with ``|c| ≥ snap`` become ±1 (``1 − 8·eps`` with the NTK, else 2); ``ntk``: also ``R_Θ`` (else ``out_t`` is
    left alone)."""
    T, d = x1.shape[1], x1.shape[2]
    c = np.empty(T)  # C(t, s) of the current row
    pv, cv = np.zeros(T + 1), np.zeros(T + 1)  # V(t−1, s−1) at [s] (so [0] = 0: no recurrent term at s = 0)
    pt, ct = np.zeros(T + 1), np.zeros(T + 1)  # Ḋ likewise
    col_k, col_t = np.empty(T), np.empty(T)  # Σ_t w_a[t]·V(t, s) and Σ_t w_a[t]·Ḋ(t, s) so far
    for m in range(ia.shape[0]):
        a, bb = ia[m], ib[m]
        la, lb = len1[a], len2[bb]
        same = T if self_pairs else _prefix(x1, x2t, a, bb, min(la, lb))
        pv[:] = 0.0
        pt[:] = 0.0
        col_k[:] = 0.0
        col_t[:] = 0.0
        qb, iqb, rb, wb = q2[bb], iq2[bb], r2[bb], w2[bb]
        for t in range(la):
            xv, row = x1[a, t, 0], x2t[bb, 0]
            for s in range(lb):
                c[s] = xv * row[s]
            for k in range(1, d):  # C(t, s)·d: the token dot products, vectorized along s
                xv, row = x1[a, t, k], x2t[bb, k]
                for s in range(lb):
                    c[s] += xv * row[s]
            qa, iqa, ra, ident, wt = q1[a, t], iq1[a, t], r1[a, t], t < same, w1[a, t]
            # one pass per row: Σ(t, s), the dual, Θ and Ḋ, the readout's column sums (vectorized along s)
            if act == ERF:
                if ntk:
                    for s in range(lb):
                        sg = (wu * (c[s] / d) + b) + ww * pv[s]
                        kv, dv = erf_dual(sg, qa, iqa, ra, qb[s], iqb[s], rb[s], ident & (s == t))
                        _keep(cv, col_k, s, wt, kv)
                        _keep(ct, col_t, s, wt, dv * (sg + ww * pt[s]))
                else:
                    for s in range(lb):
                        sg = (wu * (c[s] / d) + b) + ww * pv[s]
                        _keep(cv, col_k, s, wt, erf_dual(sg, qa, iqa, ra, qb[s], iqb[s], rb[s], ident & (s == t))[0])
            elif act == RELU:
                if ntk:
                    for s in range(lb):
                        sg = (wu * (c[s] / d) + b) + ww * pv[s]
                        kv, dv = relu_dual(sg, qa, iqa, qb[s], iqb[s], snap, ident & (s == t))
                        _keep(cv, col_k, s, wt, kv)
                        _keep(ct, col_t, s, wt, dv * (sg + ww * pt[s]))
                else:
                    for s in range(lb):
                        sg = (wu * (c[s] / d) + b) + ww * pv[s]
                        _keep(cv, col_k, s, wt, relu_dual(sg, qa, iqa, qb[s], iqb[s], snap, ident & (s == t))[0])
            else:
                for s in range(lb):
                    sg = (wu * (c[s] / d) + b) + ww * pv[s]
                    _keep(cv, col_k, s, wt, sg)
                    if ntk:
                        _keep(ct, col_t, s, wt, sg + ww * pt[s])
            pv, cv = cv, pv
            pt, ct = ct, pt
        acc_k, acc_t = 0.0, 0.0
        for s in range(lb):
            acc_k += col_k[s] * wb[s]
        out_k[m] = acc_k
        if ntk:
            for s in range(lb):
                acc_t += col_t[s] * wb[s]
            out_t[m] = acc_t


__all__ = ["AVAILABLE", "ERF", "IDENTITY", "RELU", "chain", "rnn_pairs"]

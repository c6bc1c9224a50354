"""Kernel rules of the recurrent layers, shared part and the simple RNN (NNGP + NTK).

Inputs follow :mod:`nngp_gpytorch.sequences`: ``state.inputs`` holds ``(..., n, T, D)``; each sequence is
read at its own length. Every rule is self-contained: it loops over time, builds the per-step tables
``K(t, s)`` for every pair of sequences, applies the readout and returns a flat Gaussian state. The gated
layers live in :mod:`.gated` (what GRU and LSTM share), :mod:`.gru` and :mod:`.lstm`; the per-step output
kernel of any recurrent layer in :mod:`.per_step`.

Layouts: a *pair table* has shape ``(..., n1, n2, T, T)`` (full) or ``(..., n, T, T)`` (``diag``); a
*self table* (one sequence with itself) ``(..., n, T, T)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arch.recurrent import RNN, RecurrentLayer
from ..sequences import readout_weights, split_sequences
from .orthant import DEFAULT_SAMPLES
from .recurrent_compiled import rnn_compiled
from .registry import RuleContext, kernel_rule
from .state import CovState

#: run the simple RNN through the compiled loops of :mod:`.recurrent_jit` where they apply (numba installed, a CPU,
#: no autograd, a ReLU, erf or identity activation, no ``batch_shape``); False: always the torch path
COMPILED = True


def bp(p: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a ``batch_shape`` hyperparameter with ``ndim`` trailing singleton axes."""
    return p.reshape(*p.shape, *([1] * ndim))


@dataclass
class SequencePair:
    """Both input sets of a recurrent rule, read with the sequence convention.

    ``c12``: pair table of token Grams ``x_t·x'_s/d``; ``c11``, ``c22``: self tables; ``w1``, ``w2``:
    readout weights ``(..., n, T)``; ``diag``: pair layout; ``identical``: whole-sequence identity mask
    of the pairs; ``same12``: ``(…, T, T)`` bool, True where the two prefixes up to ``t = s`` coincide.
    """

    c12: torch.Tensor
    c11: torch.Tensor
    c22: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    len1: torch.Tensor
    len2: torch.Tensor
    diag: bool
    identical: torch.Tensor
    same12: torch.Tensor
    T: int

    @classmethod
    def from_state(cls, layer: RecurrentLayer, state: CovState) -> SequencePair:
        if state.inputs is None:
            raise ValueError(f"{layer.describe()} needs structured inputs: give the kernel input_shape=(T, D)")
        x1, x2 = state.inputs
        tok1, len1 = split_sequences(x1, layer.masked)
        tok2, len2 = split_sequences(x2, layer.masked)
        T, d = tok1.shape[-2], tok1.shape[-1]
        diag = state.entry_ndim == 1
        c11 = tok1 @ tok1.transpose(-1, -2) / d
        c22 = tok2 @ tok2.transpose(-1, -2) / d
        if diag:
            c12 = tok1 @ tok2.transpose(-1, -2) / d
            eq = (tok1 == tok2).all(-1)  # (..., n, T)
        else:
            c12 = torch.einsum("...itd,...jsd->...ijts", tok1, tok2) / d
            eq = (tok1.unsqueeze(-3) == tok2.unsqueeze(-4)).all(-1)  # (..., n1, n2, T)
        prefix = eq.long().cumprod(-1).bool()
        eye = torch.eye(T, dtype=torch.bool, device=tok1.device)
        same12 = prefix.unsqueeze(-1) & eye
        w1 = readout_weights(len1, T, layer.readout, c12.dtype)
        w2 = readout_weights(len2, T, layer.readout, c12.dtype)
        return cls(c12, c11, c22, w1, w2, len1, len2, diag, state.identical, same12, T)

    def read(self, table: torch.Tensor) -> torch.Tensor:
        """Readout of a pair table: ``Σ_{t,s} w1[t]·table[t,s]·w2[s]`` → ``(..., n1, n2)`` or ``(..., n)``."""
        if self.diag:
            return torch.einsum("...it,...its,...is->...i", self.w1, table, self.w2)
        return torch.einsum("...it,...ijts,...js->...ij", self.w1, table, self.w2)

    @staticmethod
    def read_self(table: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...it,...its,...is->...i", w, table, w)

    def side(self, x: torch.Tensor, which: int, rest: int = 2) -> torch.Tensor:
        """Broadcast a per-sequence quantity ``(..., n, *rest)`` (``rest`` trailing axes) of side 1 or 2 to
        the pair layout."""
        if self.diag:
            return x
        return x.unsqueeze(-rest - 1) if which == 1 else x.unsqueeze(-rest - 2)

    def output_state(self, state: CovState, k12, k11, k22, t12=None, t11=None, t22=None) -> CovState:
        if not self.diag:
            k11, k22 = k11.unsqueeze(-1), k22.unsqueeze(-2)
            if t11 is not None:
                t11, t22 = t11.unsqueeze(-1), t22.unsqueeze(-2)
        return state.replace(k12=k12, k11=k11, k22=k22, t12=t12, t11=t11, t22=t22, inputs=None, gaussian=True)


def recurrent_variances(layer: RecurrentLayer, ctx: RuleContext):
    """``((σu², σb²), (σw², ·), (σv², σvb²))`` in the slot order of :class:`RecurrentLayer`."""
    return tuple(ctx.variances(layer, w, b) for w, b in layer.slot_requests())


# --- simple RNN ------------------------------------------------------------------------------------

def rnn_chain(cdiag: torch.Tensor, wu, b, ww, dual, with_ntk: bool):
    """Per-sequence diagonal ``Σ(t,t)`` (and ``Θ(t,t)``): ``Σ(t,t) = σw²·V_φ(Σ(t−1,t−1)) + σu²·C(t,t) + σb²``.

    ``cdiag`` ``(..., n, T)``; hyperparameters ``batch_shape``. Returns ``(..., n, T)`` tensors.
    """
    sig, th = [], []
    for t in range(cdiag.shape[-1]):
        s = bp(wu, 1) * cdiag[..., t] + bp(b, 1)
        if t > 0:
            s = s + bp(ww, 1) * dual.nngp_diag(sig[-1])
        sig.append(s)
        if with_ntk:
            th.append(s if t == 0 else s + bp(ww, 1) * dual.ntk_diag(sig[-2]) * th[-1])
    return torch.stack(sig, -1), (torch.stack(th, -1) if with_ntk else None)


def rnn_table(c: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, same: torch.Tensor, wu, b, ww, dual,
              with_ntk: bool, entry_ndim: int):
    """Pair table of the RNN: ``Σ(t,s) = σw²·V_φ(Σ)(t−1,s−1)·[t,s>0] + σu²·C(t,s) + σb²`` and
    ``Θ(t,s) = Σ(t,s) + σw²·V_φ'(Σ)(t−1,s−1)·Θ(t−1,s−1)`` (weights shared over time accumulate; NTK
    parameterization, Alemohammad et al. 2021, "The recurrent neural tangent kernel").

    ``c`` ``(..., T, T)``; ``s1`` ``(..., T)``, ``s2`` ``(..., T)`` the diagonals of each side;
    ``same`` bool ``(..., T, T)``. ``entry_ndim``: axes of a row ``c[..., t, :]`` that are not batch axes.
    Returns ``(V, V'⊙Θ)`` tables (``None`` for the second without NTK).
    """
    T = c.shape[-1]
    vs, dts = [], []
    prev_v = prev_dt = None
    zero = torch.zeros_like(c[..., 0, :1])
    for t in range(T):
        sig = bp(wu, entry_ndim) * c[..., t, :] + bp(b, entry_ndim)
        if t > 0:
            sig = sig + bp(ww, entry_ndim) * torch.cat([zero.expand_as(prev_v[..., :1]), prev_v[..., :-1]], -1)
        k11 = s1[..., t: t + 1]
        v = dual.nngp(k11, s2, sig, same[..., t, :])
        vs.append(v)
        if with_ntk:
            th = sig
            if t > 0:
                th = sig + bp(ww, entry_ndim) * torch.cat([zero.expand_as(prev_dt[..., :1]), prev_dt[..., :-1]], -1)
            dt = dual.ntk(k11, s2, sig, same[..., t, :]) * th
            dts.append(dt)
            prev_dt = dt
        prev_v = v
    return torch.stack(vs, -2), (torch.stack(dts, -2) if with_ntk else None)


@kernel_rule(RNN)
def rnn_rule(layer: RNN, state: CovState, ctx: RuleContext) -> CovState:
    variances = recurrent_variances(layer, ctx)
    if COMPILED:  # the compiled loops where they apply (:mod:`.recurrent_compiled`), else the torch path below
        compiled = rnn_compiled(layer, state, variances)
        if compiled is not None:
            return compiled
    seq = SequencePair.from_state(layer, state)
    (wu, b), (ww, _), (wv, bv) = variances
    dual = ctx.dual(layer.activation)
    ntk = state.has_ntk
    T = seq.T
    d1, _ = rnn_chain(seq.c11.diagonal(dim1=-2, dim2=-1), wu, b, ww, dual, False)
    d2, _ = rnn_chain(seq.c22.diagonal(dim1=-2, dim2=-1), wu, b, ww, dual, False)
    nd = 2 if seq.diag else 3
    v12, dt12 = rnn_table(seq.c12, seq.side(d1, 1, 1), seq.side(d2, 2, 1), seq.same12, wu, b, ww, dual, ntk, nd)
    k12 = bp(wv, nd - 1) * seq.read(v12) + bp(bv, nd - 1)
    t12 = k12 + bp(wv, nd - 1) * seq.read(dt12) if ntk else None
    eye = torch.eye(T, dtype=torch.bool, device=seq.c11.device)
    sides = []
    for c, dd, w in ((seq.c11, d1, seq.w1), (seq.c22, d2, seq.w2)):
        v, dt = rnn_table(c, dd, dd, eye, wu, b, ww, dual, ntk, 2)
        k = bp(wv, 1) * seq.read_self(v, w) + bp(bv, 1)
        sides.append((k, k + bp(wv, 1) * seq.read_self(dt, w) if ntk else None))
    (k11, t11), (k22, t22) = sides
    return seq.output_state(state, k12, k11, k22, t12, t11, t22)


__all__ = ["DEFAULT_SAMPLES", "SequencePair", "bp", "recurrent_variances", "rnn_chain", "rnn_rule", "rnn_table"]

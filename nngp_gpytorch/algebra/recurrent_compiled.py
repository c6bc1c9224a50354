"""The driver of the Elman RNN's compiled loops (:mod:`.recurrent_jit`): when they apply, and their calls over threads.

:func:`rnn_compiled` is :func:`.recurrent.rnn_rule`'s fast path. It applies on a CPU, in float32 or float64, to a
ReLU, erf or identity RNN whose inputs carry no batch axes and whose hyperparameters are scalars (no
``batch_shape``), when nothing autograd must see requires a gradient; otherwise it returns None and the rule
runs its torch path. Masked (variable-length) sequences, both readouts, ``diag`` and the NTK are all handled.
Float32 inputs are computed in float64 and the results rounded once.

Pairs are split over ``torch.get_num_threads()`` threads (the loops release the GIL; each thread writes its own slice
of the result). ``K(X, X)`` (both sides the same tensor) computes the pairs ``i ≤ j`` only and reads ``K(x, x)``
off the diagonal pairs. Memory: per thread ``O(T)`` scratch, per call ``O(n·T·D)`` inputs and the ``(n1, n2)``
results; no ``(n1, n2, T)`` tensor is formed. A content-keyed cache (:data:`SIDES`, :mod:`.side_cache`) keeps the
per-side arrays and ``K(x, x)`` between calls (the kernel base's tiles, a preconditioner's rows).
"""

from __future__ import annotations

import numpy as np
import torch

from ..arch import Erf, Identity, ReLU
from ..arch.recurrent import RNN
from ..sequences import readout_weights, split_sequences
from . import recurrent_jit as jit
from .conv_stack_compiled import thread_pool
from .side_cache import SideCache, content_key
from .state import CovState, same_tensor

#: the loops' activation codes
CODES = {ReLU: jit.RELU, Erf: jit.ERF, Identity: jit.IDENTITY}


def _scalars(variances) -> list[float] | None:
    """``[σu², σb², σw², σv², σvb²]`` as floats, or None if any has a ``batch_shape``."""
    (wu, b), (ww, _), (wv, bv) = variances
    values = (wu, b, ww, wv, bv)
    if any(v.dim() != 0 for v in values):
        return None
    return [float(v) for v in values]


def _applies(layer: RNN, state: CovState, variances) -> bool:
    """The loops' domain (module docstring)."""
    if state.inputs is None or type(layer.activation) not in CODES:
        return False
    x1, x2 = state.inputs
    if x1.device.type != "cpu" or x1.dtype not in (torch.float32, torch.float64) or x1.dim() != 3 or x2.dim() != 3:
        return False
    tensors = [x1, x2] + [v for pair in variances for v in pair]
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


class _Side:
    """One side's arrays: tokens ``(n, T, d)`` and transposed ``(n, d, T)``, lengths, readout weights, and the
    roots ``√v``, ``1/√v`` (0 at ``v = 0``), ``1/√(1 + 2v)`` of its diagonals ``v = Σ(t,t)``
    (:func:`.recurrent_jit.chain`)."""

    def __init__(self, x: torch.Tensor, layer: RNN, wu: float, b: float, ww: float, act: int):
        tokens, lengths = split_sequences(x.detach(), layer.masked)
        T = tokens.shape[-2]
        self.x = np.ascontiguousarray(tokens.double().numpy())
        self.xt = np.ascontiguousarray(self.x.transpose(0, 2, 1))
        self.w = readout_weights(lengths, T, layer.readout, torch.float64).numpy()
        # the loops stop at each sequence's length: past it its readout weights vanish (checked here, so that a
        # readout weighting later steps would still be read in full)
        weighted = self.w != 0
        reach = np.where(weighted.any(-1), T - np.argmax(weighted[:, ::-1], axis=-1), 1)
        self.lengths = np.maximum(lengths.numpy(), reach).astype(np.int64)
        v = np.empty(self.x.shape[:2])
        jit.chain(self.x, self.lengths, wu, b, ww, act, v)
        v = np.maximum(v, 0.0)
        self.q = np.sqrt(v)
        self.iq = np.divide(1.0, self.q, out=np.zeros_like(v), where=v > 0)
        self.r = 1.0 / np.sqrt(1.0 + 2.0 * v)
        self.tiny = bool(((v > 0) & (v < np.finfo(np.float64).tiny)).any())
        self.own: tuple[np.ndarray, np.ndarray] | None = None  # (R_V, R_Θ) of each sequence with itself, once asked


#: sides kept for reuse with their ``K(x, x)`` (:mod:`.side_cache`: content-keyed, bounded by its settings): the
#: kernel base calls the rule once per tile, whose row and column blocks come back again and again, and a
#: preconditioner's kernel rows pair one sequence with the same training set ``k`` times.
SIDES = SideCache()


def _side(x: torch.Tensor, layer: RNN, hyper: list[float], act: int, ntk: bool) -> _Side:
    """The :class:`_Side` of inputs ``x``, from :data:`SIDES` where it holds them."""
    wu, b, ww = hyper[:3]
    key = content_key(x, layer.masked, layer.readout, wu, b, ww, act, ntk)
    return SIDES.fetch(key, lambda: _Side(x, layer, wu, b, ww, act))


def _run(s1: _Side, s2: _Side, ia: np.ndarray, ib: np.ndarray, self_pairs: bool, hyper: list[float], act: int,
         ntk: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(R_V, R_Θ)`` ``(m,)`` of the pairs ``(s1[ia], s2[ib])``, split over ``torch.get_num_threads()`` threads."""
    m = ia.shape[0]
    k, t = np.empty(m), np.empty(m)
    wu, b, ww = hyper[:3]
    snap = 1.0 - 8 * np.finfo(np.float64).eps if ntk else 2.0

    def run(lo: int, hi: int) -> None:
        jit.rnn_pairs(s1.x, s2.xt, ia[lo:hi], ib[lo:hi], self_pairs, s1.lengths, s2.lengths, s1.q, s1.iq, s1.r,
                      s2.q, s2.iq, s2.r, s1.w, s2.w, wu, b, ww, act, snap, ntk, k[lo:hi], t[lo:hi])

    threads = min(torch.get_num_threads(), m)
    if threads <= 1:
        run(0, m)
    else:
        bounds = np.linspace(0, m, threads + 1).astype(np.int64)
        list(thread_pool(threads).map(run, bounds[:-1], bounds[1:]))
    return k, t


def rnn_compiled(layer: RNN, state: CovState, variances) -> CovState | None:
    """The output state of :func:`.recurrent.rnn_rule` from the compiled loops, or None where they do not apply
    (module docstring; also when a diagonal variance is subnormal). ``variances``: the rule's
    :func:`.recurrent.recurrent_variances` (drawn once, by the rule)."""
    if not (jit.AVAILABLE and _applies(layer, state, variances)):
        return None
    hyper = _scalars(variances)
    if hyper is None:
        return None
    wu, b, ww, wv, bv = hyper
    act, ntk, diag = CODES[type(layer.activation)], state.has_ntk, state.entry_ndim == 1
    x1, x2 = state.inputs
    symmetric = same_tensor(x1, x2)
    s1 = _side(x1, layer, hyper, act, ntk)
    s2 = s1 if symmetric else _side(x2, layer, hyper, act, ntk)
    if s1.tiny or s2.tiny:
        return None
    n1, n2 = s1.x.shape[0], s2.x.shape[0]

    def own(side: _Side) -> tuple[np.ndarray, np.ndarray]:
        if side.own is None:
            idx = np.arange(side.x.shape[0], dtype=np.int64)
            side.own = _run(side, side, idx, idx, True, hyper, act, ntk)
        return side.own

    if diag:
        r11 = own(s1)
        r22 = r11 if symmetric else own(s2)
        idx = np.arange(n1, dtype=np.int64)
        r12 = r11 if symmetric else _run(s1, s2, idx, idx, False, hyper, act, ntk)
    elif symmetric:
        ia, ib = np.triu_indices(n1)
        ia, ib = ia.astype(np.int64), ib.astype(np.int64)
        k, t = _run(s1, s1, ia, ib, False, hyper, act, ntk)
        on = ia == ib
        r11 = r22 = (k[on], t[on])
        full_k, full_t = np.empty((n1, n1)), np.empty((n1, n1))
        full_k[ia, ib] = k
        full_k[ib, ia] = k
        full_t[ia, ib] = t
        full_t[ib, ia] = t
        r12 = (full_k, full_t)
    else:
        r11, r22 = own(s1), own(s2)
        ia = np.repeat(np.arange(n1, dtype=np.int64), n2)
        ib = np.tile(np.arange(n2, dtype=np.int64), n1)
        k, t = _run(s1, s2, ia, ib, False, hyper, act, ntk)
        r12 = (k.reshape(n1, n2), t.reshape(n1, n2))
    dtype = x1.dtype

    def out(r: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = wv * torch.from_numpy(r[0]) + bv
        t = k + wv * torch.from_numpy(r[1]) if ntk else None
        return k.to(dtype), (t.to(dtype) if ntk else None)

    (k12, t12), (k11, t11), (k22, t22) = out(r12), out(r11), out(r22)
    if not diag:
        k11, k22 = k11.unsqueeze(-1), k22.unsqueeze(-2)
        if ntk:
            t11, t22 = t11.unsqueeze(-1), t22.unsqueeze(-2)
    return state.replace(k12=k12, k11=k11, k22=k22, t12=t12, t11=t11, t22=t22, inputs=None, gaussian=True)


__all__ = ["CODES", "rnn_compiled"]

"""Kernel rules of the recurrent layers: simple RNN (NNGP + NTK) and the erf-gated GRU (NNGP).

Inputs follow :mod:`nngp_gpytorch.sequences`: ``state.inputs`` holds ``(..., n, T, D)``; each sequence is
read at its own length. Every rule is self-contained: it loops over time, builds the per-step tables
``K(t, s)`` for every pair of sequences, applies the readout and returns a flat Gaussian state.

Layouts: a *pair table* has shape ``(..., n1, n2, T, T)`` (full) or ``(..., n, T, T)`` (``diag``); a
*self table* (one sequence with itself) ``(..., n, T, T)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arch.recurrent import GRU, RNN, RecurrentLayer
from ..duals import ErfDual
from ..sequences import readout_weights, split_sequences
from .orthant import (
    DEFAULT_SAMPLES,
    InterleavedGaussian,
    gate,
    gate_dual,
    principal_factor,
    project_psd,
    qmc_entry_error_bound,
    qmc_normals,
)
from .registry import RuleContext, kernel_rule
from .state import CovState


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
    seq = SequencePair.from_state(layer, state)
    (wu, b), (ww, _), (wv, bv) = recurrent_variances(layer, ctx)
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


# --- erf-gated GRU ---------------------------------------------------------------------------------

def _flat(x: torch.Tensor, batch: torch.Size, lead: int) -> torch.Tensor:
    """Expand ``x`` to ``(*batch, *x.shape[-lead:])``'s broadcast and flatten the batch into one axis P."""
    x = x.expand(*batch, *x.shape[x.dim() - lead:])
    return x.reshape(-1, *x.shape[len(batch):])


def gru_tables(c: torch.Tensor, c11: torch.Tensor | None, c22: torch.Tensor | None,
               k11: torch.Tensor | None, k22: torch.Tensor | None, wu, b, ww,
               normals: torch.Tensor, control_variate: bool = False, method: str = "principal") -> torch.Tensor:
    """Hidden-state kernel ``K(t, s) = lim ⟨h_t, h'_s⟩/n`` of the erf-GRU for ``P`` pairs (Yang 2019).

    Self mode (``k11 is None``): one sequence with itself, ``c`` its token Gram ``(P, T, T)``.
    Cross mode: ``c`` the cross Gram, ``c11``/``c22`` the self Grams and ``k11``/``k22`` the self
    kernels (from self mode). Hyperparameters ``(P,)``; ``normals`` QMC points ``(N, T)`` or ``(N, 2T)``.

    Recursion (reference kernels.md "GRU", steps from 0, ``K(−1, ·) = 0``):
    ``Σ_z(t,s) = σu²C(t,s) + σw²K(t−1,s−1) + σb²`` (also Σ_r); ``R = E[ς ς]`` under Σ_r;
    ``Σ_h = σu²C + σw²K(t−1,s−1)·R + σb²``; ``S = E[erf erf]`` under Σ_h; and with
    ``ω(a,t) = ς(z_a)·Π_{a<k≤t}(1 − ς(z_k))``, ``K(t,s) = Σ_{a≤t,b≤s} E[ω(a,t) ω'(b,s)]·S(a,b)``.
    The gate expectation is computed per QMC point with ``Q(t,b) = (1−g_t)Q(t−1,b) + g_t S(t,b)`` and
    ``R(t,s) = (1−g'_s)R(t,s−1) + g'_s Q(t,s)`` (``K = mean R``): ``O(T²)`` per point and pair.

    ``method``: how the gate pre-activations are sampled at step ``ℓ`` (the covariance of the steps
    ``≤ ℓ`` is only known once ``K(ℓ−1, ·)`` is).

    * ``"principal"`` (default): at every step the samples of *all* steps ``≤ ℓ`` of both sequences
      are drawn afresh from the principal-component factor (:func:`~.orthant.principal_factor`) of
      their joint covariance (dimension ``2(ℓ+1)``; ``ℓ+1`` in self mode), so that the first, best
      distributed Sobol coordinates carry the directions of largest variance; the new row and column
      ``K(ℓ, s ≤ ℓ)``, ``K(t < ℓ, ℓ)`` are ``mean_N Σ_{a,b} ω(a,t) S(a,b) ω'(b,s)`` with the per-point
      weights ``ω`` recomputed from those samples: ``O(T²)`` per point, pair and step (one
      ``(N, m)×(m, m)`` product and ``m`` lerps), 3–4× more accurate than ``"interleaved"`` at equal
      ``N`` on 7×9-token pairs (docs/recurrent.md). The per-point arithmetic runs in float32 (3×
      faster; rounding ~1e-7·|K|, far below the QMC error) with float64 sums.
    * ``"interleaved"``: steps of both sequences interleaved, revealed by the growing Cholesky factor
      with fixed points (:class:`~.orthant.InterleavedGaussian`) and the ``Q``/``R`` recursions above.

    ``control_variate``: with ``g = ½ + δ`` (``δ = erf(z)/2``, zero mean) the recursions are expanded in
    powers of δ; the terms of order 1 and 2 are subtracted per point and replaced by their exact
    expectations (0 and ``Σ c_ij E[δ_iδ_j]`` with ``E[δ_iδ_j] = arcsin(2Σ_ij/√((1+2Σ_ii)(1+2Σ_jj)))/2π``),
    tracked by deterministic coefficient recursions (:class:`_Chain`). Exact for T = 1; on 7×9-token
    pairs it lowers the error only ~1.5–2× at ~2× the cost per point, hence off by default.
    """
    self_mode = k11 is None
    T = c.shape[-1]
    erf = ErfDual()
    wu, b, ww = wu[:, None], b[:, None], ww[:, None]
    K: dict = {}  # (t, s) -> (P,)
    Z: dict = {}  # Σ_z(t, s)
    S: dict = {}
    Q: dict = {}  # (t, b) -> (P, N)
    R: dict = {}
    g1: list = []
    g2: list = []
    sampler = InterleavedGaussian(normals, self_mode) if (method != "principal" or control_variate) else None
    pdt = torch.float32  # per-point arithmetic of the principal method (rounding ~1e-7·|K| ≪ QMC error)
    pnormals = normals.to(pdt)
    P = c.shape[0]
    V = T if self_mode else 2 * T
    z11 = z22 = cov12 = cov = None

    def kprev(t, s, table=None):
        if t == 0 or s == 0:
            return torch.zeros_like(c[:, 0, 0])
        return K[(t - 1, s - 1)] if table is None else table[:, t - 1, s - 1]

    def sigma_z(t, s):
        if (t, s) not in Z:
            Z[(t, s)] = wu[:, 0] * c[:, t, s] + ww[:, 0] * kprev(t, s) + b[:, 0]
        return Z[(t, s)]

    def self_sigma(cc, kk):  # full Σ_z table of one side from its self kernel
        kp = torch.zeros_like(cc)
        kp[:, 1:, 1:] = kk[:, :-1, :-1]
        return wu[:, :, None] * cc + ww[:, :, None] * kp + b[:, :, None]

    if not self_mode:
        z11, z22 = self_sigma(c11, k11), self_sigma(c22, k22)
        zd1, zd2 = z11.diagonal(dim1=-2, dim2=-1), z22.diagonal(dim1=-2, dim2=-1)
        r11 = gate_dual(zd1, zd1, zd1)
        r22 = gate_dual(zd2, zd2, zd2)
        kd1 = torch.cat([torch.zeros_like(zd1[:, :1]), k11.diagonal(dim1=-2, dim2=-1)[:, :-1]], -1)
        kd2 = torch.cat([torch.zeros_like(zd2[:, :1]), k22.diagonal(dim1=-2, dim2=-1)[:, :-1]], -1)
        hd1 = wu * c11.diagonal(dim1=-2, dim2=-1) + ww * kd1 * r11 + b
        hd2 = wu * c22.diagonal(dim1=-2, dim2=-1) + ww * kd2 * r22 + b
    hd: dict = {}

    def s_block(pairs):
        """S(t, s) for a list of (t, s) index pairs at once: ``(P, len(pairs))``."""
        ts = [t for t, _ in pairs]
        ss = [s_ for _, s_ in pairs]
        z12 = torch.stack([sigma_z(t, s_) for t, s_ in pairs], -1)
        kp = torch.stack([kprev(t, s_) for t, s_ in pairs], -1)
        if self_mode:
            zt = torch.stack([sigma_z(t, t) for t in ts], -1)
            zs = torch.stack([sigma_z(s_, s_) for s_ in ss], -1)
            h11 = torch.stack([hd[t] for t in ts], -1)
            h22 = torch.stack([hd[s_] for s_ in ss], -1)
        else:
            zt, zs, h11, h22 = zd1[:, ts], zd2[:, ss], hd1[:, ts], hd2[:, ss]
        r = gate_dual(zt, zs, z12)
        h12 = wu * c[:, ts, ss] + ww * kp * r + b
        same = torch.tensor([self_mode and t == s_ for t, s_ in pairs], device=c.device)
        return erf.nngp(h11, h22, h12, same)

    for ell in range(T):
        # new gate samples at step ell
        if self_mode:
            hd[ell] = wu[:, 0] * c[:, ell, ell] + ww[:, 0] * kprev(ell, ell) * gate_dual(
                sigma_z(ell, ell), sigma_z(ell, ell), sigma_z(ell, ell)) + b[:, 0]
            cov = torch.stack([torch.stack([sigma_z(min(i, j), max(i, j)) for j in range(ell + 1)], -1)
                               for i in range(ell + 1)], -2)
        else:
            cov12 = torch.stack([torch.stack([sigma_z(i, j) for j in range(ell + 1)], -1)
                                 for i in range(ell + 1)], -2)
        if sampler is not None:
            y1, y2 = (sampler.step(cov, None, None) if self_mode else
                      sampler.step(z11[:, : ell + 1, : ell + 1], z22[:, : ell + 1, : ell + 1], cov12))
            g1.append(gate(y1))
            g2.append(g1[-1] if self_mode else gate(y2))
        # new S entries: row ell (s ≤ ell) and column ell (t < ell), in one batched dual evaluation
        pairs = [(ell, s) for s in range(ell + 1)] + ([] if self_mode else [(t, ell) for t in range(ell)])
        block = s_block(pairs)
        for i, key in enumerate(pairs):
            S[key] = block[:, i]
        if self_mode:
            for t in range(ell):
                S[(t, ell)] = S[(ell, t)]
        if method == "principal" and not control_variate:
            m = ell + 1
            # S with its rows in reverse step order (the samples of each side come newest step first)
            s_rev = torch.stack([torch.stack([S[(t, s_)] for s_ in range(m)], -1) for t in reversed(range(m))], -2)
            if self_mode:
                ga = gb = _principal_gates(cov, pnormals, 1)
            else:
                full = torch.cat([torch.cat([z11[:, :m, :m], cov12], -1),
                                  torch.cat([cov12.transpose(-1, -2), z22[:, :m, :m]], -1)], -2)
                gy = _principal_gates(full, pnormals, 2)
                ga, gb = gy[..., :m], gy[..., m:]
            row = _lerp_means(_newest_omega(ga) @ s_rev.to(pdt), gb)  # K(ℓ, s) for s ≤ ℓ
            for s_ in range(m):
                K[(ell, s_)] = row[s_].to(c.dtype)
            if self_mode:
                for t in range(ell):
                    K[(t, ell)] = K[(ell, t)]
            else:
                s_rev_t = torch.stack([torch.stack([S[(t, s_)] for t in range(m)], -1) for s_ in reversed(range(m))],
                                      -2)
                col = _lerp_means(_newest_omega(gb) @ s_rev_t.to(pdt), ga)  # K(t, ℓ) for t ≤ ℓ
                for t in range(ell):
                    K[(t, ell)] = col[t].to(c.dtype)
            continue
        if method not in ("principal", "interleaved"):
            raise ValueError(f"unknown GRU sampling method {method!r}")
        if control_variate:
            M = _delta_moments(cov if self_mode else None, z11, z22, cov12 if not self_mode else None, ell, T)
            var1, var2 = ell, (ell if self_mode else T + ell)
            d1, d2 = g1[ell] - 0.5, g2[ell] - 0.5

            def svalue(key):
                return _Chain.constant(S[key], V)

            # Q: column b = ell for t ≤ ell (vars of side 1 at steps t), then row t = ell for b < ell
            q = _Chain.zero(P, V, c)
            for t in range(ell + 1):
                q = q.mix(svalue((t, ell)), g1[t], g1[t] - 0.5, t, M[:, t])
                Q[(t, ell)] = q
            for bb in range(ell):
                Q[(ell, bb)] = Q[(ell - 1, bb)].mix(svalue((ell, bb)), g1[ell], d1, var1, M[:, var1])
            r = _Chain.zero(P, V, c)
            for s_ in range(ell + 1):
                v2_ = s_ if self_mode else T + s_
                r = r.mix(Q[(ell, s_)], g2[s_], g2[s_] - 0.5, v2_, M[:, v2_])
                R[(ell, s_)] = r
            for t in range(ell):
                R[(t, ell)] = R[(t, ell - 1)].mix(Q[(t, ell)], g2[ell], d2, var2, M[:, var2])
            for s_ in range(ell + 1):
                K[(ell, s_)] = R[(ell, s_)].estimate()
            for t in range(ell):
                K[(t, ell)] = K[(ell, t)] if self_mode else R[(t, ell)].estimate()
            continue
        # Q: column b = ell for t ≤ ell, then row t = ell for b < ell
        # (1 − g)·prev + g·new = lerp(prev, new, g): one fused operation per entry and point
        q = None
        for t in range(ell + 1):
            st = S[(t, ell)][:, None]
            q = g1[t] * st if q is None else torch.lerp(q, st.expand_as(q), g1[t])
            Q[(t, ell)] = q
        for bb in range(ell):
            Q[(ell, bb)] = torch.lerp(Q[(ell - 1, bb)], S[(ell, bb)][:, None].expand_as(g1[ell]), g1[ell])
        # R: row t = ell for s ≤ ell, column s = ell for t < ell
        r = None
        for s in range(ell + 1):
            r = g2[s] * Q[(ell, s)] if r is None else torch.lerp(r, Q[(ell, s)], g2[s])
            R[(ell, s)] = r
        for t in range(ell):
            R[(t, ell)] = torch.lerp(R[(t, ell - 1)], Q[(t, ell)], g2[ell])
        for s in range(ell + 1):
            K[(ell, s)] = R[(ell, s)].mean(-1)
        for t in range(ell):
            K[(t, ell)] = K[(ell, t)] if self_mode else R[(t, ell)].mean(-1)
    return torch.stack([torch.stack([K[(t, s)] for s in range(T)], -1) for t in range(T)], -2)


def _principal_gates(cov: torch.Tensor, normals: torch.Tensor, sides: int) -> torch.Tensor:
    """Gates ``ς(y) = (1 + erf y)/2`` of samples ``y ~ N(0, cov)``, ``cov`` ``(P, m, m)`` over ``sides`` (1 or 2)
    sequences of ``m / sides`` steps each (time order per sequence), from the first ``m`` coordinates of
    ``normals`` ``(N, ≥ m)`` mapped to the principal components in decreasing order of variance
    (:func:`~.orthant.principal_factor`). Returns ``(P, N, m)`` with the steps of each sequence in
    *reverse* time order (newest first), as :func:`_newest_omega` wants them."""
    m = cov.shape[-1]
    k = m // sides
    rev = torch.cat([torch.arange(i * k + k - 1, i * k - 1, -1) for i in range(sides)]).to(cov.device)
    B = principal_factor(cov)[:, rev].to(normals.dtype)
    return torch.erf(normals[:, :m] @ B.transpose(-1, -2)).mul_(0.5).add_(0.5)  # erf: 3× faster than ndtr


def _newest_omega(g: torch.Tensor) -> torch.Tensor:
    """Per-point update weights of the newest step ``ℓ``: for gates ``g`` ``(..., m)`` in reverse time order
    (``g[..., j]`` the gate of step ``ℓ − j``), ``ω(ℓ − j, ℓ) = g_j·Π_{i<j}(1 − g_i)`` → ``(..., m)``, same order."""
    if g.shape[-1] == 1:
        return g
    prefix = torch.cumprod(1.0 - g[..., :-1], -1)
    return torch.cat([g[..., :1], g[..., 1:] * prefix], -1)


def _lerp_means(u: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """``mean_N Σ_{b≤s} u_b·ω(b, s)`` for every ``s`` (``ω`` the update weights of the gates ``g``), by the
    per-point recursion ``r_s = (1 − g_s)·r_{s−1} + g_s·u_s``. ``u`` ``(P, N, m)`` in time order, ``g``
    ``(P, N, m)`` in reverse time order (as from :func:`_principal_gates`) → ``m`` tensors ``(P,)``."""
    m = g.shape[-1]
    n_pts = g.shape[-2]
    r = g[..., m - 1] * u[..., 0]
    out = [r.sum(-1, dtype=torch.float64) / n_pts]
    for s_ in range(1, m):
        r = torch.lerp(r, u[..., s_], g[..., m - 1 - s_])
        out.append(r.sum(-1, dtype=torch.float64) / n_pts)
    return out


class _Chain:
    """A recursion value ``X`` per QMC point with its expansion in the zero-mean gate parts ``δ``:
    ``full`` (P, N); ``o0`` order-0 part (P,); ``a1`` coefficients of the order-1 part over the ``V``
    gate variables (P, V); ``v1``, ``v2`` the order-1 and order-2 parts per point (P, N); ``e2`` the exact
    expectation of the order-2 part (P,)."""

    __slots__ = ("full", "o0", "a1", "v1", "v2", "e2")

    def __init__(self, full, o0, a1, v1, v2, e2):
        self.full, self.o0, self.a1, self.v1, self.v2, self.e2 = full, o0, a1, v1, v2, e2

    @classmethod
    def zero(cls, P, V, like):
        z = torch.zeros((), dtype=like.dtype, device=like.device)
        return cls(z, z, torch.zeros(P, V, dtype=like.dtype, device=like.device), z, z, z)

    @classmethod
    def constant(cls, value, V):
        z = torch.zeros((), dtype=value.dtype, device=value.device)
        return cls(value[:, None], value, torch.zeros(value.shape[0], V, dtype=value.dtype, device=value.device),
                   z, z, z)

    def mix(self, new: _Chain, g, d, var: int, mrow) -> _Chain:
        """``(1 − g)·self + g·new`` with ``g = ½ + d``, ``d`` the gate variable ``var``; ``mrow`` = E[δ_var δ]."""
        full = torch.lerp(self.full.expand_as(g) if self.full.dim() < 2 else self.full,
                          new.full.expand_as(g), g)
        do0 = new.o0 - self.o0
        o0 = 0.5 * (self.o0 + new.o0)
        a1 = 0.5 * (self.a1 + new.a1)
        a1 = a1 + torch.nn.functional.one_hot(torch.tensor(var), a1.shape[-1]).to(a1.dtype) * _col(do0)
        v1 = 0.5 * (self.v1 + new.v1) + d * _col(do0)
        v2 = 0.5 * (self.v2 + new.v2) + d * (new.v1 - self.v1)
        e2 = 0.5 * (self.e2 + new.e2) + ((new.a1 - self.a1) * mrow).sum(-1)
        return _Chain(full, o0, a1, v1, v2, e2)

    def estimate(self):
        return (self.full - self.v1 - self.v2).mean(-1) + self.e2


def _col(x):
    return x[:, None] if x.dim() == 1 else x


def _delta_moments(cov, z11, z22, cov12, ell, T):
    """``E[δ_i δ_j]`` ``(P, V, V)`` for the gate variables revealed up to step ``ell`` (zeros elsewhere)."""
    if cov is not None:  # self mode
        full = torch.nn.functional.pad(cov, (0, T - ell - 1, 0, T - ell - 1))
    else:
        m = ell + 1
        pad = T - m
        a = torch.nn.functional.pad(z11[:, :m, :m], (0, pad, 0, pad))
        bb = torch.nn.functional.pad(z22[:, :m, :m], (0, pad, 0, pad))
        x = torch.nn.functional.pad(cov12, (0, pad, 0, pad))
        full = torch.cat([torch.cat([a, x], -1), torch.cat([x.transpose(-1, -2), bb], -1)], -2)
    dg = full.diagonal(dim1=-2, dim2=-1)
    den = torch.sqrt((1 + 2 * dg)[:, :, None] * (1 + 2 * dg)[:, None, :])
    from ..duals.safe_math import safe_arcsin
    return safe_arcsin((2 * full / den).clamp(-1, 1)) / (2 * torch.pi)


def _gated_tables(layer, seq: SequencePair, wu, b, ww, table_fn, block: int, symmetric: bool = False):
    """Run a gated recursion (GRU or LSTM) on the self pairs and the cross pairs, flattened to ``P``.

    ``table_fn(c, c11, c22, k11, k22, wu, b, ww, normals)``. Pairs whose sequences are identical take
    the self result; ``symmetric`` (the two input sets are equal) computes only the pairs ``i < j``.
    Returns the pair table and both self tables in their natural layouts.
    """
    dims_self = table_fn.qmc_dims(seq.T, True)
    dims_cross = table_fn.qmc_dims(seq.T, False)
    dtype, device = seq.c12.dtype, seq.c12.device
    n_self = qmc_normals(dims_self, layer.samples, layer.qmc_seed, dtype, device)
    n_cross = qmc_normals(dims_cross, layer.samples, layer.qmc_seed + 1, dtype, device)

    def run_self(cc):
        batch = torch.broadcast_shapes(cc.shape[:-2], wu.shape + (1,))
        cf = _flat(cc, batch, 2)
        pf = [_flat(p.reshape(*p.shape, 1), batch, 0) for p in (wu, b, ww)]
        out = torch.cat([table_fn(cf[i:i + block], None, None, None, None, *(p[i:i + block] for p in pf), n_self)
                         for i in range(0, cf.shape[0], block)])
        return out.reshape(*batch, seq.T, seq.T)

    k11, k22 = run_self(seq.c11), run_self(seq.c22)
    if seq.diag and bool(seq.identical.all()):
        return k11, k11, k22
    if symmetric and not seq.diag and seq.c12.dim() == 4 and wu.dim() == 0:
        # one Gram K(X, X): compute the pairs i < j only and mirror them (K12[j, i] = K12[i, j]ᵀ)
        n = seq.c12.shape[0]
        iu = torch.triu_indices(n, n, 1, device=seq.c12.device)
        k12 = k11.unsqueeze(1).expand(n, n, seq.T, seq.T)
        if iu.shape[1]:
            parts = [table_fn(seq.c12[iu[0, i:i + block], iu[1, i:i + block]], seq.c11[iu[0, i:i + block]],
                              seq.c11[iu[1, i:i + block]], k11[iu[0, i:i + block]], k11[iu[1, i:i + block]],
                              *(p.expand(min(block, iu.shape[1] - i)) for p in (wu, b, ww)), n_cross)
                     for i in range(0, iu.shape[1], block)]
            upper = torch.cat(parts)
            k12 = k12.index_put((iu[0], iu[1]), upper).index_put((iu[1], iu[0]), upper.transpose(-1, -2))
        return k12, k11, k22
    s1, s2 = seq.side(k11, 1), seq.side(k22, 2)
    c1, c2 = seq.side(seq.c11, 1), seq.side(seq.c22, 2)
    nd = 2 if seq.diag else 3
    batch = torch.broadcast_shapes(seq.c12.shape[:-2], s1.shape[:-2], s2.shape[:-2], bp(wu, nd - 1).shape)
    cf, c1f, c2f, k1f, k2f = (_flat(x, batch, 2) for x in (seq.c12, c1, c2, s1, s2))
    pf = [_flat(bp(p, nd - 1), batch, 0) for p in (wu, b, ww)]
    parts = [table_fn(cf[i:i + block], c1f[i:i + block], c2f[i:i + block], k1f[i:i + block], k2f[i:i + block],
                      *(p[i:i + block] for p in pf), n_cross) for i in range(0, cf.shape[0], block)]
    k12 = torch.cat(parts).reshape(*batch, seq.T, seq.T)
    same = seq.identical
    if same is not None and bool(same.any()):
        selfk = seq.side(k11, 1).expand_as(k12)
        k12 = torch.where(same.reshape(*same.shape, 1, 1), selfk, k12)
    return k12, k11, k22


gru_tables.qmc_dims = lambda T, self_mode: T if self_mode else 2 * T


def same_inputs(state: CovState) -> bool:
    """Whether both input sets of the state are the same points (a Gram ``K(X, X)``)."""
    x1, x2 = state.inputs
    return x1.shape == x2.shape and bool(torch.equal(x1, x2))


def pair_block(samples: int, T: int, budget: int = 2**24) -> int:
    """Pairs per chunk so that the per-point tensors in flight (``~8T`` rows of ``samples`` floats per pair:
    gates, weights and recursions of both sequences) fit ``budget`` floats."""
    return max(1, budget // max(1, 8 * T * samples))


@kernel_rule(GRU)
def gru_rule(layer: GRU, state: CovState, ctx: RuleContext) -> CovState:
    if state.has_ntk:
        raise NotImplementedError(f"{layer.describe()}: this covariance algebra carries the GRU NNGP only; "
                                  "the GRU NTK is GRUNTKKernel (its tensor program's NTK, equal-length sequences)")
    seq = SequencePair.from_state(layer, state)
    (wu, b), (ww, _), (wv, bv) = recurrent_variances(layer, ctx)
    symmetric = same_inputs(state)
    k12, k11, k22 = _gated_tables(layer, seq, wu, b, ww, gru_tables, pair_block(layer.samples, seq.T), symmetric)
    return gated_output(layer, state, seq, k12, k11, k22, wv, bv, symmetric)


def gated_output(layer: RecurrentLayer, state: CovState, seq: SequencePair, k12, k11, k22, wv, bv,
                 symmetric: bool) -> CovState:
    """Readout ``σv²·read(K) + σvb²`` of a gated (GRU/LSTM) hidden kernel. For a Gram ``K(X, X)``
    (``symmetric``, full layout) the output is made positive semi-definite with
    :func:`~.orthant.project_psd`: each pair is a separate QMC estimate, so the raw Gram is PSD only up
    to the estimation error; the projection keeps the diagonal and warns if the negative part exceeds
    ``n·`` :func:`~.orthant.qmc_entry_error_bound`."""
    nd = 1 if seq.diag else 2
    out12 = bp(wv, nd) * seq.read(k12) + bp(bv, nd)
    out11 = bp(wv, 1) * seq.read_self(k11, seq.w1) + bp(bv, 1)
    out22 = bp(wv, 1) * seq.read_self(k22, seq.w2) + bp(bv, 1)
    if symmetric and not seq.diag:
        scale = out12.detach().diagonal(dim1=-2, dim2=-1).abs().amax(-1)
        out12 = project_psd(out12, qmc_entry_error_bound(layer.samples, scale), f"{layer.describe()} Gram")
    return seq.output_state(state, out12, out11, out22)


__all__ = ["DEFAULT_SAMPLES", "SequencePair", "gru_tables", "rnn_chain", "rnn_rule", "rnn_table"]


def per_step_kernel(layer: RecurrentLayer, x1: torch.Tensor, x2: torch.Tensor, hyper, input_shape,
                    quadrature_degree: int | None = None) -> torch.Tensor:
    """The full per-step output kernel ``σv²·V(t, s) + σvb²`` of every pair: ``(..., n1, n2, T, T)``.

    ``V`` is ``V_φ(Σ)`` for the RNN and the hidden-state kernel ``K`` for the GRU and LSTM, i.e. the
    covariance of the readout applied at step ``t`` of ``x1[i]`` and step ``s`` of ``x2[j]`` (steps past a
    sequence's own length are computed on its padding and carry no meaning).
    """
    from ..arch.recurrent import LSTM
    from .state import input_state

    ctx = RuleContext(hyper=hyper)
    if quadrature_degree is not None:
        ctx.quadrature_degree = int(quadrature_degree)
    state = input_state(x1, x2, False, False, tuple(input_shape))
    seq = SequencePair.from_state(layer, state)
    (wu, b), (ww, _), (wv, bv) = recurrent_variances(layer, ctx)
    if isinstance(layer, RNN):
        dual = ctx.dual(layer.activation)
        d1, _ = rnn_chain(seq.c11.diagonal(dim1=-2, dim2=-1), wu, b, ww, dual, False)
        d2, _ = rnn_chain(seq.c22.diagonal(dim1=-2, dim2=-1), wu, b, ww, dual, False)
        table, _ = rnn_table(seq.c12, seq.side(d1, 1, 1), seq.side(d2, 2, 1), seq.same12, wu, b, ww, dual, False, 3)
    else:
        if isinstance(layer, LSTM):
            import functools

            from ..arch import Sigmoid
            from .lstm import _lstm_flat
            fn = functools.partial(_lstm_flat, sig_dual=ctx.dual(Sigmoid()))
            fn.qmc_dims = lambda T, self_mode: 3 * (T if self_mode else 2 * T)
        else:
            fn = gru_tables
        table, _, _ = _gated_tables(layer, seq, wu, b, ww, fn, pair_block(layer.samples, seq.T), same_inputs(state))
    return bp(wv, 4) * table + bp(bv, 4)

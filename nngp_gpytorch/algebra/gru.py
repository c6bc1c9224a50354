"""Kernel rule of the erf-gated GRU (NNGP; Yang 2019): the hidden-state tables by QMC over the gates."""

from __future__ import annotations

import torch

from ..arch.recurrent import GRU
from ..duals import ErfDual
from ..numerics import erf_gate, principal_factor
from .gated import erf_pair_moment, gate_columns, gate_pair_moment, gated_rule
from .orthant import InterleavedGaussian, gate_dual
from .registry import RuleContext, kernel_rule
from .state import CovState


def gru_tables(c: torch.Tensor, c11: torch.Tensor | None, c22: torch.Tensor | None,
               k11: torch.Tensor | None, k22: torch.Tensor | None, wu, b, ww,
               normals: torch.Tensor, control_variate: bool = False, method: str = "principal",
               mu: tuple[float, float, float] | None = None) -> torch.Tensor:
    """Hidden-state kernel ``K(t, s) = lim ⟨h_t, h'_s⟩/n`` of the erf-GRU for ``P`` pairs (Yang 2019).

    Self mode (``k11 is None``): one sequence with itself, ``c`` its token Gram ``(P, T, T)``.
    Cross mode: ``c`` the cross Gram, ``c11``/``c22`` the self Grams and ``k11``/``k22`` the self
    kernels (from self mode). Hyperparameters ``(P, 3)`` per gate ``z, r, h`` (or ``(P,)``, shared);
    ``mu`` the gates' bias means (default 0); ``normals`` QMC points ``(N, T)`` or ``(N, 2T)``.

    Recursion (reference kernels.md "GRU", steps from 0, ``K(−1, ·) = 0``), per gate ``g`` its own variances:
    ``Σ_z(t,s) = σ²_Uz·C(t,s) + σ²_Wz·K(t−1,s−1) + σ²_bz`` (Σ_r likewise); ``R = E[ς(r̃) ς(r̃')]`` under Σ_r and mean
    ``μ_r``; ``Σ_h = σ²_Uh·C + σ²_Wh·K(t−1,s−1)·R + σ²_bh``; ``S = E[erf(h̃) erf(h̃')]`` under Σ_h, mean ``μ_h``;
    the update gates ``ς(z̃)``, ``z̃ ~ N(μ_z, Σ_z)``. With zero means R and S are the arcsin closed forms;
    otherwise bivariate normal orthant probabilities (:func:`~.gated.gate_pair_moment`). And with
    ``ω(a,t) = ς(z_a)·Π_{a<k≤t}(1 − ς(z_k))``, ``K(t,s) = Σ_{a≤t,b≤s} E[ω(a,t) ω'(b,s)]·S(a,b)``.
    The gate expectation is computed per QMC point with ``Q(t,b) = (1−g_t)Q(t−1,b) + g_t S(t,b)`` and
    ``R(t,s) = (1−g'_s)R(t,s−1) + g'_s Q(t,s)`` (``K = mean R``): ``O(T²)`` per point and pair.

    ``method``: how the gate pre-activations are sampled at step ``ℓ`` (the covariance of the steps
    ``≤ ℓ`` is only known once ``K(ℓ−1, ·)`` is).

    * ``"principal"`` (default): at every step the samples of *all* steps ``≤ ℓ`` of both sequences
      are drawn afresh from the principal-component factor (:func:`~nngp_gpytorch.numerics.principal_factor`) of
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
    wu, b, ww = (gate_columns(p, 3) for p in (wu, b, ww))  # (P, 3): gates z, r, h
    mz, mr, mh = (0.0, 0.0, 0.0) if mu is None else (float(m) for m in mu)
    if control_variate and (mz or mr or mh):
        raise ValueError("gru_tables: the control variate expands zero-mean gates; it needs zero bias means")

    def gate2(k1, k2, k12):  # E[ς(r̃) ς(r̃')]
        return gate_dual(k1, k2, k12) if mr == 0 else gate_pair_moment(k1, k2, k12, mr, mr)

    def erf2(h11, h22, h12, same):  # E[erf(h̃) erf(h̃')]
        return erf.nngp(h11, h22, h12, same) if mh == 0 else erf_pair_moment(h11, h22, h12, mh, mh)
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

    def sigma_r(t, s):
        return wu[:, 1] * c[:, t, s] + ww[:, 1] * kprev(t, s) + b[:, 1]

    def self_sigma(cc, kk, g=0):  # full Σ table of gate g on one side from its self kernel
        kp = torch.zeros_like(cc)
        kp[:, 1:, 1:] = kk[:, :-1, :-1]
        return wu[:, g, None, None] * cc + ww[:, g, None, None] * kp + b[:, g, None, None]

    wh, uh, bh = ww[:, 2:3], wu[:, 2:3], b[:, 2:3]
    if not self_mode:
        z11, z22 = self_sigma(c11, k11), self_sigma(c22, k22)
        rd1 = self_sigma(c11, k11, 1).diagonal(dim1=-2, dim2=-1)
        rd2 = self_sigma(c22, k22, 1).diagonal(dim1=-2, dim2=-1)
        r11 = gate2(rd1, rd1, rd1)
        r22 = gate2(rd2, rd2, rd2)
        kd1 = torch.cat([torch.zeros_like(rd1[:, :1]), k11.diagonal(dim1=-2, dim2=-1)[:, :-1]], -1)
        kd2 = torch.cat([torch.zeros_like(rd2[:, :1]), k22.diagonal(dim1=-2, dim2=-1)[:, :-1]], -1)
        hd1 = uh * c11.diagonal(dim1=-2, dim2=-1) + wh * kd1 * r11 + bh
        hd2 = uh * c22.diagonal(dim1=-2, dim2=-1) + wh * kd2 * r22 + bh
    hd: dict = {}

    def s_block(pairs):
        """S(t, s) for a list of (t, s) index pairs at once: ``(P, len(pairs))``."""
        ts = [t for t, _ in pairs]
        ss = [s_ for _, s_ in pairs]
        r12 = torch.stack([sigma_r(t, s_) for t, s_ in pairs], -1)
        kp = torch.stack([kprev(t, s_) for t, s_ in pairs], -1)
        if self_mode:
            rt = torch.stack([sigma_r(t, t) for t in ts], -1)
            rs = torch.stack([sigma_r(s_, s_) for s_ in ss], -1)
            h11 = torch.stack([hd[t] for t in ts], -1)
            h22 = torch.stack([hd[s_] for s_ in ss], -1)
        else:
            rt, rs, h11, h22 = rd1[:, ts], rd2[:, ss], hd1[:, ts], hd2[:, ss]
        r = gate2(rt, rs, r12)
        h12 = uh * c[:, ts, ss] + wh * kp * r + bh
        same = torch.tensor([self_mode and t == s_ for t, s_ in pairs], device=c.device)
        return erf2(h11, h22, h12, same)

    for ell in range(T):
        # new gate samples at step ell
        if self_mode:
            rdd = sigma_r(ell, ell)
            hd[ell] = wu[:, 2] * c[:, ell, ell] + ww[:, 2] * kprev(ell, ell) * gate2(rdd, rdd, rdd) + b[:, 2]
            cov = torch.stack([torch.stack([sigma_z(min(i, j), max(i, j)) for j in range(ell + 1)], -1)
                               for i in range(ell + 1)], -2)
        else:
            cov12 = torch.stack([torch.stack([sigma_z(i, j) for j in range(ell + 1)], -1)
                                 for i in range(ell + 1)], -2)
        if sampler is not None:
            y1, y2 = (sampler.step(cov, None, None) if self_mode else
                      sampler.step(z11[:, : ell + 1, : ell + 1], z22[:, : ell + 1, : ell + 1], cov12))
            g1.append(erf_gate(y1 + mz))
            g2.append(g1[-1] if self_mode else erf_gate(y2 + mz))
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
                ga = gb = _principal_gates(cov, pnormals, 1, mz)
            else:
                full = torch.cat([torch.cat([z11[:, :m, :m], cov12], -1),
                                  torch.cat([cov12.transpose(-1, -2), z22[:, :m, :m]], -1)], -2)
                gy = _principal_gates(full, pnormals, 2, mz)
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


def _principal_gates(cov: torch.Tensor, normals: torch.Tensor, sides: int, mean: float = 0.0) -> torch.Tensor:
    """Gates ``ς(y) = (1 + erf y)/2`` of samples ``y ~ N(mean, cov)``, ``cov`` ``(P, m, m)`` over ``sides`` (1 or 2)
    sequences of ``m / sides`` steps each (time order per sequence), from the first ``m`` coordinates of
    ``normals`` ``(N, ≥ m)`` mapped to the principal components in decreasing order of variance
    (:func:`~nngp_gpytorch.numerics.principal_factor`). Returns ``(P, N, m)`` with the steps of each sequence in
    *reverse* time order (newest first), as :func:`_newest_omega` wants them."""
    m = cov.shape[-1]
    k = m // sides
    rev = torch.cat([torch.arange(i * k + k - 1, i * k - 1, -1) for i in range(sides)]).to(cov.device)
    B = principal_factor(cov)[:, rev].to(normals.dtype)
    y = normals[:, :m] @ B.transpose(-1, -2)
    if mean:
        y = y + mean
    return torch.erf(y).mul_(0.5).add_(0.5)  # erf: 3× faster than ndtr


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


gru_tables.qmc_dims = lambda T, self_mode: T if self_mode else 2 * T


@kernel_rule(GRU)
def gru_rule(layer: GRU, state: CovState, ctx: RuleContext) -> CovState:
    return gated_rule(layer, state, ctx, gru_tables)

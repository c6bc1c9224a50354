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
recursion on a fixed scrambled Sobol sample of that limiting Gaussian, redrawn at every step ``ℓ`` (Σ at
step ``ℓ`` needs ``K`` at ``ℓ − 1``) from the principal components of the covariance of the steps ``≤ ℓ``
(:func:`~nngp_gpytorch.numerics.principal_factor`). The result is deterministic; its error is that of the QMC rule
(measured in docs/recurrent.md: ~1.6e-4 at the default 2¹³ points, 2e-5 at 2¹⁷ on a 7×9-token pair with
|K| ≈ 0.067); ``LSTM(samples=…)`` is the knob. Cost ``O(P·N·T³)`` for ``P`` pairs of length ``T``.
Grams ``K(X, X)`` are made PSD by :func:`~.orthant.project_psd` (see :func:`~.gated.gated_output`).
"""

from __future__ import annotations

import functools

import torch

from ..arch import Sigmoid
from ..arch.recurrent import LSTM
from ..duals import QuadratureDual
from ..numerics import principal_factor
from .gated import gate_columns, gated_rule
from .orthant import InterleavedGaussian
from .registry import RuleContext, kernel_rule
from .state import CovState


def lstm_tables(c, c11, c22, k11, k22, wu, b, ww, normals, sig_dual=None, method: str = "principal",
                mu: tuple[float, float, float, float] | None = None, o_dual=None) -> torch.Tensor:
    """Hidden-state kernel ``K(t, s)`` ``(P, T, T)`` of the LSTM for ``P`` pairs (self or cross mode,
    same arguments as :func:`~.gru.gru_tables`; ``normals`` ``(N, 3·T)`` or ``(N, 6·T)``).

    Per gate ``k ∈ (i, f, o, g)`` (hyperparameter columns ``(P, 4)`` in that order, or ``(P,)`` shared) the
    pre-activations are Gaussian with mean ``μ_k`` (``mu``, default 0) and covariance
    ``Σ_k(t,s) = σ²_Uk·C(t,s) + σ²_Wk·K(t−1,s−1) + σ²_bk``. ``sig_dual``: the logistic sigmoid's dual
    (``E[σ(õ)σ(õ')]`` for ``μ_o = 0``); ``o_dual``: the dual of ``x ↦ σ(x + μ_o)`` for a nonzero ``μ_o``.

    ``method``: ``"principal"`` (default) redraws all steps ``≤ ℓ`` at every step from the
    principal-component factor of their covariance (:func:`~nngp_gpytorch.numerics.principal_factor`, one
    factor per distinct gate covariance; Sobol coordinate ``3j + k`` drives component ``j`` of family ``k``)
    and reruns the cell recursion: ``O(T)`` more transcendental evaluations per point, 2–4× smaller error
    at equal ``N`` on the 7×9-token pair (docs/recurrent.md). ``"interleaved"`` reveals the ``i, f, g``
    samples step by step with the growing interleaved Cholesky factor (:class:`~.orthant.InterleavedGaussian`)
    and carries the cell states forward. Per-point arithmetic in float32 (rounding ~1e-7·|K|), sums in float64."""
    self_mode = k11 is None
    T = c.shape[-1]
    per = T if self_mode else 2 * T
    wu, b, ww = (gate_columns(p, 4) for p in (wu, b, ww))  # (P, 4): gates i, f, o, g
    mi, mf, mo, mg = (0.0,) * 4 if mu is None else (float(m) for m in mu)
    out_dual = sig_dual if mo == 0 else o_dual
    families = (0, 1, 3)  # the sampled gates i, f, g; the output gate o enters through its dual
    shared = all(torch.equal(p[:, k], p[:, 0]) for p in (wu, b, ww) for k in families)
    # per-point arithmetic in float32 (3× faster; rounding ~1e-7·|K|, far below the QMC error), float64 sums
    pn = normals.to(torch.float32)
    samplers = [InterleavedGaussian(pn[:, i * per:(i + 1) * per], self_mode) for i in range(3)]

    def mean_prod(u, v):
        return ((u * v).sum(-1, dtype=torch.float64) / u.shape[-1]).to(c.dtype)

    K: dict = {}
    Z: dict = {}
    tau1: list = []
    tau2: list = []
    cell1 = cell2 = None

    def kprev(t, s):
        if t == 0 or s == 0:
            return torch.zeros_like(c[:, 0, 0])
        return K[(t - 1, s - 1)]

    def sigma(t, s, k=0):
        if (t, s, k) not in Z:
            Z[(t, s, k)] = wu[:, k] * c[:, t, s] + ww[:, k] * kprev(t, s) + b[:, k]
        return Z[(t, s, k)]

    if not self_mode:
        def self_sigma(cc, kk, k):
            kp = torch.zeros_like(cc)
            kp[:, 1:, 1:] = kk[:, :-1, :-1]
            return wu[:, k, None, None] * cc + ww[:, k, None, None] * kp + b[:, k, None, None]

        z11 = {k: self_sigma(c11, k11, k) for k in (0, 1, 2, 3)}
        z22 = {k: self_sigma(c22, k22, k) for k in (0, 1, 2, 3)}

    def diag1(t, k=2):
        return sigma(t, t, k) if self_mode else z11[k][:, t, t]

    def diag2(s, k=2):
        return sigma(s, s, k) if self_mode else z22[k][:, s, s]

    def gate_cov(m, k):
        """Covariance of gate ``k`` over the steps ``< m`` of the pair: ``(P, m, m)`` or ``(P, 2m, 2m)``."""
        if self_mode:
            return torch.stack([torch.stack([sigma(min(i, j), max(i, j), k) for j in range(m)], -1)
                                for i in range(m)], -2)
        cov12 = torch.stack([torch.stack([sigma(i, j, k) for j in range(m)], -1) for i in range(m)], -2)
        return torch.cat([torch.cat([z11[k][:, :m, :m], cov12], -1),
                          torch.cat([cov12.transpose(-1, -2), z22[k][:, :m, :m]], -1)], -2)

    def output_gate(t, s):  # E[σ(õ_t) σ(õ'_s)]
        if self_mode and t == s:
            return out_dual.nngp_diag(diag1(t))
        return out_dual.nngp(diag1(t), diag2(s), sigma(t, s, 2))

    for ell in range(T):
        m = ell + 1
        if method == "principal":
            if shared:
                B = principal_factor(gate_cov(m, 0)).to(pn.dtype).transpose(-1, -2)
                factors = (B, B, B)
            else:
                factors = tuple(principal_factor(gate_cov(m, k)).to(pn.dtype).transpose(-1, -2) for k in families)
            dim = factors[0].shape[-1]
            yi, yf, yg = (pn[:, j::3][:, :dim] @ factors[j] for j in range(3))  # (P, N, dim) each
            if mi or mf or mg:
                yi, yf, yg = yi + mi, yf + mf, yg + mg
            new = torch.sigmoid(yi) * torch.tanh(yg)
            forget = torch.sigmoid(yf)
            taus = []
            for side in range(1 if self_mode else 2):
                cell = new[..., side * m]
                tt = [cell]
                for t in range(1, m):
                    cell = torch.addcmul(new[..., side * m + t], forget[..., side * m + t], cell)
                    tt.append(cell)
                taus.append(torch.tanh(torch.stack(tt, -1)))  # (P, N, m)
            ta, tb = taus[0], taus[-1]
            # products per point in float32, sums over the N points in float64 (a float32 einsum's accumulation
            # biased the 2²⁰-point self entries by −1e-5, tests/test_gated_per_gate.py)
            row = (ta[..., ell, None] * tb).sum(-2, dtype=torch.float64) / pn.shape[0]
            for s_ in range(m):
                K[(ell, s_)] = output_gate(ell, s_) * row[:, s_].to(c.dtype)
            if not self_mode:
                col = (ta * tb[..., ell, None]).sum(-2, dtype=torch.float64) / pn.shape[0]
            for t in range(ell):
                K[(t, ell)] = K[(ell, t)] if self_mode else output_gate(t, ell) * col[:, t].to(c.dtype)
            continue
        if self_mode:
            draws = [smp.step(gate_cov(m, k), None, None) for smp, k in zip(samplers, families, strict=True)]
        else:
            draws = []
            for smp, k in zip(samplers, families, strict=True):
                cov12 = torch.stack([torch.stack([sigma(i, j, k) for j in range(m)], -1) for i in range(m)], -2)
                draws.append(smp.step(z11[k][:, :m, :m], z22[k][:, :m, :m], cov12))
        (i1, i2), (f1, f2), (g1, g2) = draws
        new1 = torch.sigmoid(i1 + mi) * torch.tanh(g1 + mg)
        new2 = torch.sigmoid(i2 + mi) * torch.tanh(g2 + mg)
        cell1 = new1 if cell1 is None else torch.sigmoid(f1 + mf) * cell1 + new1
        cell2 = new2 if cell2 is None else torch.sigmoid(f2 + mf) * cell2 + new2
        tau1.append(torch.tanh(cell1))
        tau2.append(tau1[-1] if self_mode else torch.tanh(cell2))
        for s in range(ell + 1):
            K[(ell, s)] = output_gate(ell, s) * mean_prod(tau1[ell], tau2[s])
        for t in range(ell):
            K[(t, ell)] = K[(ell, t)] if self_mode else output_gate(t, ell) * mean_prod(tau1[t], tau2[ell])
    return torch.stack([torch.stack([K[(t, s)] for s in range(T)], -1) for t in range(T)], -2)


def _shifted_sigmoid(x: torch.Tensor, shift: float) -> torch.Tensor:
    return torch.sigmoid(x + shift)


def lstm_table_fn(ctx: RuleContext, layer: LSTM | None = None):
    """:func:`lstm_tables` as the ``table_fn`` of :func:`~.gated.gated_tables` (the sigmoid's dual from ``ctx``;
    for a nonzero output-gate bias mean ``μ_o`` of ``layer`` the Gauss–Hermite dual of ``σ(x + μ_o)``;
    ``3·T`` QMC dimensions per sequence: the three sampled gates of every step)."""
    mo = layer.bias_means[2] if layer is not None else 0.0
    o_dual = None
    if mo:
        o_dual = QuadratureDual(functools.partial(_shifted_sigmoid, shift=mo), ctx.quadrature_degree,
                                adaptive=ctx.adaptive_quadrature)
    fn = functools.partial(lstm_flat, sig_dual=ctx.dual(Sigmoid()), o_dual=o_dual)
    fn.qmc_dims = lambda T, self_mode: 3 * (T if self_mode else 2 * T)
    return fn


@kernel_rule(LSTM)
def lstm_rule(layer: LSTM, state: CovState, ctx: RuleContext) -> CovState:
    return gated_rule(layer, state, ctx, lstm_table_fn(ctx, layer))


def lstm_flat(c, c11, c22, k11, k22, wu, b, ww, normals, sig_dual, method: str = "principal", mu=None, o_dual=None):
    return lstm_tables(c, c11, c22, k11, k22, wu, b, ww, normals, sig_dual, method, mu=mu, o_dual=o_dual)

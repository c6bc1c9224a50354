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
from ..numerics import principal_factor
from .gated import gated_rule
from .orthant import InterleavedGaussian
from .registry import RuleContext, kernel_rule
from .state import CovState


def lstm_tables(c, c11, c22, k11, k22, wu, b, ww, normals, sig_dual=None, method: str = "principal"
                ) -> torch.Tensor:
    """Hidden-state kernel ``K(t, s)`` ``(P, T, T)`` of the LSTM for ``P`` pairs (self or cross mode,
    same arguments as :func:`~.gru.gru_tables`; ``normals`` ``(N, 3·T)`` or ``(N, 6·T)``).

    ``method``: ``"principal"`` (default) redraws all steps ``≤ ℓ`` at every step from the
    principal-component factor of their covariance (:func:`~nngp_gpytorch.numerics.principal_factor`; Sobol coordinate
    ``3j + k`` drives component ``j`` of family ``k``) and reruns the cell recursion: ``O(T)`` more
    transcendental evaluations per point, 2–4× smaller error at equal ``N`` on the 7×9-token pair
    (docs/recurrent.md). ``"interleaved"`` reveals the ``i, f, g`` samples step by step with the growing
    interleaved Cholesky factor (:class:`~.orthant.InterleavedGaussian`) and carries the cell states forward.
    Per-point arithmetic in float32 (rounding ~1e-7·|K|), sums in float64."""
    self_mode = k11 is None
    T = c.shape[-1]
    per = T if self_mode else 2 * T
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
        if method == "principal":
            m = ell + 1
            if self_mode:
                cov = torch.stack([torch.stack([sigma(min(i, j), max(i, j)) for j in range(m)], -1)
                                   for i in range(m)], -2)
            else:
                cov12 = torch.stack([torch.stack([sigma(i, j) for j in range(m)], -1) for i in range(m)], -2)
                cov = torch.cat([torch.cat([z11[:, :m, :m], cov12], -1),
                                 torch.cat([cov12.transpose(-1, -2), z22[:, :m, :m]], -1)], -2)
            B = principal_factor(cov).to(pn.dtype).transpose(-1, -2)
            dim = cov.shape[-1]
            yi, yf, yg = (pn[:, k::3][:, :dim] @ B for k in range(3))  # (P, N, dim) each
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
            row = torch.einsum("pn,pns->ps", ta[..., ell], tb).to(torch.float64) / pn.shape[0]
            for s_ in range(m):
                o = sig_dual.nngp_diag(diag1(ell)) if (self_mode and s_ == ell) else \
                    sig_dual.nngp(diag1(ell), diag2(s_), sigma(ell, s_))
                K[(ell, s_)] = o * row[:, s_].to(c.dtype)
            if not self_mode:
                col = torch.einsum("pnt,pn->pt", ta, tb[..., ell]).to(torch.float64) / pn.shape[0]
            for t in range(ell):
                K[(t, ell)] = K[(ell, t)] if self_mode else \
                    sig_dual.nngp(diag1(t), diag2(ell), sigma(t, ell)) * col[:, t].to(c.dtype)
            continue
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
            K[(ell, s)] = o * mean_prod(tau1[ell], tau2[s])
        for t in range(ell):
            K[(t, ell)] = K[(ell, t)] if self_mode else \
                sig_dual.nngp(diag1(t), diag2(ell), sigma(t, ell)) * mean_prod(tau1[t], tau2[ell])
    return torch.stack([torch.stack([K[(t, s)] for s in range(T)], -1) for t in range(T)], -2)


def lstm_table_fn(ctx: RuleContext):
    """:func:`lstm_tables` as the ``table_fn`` of :func:`~.gated.gated_tables` (the sigmoid's dual from ``ctx``,
    ``3·T`` QMC dimensions per sequence: the three gates of every step)."""
    fn = functools.partial(lstm_flat, sig_dual=ctx.dual(Sigmoid()))
    fn.qmc_dims = lambda T, self_mode: 3 * (T if self_mode else 2 * T)
    return fn


@kernel_rule(LSTM)
def lstm_rule(layer: LSTM, state: CovState, ctx: RuleContext) -> CovState:
    return gated_rule(layer, state, ctx, lstm_table_fn(ctx))


def lstm_flat(c, c11, c22, k11, k22, wu, b, ww, normals, sig_dual, method: str = "principal"):
    return lstm_tables(c, c11, c22, k11, k22, wu, b, ww, normals, sig_dual, method)

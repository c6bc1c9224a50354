"""Deterministic, fast Gaussian gate expectations (orthant probabilities) for gated recurrent kernels.

The erf-gated GRU kernel (reference kernels.md "GRU") needs, for jointly Gaussian gate pre-activations
``y ~ N(μ, Σ)`` and signs ``ε_i = ±1``, the gate-product expectations

    E[Π_i ς(ε_i·y_i)] = P(X ≥ 0),   X ~ N(ε∘μ, D_ε Σ D_ε + ½·I),   ς(x) = (1 + erf x)/2 = Φ(√2·x),

an orthant probability of dimension up to ``T_a + T_b``. Instead of solving each orthant problem with
randomized quasi-Monte Carlo (the public reference: mvtnorm, ~1e-3 noise, ~22 CPU-s for a 7×9-token
pair) we integrate the *smooth* left-hand side directly:

    E[Π_i Φ(√2·ε_i·y_i)] = E_g[Π_i Φ(√2·ε_i·(μ + L g)_i)],   Σ = L Lᵀ,  g ~ N(0, I),

with one fixed, scrambled Sobol point set (seeded, hence deterministic). The ``½·I`` part of the orthant
covariance has been integrated exactly (it *is* the Φ), so the integrand is analytic and the cost per
point is one multiply-add per variable. All orthant problems of a recursion share the same points
(common random numbers), so that a whole GRU table is a few tensor operations per step. Two ways of
mapping the points to the Gaussian: :func:`~nngp_gpytorch.numerics.principal_factor` (``B = V√Λ``,
largest variances on the first Sobol coordinates; the default of the GRU and LSTM rules, which redraw all steps at
every step) and
:class:`InterleavedGaussian` (growing interleaved Cholesky factor, samples revealed step by step).
Measured on the 9–18-dimensional problems of a 7×9-token GRU pair: error ~N^-0.9, 3–4× smaller with the
principal factor (docs/recurrent.md).

:func:`project_psd` makes a Gram of separately estimated pairs positive semi-definite (diagonal kept,
warning when the negative part exceeds what :func:`qmc_entry_error_bound` explains).

:func:`orthant_probability_reference` is an independent high-accuracy reference (scipy's Genz
algorithm at tight tolerance; nested Gauss–Hermite quadrature in dimension ≤ 3).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..numerics import erf_gate, jittered_cholesky, sobol_normals

#: Default number of quasi-Monte Carlo points (a power of two). See docs/recurrent.md for accuracy.
DEFAULT_SAMPLES = 2**13


def gate_dual(k11: torch.Tensor, k22: torch.Tensor, k12: torch.Tensor) -> torch.Tensor:
    """``E[ς(u)ς(v)]`` for zero-mean ``(u, v)``: ``1/4 + (1/2π)·arcsin(2k12/√((1+2k11)(1+2k22)))``."""
    from ..duals.safe_math import safe_arcsin

    c = 2.0 * k12 / torch.sqrt((1.0 + 2.0 * k11) * (1.0 + 2.0 * k22))
    return 0.25 + safe_arcsin(c.clamp(-1.0, 1.0)) / (2.0 * math.pi)


def gate_product_expectation(mean: torch.Tensor, cov: torch.Tensor, signs: torch.Tensor,
                             samples: int = DEFAULT_SAMPLES, seed: int = 0) -> torch.Tensor:
    """``E[Π_i ς(ε_i y_i)] = P(X ≥ 0)``, ``X ~ N(ε∘μ, D_ε Σ D_ε + ½I)``, deterministic QMC.

    Args:
        mean: ``(..., m)``; cov: ``(..., m, m)`` positive semi-definite; signs: ``(..., m)`` of ±1.
    Returns:
        ``(...)``.
    """
    m = cov.shape[-1]
    L = jittered_cholesky(cov)
    g = sobol_normals(m, samples, seed, cov.dtype, cov.device)  # (N, m)
    y = mean.unsqueeze(-2) + g @ L.transpose(-1, -2)  # (..., N, m)
    return erf_gate(signs.unsqueeze(-2) * y).prod(-1).mean(-1)


def qmc_entry_error_bound(samples: int, scale: torch.Tensor) -> torch.Tensor:
    """A generous per-entry bound on the quasi-Monte Carlo error of a gated-recurrent Gram:
    ``0.2·N^-1/2·scale`` (``scale`` the largest diagonal entry). The measured errors on 7×9-token pairs
    (docs/recurrent.md) are 2–10× below it for ``N = 2¹⁰…2¹⁷``."""
    return 0.2 * scale / math.sqrt(samples)


def project_psd(K: torch.Tensor, entry_error: torch.Tensor | float, what: str = "Gram matrix") -> torch.Tensor:
    """Nearest-in-spirit positive semi-definite version of a symmetric Gram ``K`` ``(..., n, n)`` whose entries
    carry an estimation error of at most ``entry_error`` each (the gated recurrent kernels: each pair is
    estimated separately, so ``K`` can be slightly indefinite).

    Eigenvalues ``λ_k`` below ``floor = 4·n·ε_dtype·max_i K_ii`` are raised to ``floor`` (the spectral
    projection onto ``{K ⪰ floor·I}``, computed in float64); then ``K ← D K D`` with the diagonal ``D``
    that restores the original diagonal (so ``k(x, diag=True)`` stays equal to ``K.diagonal()``). The
    floor exceeds what rounding the result to its dtype can move an eigenvalue (``≤ n·ε/2·max|K_ij|``),
    so the returned matrix is PSD in its own precision. Matrices already above the floor are returned
    unchanged. The correction is applied as a fixed (detached) linear map, so gradients pass through as
    for ``K``.

    The entries of a symmetric error ``E`` with ``|E_ij| ≤ e`` move eigenvalues by at most ``‖E‖₂ ≤ n·e``
    (Weyl); a negative part larger than ``n·entry_error`` cannot come from estimation error and raises
    a ``RuntimeWarning`` (the projection is still applied). Returns ``(..., n, n)``.
    """
    n = K.shape[-1]
    if n == 0:
        return K
    with torch.no_grad():
        K64 = K.detach().to(torch.float64)
        K64 = 0.5 * (K64 + K64.transpose(-1, -2))
        diag = K64.diagonal(dim1=-2, dim2=-1)
        floor = 4.0 * n * torch.finfo(K.dtype).eps * diag.amax(-1).clamp_min(0.0)
        lam, V = torch.linalg.eigh(K64)
        short = (floor[..., None] - lam).clamp_min(0.0)  # (..., n)
        if not bool((short > 0).any()):
            return K
        bound = n * torch.as_tensor(entry_error, dtype=torch.float64, device=K.device)
        worst = (-lam.amin(-1)).clamp_min(0.0)
        if bool((worst > bound).any()):
            import warnings

            warnings.warn(f"{what}: smallest eigenvalue {-float(worst.max()):.3g} is more negative than the "
                          f"estimation error can explain (bound {float(bound.max()):.3g}); projected onto the "
                          "PSD cone anyway — increase `samples` or check the inputs", RuntimeWarning, stacklevel=3)
        corr = (V * short.unsqueeze(-2)) @ V.transpose(-1, -2)
        new_diag = diag + corr.diagonal(dim1=-2, dim2=-1)
        scale = torch.sqrt(diag.clamp_min(0.0) / new_diag.clamp_min(1e-300))
    out = (K + corr.to(K.dtype)) * scale.to(K.dtype).unsqueeze(-1) * scale.to(K.dtype).unsqueeze(-2)
    return 0.5 * (out + out.transpose(-1, -2))


class InterleavedGaussian:
    """One gate family's pre-activations on two sequences, revealed step by step with fixed QMC points.

    The family ``(y_0, y'_0, y_1, y'_1, …)`` (steps of sequence 1 and 2 interleaved) is jointly Gaussian,
    but its covariance at step ``ℓ`` depends on the kernel at step ``ℓ − 1``. Interleaving makes the
    covariance of steps ``≤ ℓ`` a leading principal block, whose Cholesky factor is the leading block of
    the full factor: the samples of earlier steps never change, and the new ones are
    ``y_ℓ = L[2ℓ, :] · g`` with the same points ``g`` (``(N, 2T)``). In ``self_mode`` the two sequences
    are the same (``y' = y``) and only ``T`` variables are used.

    All tensors carry a leading pair dimension ``P``: covariance blocks ``(P, ·, ·)``, samples ``(P, N)`` in
    the dtype of ``normals`` (which may be lower than the covariance's: the LSTM samples in float32).
    """

    def __init__(self, normals: torch.Tensor, self_mode: bool):
        self.g = normals  # (N, 2T) or (N, T)
        self.self_mode = self_mode

    def step(self, cov11: torch.Tensor, cov22: torch.Tensor | None, cov12: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples of the new step ``ℓ`` given the covariance blocks of steps ``≤ ℓ``.

        ``cov11`` ``(P, ℓ+1, ℓ+1)`` (sequence 1 with itself), ``cov22`` likewise, ``cov12`` ``(P, ℓ+1, ℓ+1)``
        (``cov12[t, s] = Cov(y_t, y'_s)``). Returns ``(y_ℓ, y'_ℓ)``, each ``(P, N)``.
        """
        m = cov11.shape[-1]
        if self.self_mode:
            L = jittered_cholesky(cov11).to(self.g.dtype)
            y = (self.g[:, :m] @ L[:, -1, :, None]).squeeze(-1)  # batched per pair: same bits for any P
            return y, y
        top = torch.cat([cov11, cov12], -1)
        bottom = torch.cat([cov12.transpose(-1, -2), cov22], -1)
        full = torch.cat([top, bottom], -2)
        order = torch.arange(2 * m, device=cov11.device).view(2, m).T.reshape(-1)  # 0, m, 1, m+1, ...
        inter = full[:, order][:, :, order]
        L = jittered_cholesky(inter).to(self.g.dtype)
        y = self.g[:, : 2 * m] @ L[:, -2:, :].transpose(-1, -2)  # (P, N, 2): batched, same bits for any P
        return y[..., 0], y[..., 1]


# --- high-accuracy reference ---------------------------------------------------------------------

def orthant_probability_reference(mean: np.ndarray, cov: np.ndarray, abseps: float = 1e-10,
                                  releps: float = 1e-10, maxpts: int | None = None) -> float:
    """``P(X ≥ 0)`` for ``X ~ N(mean, cov)`` by scipy's Genz algorithm at tight tolerance
    (nested Gauss–Hermite quadrature for dimension ≤ 2). Slow; for tests and benchmarks only."""
    from scipy import stats

    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    m = mean.shape[0]
    if m == 1:
        return float(stats.norm.cdf(mean[0] / math.sqrt(cov[0, 0])))
    if m == 2:
        # P(X1 ≥ 0, X2 ≥ 0) = E_{X1 ≥ 0}[P(X2 ≥ 0 | X1)] by 1-D Gauss–Legendre on the truncated normal.
        s1 = math.sqrt(cov[0, 0])
        b = cov[0, 1] / cov[0, 0]
        v = cov[1, 1] - b * cov[0, 1]
        nodes, weights = np.polynomial.legendre.leggauss(200)
        lo = stats.norm.cdf(-mean[0] / s1)
        u = lo + (1 - lo) * (nodes + 1) / 2
        x1 = mean[0] + s1 * stats.norm.ppf(u)
        cond = stats.norm.cdf((mean[1] + b * (x1 - mean[0])) / math.sqrt(max(v, 1e-300)))
        return float((1 - lo) / 2 * np.sum(weights * cond))
    dist = stats.multivariate_normal(mean=-mean, cov=cov, allow_singular=True,
                                     maxpts=maxpts or 2_000_000 * m, abseps=abseps, releps=releps)
    return float(dist.cdf(np.zeros(m)))



def _asin_dual(k11: float, k22: float, k12: float) -> float:
    return math.asin(max(-1.0, min(1.0, 2 * k12 / math.sqrt((1 + 2 * k11) * (1 + 2 * k22)))))


def gru_reference_table(c12: np.ndarray, c11: np.ndarray, c22: np.ndarray, wu: float, b: float, ww: float,
                        orthant=orthant_probability_reference) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slow, independent reference of the erf-GRU hidden kernel ``K(t,s)`` of ONE pair of sequences
    (reference kernels.md "GRU"): every ``E[ω(a,t)ω'(b,s)]`` is solved as its own orthant probability
    ``P(X ≥ 0)``, ``X ~ N(0, D_ε Σ_z D_ε + ½I)``, by ``orthant`` (scipy's Genz algorithm at tight tolerance
    by default). ``c12`` ``(T1, T2)`` cross token Gram, ``c11``/``c22`` self Grams; σu², σb², σw² shared
    by the gates. Returns ``(K12, K11, K22)``. ``O(T⁴)`` orthant problems: tests and benchmarks only."""
    k11 = _gru_reference(c11, c11, c11, None, None, wu, b, ww, orthant)
    k22 = _gru_reference(c22, c22, c22, None, None, wu, b, ww, orthant)
    k12 = _gru_reference(c12, c11, c22, k11, k22, wu, b, ww, orthant)
    return k12, k11, k22


def _gru_reference(cc, ca, cb, Ka, Kb, wu, b, ww, orthant):
    self_mode = Ka is None
    T1, T2 = cc.shape
    K = np.zeros((T1, T2))
    if self_mode:
        Ka = Kb = K

    def kp(Kx, i, j):
        return Kx[i - 1, j - 1] if i > 0 and j > 0 else 0.0

    def zA(i, j):
        return wu * ca[i, j] + ww * kp(Ka, i, j) + b

    def zB(i, j):
        return wu * cb[i, j] + ww * kp(Kb, i, j) + b

    def zX(i, j):
        return wu * cc[i, j] + ww * kp(K, i, j) + b

    def hd(cx, Kx, zf, i):
        z = zf(i, i)
        return wu * cx[i, i] + ww * kp(Kx, i, i) * (0.25 + _asin_dual(z, z, z) / (2 * math.pi)) + b

    def S(a, bb):
        r = 0.25 + _asin_dual(zA(a, a), zB(bb, bb), zX(a, bb)) / (2 * math.pi)
        h12 = wu * cc[a, bb] + ww * kp(K, a, bb) * r + b
        return 2 / math.pi * _asin_dual(hd(ca, Ka, zA, a), hd(cb, Kb, zB, bb), h12)

    for t in range(T1):
        for s in range(T2):
            if self_mode and s > t:
                continue
            total = 0.0
            for a in range(t + 1):
                for bb in range(s + 1):
                    i1, i2 = list(range(a, t + 1)), list(range(bb, s + 1))
                    n1, m = len(i1), len(i1) + len(i2)
                    cov = np.zeros((m, m))
                    for i, ti in enumerate(i1):
                        for j, tj in enumerate(i1):
                            cov[i, j] = zA(ti, tj)
                        for j, sj in enumerate(i2):
                            cov[i, n1 + j] = cov[n1 + j, i] = zX(ti, sj)
                    for i, si in enumerate(i2):
                        for j, sj in enumerate(i2):
                            cov[n1 + i, n1 + j] = zB(si, sj)
                    eps = np.array([1.0] + [-1.0] * (n1 - 1) + [1.0] + [-1.0] * (m - n1 - 1))
                    total += orthant(np.zeros(m), eps[:, None] * cov * eps[None, :] + 0.5 * np.eye(m)) * S(a, bb)
            K[t, s] = total
            if self_mode:
                K[s, t] = total
    return K

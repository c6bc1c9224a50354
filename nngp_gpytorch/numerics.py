"""The numerical primitives every layer of the package shares, written once.

* **Safe square roots** (:func:`safe_sqrt`): ``√max(x, 0)`` with a finite gradient at 0 (the diagonal of a
  kernel, where ``1 − c² = 0``).
* **Gauss–Hermite rules** (Golub–Welsch nodes from ``scipy.special.roots_hermite``, stable at any degree,
  where numpy's ``hermgauss`` overflows beyond ~500 nodes): :func:`hermite_rule` for the weight ``e^{−x²}``
  and :func:`normal_rule` / :func:`normal_product_rule` for ``E[f(z)]``, ``z ~ N(0, I_m)``:
  ``E[f(z)] ≈ Σ_p w_p f(ξ_p)`` with ``ξ = √2·x`` and ``w = Π w_i / π^{m/2}`` (weights sum to 1).
* **Scrambled Sobol normals** (:func:`sobol_normals`): Owen-scrambled Sobol points
  (:class:`torch.quasirandom.SobolEngine`, seeded, so deterministic) mapped to normals by ``Φ⁻¹``
  (``torch.special.ndtri``). :func:`sobol_replicates` gives ``R`` independently scrambled copies, whose spread is
  the randomized-QMC standard error.
* **Square roots of PSD covariances**, two conventions with different jobs:
  :func:`psd_cholesky` (exact ``L Lᵀ = Σ`` for singular ``Σ``: columns with a vanishing pivot are zero; used by
  quadrature, where a jitter would bias every node) and :func:`jittered_cholesky` (``L Lᵀ = Σ + δI``; vectorized
  LAPACK, for the large batches of gate covariances), plus :func:`principal_factor` (the jittered factor rotated
  to principal components, largest variance first, which QMC wants).
* **The erf gate** ``ς(x) = (1 + erf x)/2`` of Yang (2019)'s GRU/LSTM (:func:`erf_gate`).
* **Kink-aligned rules** (:func:`kinked_coordinates`, :func:`half_range_rule`, :func:`split_product_nodes`): Gauss
  rules split where an integrand is non-smooth at 0 (ReLU, abs, step, ... inside it), used by the tensor programs'
  expectations and the quadrature duals (the block comment above them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import scipy.special
import torch

#: the largest dimension torch's Sobol engine supports
SOBOL_MAX_DIM = 21201


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with the gradient clamped near 0 (to ``1/(2·eps)``) instead of ``inf``."""
    return _SafeSqrt.apply(x, torch.finfo(x.dtype).eps)


class _SafeSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps):
        y = torch.sqrt(x.clamp_min(0.0))
        ctx.save_for_backward(y)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * 0.5 / y.clamp_min(ctx.eps), None


def fix_eigenvector_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Eigenvectors (columns of ``vectors`` ``(..., m, m)``) with their sign fixed: each column's projection on a
    generic direction is made positive. ``eigh`` defines eigenvectors only up to sign, and CPU and CUDA
    solvers choose differently; a QMC rule rotated by them then differs between devices (by 1e-3 in the
    gated-recurrent kernels). With the sign fixed both devices use the same rotation of the same points."""
    generic = torch.linspace(1.0, 2.0, vectors.shape[-1], dtype=vectors.dtype, device=vectors.device)
    return vectors * torch.where((generic @ vectors) < 0, -1.0, 1.0).unsqueeze(-2)


def erf_gate(x: torch.Tensor) -> torch.Tensor:
    """``ς(x) = (1 + erf x)/2 = Φ(√2·x)``, the gate of Yang (2019)'s GRU and LSTM."""
    return 0.5 * (1.0 + torch.erf(x))


# ---------------------------------------------------------------------------------------------- Gauss–Hermite


@functools.lru_cache(maxsize=64)
def _hermite_numpy(degree: int) -> tuple[np.ndarray, np.ndarray]:
    if degree < 1:
        raise ValueError(f"a Gauss–Hermite rule needs degree >= 1, got {degree}")
    return scipy.special.roots_hermite(degree)


def hermite_rule(degree: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Hermite nodes ``x`` and weights ``w`` ``(degree,)`` for the weight ``e^{−x²}``
    (``Σ w_i f(x_i) ≈ ∫ f(x) e^{−x²} dx``, exact for polynomials of degree < 2·degree), in ``like``'s
    dtype and device."""
    x, w = _hermite_numpy(int(degree))
    return (torch.as_tensor(x, dtype=like.dtype, device=like.device),
            torch.as_tensor(w, dtype=like.dtype, device=like.device))


def normal_rule(degree: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal nodes ``ξ = √2·x`` and weights ``w/√π`` ``(degree,)`` (summing to 1):
    ``E[f(z)] ≈ Σ_i w_i f(ξ_i)`` for ``z ~ N(0, 1)``."""
    x, w = hermite_rule(degree, like)
    return x * math.sqrt(2.0), w / math.sqrt(math.pi)


@functools.lru_cache(maxsize=32)
def _product_numpy(m: int, degree: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = _hermite_numpy(degree)
    grids = np.meshgrid(*([x] * m), indexing="ij")
    nodes = np.stack([g.reshape(-1) for g in grids], -1) * math.sqrt(2.0)
    wgrid = np.meshgrid(*([w] * m), indexing="ij")
    weights = np.prod(np.stack([g.reshape(-1) for g in wgrid], -1), -1) / math.pi ** (m / 2)
    return nodes, weights


def normal_product_rule(m: int, degree: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product standard-normal nodes ``(P, m)`` and weights ``(P,)`` (``P = degree^m``, summing to 1):
    ``E[f(z)] ≈ Σ_p w_p f(ξ_p)`` for ``z ~ N(0, I_m)``."""
    nodes, weights = _product_numpy(int(m), int(degree))
    return (torch.as_tensor(nodes, dtype=like.dtype, device=like.device),
            torch.as_tensor(weights, dtype=like.dtype, device=like.device))


# ---------------------------------------------------------------------------------------------- Sobol normals


@functools.lru_cache(maxsize=32)
def _sobol_cpu(dim: int, points: int, seed: int) -> torch.Tensor:
    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    u = engine.draw(points, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return torch.special.ndtri(u)


def sobol_normals(dim: int, points: int, seed: int = 0, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``(points, dim)`` standard normals ``Φ⁻¹(u)`` of one Owen-scrambled Sobol sequence seeded with ``seed``
    (deterministic; cached in float64 on the CPU, never modified in place)."""
    if not 1 <= dim <= SOBOL_MAX_DIM:
        raise ValueError(f"QMC dimension must be in [1, {SOBOL_MAX_DIM}], got {dim}")
    if points < 2:
        raise ValueError(f"need at least 2 QMC points, got {points}")
    return _sobol_cpu(int(dim), int(points), int(seed)).to(dtype=dtype, device=device)


def sobol_replicates(dim: int, points: int, replicates: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    """``(R, S, dim)`` normals from ``R`` independently scrambled Sobol sequences (seeds ``7919·seed + r``):
    each replicate gives an unbiased estimate, and their spread the standard error."""
    return torch.stack([sobol_normals(dim, points, int(seed) * 7919 + r, like.dtype, like.device)
                        for r in range(replicates)])


# ---------------------------------------------------------------------------------------------- PSD factors


def psd_cholesky(sigma: torch.Tensor, rel_tol: float = 1e-10) -> torch.Tensor:
    """Lower factor ``L`` with ``L Lᵀ = Σ`` for PSD ``Σ`` ``(..., m, m)``, singular ones included.

    Column-by-column Cholesky; where a pivot ``d_j ≤ rel_tol·max_i Σ_ii`` (variable ``j`` is a linear function
    of the previous ones) the column is zero. Differentiable (no eigendecomposition, whose gradient is
    undefined at repeated eigenvalues).
    """
    m = sigma.shape[-1]
    scale = sigma.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True).clamp_min(torch.finfo(sigma.dtype).tiny)
    cols: list[torch.Tensor] = []  # each (..., m), column j has zeros above row j
    for j in range(m):
        s_col = sigma[..., :, j]
        if cols:
            prev = torch.stack(cols, -1)  # (..., m, j)
            s_col = s_col - (prev * prev[..., j:j + 1, :]).sum(-1)
        pivot = s_col[..., j:j + 1]
        ok = pivot > rel_tol * scale
        root = safe_sqrt(torch.where(ok, pivot, torch.ones_like(pivot)))
        col = torch.where(ok, s_col / root, torch.zeros_like(s_col))
        mask = torch.zeros(m, dtype=sigma.dtype, device=sigma.device)
        mask[j:] = 1.0
        cols.append(col * mask)
    return torch.stack(cols, -1)


def jittered_cholesky(cov: torch.Tensor, rel_jitter: float = 1e-10) -> torch.Tensor:
    """Lower-triangular ``L`` with ``L Lᵀ = cov + δI`` (``δ = rel_jitter·max diag``, raised ×100 until the
    Cholesky succeeds, at most 6 times). Singular covariances (identical inputs) are therefore fine; the bias
    is ``O(δ)``. ``cov`` ``(..., m, m)``."""
    scale = cov.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)[..., None, None]
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    jitter = rel_jitter
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
        if not bool((info > 0).any()):
            return L
        jitter *= 100.0
    raise ValueError("covariance is not positive semi-definite (Cholesky failed even with jitter)")


def principal_factor(cov: torch.Tensor, rel_jitter: float = 1e-10) -> torch.Tensor:
    """Principal-component square root ``B`` of ``cov``: ``B Bᵀ = cov + δI`` with column ``k`` the ``k``-th
    principal direction scaled by √λ_k (eigenvalues in decreasing order), so that the first (best
    distributed) quasi-Monte Carlo coordinates drive the directions of largest variance.

    ``B = L·Q`` with ``L`` = :func:`jittered_cholesky` (differentiable) and the rotation
    ``Q = L⁻¹·V·√Λ`` (orthogonal; computed without gradient in float64 and re-orthogonalized by QR).
    Holding ``Q`` fixed keeps ``B Bᵀ = cov + δI`` exact for every ``cov``, so the QMC estimate and its
    gradient stay consistent, and no eigenvector derivative (singular at repeated eigenvalues, e.g.
    duplicated steps) is ever needed. ``cov`` ``(..., m, m)`` → ``(..., m, m)``.
    """
    L = jittered_cholesky(cov, rel_jitter)
    with torch.no_grad():
        Ld = L.detach().to(torch.float64)
        lam, V = torch.linalg.eigh(Ld @ Ld.transpose(-1, -2))
        lam, V = lam.flip(-1).clamp_min(0.0), V.flip(-1)
        V = fix_eigenvector_signs(V)  # the same rotation on every device
        M = torch.linalg.solve_triangular(Ld, V * lam.sqrt().unsqueeze(-2), upper=False)
        Q, R = torch.linalg.qr(M)
        sign = torch.where(R.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(Q.dtype)
        Q = (Q * sign.unsqueeze(-2)).to(cov.dtype)
    return L @ Q


# ---- Kink-aligned rules (Gauss rules split where an integrand is non-smooth at 0) ----
#
# A function built from ReLU, LeakyReLU, abs, step, sign, max(·, 0) or clamps at 0 is smooth on each side of the
# hyperplanes z_j = 0 of its Gaussian arguments, and a tensor-product Gauss–Hermite rule across such a kink
# converges only algebraically in the degree; splitting the integral at the kink restores geometric convergence.
# kinked_coordinates finds the coordinates by probing; split_product_nodes orders them first in the Cholesky factor
# z = L ξ, so the kink of z_j lies at ξ_j = t_j = −(Σ_{i<j} L_ji ξ_i)/L_jj given the earlier nodes, and splits the
# ξ_j integral there: ∫_t^∞ φ(ξ) g(ξ) dξ = ∫_0^∞ φ(s)·√(2π)·φ(t)·e^{−ts}·g(t + s) ds and its mirror, each by the
# half-range Gauss rule (nodes of φ on (0, ∞) by the discretized Stieltjes procedure, Gautschi 2004 §2.2). Where
# |t_j| > SPLIT_LIMIT (the kink lies in the tail) or L_jj = 0 the plain rule is used. Kinks away from 0 or on
# oblique hyperplanes are not aligned. Used by the tensor programs' expectations and the quadrature duals.

#: beyond this |t| the split point lies in the Gaussian tail and the plain rule is used (its kink error ~ φ(t))
SPLIT_LIMIT = 5.0


@functools.lru_cache(maxsize=64)
def half_range_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(s, w)``: the ``n``-point Gauss rule of the measure ``φ(s) ds`` on ``(0, ∞)`` (``Σw = 1/2``).

    Recurrence coefficients by the discretized Stieltjes procedure on 300 Gauss–Legendre points of ``[0, 14]``
    (``φ(14) ≈ 10⁻⁴³``; moments exact to ~2e-14, more points lose accuracy to the Legendre weights), then
    Golub–Welsch (eigenvalues of the Jacobi matrix); at most 150 points."""
    if not 1 <= n <= 150:
        raise ValueError(f"half_range_rule supports 1 to 150 points, got {n}")
    x, wl = np.polynomial.legendre.leggauss(300)
    s = 7.0 * (x + 1.0)
    mass = 7.0 * wl * np.exp(-0.5 * s * s) / math.sqrt(2.0 * math.pi)
    alpha, beta = np.zeros(n), np.zeros(n)
    p_prev, p = np.zeros_like(s), np.ones_like(s)
    norm_prev = 1.0
    for k in range(n):
        norm = float(np.sum(mass * p * p))
        alpha[k] = float(np.sum(mass * s * p * p)) / norm
        beta[k] = norm / norm_prev if k else norm
        p_prev, p = p, (s - alpha[k]) * p - (beta[k] if k else 0.0) * p_prev
        scale = math.sqrt(norm)  # keep the polynomials O(1): rescale both, the ratios are unchanged
        p, p_prev, norm_prev = p / scale, p_prev / scale, norm / (scale * scale)
    jacobi = np.diag(alpha) + np.diag(np.sqrt(beta[1:]), 1) + np.diag(np.sqrt(beta[1:]), -1)
    nodes, vectors = np.linalg.eigh(jacobi)
    return nodes, beta[0] * vectors[0] ** 2


def kinked_coordinates(fn: Callable[[torch.Tensor], torch.Tensor], sigma: torch.Tensor, probes: int = 6
                       ) -> tuple[int, ...]:
    """Coordinates ``j`` at which ``fn`` (of ``z ~ N(0, Σ)``, ``Σ`` one ``(m, m)`` block) is not smooth at
    ``z_j = 0``: the second difference over ``±h·σ_j`` falls slower than ``h²`` (by at least 10× from
    ``h = 10⁻²`` to ``10⁻⁴``) at some random probe point."""
    m = sigma.shape[-1]
    sd = sigma.detach().diagonal().clamp_min(0).sqrt().clamp_min(1e-12).to(torch.float64)
    g = torch.Generator().manual_seed(1234)
    base = torch.randn(probes, m, generator=g, dtype=torch.float64) * sd
    found = []
    for j in range(m):
        steps = torch.tensor([-1e-2, 0.0, 1e-2, -1e-4, 0.0, 1e-4], dtype=torch.float64) * sd[j]
        z = base[:, None, :].repeat(1, 6, 1)
        z[..., j] = steps
        with torch.no_grad():
            f = fn(z.to(sigma.dtype)).to(torch.float64)
        f = f.reshape(probes, 6, -1).abs().sum(-1) if f.dim() > 2 else f.reshape(probes, 6)
        d_big = (f[:, 0] - 2 * f[:, 1] + f[:, 2]).abs()
        d_small = (f[:, 3] - 2 * f[:, 4] + f[:, 5]).abs()
        noise = 1e-9 * (1.0 + f[:, 1].abs())
        if bool(((d_small > noise) & (d_small * 1000.0 > d_big)).any()):
            found.append(j)
    return tuple(found)


def split_product_nodes(chol: torch.Tensor, kinked: int, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal nodes ``ξ`` ``(E, P, m)`` and weights ``(E, P)`` (summing to 1) of the product rule whose
    first ``kinked`` coordinates are split at their kinks (module docstring); ``chol`` ``(E, m, m)`` is the
    factor with those coordinates first. Every coordinate has ``2·⌈degree/2⌉`` nodes (split: ``⌈degree/2⌉`` per
    side), so ``P = (2⌈degree/2⌉)^m``."""
    e, m = chol.shape[0], chol.shape[-1]
    half = max(1, -(-degree // 2))
    like = dict(dtype=chol.dtype, device=chol.device)
    s, w = (torch.as_tensor(a, **like) for a in half_range_rule(half))
    gx, gw = normal_rule(2 * half, chol)
    xi = torch.zeros(e, 1, 0, **like)
    wt = torch.ones(e, 1, **like)
    for j in range(m):
        p = xi.shape[1]
        plain_x, plain_w = gx.expand(e, p, -1), gw.expand(e, p, -1)
        if j < kinked:
            ljj = chol[:, j, j][:, None]  # (E, 1)
            shift = (xi * chol[:, j, :j][:, None, :]).sum(-1)  # Σ_{i<j} L_ji ξ_i, (E, P)
            ok = ljj > 1e-12 * chol.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)
            t = torch.where(ok, -shift / torch.where(ok, ljj, torch.ones_like(ljj)), torch.zeros_like(shift))
            use = (t.abs() <= SPLIT_LIMIT)[..., None]
            tc = torch.where(use[..., 0], t, torch.zeros_like(t))[..., None]  # (E, P, 1)
            dens = torch.exp(-0.5 * tc * tc)  # √(2π)·φ(t)
            up_x, up_w = tc + s, w * dens * torch.exp(-tc * s)
            lo_x, lo_w = tc - s, w * dens * torch.exp(tc * s)
            split_x, split_w = torch.cat([lo_x, up_x], -1), torch.cat([lo_w, up_w], -1)
            new_x = torch.where(use, split_x, plain_x)
            new_w = torch.where(use, split_w, plain_w)
        else:
            new_x, new_w = plain_x, plain_w
        n = new_x.shape[-1]
        xi = torch.cat([xi[:, :, None, :].expand(e, p, n, j), new_x[..., None]], -1).reshape(e, p * n, j + 1)
        wt = (wt[:, :, None] * new_w).reshape(e, p * n)
    return xi, wt

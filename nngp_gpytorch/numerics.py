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
"""

from __future__ import annotations

import functools
import math

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

r"""Kink-aligned Gauss–Hermite rules: product rules split where a coordinate of the integrand is non-smooth at 0.

A Nonlin built from ReLU, LeakyReLU, abs, step, sign, max(·, 0) or clamps at 0 is smooth on each side of the
hyperplanes ``z_j = 0`` of the G-vars it takes, and a tensor-product Gauss–Hermite rule across such a kink
converges only algebraically in the degree. Splitting the integral at the kink restores geometric convergence:

* :func:`kinked_coordinates` finds the coordinates by probing the integrand: across ``z_j = 0`` a smooth function's
  second difference shrinks like ``h²``, a kink's like ``h``, a jump's not at all;
* :func:`split_product_nodes` orders the kinked coordinates first in the Cholesky factor ``z = L ξ``. The kink of
  ``z_j`` then lies at ``ξ_j = t_j = −(Σ_{i<j} L_ji ξ_i)/L_jj`` given the earlier nodes, and the ``ξ_j`` integral is
  split there: ``∫_t^∞ φ(ξ) g(ξ) dξ = ∫_0^∞ φ(s)·√(2π)·φ(t)·e^{−ts}·g(t + s) ds`` and its mirror, each by the
  half-range Gauss rule of :func:`half_range_rule` (nodes of ``φ`` on ``(0, ∞)``, by the discretized Stieltjes
  procedure, Gautschi 2004 §2.2). Where ``|t_j| > SPLIT_LIMIT`` (the kink lies in the tail, where its effect is of
  order ``φ(t)``) or ``L_jj = 0`` (the coordinate is a function of the earlier ones) the plain rule is used.

Kinks away from 0 (``relu(a − 1)``) or on oblique hyperplanes (``relu(a − c)``) are not aligned; they keep the
plain rule, and the error estimate (:mod:`.error_control`) reports its slower convergence.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from ..numerics import normal_rule

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


__all__ = ["SPLIT_LIMIT", "half_range_rule", "kinked_coordinates", "split_product_nodes"]

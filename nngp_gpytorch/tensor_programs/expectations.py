"""Expectations ``E[F(z)]`` of a function of a centred Gaussian vector ``z ~ N(0, Σ)``, for many ``Σ`` at once.

Two rules, chosen by the dimension ``m`` of ``z`` (:class:`Accuracy`):

* **Gauss–Hermite tensor product** (``m ≤ gh_max_dim``): with 1-D nodes/weights ``(x_i, w_i)`` of
  the Gauss–Hermite rule of degree ``deg`` (:func:`~nngp_gpytorch.numerics.normal_product_rule`),
  ``E[F(z)] ≈ π^{−m/2}·Σ_{i₁…i_m} w_{i₁}…w_{i_m} F(L·√2·x_{i})`` where ``Σ = L Lᵀ``.
  Exact for polynomials of degree < 2·deg in each coordinate; geometric convergence for smooth ``F``.
  ``deg = min(quadrature_degree, ⌊gh_max_nodes^{1/m}⌋)``.
* **Randomized quasi-Monte Carlo** (``m > gh_max_dim``): ``R = qmc_replicates`` independently scrambled
  Sobol sequences (:class:`torch.quasirandom.SobolEngine`, Owen scrambling, seeded) of ``qmc_points``
  points each, mapped to normals by ``√2·erfinv(2u − 1)``. Each replicate is an unbiased estimate; the
  replicate axis is returned (leading dimension ``R``) so that the caller can carry it through the rest of
  the program and report an end-to-end standard error ``std_r/√R`` (Owen 1997; L'Ecuyer & Lemieux 2005).

``L`` is a pivot-free Cholesky factor that tolerates singular ``Σ`` (duplicated variables, identical
inputs): a column whose pivot vanishes (relative ``1e-10``) is set to zero. Entries are processed in
chunks so that at most ``max_chunk_elements`` function values are held at once; under autograd each chunk
is checkpointed (recomputed in the backward pass), so memory does not grow with the number of chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.utils.checkpoint

from ..numerics import (
    fix_eigenvector_signs,
    kinked_coordinates,
    normal_product_rule,
    psd_cholesky,
    sobol_replicates,
    split_product_nodes,
)


@dataclass(frozen=True)
class Accuracy:
    """Accuracy knobs of the master-theorem kernel.

    Attributes:
        quadrature_degree: Gauss–Hermite nodes per dimension (cap), as for the dual activations.
        gh_max_dim: largest dimension computed by the Gauss–Hermite tensor product.
        gh_max_nodes: cap on the total number of product nodes (sets the degree in higher dimension).
        qmc_points: Sobol points per replicate (a power of 2 keeps the balance properties).
        qmc_replicates: independent scramblings ``R`` (the standard error uses ``R − 1`` d.o.f.).
        seed: base seed of the scramblings; the kernel is deterministic for a seed.
        max_chunk_elements: memory bound (number of function evaluations held at once).
        qmc_pca: map Sobol coordinates to principal components of ``Σ`` (largest first), which lowers the
            effective dimension and the RQMC error (Acworth, Broadie & Glasserman 1998).
        split_kinks: split product rules at the kinks of coordinates found non-smooth at 0 (kink-aligned rules of
            :mod:`nngp_gpytorch.numerics`: ReLU, abs, step, sign, max(·, 0) factors), which restores their geometric
            convergence.
        target: relative accuracy asked of the Gauss–Hermite part (:mod:`.error_control`): the kernel is also
            computed with every product rule at half its degree, ``|K_n − K_{n/2}|`` is reported as the
            quadrature error, and while it exceeds ``target·max|K|`` the degrees are doubled (at most
            ``max_escalations`` times, total nodes capped at ``escalation_max_nodes``); a warning says when the
            target is not met. ``None``: no estimate (the previous behaviour, one evaluation).
        max_escalations: how many times the degrees may be doubled.
        escalation_max_nodes: cap on the product nodes per expectation when escalating.
        degree_divisor: every product rule runs at ``1/degree_divisor`` of its degree (the coarse rule of the
            error estimate; 1 for the kernel itself).
    """

    quadrature_degree: int = 64
    gh_max_dim: int = 3
    gh_max_nodes: int = 2**14
    qmc_points: int = 2**12
    qmc_replicates: int = 8
    seed: int = 0
    max_chunk_elements: int = 2**22
    qmc_pca: bool = True
    split_kinks: bool = True
    target: float | None = 1e-6
    max_escalations: int = 1
    escalation_max_nodes: int = 2**18
    degree_divisor: int = 1

    def __post_init__(self):
        for name in ("quadrature_degree", "gh_max_dim", "gh_max_nodes", "qmc_points", "qmc_replicates",
                     "max_chunk_elements", "escalation_max_nodes", "degree_divisor"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Accuracy.{name} must be a positive integer, got {getattr(self, name)}")
        if self.qmc_replicates < 2:
            raise ValueError("Accuracy.qmc_replicates must be >= 2 to estimate the QMC error")
        if int(self.max_escalations) < 0:
            raise ValueError(f"Accuracy.max_escalations must be >= 0, got {self.max_escalations}")
        if self.target is not None and not float(self.target) > 0:
            raise ValueError(f"Accuracy.target must be positive or None, got {self.target}")

    def gh_degree(self, m: int) -> int:
        """Gauss–Hermite degree per dimension of an ``m``-dimensional product rule."""
        full = max(2, min(self.quadrature_degree, math.floor(self.gh_max_nodes ** (1.0 / m) + 1e-9)))
        return int(max(2, full // self.degree_divisor))

    def coarse(self) -> Accuracy:
        """The same knobs with every product rule at half its degree (the error estimate's coarse rule)."""
        return replace(self, degree_divisor=2 * self.degree_divisor)

    def refined(self) -> Accuracy:
        """Degrees doubled (nodes per expectation up to ``escalation_max_nodes``); ``self`` when nothing grows."""
        nodes = min(max(self.gh_max_nodes, self.escalation_max_nodes), self.gh_max_nodes * 2**self.gh_max_dim)
        return replace(self, quadrature_degree=2 * self.quadrature_degree, gh_max_nodes=nodes)


def gaussian_expectation(
    fn: Callable[[torch.Tensor], torch.Tensor],
    sigma: torch.Tensor,
    accuracy: Accuracy,
    seed: int,
    value_shape: tuple[int, ...] = (),
    nested_autograd: bool = False,
) -> tuple[torch.Tensor, str]:
    """``E[fn(z)]``, ``z ~ N(0, Σ)``, for ``Σ`` of shape ``(R₀, ..., m, m)`` (``R₀`` a replicate axis, 1 or R).

    ``fn`` maps ``z`` of shape ``(..., m)`` (last axis = the coordinates) to ``(...)``, or to
    ``(..., *value_shape)`` for a vector-valued integrand (the result then ends in ``value_shape``; chunks
    shrink so that ``max_chunk_elements`` still bounds the values held). ``nested_autograd=True``: ``fn`` calls
    ``torch.autograd.grad`` itself (derivatives of Nonlins); chunks are then recomputed in the backward pass by
    a custom autograd function instead of ``torch.utils.checkpoint``, which rejects nested gradients.

    Returns ``(E, method)``: ``E`` has shape ``(R₀, ...)`` for Gauss–Hermite and ``(R, ...)`` for QMC
    (one unbiased estimate per scrambling); ``method`` is ``"gauss-hermite"`` or ``"qmc"``.
    """
    m = sigma.shape[-1]
    lead = sigma.shape[:-2]
    value_shape = tuple(int(s) for s in value_shape)
    extra = math.prod(value_shape)
    chol = psd_cholesky(sigma)
    if m <= accuracy.gh_max_dim:
        kinked = kinked_coordinates(fn, sigma.reshape(-1, m, m)[0]) if accuracy.split_kinks else ()
        if kinked:
            return _split_expectation(fn, sigma, kinked, accuracy, value_shape, nested_autograd), "gauss-hermite"
        nodes, weights = normal_product_rule(m, accuracy.gh_degree(m), sigma)
        flat = chol.reshape(-1, m, m)
        per = nodes.shape[0] * max(m, extra)
        chunk = max(1, accuracy.max_chunk_elements // per)
        parts = []
        def gh_chunk(factor: torch.Tensor) -> torch.Tensor:
            values = fn(torch.einsum("pj,eij->epi", nodes, factor))  # z: (E, P, m)
            if value_shape:
                return torch.einsum("ep...,p->e...", values, weights)
            return values @ weights

        for s in range(0, flat.shape[0], chunk):
            parts.append(_maybe_checkpoint(gh_chunk, flat[s:s + chunk], nested_autograd))
        return torch.cat(parts).reshape(*lead, *value_shape), "gauss-hermite"
    reps = accuracy.qmc_replicates
    normals = sobol_replicates(m, accuracy.qmc_points, reps, seed, sigma)  # (R, S, m)
    if accuracy.qmc_pca:
        # principal-component ordering: Σ = Q (QᵀΣQ) Qᵀ with Q from eigh of Σ (detached: a fixed rotation,
        # so gradients flow through Σ only); the first Sobol coordinates drive the largest variances.
        with torch.no_grad():
            evals, q = torch.linalg.eigh(sigma)
            q = q.flip(-1)
            q = fix_eigenvector_signs(q)  # the same rotation on every device
        chol = q @ psd_cholesky(q.transpose(-1, -2) @ sigma @ q)
    chol = chol.expand(reps, *lead[1:], m, m) if lead[0] == 1 else chol
    if chol.shape[0] != reps:
        raise RuntimeError(f"replicate axis {chol.shape[0]} does not match qmc_replicates={reps}")
    flat = chol.reshape(reps, -1, m, m)
    per = normals.shape[1] * max(m, extra) * reps
    chunk = max(1, accuracy.max_chunk_elements // per)
    parts = []

    def qmc_chunk(factor: torch.Tensor) -> torch.Tensor:
        return fn(torch.einsum("rsj,reij->resi", normals, factor)).mean(2)  # z: (R, E, S, m)

    for s in range(0, flat.shape[1], chunk):
        parts.append(_maybe_checkpoint(qmc_chunk, flat[:, s:s + chunk], nested_autograd))
    return torch.cat(parts, 1).reshape(reps, *lead[1:], *value_shape), "qmc"


def _split_expectation(fn, sigma: torch.Tensor, kinked: tuple[int, ...], accuracy: Accuracy,
                       value_shape: tuple[int, ...], nested_autograd: bool) -> torch.Tensor:
    """The product rule split at the kinks of the coordinates ``kinked`` (:mod:`.kinks`), in chunks of entries."""
    m, lead = sigma.shape[-1], sigma.shape[:-2]
    order = list(kinked) + [j for j in range(m) if j not in kinked]
    inverse = [order.index(j) for j in range(m)]
    perm = torch.tensor(order, device=sigma.device)
    factor = psd_cholesky(sigma.index_select(-1, perm).index_select(-2, perm)).reshape(-1, m, m)
    degree = accuracy.gh_degree(m)
    nodes_per_entry = (2 * -(-degree // 2)) ** m
    chunk = max(1, accuracy.max_chunk_elements // (nodes_per_entry * max(m, math.prod(value_shape))))

    def chunk_fn(lower: torch.Tensor) -> torch.Tensor:
        xi, w = split_product_nodes(lower, len(kinked), degree)
        z = torch.einsum("epj,eij->epi", xi, lower)[..., inverse]
        values = fn(z)
        return torch.einsum("ep...,ep->e...", values, w)

    parts = [_maybe_checkpoint(chunk_fn, factor[s:s + chunk], nested_autograd)
             for s in range(0, factor.shape[0], chunk)]
    return torch.cat(parts).reshape(*lead, *value_shape)


def _maybe_checkpoint(chunk_fn, factor: torch.Tensor, nested_autograd: bool = False) -> torch.Tensor:
    """Evaluate one chunk; under autograd, recompute it in the backward pass instead of storing every
    function value (memory stays bounded by one chunk, ``max_chunk_elements``, instead of all of them)."""
    if torch.is_grad_enabled() and factor.requires_grad:
        if nested_autograd:
            from ..duals.quadrature import Recomputed  # compatible with torch.autograd.grad inside chunk_fn
            return Recomputed.apply(chunk_fn, factor)
        return torch.utils.checkpoint.checkpoint(chunk_fn, factor, use_reentrant=False)
    return chunk_fn(factor)

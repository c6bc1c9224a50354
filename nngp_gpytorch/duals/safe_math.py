"""Numerically safe building blocks for dual activations.

Near correlation ``c = ±1`` (``x1 == x2``) the functions ``arccos``, ``arcsin`` and ``sqrt(1 - c²)``
have infinite derivatives, so autograd returns ``inf`` or ``nan`` exactly where GP users evaluate the
kernel most (its diagonal). Each function here has a forward pass that clamps ``c`` to ``[-1, 1]`` and a
backward pass that is finite: the exact derivative where it is finite, and a clamped one within
machine precision of ``|c| = 1``.
"""

from __future__ import annotations

import math

import torch

from ..numerics import safe_sqrt


def _one_minus_sq(c: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(c.dtype).eps
    return (1.0 - c * c).clamp_min(eps * eps)


class _ArcCosKernelJ1(torch.autograd.Function):
    """``J1(c) = sqrt(1 - c²) + (π - arccos c)·c`` with ``dJ1/dc = π - arccos c`` (bounded).

    This is the angular part of the degree-1 arc-cosine kernel (Cho & Saul 2009): the singular terms of
    the two summands' derivatives cancel analytically, so the derivative is computed in its cancelled
    form rather than by autograd.
    """

    @staticmethod
    def forward(ctx, c):
        theta = torch.arccos(c.clamp(-1.0, 1.0))
        ctx.save_for_backward(theta)
        return torch.sin(theta) + (math.pi - theta) * c  # sin(arccos c) = sqrt(1 - c²), accurate near |c| = 1

    @staticmethod
    def backward(ctx, grad):
        (theta,) = ctx.saved_tensors
        return grad * (math.pi - theta)


class _ArcCosPair(torch.autograd.Function):
    """``(J1(c), π − arccos c)`` from one ``arccos``: the NNGP and NTK factors of ReLU-like duals.

    Derivatives: ``dJ1/dc = π − arccos c`` (bounded) and ``d(π − arccos c)/dc = 1/sqrt(1 − c²)``
    (clamped within machine precision of ``|c| = 1``).
    """

    @staticmethod
    def forward(ctx, c):
        c = c.clamp(-1.0, 1.0)
        pi_minus_theta = math.pi - torch.arccos(c)
        ctx.save_for_backward(c, pi_minus_theta)
        return torch.sin(pi_minus_theta) + pi_minus_theta * c, pi_minus_theta

    @staticmethod
    def backward(ctx, grad_j1, grad_angle):
        c, pi_minus_theta = ctx.saved_tensors
        grad = torch.zeros_like(c)
        if grad_j1 is not None:
            grad = grad + grad_j1 * pi_minus_theta
        if grad_angle is not None:
            grad = grad + grad_angle * torch.rsqrt(_one_minus_sq(c))
        return grad


class _SafeArcSin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c):
        c = c.clamp(-1.0, 1.0)
        ctx.save_for_backward(c)
        return torch.arcsin(c)

    @staticmethod
    def backward(ctx, grad):
        (c,) = ctx.saved_tensors
        return grad * torch.rsqrt(_one_minus_sq(c))


def arccos_kernel_j1(c: torch.Tensor) -> torch.Tensor:
    """``sqrt(1-c²) + (π - arccos c)·c`` with a bounded gradient (derivative ``π - arccos c``)."""
    return _ArcCosKernelJ1.apply(c)


def arccos_kernel_pair(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J1(c), π − arccos c)`` with finite gradients, sharing one ``arccos`` (see :class:`_ArcCosPair`)."""
    return _ArcCosPair.apply(c)


def safe_arcsin(c: torch.Tensor) -> torch.Tensor:
    """``arcsin(clamp(c, -1, 1))`` whose gradient is finite (clamped near ``|c| = 1``)."""
    return _SafeArcSin.apply(c)


def safe_arccos(c: torch.Tensor) -> torch.Tensor:
    """``arccos(clamp(c, -1, 1))`` whose gradient is finite (clamped near ``|c| = 1``)."""
    return math.pi / 2 - safe_arcsin(c)


def correlation(
    k11: torch.Tensor,
    k22: torch.Tensor,
    k12: torch.Tensor,
    identical: torch.Tensor | None = None,
    snap: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(c, s)`` with ``s = sqrt(k11)·sqrt(k22)`` and ``c = k12 / s`` clamped to ``[-1, 1]``.

    ``identical`` (bool, broadcastable) marks pairs of identical inputs, for which ``c = 1`` is set
    exactly: a rounding error ε in ``c`` would otherwise become ≈ sqrt(ε) after a step or sign layer
    and compound with depth (reference/kernels.md, "Numerical care"). With ``snap=True`` (for duals
    with infinite slope at ``|c| = 1``: step, sign, the ReLU derivative) ``|c|`` within a few ulps of 1
    (exactly parallel or antiparallel features, e.g. inputs ``x`` and ``2x`` with σb² = 0) is set to
    ±1: the snap is no larger than the rounding error already in ``c``.
    Where ``s = 0`` (a zero-variance input, hence ``k12 = 0``) ``c = 0``.

    Square roots are taken of the variances (``O(n)``), not of the ``O(n²)`` products.
    """
    s = safe_sqrt(k11) * safe_sqrt(k22)
    finfo = torch.finfo(s.dtype)
    c = (k12 / s.clamp_min(finfo.tiny)).clamp(-1.0, 1.0)
    if snap:
        c = torch.where(c.abs() >= 1 - 8 * finfo.eps, torch.sign(c).detach(), c)
    if identical is not None:
        c = c.masked_fill(identical, 1.0)
    return c, s

"""Closed-form duals (reference/kernels.md, "Dual activations").

Notation: ``s = sqrt(k11·k22)``, ``c = k12/s`` (clamped, exactly 1 on identical pairs), ``θ = arccos c``.
"""

from __future__ import annotations

import math

import torch

from .base import Dual
from .fused import relu_nngp, relu_nngp_ntk
from .safe_math import arccos_kernel_j1, arccos_kernel_pair, correlation, safe_arccos, safe_arcsin

_TWO_PI = 2.0 * math.pi


class LeakyReLUDual(Dual):
    """``φ(x) = a·min(x, 0) + b·max(x, 0)`` (ReLU: a=0, b=1; abs: a=-1, b=1).

    ``E[φ(u)φ(v)] = s·[(a−b)²/(2π)·(J1(c) − π c) + (a²+b²)/2·c]`` with ``J1(c) = sqrt(1−c²) + (π−θ)c``
    (Cho & Saul 2009 arc-cosine kernel, degree 1), which equals the reference form
    ``((a−b)²/2π)·sqrt(k11k22 − k12²) + ((a²+b²)/2 − (a−b)²θ/2π)·k12``.
    Derivative dual: ``(a²+b²)(π−θ)/(2π) + 2ab·θ/(2π)``.
    """

    homogeneous = True

    def __init__(self, a: float = 0.0, b: float = 1.0):
        self.a, self.b = float(a), float(b)

    def nngp(self, k11, k22, k12, identical=None):
        a, b = self.a, self.b
        if a == 0.0:  # the full (n1, n2) block of a ReLU-like layer: one fused autograd Function
            fused = relu_nngp(k11, k22, k12, identical, scale=b * b / _TWO_PI)
            if fused is not None:
                return fused
        c, s = correlation(k11, k22, k12, identical)
        if a == 0.0:  # ReLU-like: the general form reduces to b²·s·J1(c)/(2π)
            return (b * b / _TWO_PI) * s * arccos_kernel_j1(c)
        return s * ((a - b) ** 2 / _TWO_PI * (arccos_kernel_j1(c) - math.pi * c) + (a * a + b * b) / 2 * c)

    def nngp_diag(self, k):
        return k * (self.a**2 + self.b**2) / 2

    def ntk(self, k11, k22, k12, identical=None):
        c, _ = correlation(k11, k22, k12, identical, snap=True)
        theta = safe_arccos(c)
        a, b = self.a, self.b
        return ((a * a + b * b) * (math.pi - theta) + 2 * a * b * theta) / _TWO_PI

    def ntk_diag(self, k):
        return torch.full_like(k, (self.a**2 + self.b**2) / 2)

    def propagate_pair(self, k11, k22, k12, t12, identical=None):
        if self.a == 0.0:  # ReLU-like: one fused pass for K' and V_φ'(K) ⊙ Θ on the full block
            fused = relu_nngp_ntk(k11, k22, k12, t12, identical, scale=self.b * self.b / _TWO_PI)
            if fused is not None:
                return fused
        return super().propagate_pair(k11, k22, k12, t12, identical)

    def nngp_and_ntk(self, k11, k22, k12, identical=None):
        """Both duals from one correlation and one ``arccos`` (the NTK's cost over the NNGP stays small)."""
        c, s = correlation(k11, k22, k12, identical, snap=True)
        j1, pi_minus_theta = arccos_kernel_pair(c)
        a, b = self.a, self.b
        if a == 0.0:
            nngp = (b * b / _TWO_PI) * s * j1
        else:
            nngp = s * ((a - b) ** 2 / _TWO_PI * (j1 - math.pi * c) + (a * a + b * b) / 2 * c)
        ntk = ((a * a + b * b) * pi_minus_theta + 2 * a * b * (math.pi - pi_minus_theta)) / _TWO_PI
        return nngp, ntk


class StepDual(Dual):
    """``φ(x) = 1[x > 0]``: ``E = (π − θ)/(2π)``; zero where a variance is 0 (φ(0) = 0); ``φ' = 0`` a.e."""

    homogeneous = True

    def nngp(self, k11, k22, k12, identical=None):
        c, s = correlation(k11, k22, k12, identical, snap=True)
        return torch.where(s > 0, (math.pi - safe_arccos(c)) / _TWO_PI, torch.zeros_like(c))

    def nngp_diag(self, k):
        return torch.where(k > 0, torch.full_like(k, 0.5), torch.zeros_like(k))

    def ntk(self, k11, k22, k12, identical=None):
        return torch.zeros(torch.broadcast_shapes(k11.shape, k22.shape, k12.shape), dtype=k12.dtype,
                           device=k12.device)

    def ntk_diag(self, k):
        return torch.zeros_like(k)


class SignDual(StepDual):
    """``φ(x) = sign(x)``: ``E = (2/π)·arcsin(c)``; ``φ' = 0`` a.e."""

    def nngp(self, k11, k22, k12, identical=None):
        c, s = correlation(k11, k22, k12, identical, snap=True)
        return torch.where(s > 0, (2.0 / math.pi) * safe_arcsin(c), torch.zeros_like(c))

    def nngp_diag(self, k):
        return (k > 0).to(k.dtype)


class ErfDual(Dual):
    """``φ(x) = erf(x)`` (Williams 1997).

    ``E = (2/π)·arcsin(2k12 / sqrt((1+2k11)(1+2k22)))``; derivative dual
    ``(4/π)·((1+2k11)(1+2k22) − 4k12²)^(−1/2)``.
    """

    def nngp(self, k11, k22, k12, identical=None):
        c, s = correlation(k11, k22, k12, identical)
        k12 = c * s
        return (2.0 / math.pi) * safe_arcsin(2.0 * k12 / torch.sqrt((1 + 2 * k11) * (1 + 2 * k22)))

    def nngp_diag(self, k):
        return (2.0 / math.pi) * torch.arcsin(2.0 * k / (1 + 2 * k))

    def ntk(self, k11, k22, k12, identical=None):
        c, s = correlation(k11, k22, k12, identical)
        k12 = c * s
        det = ((1 + 2 * k11) * (1 + 2 * k22) - 4 * k12 * k12).clamp_min(torch.finfo(k12.dtype).tiny)
        return (4.0 / math.pi) * torch.rsqrt(det)

    def ntk_diag(self, k):
        return (4.0 / math.pi) * torch.rsqrt(1 + 4 * k)


class GELUDual(Dual):
    """Exact GELU ``x·Φ(x)``.

    ``E = k12/4 + (1/2π)·[k12·arcsin(k12/sqrt(P)) + (k12² + k11·k22·δ²)/(P·δ)]`` with
    ``P = (1+k11)(1+k22)``, ``δ² = P − k12²``. The derivative dual has no closed form here and is taken
    from ``derivative`` (a :class:`~nngp_gpytorch.duals.quadrature.QuadratureDual` of GELU).
    """

    def __init__(self, derivative: Dual):
        self._derivative = derivative

    def nngp(self, k11, k22, k12, identical=None):
        c, s = correlation(k11, k22, k12, identical)
        k12 = c * s
        p = (1 + k11) * (1 + k22)
        delta = torch.sqrt((p - k12 * k12).clamp_min(torch.finfo(k12.dtype).tiny))
        return k12 / 4 + (k12 * safe_arcsin(k12 / torch.sqrt(p)) + (k12 * k12 + k11 * k22 * delta**2)
                          / (p * delta)) / _TWO_PI

    def nngp_diag(self, k):
        p = (1 + k) ** 2
        delta = torch.sqrt(1 + 2 * k)
        return k / 4 + (k * torch.arcsin(k / (1 + k)) + (k * k + k * k * delta**2) / (p * delta)) / _TWO_PI

    def ntk(self, k11, k22, k12, identical=None):
        return self._derivative.ntk(k11, k22, k12, identical)

    def ntk_diag(self, k):
        return self._derivative.ntk_diag(k)


class IdentityDual(Dual):
    """``φ(x) = x``: ``E = k12``; derivative dual 1."""

    homogeneous = True

    def nngp(self, k11, k22, k12, identical=None):
        return torch.broadcast_tensors(k11, k22, k12)[2]

    def nngp_diag(self, k):
        return k

    def ntk(self, k11, k22, k12, identical=None):
        return torch.ones(torch.broadcast_shapes(k11.shape, k22.shape, k12.shape), dtype=k12.dtype,
                          device=k12.device)

    def ntk_diag(self, k):
        return torch.ones_like(k)

"""Elementwise nonlinearities.

Each activation is a frozen description with :meth:`Activation.__call__` giving the pointwise torch
function (used by the finite twins and by quadrature). Its dual ``V_φ(K) = E[φ(u)φ(v)]`` and
derivative dual live in :mod:`nngp_gpytorch.duals`, looked up by :func:`nngp_gpytorch.duals.dual_for`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .base import Layer, Signal, SignalKind, require_gaussian


@dataclass(frozen=True, init=False)
class Activation(Layer):
    """Elementwise nonlinearity ``φ`` applied to Gaussian pre-activations.

    ``Activation(fn)`` wraps any elementwise torch callable; its dual is computed by 2-D Gauss–Hermite
    quadrature (:mod:`nngp_gpytorch.duals.quadrature`) and its derivative (for the NTK) by autograd.
    The named subclasses (``ReLU()``, ``Erf()``, ...) have closed-form duals where one exists.
    """

    fn: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, kw_only=True, repr=False)
    name: str | None = field(default=None, kw_only=True, repr=False)

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor] | None = None, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"Activation(fn) needs an elementwise torch callable, got {fn!r}")
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "name", name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``φ(x)`` elementwise; same shape as ``x``."""
        return self.fn(x)

    def propagate(self, signal: Signal, path: str) -> Signal:
        require_gaussian(self, signal, path)
        return signal.with_kind(SignalKind.FEATURES)

    def describe(self) -> str:
        if type(self) is Activation:
            label = self.name or getattr(self.fn, "__name__", repr(self.fn))
            return f"Activation({label})"
        return super().describe()


@dataclass(frozen=True)
class ReLU(Activation):
    """``max(x, 0)``; arc-cosine kernel of degree 1 (Cho & Saul 2009)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


@dataclass(frozen=True)
class LeakyReLU(Activation):
    """``a·min(x, 0) + max(x, 0)``."""

    a: float = 0.01

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, self.a * x)


@dataclass(frozen=True)
class Abs(Activation):
    """``|x|``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


@dataclass(frozen=True)
class Erf(Activation):
    """``erf(x)`` (Williams 1997 closed-form dual)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


@dataclass(frozen=True)
class Step(Activation):
    """Heaviside ``1[x > 0]`` (arc-cosine kernel of degree 0)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)


@dataclass(frozen=True)
class Sign(Activation):
    """``sign(x)``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)


@dataclass(frozen=True)
class GELU(Activation):
    """Exact GELU ``x·Φ(x)`` (not the tanh approximation)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


@dataclass(frozen=True)
class Identity(Activation):
    """``x`` (a linear network)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class Tanh(Activation):
    """``tanh(x)``; no closed-form dual: computed exactly by quadrature (not by the erf substitute)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


@dataclass(frozen=True)
class Sigmoid(Activation):
    """Logistic ``1/(1+e^{-x})``; dual by quadrature."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


@dataclass(frozen=True)
class SiLU(Activation):
    """``x·sigmoid(x)`` (swish); dual by quadrature."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


NAMED_ACTIVATIONS: tuple[type[Activation], ...] = (
    ReLU, LeakyReLU, Abs, Erf, Step, Sign, GELU, Identity, Tanh, Sigmoid, SiLU,
)

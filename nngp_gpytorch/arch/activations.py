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

from .base import ArchitectureError, Layer, Signal, SignalKind


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
        # Gaussian pre-activations, or post-activation features (a composed nonlinearity φ(ψ(g)): one Nonlin of
        # the Gaussian g in the tensor-program reading); only the raw input has no Gaussian to act on
        if signal.kind is SignalKind.INPUT:
            raise ArchitectureError(
                f"{path}: {self.describe()} needs Gaussian pre-activations but receives the raw input; "
                "put an affine layer (e.g. Dense()) before it"
            )
        if signal.not_pointwise:
            source = signal.not_pointwise
            hint = (" (they lie on a sphere); put the activation inside the layer, BatchNorm(ReLU()), or"
                    if source.startswith("BatchNorm") else
                    " (a max of Gaussians); for a monotone activation (ReLU, erf, tanh, sigmoid) put it before the "
                    "pool, which is the same network, or put" if source.startswith("MaxPool") else "; put")
            raise ArchitectureError(
                f"{path}: {self.describe()} after {signal.not_pointwise} acts on features that are not a pointwise "
                f"function of one Gaussian coordinate{hint} an affine layer (e.g. Dense()) before it"
            )
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


@dataclass(frozen=True, init=False)
class Composite(Activation):
    """The composition of a chain of activations, innermost first: ``Composite(ReLU(), Erf())`` is
    ``x ↦ erf(relu(x))`` (what ``Serial(..., ReLU(), Erf(), ...)`` computes).

    One elementwise function of one Gaussian pre-activation, so its dual ``E[φ(u)φ(v)]`` is a bivariate
    Gaussian expectation (Gauss–Hermite quadrature, or the closed form of a simplified chain, see
    :func:`nngp_gpytorch.algebra.composite.simplify_chain`) and its NTK factor uses the chain rule
    ``φ'(x) = Π_i φ_i'(φ_{i-1}(…))`` (autograd through the chain).
    """

    chain: tuple[Activation, ...] = field(default=())

    def __init__(self, *chain: Activation):
        if len(chain) == 1 and isinstance(chain[0], list | tuple):
            chain = tuple(chain[0])
        if not chain or any(not isinstance(a, Activation) for a in chain):
            raise ArchitectureError(f"Composite() needs one or more activations, got {chain!r}")
        flat: list[Activation] = []
        for a in chain:
            flat.extend(a.chain if isinstance(a, Composite) else (a,))
        object.__setattr__(self, "chain", tuple(flat))
        object.__setattr__(self, "fn", None)
        object.__setattr__(self, "name", None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for a in self.chain:
            x = a(x)
        return x

    def describe(self) -> str:
        return f"Composite({', '.join(a.describe() for a in self.chain)})"


@dataclass(frozen=True, init=False)
class SumOf(Activation):
    """``x ↦ Σ_b φ_b(x)``: branches without fresh weights summed over the same Gaussian pre-activation
    (``Parallel(Identity(), ReLU())`` reads as ``SumOf(Identity(), ReLU())``). One elementwise function,
    so its dual is a bivariate Gaussian expectation (quadrature) and its derivative the sum of derivatives."""

    terms: tuple[Activation, ...] = field(default=())

    def __init__(self, *terms: Activation):
        if not terms or any(not isinstance(a, Activation) for a in terms):
            raise ArchitectureError(f"SumOf() needs one or more activations, got {terms!r}")
        object.__setattr__(self, "terms", tuple(terms))
        object.__setattr__(self, "fn", None)
        object.__setattr__(self, "name", None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.terms[0](x)
        for a in self.terms[1:]:
            out = out + a(x)
        return out

    def describe(self) -> str:
        return f"SumOf({', '.join(a.describe() for a in self.terms)})"


NAMED_ACTIVATIONS: tuple[type[Activation], ...] = (
    ReLU, LeakyReLU, Abs, Erf, Step, Sign, GELU, Identity, Tanh, Sigmoid, SiLU,
)

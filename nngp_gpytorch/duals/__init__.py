"""Dual activations: ``V_φ(K) = E[φ(u)φ(v)]`` and the derivative duals used by the NTK.

:func:`dual_for` maps an activation description to its dual: a closed form where one exists
(ReLU, leaky ReLU, abs, step, sign, erf, GELU, identity), 2-D Gauss–Hermite quadrature otherwise.
"""

from __future__ import annotations

from ..arch import activations as act
from .base import Dual
from .closed_form import ErfDual, GELUDual, IdentityDual, LeakyReLUDual, SignDual, StepDual
from .quadrature import QuadratureDual, autograd_derivative

DEFAULT_QUADRATURE_DEGREE = 32


def dual_for(activation: act.Activation, quadrature_degree: int = DEFAULT_QUADRATURE_DEGREE,
             adaptive: bool = True) -> Dual:
    """The dual of ``activation``: closed form where known, Gauss–Hermite of ``quadrature_degree``
    (grown with the variances when ``adaptive``, see :class:`QuadratureDual`)
    otherwise (tanh, sigmoid, SiLU, ``Activation(fn)``)."""
    kind = type(activation)
    if kind is act.ReLU:
        return LeakyReLUDual(0.0, 1.0)
    if kind is act.LeakyReLU:
        return LeakyReLUDual(activation.a, 1.0)
    if kind is act.Abs:
        return LeakyReLUDual(-1.0, 1.0)
    if kind is act.Step:
        return StepDual()
    if kind is act.Sign:
        return SignDual()
    if kind is act.Erf:
        return ErfDual()
    if kind is act.Identity:
        return IdentityDual()
    if kind is act.GELU:
        return GELUDual(QuadratureDual(activation, quadrature_degree, label=activation.describe(), adaptive=adaptive))
    if isinstance(activation, act.Activation):
        return QuadratureDual(activation, quadrature_degree, label=activation.describe(), adaptive=adaptive)
    raise TypeError(f"{activation!r} is not an activation")


__all__ = [
    "DEFAULT_QUADRATURE_DEGREE", "Dual", "ErfDual", "GELUDual", "IdentityDual", "LeakyReLUDual",
    "QuadratureDual", "SignDual", "StepDual", "autograd_derivative", "dual_for",
]

"""Dropout (inverted, train mode): ``h ↦ h·m/(1 − p)`` with ``m ~ Bernoulli(1 − p)`` i.i.d. per unit and input."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .base import ArchitectureError, Layer, Signal, SignalKind


@dataclass(frozen=True)
class Dropout(Layer):
    """Inverted dropout in train mode with drop probability ``rate`` (``0 ≤ rate < 1``).

    Masks are independent across units, positions and inputs, and ``E[m/(1−p)] = 1``, so covariances between
    different inputs (or positions) are unchanged and only the same-input, same-position entries grow:
    ``K'(x, x) = K(x, x)/(1 − p)``, ``K'(x, x') = K(x, x')`` for ``x ≠ x'``; the NTK alike (as the
    neural-tangents ``Dropout(mode="train")`` kernel). The output is not Gaussian (a scale mixture): an affine
    layer (or a linear pool) must follow before any activation. Kernel rule:
    :mod:`nngp_gpytorch.algebra.dropout`; finite twin: :mod:`verification.twins.dropout`.
    """

    rate: float = 0.5

    def __post_init__(self) -> None:
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= float(rate) < 1.0:
            raise ArchitectureError(f"{self.describe()}: rate must be a number in [0, 1), got {rate!r}")

    @property
    def keep(self) -> float:
        """Keep probability ``1 − rate``."""
        return 1.0 - float(self.rate)

    def propagate(self, signal: Signal, path: str) -> Signal:
        if signal.kind is SignalKind.INPUT:
            raise ArchitectureError(f"{path}: {self.describe()} on the raw input is not supported; put it after a "
                                    "layer (e.g. after the first activation)")
        return replace(signal.with_kind(SignalKind.FEATURES), not_pointwise=self.describe())

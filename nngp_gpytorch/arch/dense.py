"""Fully connected (affine) layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ArchitectureError, Layer, Signal, SignalKind


@dataclass(frozen=True)
class Dense(Layer):
    """Affine layer ``h' = W h / sqrt(fan_in) * σw + σb β`` with i.i.d. standard-normal ``W``, ``β``.

    In the standard parameterization the weights are ``N(0, σw²/fan_in)`` and the bias ``N(0, σb²)``;
    both give the same NNGP ``K' = σw²·K + σb²`` (Lee et al. 2018, eq. 4), applied to the input
    covariance ``x·x'/d`` for the first layer.

    ``weight_var`` / ``bias_var`` fix this layer's variances; ``None`` (the default) draws them from the
    kernel's learnable hyperparameters (shared or per layer). ``width`` is the width of the finite twin
    used by :mod:`verification` (``None``: the width chosen for the run); the kernel ignores it.
    """

    weight_var: float | None = None
    bias_var: float | None = None
    width: int | None = None

    fresh_weights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.weight_var is not None and not self.weight_var > 0:
            raise ArchitectureError(f"{self.describe()}: weight_var must be > 0, got {self.weight_var}")
        if self.bias_var is not None and not self.bias_var >= 0:
            raise ArchitectureError(f"{self.describe()}: bias_var must be >= 0, got {self.bias_var}")
        if self.width is not None and self.width < 1:
            raise ArchitectureError(f"{self.describe()}: width must be a positive integer")

    def propagate(self, signal: Signal, path: str) -> Signal:
        if signal.spatial:
            raise ArchitectureError(
                f"{path}: Dense() needs flat features but receives spatial shape {signal.spatial}; "
                "add Flatten() or GlobalAvgPool() first"
            )
        return signal.with_kind(SignalKind.GAUSSIAN)

    def variance_slots(self) -> int:
        return 1 if self.weight_var is None or self.bias_var is None else 0

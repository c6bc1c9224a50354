"""Builders for common architectures."""

from __future__ import annotations

from .activations import Activation, ReLU
from .base import ArchitectureError, Serial
from .dense import Dense


def mlp(depth: int, activation: Activation | None = None) -> Serial:
    """``Serial(Dense(), φ, ..., Dense(), φ, Dense())`` with ``depth`` hidden layers."""
    if int(depth) != depth or depth < 0:
        raise ArchitectureError(f"mlp depth must be a non-negative integer, got {depth}")
    activation = activation or ReLU()
    layers = []
    for _ in range(int(depth)):
        layers += [Dense(), activation]
    return Serial(*layers, Dense())

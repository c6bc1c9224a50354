"""Dispatch on layer types: the one mechanism behind the kernel-rule and finite-twin registries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .base import Layer

F = TypeVar("F", bound=Callable)


class LayerDispatch(Generic[F]):
    """Maps layer types to functions; a layer finds the function of the nearest class in its MRO, so a
    subclass inherits its parent's entry unless it registers its own."""

    def __init__(self) -> None:
        self._table: dict[type, F] = {}

    def register(self, *layer_types: type) -> Callable[[F], F]:
        """Decorator registering the function for the given layer types."""

        def register(fn: F) -> F:
            for layer_type in layer_types:
                self._table[layer_type] = fn
            return fn

        return register

    def lookup(self, layer: Layer) -> F | None:
        """The function registered for ``layer``'s type (or its nearest base class), else ``None``."""
        for cls in type(layer).__mro__:
            if cls in self._table:
                return self._table[cls]
        return None

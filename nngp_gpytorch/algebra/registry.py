"""Kernel rules: how each layer description maps a :class:`CovState` to the next one.

A family module registers its rules with :func:`kernel_rule`; :func:`propagate` dispatches on the layer's
type (walking its MRO, so a subclass inherits its parent's rule unless it registers its own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..arch import ArchitectureError, Layer
from ..arch.dispatch import LayerDispatch
from ..duals import DEFAULT_QUADRATURE_DEGREE, Dual, dual_for
from .state import CovState

Rule = Callable[[Layer, CovState, "RuleContext"], CovState]
_RULES: LayerDispatch[Rule] = LayerDispatch()


def kernel_rule(*layer_types: type) -> Callable[[Rule], Rule]:
    """Decorator registering ``rule(layer, state, ctx) -> state`` for the given layer types."""
    return _RULES.register(*layer_types)


def rule_for(layer: Layer) -> Rule:
    rule = _RULES.lookup(layer)
    if rule is None:
        raise NotImplementedError(f"no kernel rule for {layer.describe()}: this layer has no analytic kernel yet")
    return rule


def propagate(layer: Layer, state: CovState, ctx: RuleContext) -> CovState:
    """Apply ``layer``'s kernel rule.

    With ``ctx.with_ntk`` a layer whose class declares ``has_ntk = False`` raises
    :class:`ArchitectureError` naming it, instead of silently returning a wrong or missing Θ.
    """
    if ctx.with_ntk and not getattr(type(layer), "has_ntk", True):
        raise ArchitectureError(
            f"{layer.describe()} has no neural tangent kernel: the NTK is not defined for this layer "
            "(use NNGPKernel, or an architecture without it)"
        )
    return rule_for(layer)(layer, state, ctx)


@dataclass
class Hyperparameters:
    """Variances drawn by the layers in traversal order.

    ``weight_var`` and ``bias_var`` have shape ``(*batch_shape, slots)``: one (σw², σb²) pair per slot
    (``slots == 1``: shared across all layers). Both the kernel and the finite twins read this object,
    so they use the same numbers.
    """

    weight_var: torch.Tensor
    bias_var: torch.Tensor

    @classmethod
    def constant(cls, weight_var: float = 1.0, bias_var: float = 0.0, dtype=torch.float64) -> Hyperparameters:
        return cls(torch.tensor([float(weight_var)], dtype=dtype), torch.tensor([float(bias_var)], dtype=dtype))

    @property
    def slots(self) -> int:
        return self.weight_var.shape[-1]


class VarianceCursor:
    """Hands out (σw², σb²) to affine layers in traversal order.

    Fixed values (a layer's own ``weight_var``/``bias_var``) are used as given; otherwise the next slot of
    the hyperparameters is consumed (slot 0 for every layer when they are shared). The kernel rules and
    the finite twins both walk the architecture with one of these, so they draw the same numbers.
    """

    def __init__(self, hyper: Hyperparameters):
        self.hyper = hyper
        self.position = 0

    def next(self, layer: Layer, weight_var: float | None = None, bias_var: float | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(σw², σb²) for the next affine layer, each of shape ``batch_shape``."""
        w_all, b_all = self.hyper.weight_var, self.hyper.bias_var
        if weight_var is None or bias_var is None:
            slot = self.position if self.hyper.slots > 1 else 0
            if slot >= self.hyper.slots:
                raise ValueError(
                    f"{layer.describe()} needs variance slot {slot} but only {self.hyper.slots} per-layer "
                    "variances were given"
                )
            self.position += 1
            w, b = w_all[..., slot], b_all[..., slot]
        else:
            w = b = None
        if weight_var is not None:
            w = torch.full_like(w_all[..., 0], float(weight_var))
        if bias_var is not None:
            b = torch.full_like(b_all[..., 0], float(bias_var))
        return w, b


@dataclass
class RuleContext:
    """What a rule needs besides the state: hyperparameters, the NTK switch and numerical settings."""

    hyper: Hyperparameters
    with_ntk: bool = False
    quadrature_degree: int = DEFAULT_QUADRATURE_DEGREE
    #: grow the quadrature degree with the variances (default); False when the user fixed the degree
    adaptive_quadrature: bool = True
    #: the whole architecture being evaluated (lets structured families choose their representation once)
    architecture: Layer | None = None
    #: bytes a rule that chunks its own work (the fast positional engine) may hold at once; None: its default
    chunk_bytes: int | None = None
    _duals: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.cursor = VarianceCursor(self.hyper)

    def variances(self, layer: Layer, weight_var: float | None = None, bias_var: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(σw², σb²) for the next affine layer (see :class:`VarianceCursor`)."""
        return self.cursor.next(layer, weight_var, bias_var)

    def dual(self, activation) -> Dual:
        """The (cached) dual of an activation."""
        key = (activation, self.quadrature_degree, self.adaptive_quadrature)
        if key not in self._duals:
            self._duals[key] = dual_for(activation, self.quadrature_degree, adaptive=self.adaptive_quadrature)
        return self._duals[key]


def broadcast_param(p: torch.Tensor, state: CovState) -> torch.Tensor:
    """View a ``batch_shape`` hyperparameter so that it broadcasts against the state's entries."""
    return p.reshape(*p.shape, *([1] * state.entry_ndim))

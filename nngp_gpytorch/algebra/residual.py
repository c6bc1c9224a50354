"""Kernel rules of skip connections and summed parallel branches.

Independent branches add: ``Residual(branch)``: ``K' = K + K_branch``, ``Θ' = Θ + Θ_branch``;
``Parallel(b_1, ..., b_m)``: ``K' = Σ K_b``, ``Θ' = Σ Θ_b`` (reference/kernels.md, "Structural rules").
The cross terms vanish in the limit because each branch ends in an affine layer with fresh zero-mean
weights. Works for flat and position-structured states alike (same layout on both sides).
"""

from __future__ import annotations

from ..arch.base import ArchitectureError
from ..arch.structure import Parallel, Residual
from .registry import RuleContext, kernel_rule, propagate
from .state import CovState


def _add(layer, states: list[CovState]) -> CovState:
    first = states[0]
    for s in states:
        if not s.gaussian:
            raise ArchitectureError(f"{layer.describe()}: summing non-Gaussian post-activation outputs; every summand "
                                    "must end in an affine layer")
        if s.positions != first.positions or s.full_positions != first.full_positions:
            raise ArchitectureError(f"{layer.describe()}: summands have different position structures "
                                    f"{[t.positions for t in states]}")
    new = {name: sum(getattr(s, name) for s in states) for name in ("k12", "k11", "k22")}
    if first.has_ntk:
        new.update({name: sum(getattr(s, name) for s in states) for name in ("t12", "t11", "t22")})
    return states[-1].replace(gaussian=True, pre_activation=None, **new)


@kernel_rule(Residual)
def residual_rule(layer: Residual, state: CovState, ctx: RuleContext) -> CovState:
    if not state.gaussian:
        raise ArchitectureError(f"{layer.describe()}: the skip path carries non-Gaussian features; put an affine "
                                "layer before the residual block")
    return _add(layer, [state, propagate(layer.branch, state, ctx)])


@kernel_rule(Parallel)
def parallel_rule(layer: Parallel, state: CovState, ctx: RuleContext) -> CovState:
    return _add(layer, [propagate(b, state, ctx) for b in layer.branches])

"""Kernel rule for :class:`~nngp_gpytorch.arch.Serial`: compose the children's rules."""

from __future__ import annotations

from ..arch import Serial
from .registry import RuleContext, kernel_rule, propagate
from .state import CovState


@kernel_rule(Serial)
def serial_rule(layer: Serial, state: CovState, ctx: RuleContext) -> CovState:
    for child in layer.layers:
        state = propagate(child, state, ctx)
    return state

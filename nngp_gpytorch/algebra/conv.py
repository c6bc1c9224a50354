"""Kernel rule of :class:`~nngp_gpytorch.arch.conv.Conv` (Novak et al. 2019, eq. 8; NTK: Arora et al. 2019).

``K'[p, p'] = σb² + (σw²/k)·Σ_β K[s·p + d·β − lo, s·p' + d·β − lo]`` and ``Θ' = K' + (σw²/k)·Σ_β Θ[...]``,
computed by :func:`.positional.tap_sum` followed by the affine map of :func:`.dense.affine`.
"""

from __future__ import annotations

from ..arch.base import ArchitectureError
from ..arch.conv import Conv
from .dense import affine
from .positional import ensure_positional, tap_sum
from .registry import RuleContext, broadcast_param, kernel_rule
from .state import CovState


@kernel_rule(Conv)
def conv_rule(layer: Conv, state: CovState, ctx: RuleContext) -> CovState:
    state = ensure_positional(state, ctx, layer)
    try:
        kernel, stride, dilation, _ = layer.geometry(state.positions)
    except ArchitectureError as err:
        raise ArchitectureError(f"{err} (positions {state.positions})") from None
    w, b = ctx.variances(layer, layer.weight_var, layer.bias_var)
    state = tap_sum(state, kernel, stride, dilation, layer.padding)
    return affine(state, broadcast_param(w, state), broadcast_param(b, state))

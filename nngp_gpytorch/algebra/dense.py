"""Kernel rule of dense layers, and the affine map every weighted layer shares (Lee et al. 2018; Jacot et al. 2018).

NNGP and NTK in the NTK parameterization (reference/kernels.md, "NTK"): ``K' = σw²·K + σb²``,
``Θ' = K' + σw²·Θ``.
"""

from __future__ import annotations

import torch

from ..arch import Dense
from ..duals.dense_maps import affine as fused_affine
from .registry import RuleContext, broadcast_param, kernel_rule
from .state import CovState


def affine(state: CovState, weight_var, bias_var) -> CovState:
    """The map of any affine layer on (K, Θ), with σw², σb² already broadcastable to the entries."""

    def k(x):
        return fused_affine(x, weight_var, bias_var)  # σw²·x + σb² in one pass (one N×N allocation)

    k12, k11, k22 = k(state.k12), k(state.k11), k(state.k22)
    if state.has_ntk:
        t12, t11, t22 = (torch.addcmul(k12, weight_var, state.t12), torch.addcmul(k11, weight_var, state.t11),
                         torch.addcmul(k22, weight_var, state.t22))
    else:
        t12 = t11 = t22 = None
    return state.replace(k12=k12, k11=k11, k22=k22, t12=t12, t11=t11, t22=t22, gaussian=True)


@kernel_rule(Dense)
def dense_rule(layer: Dense, state: CovState, ctx: RuleContext) -> CovState:
    w, b = ctx.variances(layer, layer.weight_var, layer.bias_var)
    return affine(state, broadcast_param(w, state), broadcast_param(b, state))

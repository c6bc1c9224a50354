"""Kernel rules for dense layers and elementwise activations (Lee et al. 2018; Jacot et al. 2018).

NNGP and NTK in the NTK parameterization (reference/kernels.md, "NTK"):

* Dense:      ``K' = σw²·K + σb²``,           ``Θ' = K' + σw²·Θ``
* Activation: ``K' = V_φ(K)``,                ``Θ' = V_φ'(K) ⊙ Θ``
"""

from __future__ import annotations

import torch

from ..arch import Activation, Dense
from ..duals.fused import affine as fused_affine
from . import positional
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


def apply_dual(dual, state: CovState) -> CovState:
    """Push Gaussian pre-activations with covariance ``state`` through an elementwise nonlinearity.

    Position-structured states (conv, sequences) are handled by :func:`.positional.apply_dual`."""
    if state.positions is not None:
        return positional.apply_dual(dual, state)
    k11, k22, k12, same = state.k11, state.k22, state.k12, state.identical
    new = dict(k11=dual.nngp_diag(k11), k22=dual.nngp_diag(k22), gaussian=False)
    if state.has_ntk:
        new.update(t11=dual.ntk_diag(k11) * state.t11, t22=dual.ntk_diag(k22) * state.t22)
        new["k12"], new["t12"] = dual.propagate_pair(k11, k22, k12, state.t12, same)  # (V_φ(K), V_φ'(K) ⊙ Θ)
    else:
        new["k12"] = dual.nngp(k11, k22, k12, same)
    return state.replace(**new)


@kernel_rule(Activation)
def activation_rule(layer: Activation, state: CovState, ctx: RuleContext) -> CovState:
    # keep the pre-activation state (no copy) so that a layer norm after φ can compute the mean E[φ(u)]
    return apply_dual(ctx.dual(layer), state).replace(pre_activation=(layer, state.replace(pre_activation=None)))

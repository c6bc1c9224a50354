"""Kernel rules for dense layers and elementwise activations (Lee et al. 2018; Jacot et al. 2018).

NNGP and NTK in the NTK parameterization (reference/kernels.md, "NTK"):

* Dense:      ``K' = σw²·K + σb²``,           ``Θ' = K' + σw²·Θ``
* Activation: ``K' = V_φ(K)``,                ``Θ' = V_φ'(K) ⊙ Θ`` (a chain ``ψ`` then ``φ`` uses ``φ∘ψ``)
"""

from __future__ import annotations

import torch

from ..arch import Activation, ArchitectureError, Dense, Identity
from ..duals.dense_maps import affine as fused_affine
from . import positional
from .composite import MeanCarrier, compose
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


def elementwise_source(layer, state: CovState) -> tuple[Activation, CovState]:
    """``(ψ, Gaussian state)`` such that ``state`` holds the features ``ψ(g)`` (``ψ = Identity`` when ``state`` is
    itself Gaussian). Raises :class:`ArchitectureError` naming ``layer`` when the features are not an
    elementwise function of one Gaussian (a pooled or summed non-Gaussian signal)."""
    if state.gaussian:
        return Identity(), state
    pre = state.pre_activation
    if isinstance(pre, tuple) and not isinstance(pre[0], MeanCarrier):
        return pre[0], pre[1]
    raise ArchitectureError(
        f"{layer.describe()}: its input is non-Gaussian features that are not an elementwise function of one "
        "Gaussian pre-activation (a sum, pool or normalization of post-activation features); the covariance algebra "
        "has no rule for a nonlinearity of those. Write the network as a tensor program instead "
        "(nngp_gpytorch.tensor_programs.Program; docs/tensor_programs.md), or put an affine layer before it"
    )


@kernel_rule(Activation)
def activation_rule(layer: Activation, state: CovState, ctx: RuleContext) -> CovState:
    # φ after ψ: the composite φ∘ψ of the last Gaussian (one Nonlin of one G-var, algebra/composite.py)
    inner, state = elementwise_source(layer, state)
    act = layer if isinstance(inner, Identity) else compose(inner, layer)
    # keep the pre-activation state (no copy) so that a layer norm after φ can compute the mean E[φ(u)]
    return apply_dual(ctx.dual(act), state).replace(pre_activation=(act, state.replace(pre_activation=None)))

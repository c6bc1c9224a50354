"""Kernel rule of elementwise activations (Lee et al. 2018; Jacot et al. 2018), in the NTK parameterization
(reference/kernels.md, "NTK"): ``K' = V_φ(K)``, ``Θ' = V_φ'(K) ⊙ Θ``; a chain ``ψ`` then ``φ`` uses the composite
``φ∘ψ`` (one Nonlin of one G-var, :mod:`.composite`).
"""

from __future__ import annotations

from ..arch import Activation, ArchitectureError, Identity
from . import positional
from .composite import MeanCarrier, compose
from .registry import RuleContext, kernel_rule
from .state import CovState


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

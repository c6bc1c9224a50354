"""Kernel rules of the structural layers: ``Serial`` (compose the children's rules), skip connections and summed
parallel branches.

Read as a tensor program (Yang 2019; reference/kernels.md, "Structural rules"):

* branches with fresh weights are independent of each other and of the input in the limit, and a branch ending
  in an affine layer has zero mean, so its covariance adds: ``Residual(branch)``: ``K' = K + K_branch``,
  ``Θ' = Θ + Θ_branch``; ``Parallel(b_1, …, b_m)``: ``K' = Σ K_b``, ``Θ' = Σ Θ_b``. This holds also when the skip
  path carries post-activation features ``φ(g)`` (the ordinary ResNet block): the sum is not Gaussian, but what
  follows it — Dense, Conv, pooling, layer norm — needs only its second moments (and, for layer norm, its mean,
  which is that of the one non-Gaussian summand);
* branches without weights that are elementwise (``Identity()``, ``ReLU()``, chains of activations) are one Nonlin
  ``Σ_b φ_b(g)`` of the input's Gaussian ``g``: a bivariate expectation (:mod:`.composite`), not an independent sum;
* two independent non-Gaussian summands have the cross covariance ``E[a]·E[b]``, which second moments do not give:
  refused (the architecture validation names the layer; compile to a tensor program instead).

Works for flat and position-structured states alike (same layout on both sides).
"""

from __future__ import annotations

from ..arch.base import ArchitectureError, Serial, has_fresh_weights
from ..arch.structure import Parallel, Residual
from .activations import apply_dual, elementwise_source
from .composite import MeanCarrier, elementwise_function, simplify_chain, sum_of
from .registry import RuleContext, kernel_rule, propagate
from .state import CovState


def _add(layer, states: list[CovState]) -> CovState:
    first = states[0]
    for s in states:
        if s.positions != first.positions or s.full_positions != first.full_positions:
            raise ArchitectureError(f"{layer.describe()}: summands have different position structures "
                                    f"{[t.positions for t in states]}")
    non_gaussian = [s for s in states if not s.gaussian]
    if len(non_gaussian) > 1:
        raise ArchitectureError(f"{layer.describe()}: sums {len(non_gaussian)} independent non-Gaussian summands "
                                "(their cross covariance is the product of their means); at most one may be "
                                "non-Gaussian, or compile the architecture to a tensor program")
    new = {name: sum(getattr(s, name) for s in states) for name in ("k12", "k11", "k22")}
    if first.has_ntk:
        new.update({name: sum(getattr(s, name) for s in states) for name in ("t12", "t11", "t22")})
    if not non_gaussian:
        return states[-1].replace(gaussian=True, pre_activation=None, **new)
    carrier = non_gaussian[0].pre_activation  # the sum's channel mean is that of its one non-Gaussian summand
    if isinstance(carrier, tuple):
        act, pre = carrier
        carrier = (act if isinstance(act, MeanCarrier) else MeanCarrier(act), pre)
    return states[-1].replace(gaussian=False, pre_activation=carrier, **new)


def _elementwise_sum(layer, branches, state: CovState, ctx: RuleContext, with_skip: bool) -> CovState:
    """``(h if with_skip) + Σ_b φ_b(h)`` over elementwise branches: one Nonlin of the Gaussian behind ``h``."""
    inner, gaussian = elementwise_source(layer, state)
    terms = [inner] if with_skip else []
    terms += [simplify_chain((inner, elementwise_function(b))) for b in branches]
    act = sum_of(terms)
    return apply_dual(ctx.dual(act), gaussian).replace(pre_activation=(act, gaussian.replace(pre_activation=None)))


@kernel_rule(Residual)
def residual_rule(layer: Residual, state: CovState, ctx: RuleContext) -> CovState:
    if not has_fresh_weights(layer.branch):
        return _elementwise_sum(layer, [layer.branch], state, ctx, with_skip=True)
    return _add(layer, [state, propagate(layer.branch, state, ctx)])


@kernel_rule(Parallel)
def parallel_rule(layer: Parallel, state: CovState, ctx: RuleContext) -> CovState:
    fresh = [b for b in layer.branches if has_fresh_weights(b)]
    elementwise = [b for b in layer.branches if not has_fresh_weights(b)]
    # variance slots are consumed in branch order, so propagate the fresh branches in their original order
    states = [propagate(b, state, ctx) for b in fresh]
    if elementwise:
        states.append(_elementwise_sum(layer, elementwise, state, ctx, with_skip=False))
    if len(states) == 1:  # weightless branches only: still one Nonlin of one Gaussian, so φ may follow
        return states[0]
    return _add(layer, states)


@kernel_rule(Serial)
def serial_rule(layer: Serial, state: CovState, ctx: RuleContext) -> CovState:
    for child in layer.layers:
        state = propagate(child, state, ctx)
    return state

"""Kernel rules of average pooling, global average pooling and Flatten (linear maps over positions).

* AvgPool: ``K ← A K Aᵀ`` with ``A`` the (separable) window-averaging matrix, Θ alike.
* GlobalAvgPool: ``K' = (1/P²)·Σ_{p,q} K[p, q]``, Θ alike.
* Flatten: ``K' = (1/P)·Σ_p K[p, p]`` (the following Dense has fan-in C·P), Θ alike.
* MaxPool: a Nonlin of each window's Gaussian pre-activations (:mod:`.maxpool`).
"""

from __future__ import annotations

from ..arch.pool import AvgPool, Flatten, GlobalAvgPool, MaxPool
from .maxpool import max_pool
from .positional import average_matrix, ensure_positional, mix_axes, reduce_positions
from .registry import RuleContext, kernel_rule
from .state import CovState


@kernel_rule(AvgPool)
def avg_pool_rule(layer: AvgPool, state: CovState, ctx: RuleContext) -> CovState:
    state = ensure_positional(state, ctx, layer)
    window, stride, out = layer.geometry(state.positions)
    mats = [average_matrix(n, k, s, layer.padding) for n, k, s in zip(state.positions, window, stride, strict=True)]
    return mix_axes(state, mats, out)


@kernel_rule(GlobalAvgPool)
def global_avg_pool_rule(layer: GlobalAvgPool, state: CovState, ctx: RuleContext) -> CovState:
    return reduce_positions(ensure_positional(state, ctx, layer), "mean_all")


@kernel_rule(Flatten)
def flatten_rule(layer: Flatten, state: CovState, ctx: RuleContext) -> CovState:
    if state.positions is None:
        return state  # flat features (or the raw input, whose flattening is itself): nothing to do
    return reduce_positions(state, "mean_same")


@kernel_rule(MaxPool)
def max_pool_rule(layer: MaxPool, state: CovState, ctx: RuleContext) -> CovState:
    return max_pool(layer, state, ctx)

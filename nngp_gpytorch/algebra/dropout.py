"""Kernel rule of :class:`~nngp_gpytorch.arch.dropout.Dropout` (inverted dropout, train mode).

With masks ``m ~ Bernoulli(q)``, ``q = 1 − rate``, i.i.d. over units, positions and inputs, the features
``h·m/q`` have ``E[(h m/q)(h' m'/q)] = E[h h']`` when ``m`` and ``m'`` are different draws (different
inputs or positions) and ``E[h²]/q`` when they are the same draw. So the same-input, same-position entries
are divided by ``q`` and nothing else changes; Θ alike (a mask multiplies the parameter gradients of the
layers below it the same way). Same input means identical rows (``state.identical``), as everywhere in
this package: ``K(X, X)`` treats equal points as one point.
"""

from __future__ import annotations

import torch

from ..arch.dropout import Dropout
from .positional import identical_positions
from .registry import RuleContext, kernel_rule
from .state import CovState


def _self_factor(state: CovState, like: torch.Tensor, keep: float) -> torch.Tensor | float:
    """The factor of a self-variance block: ``1/q`` on its same-position entries (all of them unless the
    state holds full position×position blocks)."""
    if state.positions is None or not state.full_positions:
        return 1.0 / keep
    eye = torch.eye(like.shape[-1], dtype=like.dtype, device=like.device)
    return 1.0 + eye * (1.0 / keep - 1.0)


@kernel_rule(Dropout)
def dropout_rule(layer: Dropout, state: CovState, ctx: RuleContext) -> CovState:
    keep = layer.keep
    same = identical_positions(state) if state.positions is not None else state.identical

    def cross(k: torch.Tensor) -> torch.Tensor:
        return k if same is None or k.dim() == 0 else torch.where(same, k / keep, k)

    new = dict(k12=cross(state.k12), k11=state.k11 * _self_factor(state, state.k11, keep),
               k22=state.k22 * _self_factor(state, state.k22, keep))
    if state.has_ntk:
        new.update(t12=cross(state.t12),
                   t11=state.t11 if state.t11.dim() == 0 else state.t11 * _self_factor(state, state.t11, keep),
                   t22=state.t22 if state.t22.dim() == 0 else state.t22 * _self_factor(state, state.t22, keep))
    # not Gaussian, and no longer φ(u) of the pre-activation that a later layer norm would take the mean of
    return state.replace(gaussian=False, pre_activation=None, **new)

"""Kernel rule of :class:`~nngp_gpytorch.arch.layernorm.LayerNorm` (over channels, per position).

Zero-mean Gaussian pre-activations: ``K[p, q] ← K[p, q]/√(K_xx[p, p]·K_yy[q, q])``. Directly after a
nonlinearity φ the channel mean ``μ[p] = E[φ(u)]``, ``u ~ N(0, K_pre[p, p])``, is subtracted first
(:func:`activation_mean`); Θ is divided by the same factor (:func:`normalize`).
"""

from __future__ import annotations

import math

import torch

from ..arch import activations as act
from ..arch.base import ArchitectureError
from ..arch.layernorm import LayerNorm
from ..numerics import normal_rule
from .positional import identical_positions, self_variances
from .registry import RuleContext, kernel_rule
from .state import CovState

_MEAN_DEGREE = 96


def normalize(state: CovState, means: tuple[torch.Tensor, torch.Tensor] | None = None) -> CovState:
    """Layer norm over channels at each position: ``K[p, q] ← (K[p, q] − μ1[p]·μ2[q])/√(σ1²[p]·σ2²[q])``
    with the centred variances ``σ²[p] = K[p, p] − μ[p]²``; Θ divided by the same factor (the centring does
    not change Θ in the limit). Works for flat states too (``P = 1``). ``means``: per-position means of
    the features, shaped like :func:`self_variances` of the same state (``None``: zero-mean Gaussian).
    The result is marked ``pre_activation="centred"`` (its channel mean is 0).
    """
    v1, v2 = self_variances(state) if state.positions is not None else (state.k11, state.k22)
    k12, k11, k22 = state.k12, state.k11, state.k22
    full = state.positions is not None and state.full_positions
    if means is not None:
        m1, m2 = means
        k12 = k12 - m1 * m2
        if full:
            k11 = k11 - m1 * m1.transpose(-1, -2)
            k22 = k22 - m2.transpose(-1, -2) * m2
        else:
            k11, k22 = k11 - m1 * m1, k22 - m2 * m2
        v1, v2 = v1 - m1 * m1, v2 - m2 * m2
    tiny = torch.finfo(k12.dtype).tiny
    r1, r2 = v1.clamp_min(tiny).rsqrt(), v2.clamp_min(tiny).rsqrt()
    if full:
        s12, s11, s22 = r1 * r2, r1 * r1.transpose(-1, -2), r2.transpose(-1, -2) * r2
    else:
        s12, s11, s22 = r1 * r2, r1 * r1, r2 * r2
    k12 = k12 * s12
    ident = identical_positions(state) if state.positions is not None else state.identical
    if ident is not None:  # identical inputs at equal positions: correlation exactly 1 (not a rounded ratio)
        k12 = torch.where(ident, torch.ones_like(k12), k12)
    new = dict(k12=k12, k11=k11 * s11, k22=k22 * s22)
    if state.has_ntk:
        new.update(t12=state.t12 * s12, t11=state.t11 * s11, t22=state.t22 * s22)
    return state.replace(pre_activation="centred", **new)


def activation_mean(activation: act.Activation, variance: torch.Tensor) -> torch.Tensor:
    """``E[φ(u)]`` for ``u ~ N(0, variance)`` (elementwise): closed forms where known, Gauss–Hermite otherwise.

    ReLU ``√(v/2π)``; leaky ReLU ``(1 − a)·√(v/2π)``; abs ``√(2v/π)``; step ``1/2`` (0 at ``v = 0``);
    GELU ``v/√(2π(1 + v))`` (Stein's lemma); sigmoid ``1/2``; odd φ (erf, sign, tanh, identity) ``0``.
    """
    v = variance.clamp_min(0.0)
    kind = type(activation)
    root = torch.sqrt(v / (2 * math.pi))
    if kind is act.ReLU:
        return root
    if kind is act.LeakyReLU:
        return (1.0 - activation.a) * root
    if kind is act.Abs:
        return 2.0 * root
    if kind is act.Step:
        return torch.where(v > 0, torch.full_like(v, 0.5), torch.zeros_like(v))
    if kind is act.GELU:
        return v / torch.sqrt(2 * math.pi * (1.0 + v))
    if kind is act.Sigmoid:
        return torch.full_like(v, 0.5)
    if kind in (act.Erf, act.Sign, act.Tanh, act.Identity):
        return torch.zeros_like(v)
    z, w = normal_rule(_MEAN_DEGREE, v)
    return (activation(torch.sqrt(v).unsqueeze(-1) * z) * w).sum(-1)


@kernel_rule(LayerNorm)
def layer_norm_rule(layer: LayerNorm, state: CovState, ctx: RuleContext) -> CovState:
    if state.gaussian or state.pre_activation == "centred":
        return normalize(state)
    if not isinstance(state.pre_activation, tuple):
        raise ArchitectureError(
            f"{layer.describe()}: the features' channel mean is unknown here (LayerNorm is supported on the output "
            "of an affine layer, directly after an activation, or after another LayerNorm)"
        )
    activation, pre = state.pre_activation
    if pre.positions is not None:
        v1, v2 = self_variances(pre)
    else:
        v1, v2 = pre.k11, pre.k22
    return normalize(state, (activation_mean(activation, v1), activation_mean(activation, v2)))

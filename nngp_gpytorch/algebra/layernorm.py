"""Kernel rule of :class:`~nngp_gpytorch.arch.layernorm.LayerNorm` (over channels, per position).

Zero-mean Gaussian pre-activations: ``K[p, q] ← K[p, q]/√(K_xx[p, p]·K_yy[q, q])``. Features with a non-zero
channel mean ``μ`` are centred first: ``K[p, q] ← (K[p, q] − μ₁[p]·μ₂[q])/√(σ₁²[p]·σ₂²[q])``, ``σ² = K[p, p] − μ²``
(:func:`normalize`); Θ is divided by the same factor. The mean is ``μ[p] = E[φ(u)]``, ``u ~ N(0, K_pre[p, p])``, of
the elementwise function ``φ`` that the state records (:func:`activation_mean`):

* directly after an activation (or a chain of them, a weightless branch sum): ``φ`` itself;
* after a sum ``φ(g) + Σ_b g_b`` of the features with independent zero-mean Gaussian branches (``Residual`` or
  ``Parallel`` with fresh weights, :mod:`.structure`): ``φ`` again, wrapped in a ``MeanCarrier`` marker — the
  Gaussians add nothing to the mean (``E[g_b] = 0``), and their second moments are already in ``K``.

``E[φ(u)]`` is linear in ``φ``: markers are unwrapped, a ``SumOf`` is the sum of its terms' means, the named
activations have closed forms, and anything else (compositions such as ``erf∘relu``, user callables) is integrated
by a rule split at the kink ``u = 0`` (:func:`_split_normal_rule`), since a plain Gauss–Hermite rule across a kink
converges only algebraically (96 nodes: ``E[relu(u)]`` off by 0.4 % relative, which made ``LayerNorm`` after a
ReLU residual 1.3e-3 off in K before this rule unwrapped the marker).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..arch import activations as act
from ..arch.base import ArchitectureError
from ..arch.layernorm import LayerNorm
from .composite import MeanCarrier
from .positional import identical_positions, self_variances
from .registry import RuleContext, kernel_rule
from .state import CovState

#: panels of the split rule in ``s = |u|/√v``: ``[0, 14·2⁻¹²], …, [7, 14]`` (``φ_N(14) ≈ 1e-43``), graded towards
#: the kink so that a steep ``φ(√v·s)`` (large ``v``) is resolved too; Gauss–Legendre of :data:`_PANEL_DEGREE` each
_PANEL_EDGES = (0.0, *(14.0 * 2.0 ** -j for j in range(12, -1, -1)))
_PANEL_DEGREE = 24


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


@functools.lru_cache(maxsize=4)
def _split_rule_numpy() -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(_PANEL_DEGREE)
    nodes, weights = [], []
    for lo, hi in zip(_PANEL_EDGES[:-1], _PANEL_EDGES[1:], strict=True):
        s = lo + 0.5 * (hi - lo) * (x + 1.0)
        nodes.append(s)
        weights.append(0.5 * (hi - lo) * w * np.exp(-0.5 * s * s) / math.sqrt(2.0 * math.pi))
    return np.concatenate(nodes), np.concatenate(weights)


def _split_normal_rule(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``s > 0`` and weights of ``E[f(z)] = ∫₀^∞ (f(s) + f(−s))·φ_N(s) ds``, ``z ~ N(0, 1)``: composite
    Gauss–Legendre on panels of ``[0, 14]`` graded towards 0 (Σw = 1/2 to 1e-16). Each side of the kink at
    ``z = 0`` is smooth for the activations built from ReLU/abs/step/sign and smooth functions, so the rule
    converges geometrically where Gauss–Hermite across the kink converges algebraically. Measured against closed
    forms: ReLU, abs, GELU and ``erf∘relu`` (``E = arctan(√(2v))/π``) to ≤ 4e-16 relative for ``v ∈ [1e-4, 1e4]``."""
    s, w = _split_rule_numpy()
    return (torch.as_tensor(s, dtype=like.dtype, device=like.device),
            torch.as_tensor(w, dtype=like.dtype, device=like.device))


def activation_mean(activation: act.Activation, variance: torch.Tensor) -> torch.Tensor:
    """``E[φ(u)]`` for ``u ~ N(0, variance)`` (elementwise), exact to rounding for the named activations.

    Linear in ``φ``: a :class:`~.composite.MeanCarrier` (features ``φ(g)`` plus independent zero-mean Gaussians)
    has the mean of its ``φ``; ``SumOf(φ₁, …)`` the sum of the terms' means. Closed forms: ReLU ``√(v/2π)``;
    leaky ReLU ``(1 − a)·√(v/2π)``; abs ``√(2v/π)``; step ``1/2`` (0 at ``v = 0``); GELU ``v/√(2π(1 + v))``
    (Stein's lemma: ``E[uΦ(u)] = v·E[φ_N(u)]``); sigmoid ``1/2`` (``σ − 1/2`` is odd); odd φ (erf, sign, tanh,
    identity) ``0``. Anything else (compositions, user callables):
    ``E[φ(u)] = ∫₀^∞ (φ(√v·s) + φ(−√v·s))·φ_N(s) ds`` by :func:`_split_normal_rule` (a kink of ``φ`` away from
    ``u = 0`` keeps algebraic convergence there).
    """
    while isinstance(activation, MeanCarrier):
        activation = activation.inner
    if isinstance(activation, act.SumOf):
        return sum(activation_mean(term, variance) for term in activation.terms)
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
    s, w = _split_normal_rule(v)
    u = torch.sqrt(v).unsqueeze(-1) * s
    return ((activation(u) + activation(-u)) * w).sum(-1)


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

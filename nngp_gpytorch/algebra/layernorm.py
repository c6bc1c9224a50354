"""Kernel rule of :class:`~nngp_gpytorch.arch.norm.LayerNorm` (over channels, per position).

Zero-mean Gaussian pre-activations: ``K[p, q] ← K[p, q]/√(K_xx[p, p]·K_yy[q, q])``. Directly after a
nonlinearity φ the channel mean ``μ[p] = E[φ(u)]``, ``u ~ N(0, K_pre[p, p])``, is subtracted first
(:func:`activation_mean`); Θ is divided by the same factor (:func:`.positional.normalize`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..arch import activations as act
from ..arch.base import ArchitectureError
from ..arch.norm import LayerNorm
from .positional import normalize, self_variances
from .registry import RuleContext, kernel_rule
from .state import CovState

_MEAN_DEGREE = 96


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
    nodes, weights = np.polynomial.hermite.hermgauss(_MEAN_DEGREE)
    x = torch.as_tensor(nodes, dtype=v.dtype, device=v.device)
    w = torch.as_tensor(weights, dtype=v.dtype, device=v.device) / math.sqrt(math.pi)
    return (activation(torch.sqrt(2 * v).unsqueeze(-1) * x) * w).sum(-1)


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

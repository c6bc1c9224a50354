"""The ReLU fusion pass: runs of ``Dense → ReLU → ... → Dense`` become one fused rule.

:func:`fuse_relu_chains` rewrites a description once per evaluation (it is a few-node tree walk), before any
covariance is formed: inside every :class:`~nngp_gpytorch.arch.Serial`, each maximal run
``Dense(), ReLU(), Dense(), ReLU(), ..., Dense()`` (at least one ReLU) becomes a :class:`ReLUChain`. Its rule
computes the NNGP of the run as fused passes (:func:`~nngp_gpytorch.duals.fused.relu_after_affine`, the
arc-cosine kernel of Cho & Saul 2009): each ``Dense → ReLU`` pair is one pass over the ``N×N`` block that never
forms the pre-activation block, and the last ReLU applies the readout ``Dense`` in the same pass. The
positions of identical input pairs (``c = 1`` exactly) are found once per run, not once per layer.

The values are those of the layer-by-layer algebra: the pass changes how the covariance is computed, not
what it is. Wherever the fused passes do not apply (the NTK, a diagonal, positions of a sequence or an
image) the rule runs the run's layers one by one with their own rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..arch import Dense, Layer, ReLU, Serial, Signal
from ..duals.fused import relu_after_affine
from .registry import RuleContext, broadcast_param, kernel_rule, propagate
from .state import CovState

_RELU_SCALE = 1.0 / (2.0 * torch.pi)  # E[relu(u) relu(v)] = (1/2π)·s·J1(c)


@dataclass(frozen=True, init=False)
class FusedRun(Layer):
    """A run of layers an optimization pass evaluates with one rule (not part of the architecture vocabulary: a
    description never needs to name it); it propagates, counts variances and describes itself as its layers."""

    layers: tuple[Layer, ...] = field(default=())

    def __init__(self, *layers: Layer):
        object.__setattr__(self, "layers", tuple(layers))

    def children(self) -> tuple[Layer, ...]:
        return self.layers

    def propagate(self, signal: Signal, path: str) -> Signal:
        return Serial(*self.layers).propagate(signal, path)

    def variance_slots(self) -> int:
        return sum(layer.variance_slots() for layer in self.layers)

    def describe(self) -> str:
        return ", ".join(layer.describe() for layer in self.layers)


@dataclass(frozen=True, init=False)
class ReLUChain(FusedRun):
    """``Dense(), ReLU(), ..., Dense(), ReLU(), Dense()`` fused by :func:`fuse_relu_chains`."""


def fuse_runs(layer: Layer, run_length: Callable[[tuple[Layer, ...], int], int], make: type[FusedRun]) -> Layer:
    """``layer`` with every run of a top-level or nested :class:`~nngp_gpytorch.arch.Serial` that ``run_length``
    accepts (its length at a start index, 0 if none) replaced by ``make(*run)``; any other layer is returned as it
    is (the same object)."""
    if type(layer) is not Serial:
        return layer
    layers, out, i, changed = layer.layers, [], 0, False
    while i < len(layers):
        n = run_length(layers, i)
        if n:
            out.append(make(*layers[i:i + n]))
            i, changed = i + n, True
        else:
            sub = fuse_runs(layers[i], run_length, make)
            changed |= sub is not layers[i]
            out.append(sub)
            i += 1
    if not changed:
        return layer
    return out[0] if len(out) == 1 else Serial(*out)


def _chain_length(layers: tuple[Layer, ...], start: int) -> int:
    """Length of the longest ``Dense (ReLU Dense)+`` run at ``start`` (0 if none)."""
    n = 0
    while (start + n + 2 < len(layers) and type(layers[start + n]) is Dense
           and type(layers[start + n + 1]) is ReLU and type(layers[start + n + 2]) is Dense):
        n += 2
    return n + 1 if n else 0


def fuse_relu_chains(layer: Layer) -> Layer:
    """``layer`` with every ``Dense (ReLU Dense)+`` run of each (nested) ``Serial`` replaced by a
    :class:`ReLUChain`; any other layer is returned as it is (the same object)."""
    return fuse_runs(layer, _chain_length, ReLUChain)


def _fusable(state: CovState, ctx: RuleContext) -> bool:
    k12, k11, k22 = state.k12, state.k11, state.k22
    return (not ctx.with_ntk and state.positions is None and state.entry_ndim == 2 and k12.dim() >= 2
            and k11.dim() >= 2 and k22.dim() >= 2 and k11.shape[-1] == 1 and k22.shape[-2] == 1
            and k12.numel() > 0)


@kernel_rule(ReLUChain)
def relu_chain_rule(chain: ReLUChain, state: CovState, ctx: RuleContext) -> CovState:
    """NNGP of the run in ``len(chain.layers) // 2`` fused passes (see the module docstring)."""
    if not _fusable(state, ctx):
        for layer in chain.layers:
            state = propagate(layer, state, ctx)
        return state
    dense = chain.layers[::2]
    variances = [tuple(broadcast_param(p, state) for p in ctx.variances(d, d.weight_var, d.bias_var)) for d in dense]
    k12, k11, k22 = state.k12, state.k11, state.k22
    shape = torch.broadcast_shapes(k12.shape, *(p.shape for pair in variances for p in pair))
    identical = state.identical
    if identical is not None:  # the pinned pairs, found once for the whole run
        identical = torch.nonzero(identical.expand(shape)) if len(shape) > 2 else torch.nonzero(identical)
    for i, (w, b) in enumerate(variances[:-1]):
        k11, k22 = torch.addcmul(b, w, k11), torch.addcmul(b, w, k22)  # pre-activation variances
        readout = variances[-1] if i == len(variances) - 2 else None  # the last ReLU also applies the readout
        k12 = relu_after_affine(k12, w, b, k11, k22, identical, scale=_RELU_SCALE, readout=readout)
        k11, k22 = k11 / 2, k22 / 2  # E[relu(u)²] = k/2
    w, b = variances[-1]
    return state.replace(k12=k12, k11=torch.addcmul(b, w, k11), k22=torch.addcmul(b, w, k22), gaussian=True,
                         pre_activation=None)

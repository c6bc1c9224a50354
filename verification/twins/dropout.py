"""Finite twin of inverted dropout (train mode): one Bernoulli(1 − rate) mask per network, input, position
and unit, rescaled by 1/(1 − rate)."""

from __future__ import annotations

import torch

from nngp_gpytorch.arch.dropout import Dropout

from .registry import TwinContext, finite_twin


@finite_twin(Dropout)
def dropout_twin(layer: Dropout, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    keep = layer.keep
    mask = torch.rand(h.shape, generator=ctx.generator, dtype=h.dtype, device=h.device) < keep
    return h * mask / keep

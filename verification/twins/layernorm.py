"""Finite twin of layer normalization: per network, input and position, over the channel axis (last)."""

from __future__ import annotations

import torch

from nngp_gpytorch.arch.layernorm import LayerNorm

from .registry import TwinContext, finite_twin


@finite_twin(LayerNorm)
def layer_norm_twin(layer: LayerNorm, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    centred = h - h.mean(-1, keepdim=True)
    return centred / centred.pow(2).mean(-1, keepdim=True).sqrt()

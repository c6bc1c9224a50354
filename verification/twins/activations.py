"""Finite twin of elementwise activations: the activation applied to each network's features."""

from __future__ import annotations

import torch

from nngp_gpytorch.arch import Activation

from .registry import TwinContext, finite_twin


@finite_twin(Activation)
def activation_twin(layer: Activation, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    return layer(h)

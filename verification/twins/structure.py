"""Finite twins of the structural layers: ``Serial`` (children in order), skip connections and summed parallel
branches (independent weights per branch)."""

from __future__ import annotations

import torch

from nngp_gpytorch.arch.base import Serial
from nngp_gpytorch.arch.structure import Parallel, Residual

from .registry import TwinContext, finite_twin, run_twin


@finite_twin(Residual)
def residual_twin(layer: Residual, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    return h + run_twin(layer.branch, h, ctx)


@finite_twin(Parallel)
def parallel_twin(layer: Parallel, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    out = None
    for branch in layer.branches:
        y = run_twin(branch, h, ctx)
        out = y if out is None else out + y
    return out


@finite_twin(Serial)
def serial_twin(layer: Serial, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    for child in layer.layers:
        h = run_twin(child, h, ctx)
    return h

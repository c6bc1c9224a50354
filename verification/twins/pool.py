"""Finite twins of pooling and readouts: average, global average and max pooling (over each network's own
features, per channel), and ``Flatten``."""

from __future__ import annotations

import itertools
import math

import torch

from nngp_gpytorch.arch.pool import AvgPool, Flatten, GlobalAvgPool, MaxPool

from .conv import pad_channels_first, padding_amounts, structured
from .registry import TwinContext, finite_twin


@finite_twin(AvgPool)
def avg_pool_twin(layer: AvgPool, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    h = structured(h, ctx)
    m, k = h.shape[:2]
    spatial, channels = tuple(h.shape[2:-1]), h.shape[-1]
    window, stride, out_shape = layer.geometry(spatial)
    pads = [padding_amounts(n, w, s, 1, layer.padding)[1:] for n, w, s in zip(spatial, window, stride, strict=True)]
    x = torch.movedim(h, -1, 2).reshape(m * k, channels, *spatial)
    x = pad_channels_first(x, pads, layer.padding == "circular")
    total = 0.0
    for beta in itertools.product(*(range(w) for w in window)):
        index = [slice(None), slice(None)]
        for i in range(len(spatial)):
            index.append(slice(beta[i], beta[i] + stride[i] * (out_shape[i] - 1) + 1, stride[i]))
        total = total + x[tuple(index)]
    y = total / math.prod(window)  # divide by the full window, padding included
    return torch.movedim(y.reshape(m, k, channels, *out_shape), 2, -1)


@finite_twin(GlobalAvgPool)
def global_avg_pool_twin(layer: GlobalAvgPool, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    h = structured(h, ctx)
    return h.mean(dim=tuple(range(2, h.dim() - 1)))


@finite_twin(Flatten)
def flatten_twin(layer: Flatten, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    if h.dim() == 3:
        return h  # already flat (raw inputs are flat)
    return h.reshape(h.shape[0], h.shape[1], -1)


@finite_twin(MaxPool)
def max_pool_twin(layer: MaxPool, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    """Each network's own features, per channel: the maximum over every window (cells outside the input
    ignored for ``"same"``, wrapped for ``"circular"``)."""
    h = structured(h, ctx)
    m, k = h.shape[:2]
    spatial, channels = tuple(h.shape[2:-1]), h.shape[-1]
    *_, out_shape = layer.geometry(spatial)
    cells = layer.windows(spatial)
    width = max(len(c) for c in cells)
    index = torch.tensor([c + [c[0]] * (width - len(c)) for c in cells], device=h.device)  # repeat a real cell
    flat = h.reshape(m, k, -1, channels)
    windows = flat[:, :, index.reshape(-1), :].reshape(m, k, len(cells), width, channels)
    return windows.amax(dim=3).reshape(m, k, *out_shape, channels)

"""Finite twin of a graph convolution ``h ← Â·h·W + b``: the ensemble's k inputs are the graph's N nodes,
in node order (``inputs`` = node features ``(N, d)``)."""

from __future__ import annotations

import torch

from nngp_gpytorch.arch.dense import Dense
from nngp_gpytorch.arch.graph import GraphConv

from .dense import dense_twin
from .registry import TwinContext, finite_twin


@finite_twin(GraphConv)
def graph_conv_twin(layer: GraphConv, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    if h.dim() != 3 or h.shape[1] != layer.num_nodes:
        raise ValueError(f"{layer.describe()}: the ensemble must run on all {layer.num_nodes} nodes in order, "
                         f"got features of shape {tuple(h.shape)}")
    aggregated = layer.adjacency.to(h.dtype) @ h  # (M, N, C): row i aggregates node i's neighbourhood
    # the aggregated features go through a dense map with the GraphConv's variances (same cursor slot)
    dense = Dense(weight_var=layer.weight_var, bias_var=layer.bias_var, width=layer.width)
    return dense_twin(dense, aggregated, ctx)

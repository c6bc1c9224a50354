"""Kernel rule of :class:`~nngp_gpytorch.arch.graph.GraphConv`: ``K' = σb² + σw²·Â K Âᵀ``,
``Θ' = K' + σw²·Â Θ Âᵀ`` over the N nodes of one graph.

The state must hold the whole node set on both sides, in node order (``x1 = x2`` = all node features):
the new self variances are the diagonal of ``Â K Âᵀ``, which needs every node. After the layer only a
node is identical to itself (two nodes with equal features but different neighbourhoods differ).
"""

from __future__ import annotations

import torch

from ..arch.graph import GraphConv
from .dense import affine
from .registry import RuleContext, broadcast_param, kernel_rule
from .state import CovState


@kernel_rule(GraphConv)
def graph_conv_rule(layer: GraphConv, state: CovState, ctx: RuleContext) -> CovState:
    n = layer.num_nodes
    if state.positions is not None or state.entry_ndim != 2:
        raise ValueError(f"{layer.describe()}: a graph convolution needs the full (N, N) kernel over all nodes "
                         "(diag=True or position-structured states are not supported; GraphConvKernel handles diag)")
    n1, n2 = state.k12.shape[-2:]
    ident = state.identical
    same_set = n1 == n and n2 == n and ident is not None and bool(torch.diagonal(ident, dim1=-2, dim2=-1).all())
    if not same_set:
        raise ValueError(
            f"{layer.describe()}: the kernel was evaluated on {n1}×{n2} inputs, but a graph convolution is "
            f"transductive: both sides must be all {n} node feature vectors, in node order. Use GraphConvKernel, "
            "whose inputs are node indices"
        )
    a = layer.adjacency.to(dtype=state.k12.dtype, device=state.k12.device)

    def mix(x: torch.Tensor) -> torch.Tensor:
        return x if x.dim() == 0 else a @ x @ a.transpose(-1, -2)

    k12 = mix(state.k12)
    diag = torch.diagonal(k12, dim1=-2, dim2=-1)
    new = dict(k12=k12, k11=diag.unsqueeze(-1), k22=diag.unsqueeze(-2),
               identical=torch.eye(n, dtype=torch.bool, device=k12.device), pre_activation=None)
    if state.has_ntk:
        t12 = mix(state.t12)
        td = torch.diagonal(t12, dim1=-2, dim2=-1) if t12.dim() else t12
        new.update(t12=t12, t11=td.unsqueeze(-1) if t12.dim() else t12, t22=td.unsqueeze(-2) if t12.dim() else t12)
    state = state.replace(**new)
    w, b = ctx.variances(layer, layer.weight_var, layer.bias_var)
    return affine(state, broadcast_param(w, state), broadcast_param(b, state))

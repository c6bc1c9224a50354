"""Transductive kernel of a graph convolutional network over the nodes of one fixed graph."""

from __future__ import annotations

import torch

from ..algebra import evaluate
from ..arch import Activation, ReLU, Serial
from ..arch.graph import GraphConv
from .nngp import NNGPKernel, NTKKernel


def gcn(adjacency, depth: int = 1, activation: Activation | None = None, normalize: str = "sym",
        self_loops: bool = True) -> Serial:
    """``Serial([GraphConv(Â), φ] × depth, GraphConv(Â))`` (Kipf & Welling 2017 with ``depth = 1``)."""
    if int(depth) != depth or depth < 0:
        raise ValueError(f"gcn depth must be a non-negative integer, got {depth}")
    activation = activation or ReLU()
    layers = []
    for _ in range(int(depth)):
        layers += [GraphConv(adjacency, normalize, self_loops), activation]
    layers.append(GraphConv(adjacency, normalize, self_loops))
    return Serial(*layers)


class _GraphKernelMixin:
    """Inputs are node indices; the kernel over all nodes is computed, then indexed."""

    def _setup_graph(self, node_features: torch.Tensor) -> None:
        n = _num_nodes(self.architecture)
        x = torch.as_tensor(node_features)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if x.dim() != 2:
            raise ValueError(f"node_features must be (N, d), got shape {tuple(x.shape)}")
        if x.shape[0] != n:
            raise ValueError(f"the adjacency has {n} nodes but node_features has {x.shape[0]} rows")
        if not torch.isfinite(x).all():
            raise ValueError("node_features contain NaN or Inf")
        self.register_buffer("node_features", x.to(self.raw_weight_var.dtype))
        self.num_nodes = n

    def _check_inputs(self, x1, x2) -> None:
        for label, x in (("x1", x1), ("x2", x2)):
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[-1] != 1:
                raise ValueError(f"{type(self).__name__}: {label} must be node indices of shape (..., n, 1), got "
                                 f"{tuple(x.shape)} (the node features are fixed in the kernel)")
        super()._check_inputs(x1, x2)

    def node_indices(self, x: torch.Tensor, label: str) -> torch.Tensor:
        """``(..., n, 1)`` float node ids → ``(..., n)`` long; raises on non-integers or ids out of range."""
        if x.shape[-1] != 1:
            raise ValueError(f"{type(self).__name__}: {label} must be node indices of shape (..., n, 1), got "
                             f"{tuple(x.shape)} (the node features are fixed in the kernel)")
        idx = x[..., 0]
        if (idx != idx.round()).any() or (idx < 0).any() or (idx >= self.num_nodes).any():
            raise ValueError(f"{type(self).__name__}: {label} must hold integer node ids in [0, {self.num_nodes})")
        return idx.long()

    def full_kernels(self, with_ntk: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(K, Θ)`` over all N nodes, ``(*batch_shape, N, N)``."""
        x = self.node_features.to(self.raw_weight_var.dtype)
        return evaluate(self.architecture, x, x, self.hyperparameters_for_algebra(), with_ntk=with_ntk,
                        quadrature_degree=self.quadrature_degree)

    def _evaluate(self, x1, x2, diag: bool, with_ntk: bool):
        i1, i2 = self.node_indices(x1, "x1"), self.node_indices(x2, "x2")
        if diag and i1.shape[-1] != i2.shape[-1]:
            raise ValueError("diag=True needs as many points in x1 as in x2")
        k, t = self.full_kernels(with_ntk)
        return _select(k, i1, i2, diag), (None if t is None else _select(t, i1, i2, diag))


def _num_nodes(architecture) -> int:
    sizes = {layer.num_nodes for layer in architecture.walk() if isinstance(layer, GraphConv)}
    if len(sizes) != 1:
        raise ValueError(f"the architecture must contain GraphConv layers over one graph, got node counts {sizes}")
    return sizes.pop()


def _select(k: torch.Tensor, i1: torch.Tensor, i2: torch.Tensor, diag: bool) -> torch.Tensor:
    """``k[..., i1, i2]`` with broadcasting over batch axes: ``(..., n1, n2)`` or ``(..., n)`` if diag."""
    batch = torch.broadcast_shapes(k.shape[:-2], i1.shape[:-1], i2.shape[:-1])
    n = k.shape[-1]
    k = k.expand(*batch, n, n)
    i1 = i1.expand(*batch, i1.shape[-1])
    i2 = i2.expand(*batch, i2.shape[-1])
    if diag:
        rows = torch.gather(k, -2, i1.unsqueeze(-1).expand(*batch, i1.shape[-1], n))
        return torch.gather(rows, -1, i2.unsqueeze(-1)).squeeze(-1)
    rows = torch.gather(k, -2, i1.unsqueeze(-1).expand(*batch, i1.shape[-1], n))  # (..., n1, N)
    return torch.gather(rows, -1, i2.unsqueeze(-2).expand(*batch, i1.shape[-1], i2.shape[-1]))


class GraphConvKernel(_GraphKernelMixin, NNGPKernel):
    r"""NNGP of a graph convolutional network over the nodes of one fixed graph (transductive).

    Architecture (:func:`gcn`): ``[GraphConv(Â), φ] × depth, GraphConv(Â)`` with
    ``K' = σb² + σw²·Â·V_φ(K)·Âᵀ`` and ``K¹ = σb² + σw²·Â (XXᵀ/d) Âᵀ`` for node features ``X``.

    **Semantics.** The kernel is defined on the node *identities* of one graph: inputs are node indices
    ``(..., n, 1)`` (floats holding integers in ``[0, N)``), and ``K(i, j)`` is the covariance of the network's
    outputs at nodes ``i`` and ``j`` when the network runs on the whole graph with features ``X``. Every call
    computes the ``N×N`` kernel over all nodes and indexes it, so GPyTorch's re-evaluation of sub-blocks
    (``(test, train)``, ``(test, test)`` during prediction) gives exactly the corresponding blocks of one
    kernel: there is no dependence on which nodes are in a batch. Train on labelled nodes, predict the rest.

    Args:
        adjacency: ``(N, N)`` non-negative (weighted) adjacency matrix (tensor, array or nested lists).
        node_features: ``(N, d)``.
        depth: hidden graph-convolution layers; activation: φ (ReLU);
        normalize: ``"sym"`` (``D^(−1/2)(A+I)D^(−1/2)``), ``"row"`` or ``"none"``; self_loops: add ``I``.
        **kwargs: as :class:`NNGPKernel` (weight_var, bias_var, per_layer, priors, ...).
    """

    def __init__(self, adjacency, node_features, depth: int = 1, activation: Activation | None = None,
                 normalize: str = "sym", self_loops: bool = True, **kwargs):
        super().__init__(gcn(adjacency, depth, activation, normalize, self_loops), input_dim=1, **kwargs)
        self._setup_graph(node_features)


class GraphConvNTKKernel(_GraphKernelMixin, NTKKernel):
    """NTK of the same graph network as :class:`GraphConvKernel` (same arguments and semantics)."""

    def __init__(self, adjacency, node_features, depth: int = 1, activation: Activation | None = None,
                 normalize: str = "sym", self_loops: bool = True, **kwargs):
        super().__init__(gcn(adjacency, depth, activation, normalize, self_loops), input_dim=1, **kwargs)
        self._setup_graph(node_features)

"""Transductive kernel of a graph convolutional network over the nodes of one fixed graph."""

from __future__ import annotations

import torch

from ..algebra import evaluate
from ..arch import Activation, Layer, gcn
from .nngp import NNGPKernel, NTKKernel, warn_deprecated


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
    sizes = {layer.num_nodes for layer in architecture.walk() if type(layer).transductive}
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


class GraphNNGPKernel(_GraphKernelMixin, NNGPKernel, serves="transductive"):
    r"""NNGP of a graph network over the nodes of one fixed graph (transductive); ``NNGPKernel(description,
    node_features=X)`` returns this class for a description with ``GraphConv`` layers, e.g. ``A.gcn(Â, depth)``:
    ``[GraphConv(Â), φ] × depth, GraphConv(Â)`` with ``K' = σb² + σw²·Â·V_φ(K)·Âᵀ`` and
    ``K¹ = σb² + σw²·Â (XXᵀ/d) Âᵀ`` for node features ``X``.

    **Semantics.** The kernel is defined on the node *identities* of one graph: inputs are node indices
    ``(..., n, 1)`` (floats holding integers in ``[0, N)``), and ``K(i, j)`` is the covariance of the network's
    outputs at nodes ``i`` and ``j`` when the network runs on the whole graph with features ``X``. Every call
    computes the ``N×N`` kernel over all nodes and indexes it, so GPyTorch's re-evaluation of sub-blocks
    (``(test, train)``, ``(test, test)`` during prediction) gives exactly the corresponding blocks of one
    kernel: there is no dependence on which nodes are in a batch. Train on labelled nodes, predict the rest.

    Args:
        architecture: a description whose ``GraphConv`` layers share one graph of ``N`` nodes.
        node_features: ``(N, d)``.
        **kwargs: as :class:`NNGPKernel` (weight_var, bias_var, per_layer, priors, dtype, ...).

    >>> from nngp_gpytorch import NNGPKernel, arch as A
    >>> adjacency = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    >>> kernel = NNGPKernel(A.gcn(adjacency, depth=1), node_features=torch.randn(3, 2))
    """

    def __init__(self, architecture: Layer, node_features: torch.Tensor, **kwargs):
        kwargs.setdefault("input_dim", 1)
        super().__init__(architecture, **kwargs)
        self._setup_graph(node_features)


class GraphNTKKernel(_GraphKernelMixin, NTKKernel, serves="transductive"):
    """NTK of the same graph network as :class:`GraphNNGPKernel` (same arguments and semantics);
    ``NTKKernel(description, node_features=X)`` returns it."""

    def __init__(self, architecture: Layer, node_features: torch.Tensor, **kwargs):
        kwargs.setdefault("input_dim", 1)
        super().__init__(architecture, **kwargs)
        self._setup_graph(node_features)


def _deprecated(old: str) -> None:
    warn_deprecated(old, f"{'NTKKernel' if 'NTK' in old else 'NNGPKernel'}(arch.gcn(adjacency, depth, ...), "
                    "node_features=X)")


class GraphConvKernel(GraphNNGPKernel):
    """Deprecated: ``NNGPKernel(A.gcn(adjacency, depth, activation, normalize, self_loops), node_features=X)``."""

    def __init__(self, adjacency, node_features, depth: int = 1, activation: Activation | None = None,
                 normalize: str = "sym", self_loops: bool = True, **kwargs):
        _deprecated("GraphConvKernel")
        super().__init__(gcn(adjacency, depth, activation, normalize, self_loops), node_features, **kwargs)


class GraphConvNTKKernel(GraphNTKKernel):
    """Deprecated: ``NTKKernel(A.gcn(...), node_features=X)``."""

    def __init__(self, adjacency, node_features, depth: int = 1, activation: Activation | None = None,
                 normalize: str = "sym", self_loops: bool = True, **kwargs):
        _deprecated("GraphConvNTKKernel")
        super().__init__(gcn(adjacency, depth, activation, normalize, self_loops), node_features, **kwargs)


__all__ = ["gcn", "GraphConvKernel", "GraphConvNTKKernel", "GraphNNGPKernel", "GraphNTKKernel"]

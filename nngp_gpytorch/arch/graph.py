"""Graph convolution over the nodes of one fixed graph (transductive)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import ArchitectureError, Layer, Signal, SignalKind

NORMALIZATIONS = ("sym", "row", "none")


def normalized_adjacency(adjacency, normalize: str = "sym", self_loops: bool = True) -> torch.Tensor:
    """``Â`` (float64, ``(N, N)``) from a square adjacency matrix.

    ``"sym"``: ``D^(−1/2)(A + I)D^(−1/2)`` (Kipf & Welling 2017); ``"row"``: ``D^(−1)(A + I)`` (mean over the
    neighbourhood); ``"none"``: ``A + I``. ``self_loops=False`` drops the ``+ I``. Isolated nodes (degree 0)
    keep a zero row.
    """
    a = torch.as_tensor(adjacency, dtype=torch.float64)
    if a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise ArchitectureError(f"GraphConv: the adjacency must be a square (N, N) matrix, got shape {tuple(a.shape)}")
    if not torch.isfinite(a).all() or (a < 0).any():
        raise ArchitectureError("GraphConv: the adjacency must be finite and non-negative")
    if normalize not in NORMALIZATIONS:
        raise ArchitectureError(f"GraphConv: normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if self_loops:
        a = a + torch.eye(a.shape[0], dtype=a.dtype)
    if normalize == "none":
        return a
    deg = a.sum(-1)
    if normalize == "row":
        return a / torch.where(deg > 0, deg, torch.ones_like(deg)).unsqueeze(-1)
    r = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    return r.unsqueeze(-1) * a * r.unsqueeze(0)


@dataclass(frozen=True, eq=False, init=False)
class GraphConv(Layer):
    """Graph convolution ``h ← Â·h·W + b`` over the nodes of one fixed graph (row ``i`` of ``Â`` aggregates
    node ``i``'s neighbourhood), weights ``N(0, σw²/fan_in)``, bias ``N(0, σb²)``.

    Kernel: ``K' = σb² + σw²·Â K Âᵀ``, ``Θ' = K' + σw²·Â Θ Âᵀ`` — a kernel over the node set of the graph, so
    the covariance state must hold all N nodes, in order (transductive; see
    :class:`~nngp_gpytorch.kernels.graph.GraphConvKernel`, whose inputs are node indices).

    ``transductive = True`` tells tools that the inputs are one fixed, ordered node set: they must not be
    reordered or deduplicated (e.g. by an ensemble sampler).
    """

    transductive: ClassVar[bool] = True
    fresh_weights: ClassVar[bool] = True

    adjacency: torch.Tensor = field(default=None, repr=False)
    normalize: str = "sym"
    self_loops: bool = True
    weight_var: float | None = None
    bias_var: float | None = None
    width: int | None = None

    def __init__(self, adjacency, normalize: str = "sym", self_loops: bool = True, weight_var: float | None = None,
                 bias_var: float | None = None, width: int | None = None):
        a_hat = normalized_adjacency(adjacency, normalize, self_loops)
        object.__setattr__(self, "adjacency", a_hat)
        object.__setattr__(self, "normalize", normalize)
        object.__setattr__(self, "self_loops", bool(self_loops))
        object.__setattr__(self, "weight_var", weight_var)
        object.__setattr__(self, "bias_var", bias_var)
        object.__setattr__(self, "width", width)
        if weight_var is not None and not weight_var > 0:
            raise ArchitectureError("GraphConv: weight_var must be > 0")
        if bias_var is not None and not bias_var >= 0:
            raise ArchitectureError("GraphConv: bias_var must be >= 0")

    @property
    def num_nodes(self) -> int:
        return self.adjacency.shape[0]

    def describe(self) -> str:
        extra = "".join(f", {n}={getattr(self, n)!r}" for n in ("weight_var", "bias_var", "width")
                        if getattr(self, n) is not None)
        return f"GraphConv(nodes={self.num_nodes}, normalize={self.normalize!r}{extra})"

    def propagate(self, signal: Signal, path: str) -> Signal:
        if signal.spatial:
            raise ArchitectureError(f"{path}: GraphConv needs flat node features, got spatial shape {signal.spatial}")
        return signal.with_kind(SignalKind.GAUSSIAN)

    def variance_slots(self) -> int:
        return 1 if self.weight_var is None or self.bias_var is None else 0

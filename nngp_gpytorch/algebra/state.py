"""The covariance state that kernel rules map layer by layer.

For two input sets ``x1`` (n1 points) and ``x2`` (n2 points) the state holds, for the current layer,

* ``k12``: covariances between the two sides — shape ``(..., n1, n2)`` (full layout) or ``(..., n)``
  (diagonal layout: pairs ``(x1[i], x2[i])``, used by ``diag=True``);
* ``k11``, ``k22``: each side's own variances, broadcastable against ``k12`` — ``(..., n1, 1)`` and
  ``(..., 1, n2)`` in the full layout, ``(..., n)`` in the diagonal layout;
* ``t12``, ``t11``, ``t22``: the neural tangent kernel riding along (``None`` when not requested);
* ``identical``: a bool mask, broadcastable to ``k12``, of pairs of identical inputs (for which the
  correlation is set to exactly 1);
* ``inputs``: the raw inputs ``(x1, x2)`` reshaped to ``(..., n, *input_shape)`` when the kernel was
  given an ``input_shape`` (structured families build their first state from them), else ``None``;
  ``input_shape`` is that per-example shape;
* ``gaussian``: whether the entries are covariances of Gaussian pre-activations (output of an affine
  layer) or of post-activation features;
* ``positions``: the spatial/temporal shape ``(H, W)``, ``(T,)``, ... of position-structured states
  (:mod:`.positional`), ``None`` for flat states; ``full_positions`` says which position layout is held
  (full ``P×P`` covariance per pair of inputs, or same-position entries only);
* ``pre_activation``: ``(activation, state before it)`` set by an activation rule, so that a later
  layer (layer norm) can compute the mean ``E[φ(u)]`` of the features; ``None`` otherwise.

Families with spatial or temporal structure append their own trailing axes to the entries; ``entry_ndim``
counts the trailing axes of ``k12`` that index entries (everything before them is a batch dimension of
the kernel), so that hyperparameters of shape ``batch_shape`` broadcast correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class CovState:
    k12: torch.Tensor
    k11: torch.Tensor
    k22: torch.Tensor
    t12: torch.Tensor | None = None
    t11: torch.Tensor | None = None
    t22: torch.Tensor | None = None
    identical: torch.Tensor | None = None
    inputs: tuple[torch.Tensor, torch.Tensor] | None = None
    gaussian: bool = False
    entry_ndim: int = 2
    input_shape: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None
    full_positions: bool = False
    pre_activation: tuple | None = None

    @property
    def has_ntk(self) -> bool:
        return self.t12 is not None

    def replace(self, **changes) -> CovState:
        return replace(self, **changes)


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same tensor or views of the same memory with the same shape and strides (a
    rule given ``K(X, X)`` computes only the pairs ``i ≤ j``)."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


def identical_rows(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Bool mask ``(..., n1, n2)``: True where row ``x1[..., i, :]`` equals ``x2[..., j, :]`` exactly.

    Rows are compared by value (via ``torch.unique`` over the stacked rows, tagged by batch index), so
    the cost is ``O((n1 + n2)·d·log)`` rather than ``O(n1·n2·d)``.
    """
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    x1 = x1.expand(*batch, *x1.shape[-2:])
    x2 = x2.expand(*batch, *x2.shape[-2:])
    n1, n2, d = x1.shape[-2], x2.shape[-2], x1.shape[-1]
    b = int(torch.Size(batch).numel())
    rows = torch.cat([x1.reshape(b, n1, d), x2.reshape(b, n2, d)], dim=-2)
    tag = torch.arange(b, device=rows.device, dtype=rows.dtype).view(b, 1, 1).expand(b, n1 + n2, 1)
    tagged = torch.cat([tag, rows], dim=-1).reshape(b * (n1 + n2), d + 1)
    _, inverse = torch.unique(tagged.detach(), dim=0, return_inverse=True)
    inverse = inverse.view(b, n1 + n2)
    mask = inverse[:, :n1, None] == inverse[:, None, n1:]
    return mask.view(*batch, n1, n2)


def input_state(x1: torch.Tensor, x2: torch.Tensor, diag: bool, with_ntk: bool,
                input_shape: tuple[int, ...] | None = None) -> CovState:
    """State of the raw inputs: ``K⁰ = x·x'/d`` (before the first affine layer's σw², σb²), ``Θ = 0``.

    ``x1``: ``(..., n1, d)``, ``x2``: ``(..., n2, d)``. In the diagonal layout ``n1 == n2`` and only the
    pairs ``(x1[i], x2[i])`` are formed. With ``input_shape`` (``d == prod(input_shape)``) the raw inputs
    are also kept, reshaped to ``(..., n, *input_shape)``, in ``state.inputs``.
    """
    d = x1.shape[-1]
    k11 = (x1 * x1).sum(-1) / d
    k22 = (x2 * x2).sum(-1) / d
    if diag:
        k12 = (x1 * x2).sum(-1) / d
        identical = (x1 == x2).all(-1)
        entry_ndim = 1
    else:
        k12 = x1 @ x2.transpose(-1, -2) / d
        k11, k22 = k11.unsqueeze(-1), k22.unsqueeze(-2)
        identical = identical_rows(x1, x2)
        entry_ndim = 2
    zero = torch.zeros((), dtype=k12.dtype, device=k12.device) if with_ntk else None
    inputs = None
    if input_shape is not None:
        inputs = (x1.reshape(*x1.shape[:-1], *input_shape), x2.reshape(*x2.shape[:-1], *input_shape))
    return CovState(k12=k12, k11=k11, k22=k22, t12=zero, t11=zero, t22=zero, identical=identical,
                    inputs=inputs, gaussian=False, entry_ndim=entry_ndim,
                    input_shape=tuple(input_shape) if input_shape is not None else None)

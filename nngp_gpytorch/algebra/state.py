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


_INTEGER_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _row_keys(x: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """One int64 key per row ``(..., n)``: ``Σ_k bits(x_k)·r_k`` in wrapping 64-bit arithmetic, so equal rows give
    equal keys whatever order the sum runs in. ``x + 0.0`` first maps −0.0 to +0.0 (they compare equal)."""
    normalized = (x.detach() + 0.0).contiguous()
    bits = normalized.view(_INTEGER_OF_WIDTH[normalized.element_size()]).to(torch.int64)
    return (bits * multipliers).sum(-1)


def identical_rows(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Bool mask ``(..., n1, n2)``: True where row ``x1[..., i, :]`` equals ``x2[..., j, :]`` exactly (as ``==``).

    Each row gets an integer key (a random linear form of its bit pattern); only the pairs whose keys agree are
    compared element by element, so the cost is ``O((n1 + n2)·d + n1·n2)``, no more than the Gram ``x1·x2ᵀ``
    it accompanies. (The earlier ``torch.unique(dim=0)`` over all ``n1 + n2`` rows sorted them on every call:
    0.65 s for one row against 50,000, the preconditioner rows of ``nngp_gpytorch.scale``.)
    """
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    d = x1.shape[-1]
    generator = torch.Generator().manual_seed(0x5EED)
    multipliers = torch.randint(1, 2**62, (d,), generator=generator, dtype=torch.int64).to(x1.device) | 1
    keys1 = _row_keys(x1, multipliers)
    keys2 = keys1 if same_tensor(x1, x2) else _row_keys(x2, multipliers)
    mask = keys1[..., :, None] == keys2[..., None, :]
    candidates = mask.nonzero(as_tuple=True)
    if candidates[0].numel():  # rule out key collisions of different rows
        *where, i, j = candidates
        a = x1.detach().expand(*batch, *x1.shape[-2:])[(*where, i)]
        b = x2.detach().expand(*batch, *x2.shape[-2:])[(*where, j)]
        mask[candidates] = (a == b).all(-1)
    return mask


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

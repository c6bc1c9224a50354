r"""Position-structured covariance states (images, sequences): the common ground of conv, pooling,
layer norm and attention rules.

A network on structured inputs carries, per channel, a feature at every *position* ``p`` of a spatial
(or temporal) grid of shape ``positions = (H, W)``, ``(T,)``, ``(D, H, W)``... In the infinite-width
limit channels are i.i.d., so the state is the covariance between positions of two inputs,
``K[p, q] = lim (1/n)·Σ_c h_c(x)[p]·h_c(x')[q]``. Positions are flattened (row-major, ``P = prod(positions)``)
into the trailing axes of the entries. Two layouts (``state.full_positions``):

**Full spatial covariance** (``full_positions=True``), needed by anything that mixes positions
(average pooling, global average pooling, attention)::

    k12: (..., n1, n2, P, P)     K(x1[i], x2[j])[p, q]
    k11: (..., n1, 1,  P, P)     each x1[i]'s own P×P covariance (its diagonal = per-position variances)
    k22: (..., 1,  n2, P, P)
    diag layout (kernel diag=True, pairs (x1[i], x2[i])): k12, k11, k22 all (..., n, P, P)

**Same-position only** (``full_positions=False``), enough when positions are only ever combined with
themselves (convolutions, activations, layer norm, a Flatten readout)::

    k12: (..., n1, n2, P)        K(x1[i], x2[j])[p, p]
    k11: (..., n1, 1,  P)        k22: (..., 1, n2, P)
    diag layout: all (..., n, P)

``t12/t11/t22`` (the NTK Θ, if requested) have the same layout (or are the scalar 0 of the raw input).
``state.identical`` stays the *input-level* mask ``(..., n1, n2)`` (``(..., n)`` in the diag layout): a
pair of identical inputs has correlation exactly 1 at equal positions ``p == q`` only; :func:`apply_dual`
expands it. ``entry_ndim`` = pair axes (2, or 1 in the diag layout) + position axes (2 full / 1 same).

The layout is chosen once per architecture by :func:`wants_full_positions`: full iff some layer class in
the tree declares ``needs_full_positions = True`` (a ``ClassVar`` on the layer description; AvgPool and
GlobalAvgPool do, an attention layer should). Otherwise the cheaper same-position layout is used.

API for rules (all return a new :class:`~nngp_gpytorch.algebra.state.CovState`; each acts on K and Θ):

* :func:`ensure_positional` / :func:`from_inputs` — the first structured layer builds the input state
  ``K⁰[p, q] = Σ_c x[c, p]·x'[c, q]/C`` from ``state.inputs`` (``channel_axis=0`` for ``(C, H, W)``
  images, ``-1`` for ``(T, d)`` sequences). Θ⁰ = 0.
* :func:`apply_dual` — elementwise nonlinearity; per-position variances from the self-block diagonals
  (also used automatically by :func:`nngp_gpytorch.algebra.dense.apply_dual` for positional states).
* :func:`self_variances` — per-position variances broadcastable against ``k12`` (and the self blocks).
* :func:`tap_sum` — the convolution's position map ``K'[p, p'] = (1/k)·Σ_β K[s·p + d·β − lo, s·p' + d·β − lo]``
  per spatial axis (strides, dilation, zero or circular padding), both layouts. Follow with
  :func:`nngp_gpytorch.algebra.dense.affine` for ``σw²·(·) + σb²`` and ``Θ' = K' + σw²·Θ``.
* :func:`mix_axes` — a separable linear position map ``K ← A K Aᵀ`` with one ``(out_i, in_i)`` matrix per
  spatial axis (pooling), full layout.
* :func:`mix_positions` — a general linear map ``K12 ← A1 K12 A2ᵀ``, ``K11 ← A1 K11 A1ᵀ``,
  ``K22 ← A2 K22 A2ᵀ`` on the flattened positions, with matrices shared ``(P', P)`` or per input
  ``(..., n, P', P)`` (attention: each sequence's own ``I + Δ``), full layout.
* :func:`reduce_positions` — leave the positional world: ``"mean_same"`` (Flatten: mean of the
  same-position diagonal; the Dense after it has fan-in C·P) or ``"mean_all"`` (global average pooling:
  ``(1/P²)·Σ_{p,q} K[p, q]``); returns a flat state.
* :func:`normalize` — ``K[p, q]/√(K_xx[p, p]·K_yy[q, q])`` (layer norm over channels, Θ divided by the
  same factor), optionally after subtracting the feature means ``μ_x[p]·μ_y[q]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .state import CovState
from .taps import conv_output_size, tap_axes

# --------------------------------------------------------------------------------------------------
# Layout helpers


def wants_full_positions(architecture) -> bool:
    """True if any layer of ``architecture`` declares ``needs_full_positions`` (unknown: True)."""
    if architecture is None:
        return True
    return any(getattr(type(layer), "needs_full_positions", False) for layer in architecture.walk())


def is_positional(state: CovState) -> bool:
    return state.positions is not None


def position_ndim(state: CovState) -> int:
    """Number of trailing position axes of the entries (2 full, 1 same-position, 0 flat)."""
    if state.positions is None:
        return 0
    return 2 if state.full_positions else 1


def pair_ndim(state: CovState) -> int:
    """Number of axes indexing input pairs: 2 (full layout ``n1, n2``) or 1 (diag layout ``n``)."""
    return state.entry_ndim - position_ndim(state)


def num_positions(state: CovState) -> int:
    return int(math.prod(state.positions))


def _map_k_and_t(state: CovState, f12, f11, f22, **changes) -> CovState:
    """Apply maps to (k12, k11, k22) and the same maps to (t12, t11, t22) (a scalar Θ stays 0)."""
    new = dict(k12=f12(state.k12), k11=f11(state.k11), k22=f22(state.k22))
    if state.has_ntk:
        for name, f in (("t12", f12), ("t11", f11), ("t22", f22)):
            t = getattr(state, name)
            new[name] = t if t.dim() == 0 else f(t)
    if state.pre_activation != "centred":
        new["pre_activation"] = None  # the features' mean (for a later layer norm) is no longer tracked
    new.update(changes)
    return state.replace(**new)


# --------------------------------------------------------------------------------------------------
# Building the input state


def from_inputs(state: CovState, channel_axis: int = 0, full: bool = True) -> CovState:
    """Positional input state from ``state.inputs`` (raw inputs ``(..., n, *input_shape)``).

    ``K⁰[p, q] = Σ_c x[c, p]·x'[c, q]/C`` with the channel axis ``channel_axis`` of ``input_shape``
    (0: ``(C, H, W)`` images; -1: ``(T, d)`` sequences); positions are the remaining axes, in order.
    The result is non-Gaussian (raw data): an affine layer (conv, dense per position) must come next.
    """
    if state.inputs is None:
        raise ValueError("a positional state needs the raw inputs: give the kernel input_shape=(C, H, W) or (T, d)")
    x1, x2 = state.inputs
    diag = state.entry_ndim == 1
    pair = 1 if diag else 2
    nd_in = len(state.input_shape)
    ax = channel_axis % nd_in
    lead1, lead2 = x1.dim() - nd_in, x2.dim() - nd_in
    x1 = torch.movedim(x1, lead1 + ax, -1)
    x2 = torch.movedim(x2, lead2 + ax, -1)
    positions = tuple(x1.shape[lead1:-1])
    channels = x1.shape[-1]
    x1 = x1.reshape(*x1.shape[:lead1], -1, channels)  # (..., n1, P, C)
    x2 = x2.reshape(*x2.shape[:lead2], -1, channels)
    if full:
        if diag:
            k12 = x1 @ x2.transpose(-1, -2) / channels  # (..., n, P, P)
            k11 = x1 @ x1.transpose(-1, -2) / channels
            k22 = x2 @ x2.transpose(-1, -2) / channels
        else:
            k12 = torch.einsum("...ipc,...jqc->...ijpq", x1, x2) / channels
            k11 = (x1 @ x1.transpose(-1, -2) / channels).unsqueeze(-3)  # (..., n1, 1, P, P)
            k22 = (x2 @ x2.transpose(-1, -2) / channels).unsqueeze(-4)  # (..., 1, n2, P, P)
        pos_nd = 2
    else:
        if diag:
            k12 = (x1 * x2).sum(-1) / channels
        else:
            k12 = torch.einsum("...ipc,...jpc->...ijp", x1, x2) / channels
        k11 = (x1 * x1).sum(-1) / channels
        k22 = (x2 * x2).sum(-1) / channels
        if not diag:
            k11, k22 = k11.unsqueeze(-2), k22.unsqueeze(-3)  # (..., n1, 1, P), (..., 1, n2, P)
        pos_nd = 1
    return state.replace(k12=k12, k11=k11, k22=k22, positions=positions, full_positions=full,
                         entry_ndim=pair + pos_nd, gaussian=False, pre_activation=None)


def ensure_positional(state: CovState, ctx, layer, channel_axis: int = 0) -> CovState:
    """The positional form of ``state``: built from the raw inputs if the state is still flat.

    Raises a ``ValueError`` naming ``layer`` when the kernel was not told the inputs' structure.
    """
    if state.positions is not None:
        return state
    if state.inputs is None or state.gaussian or state.pre_activation is not None:
        raise ValueError(
            f"{layer.describe()} needs structured inputs: give the kernel input_shape=(C, H, W) (channels first, "
            "inputs flattened to C·H·W features) and put it before any Dense/Flatten"
        )
    return from_inputs(state, channel_axis=channel_axis, full=wants_full_positions(getattr(ctx, "architecture", None)))


# --------------------------------------------------------------------------------------------------
# Elementwise nonlinearity


def _diagonal(block: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(block, dim1=-2, dim2=-1)


def self_variances(state: CovState) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position variances ``(v1, v2)`` broadcastable against ``k12``.

    Full layout: ``v1 = K_11[p, p]`` as ``(..., n1, 1, P, 1)`` and ``v2 = K_22[q, q]`` as ``(..., 1, n2, 1, P)``
    (diag layout: ``(..., n, P, 1)``, ``(..., n, 1, P)``). Same-position layout: ``k11``, ``k22`` themselves.
    """
    if not state.full_positions:
        return state.k11, state.k22
    return _diagonal(state.k11).unsqueeze(-1), _diagonal(state.k22).unsqueeze(-2)


def _eye(state: CovState, like: torch.Tensor) -> torch.Tensor:
    p = like.shape[-1]
    return torch.eye(p, dtype=torch.bool, device=like.device)


def identical_positions(state: CovState) -> torch.Tensor | None:
    """Bool mask broadcastable to ``k12``: identical inputs at equal positions."""
    if state.identical is None:
        return None
    if state.full_positions:
        return state.identical[..., None, None] & _eye(state, state.k12)
    return state.identical[..., None]


def apply_dual(dual, state: CovState) -> CovState:
    """Push Gaussian pre-activations with positional covariance ``state`` through ``φ`` (K and Θ).

    ``K'[p, q] = V_φ(K)[p, q]`` using the variances ``K_11[p, p]``, ``K_22[q, q]``;
    ``Θ'[p, q] = V_φ'(K)[p, q]·Θ[p, q]``. Self blocks (full layout) map with their own diagonals.
    """
    ident = identical_positions(state)
    if state.full_positions:
        d1, d2 = _diagonal(state.k11), _diagonal(state.k22)
        v1, v2 = d1.unsqueeze(-1), d2.unsqueeze(-2)
        eye = _eye(state, state.k11)
        blocks = ((d1.unsqueeze(-1), d1.unsqueeze(-2), state.k11), (d2.unsqueeze(-1), d2.unsqueeze(-2), state.k22))
        k11 = dual.nngp(*blocks[0], eye)
        k22 = dual.nngp(*blocks[1], eye)
        new = dict(k12=dual.nngp(v1, v2, state.k12, ident), k11=k11, k22=k22)
        if state.has_ntk:
            new.update(t12=dual.ntk(v1, v2, state.k12, ident) * state.t12,
                       t11=dual.ntk(*blocks[0], eye) * state.t11, t22=dual.ntk(*blocks[1], eye) * state.t22)
    else:
        k11, k22, k12 = state.k11, state.k22, state.k12
        new = dict(k12=dual.nngp(k11, k22, k12, ident), k11=dual.nngp_diag(k11), k22=dual.nngp_diag(k22))
        if state.has_ntk:
            new.update(t12=dual.ntk(k11, k22, k12, ident) * state.t12, t11=dual.ntk_diag(k11) * state.t11,
                       t22=dual.ntk_diag(k22) * state.t22)
    return state.replace(gaussian=False, **new)


# --------------------------------------------------------------------------------------------------
# Convolution taps


def tap_sum(state: CovState, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
            padding: str) -> CovState:
    """The position map of a convolution (Novak et al. 2019, eq. 8), on K and Θ, without σw², σb².

    ``K'[p, p'] = (1/k)·Σ_β K[s·p + d·β − lo, s·p' + d·β − lo]`` with ``k = prod(kernel)``, taps outside
    the input zero (``same``/``valid``) or wrapped (``circular``) and still counted in ``1/k``. Separable:
    applied axis by axis. Same-position layout: ``K'[p] = (1/k)·Σ_β K[s·p + d·β − lo]``.
    """
    spatial = state.positions
    out_shape = tuple(conv_output_size(n, k, s, d, padding)[0]
                      for n, k, s, d in zip(spatial, kernel, stride, dilation, strict=True))

    def f(x: torch.Tensor) -> torch.Tensor:
        return tap_axes(x, spatial, kernel, stride, dilation, padding, state.full_positions)

    return _map_k_and_t(state, f, f, f, positions=out_shape)


# --------------------------------------------------------------------------------------------------
# Linear position maps (full layout)


def _require_full(state: CovState, what: str) -> None:
    if not state.full_positions:
        raise ValueError(f"{what} needs the full spatial covariance but the state holds same-position entries only "
                         "(declare needs_full_positions = True on the layer class)")


def mix_axes(state: CovState, matrices: Sequence[torch.Tensor], positions: Sequence[int]) -> CovState:
    """Separable linear position map ``K ← A K Aᵀ`` with ``A = A_1 ⊗ A_2 ⊗ ...`` (one ``(out_i, in_i)``
    matrix per spatial axis, shared by all inputs), on K and Θ; ``positions`` is the new spatial shape."""
    _require_full(state, "mix_axes")
    spatial = state.positions
    nd = len(spatial)

    def f(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(*x.shape[:-2], *spatial, *spatial)
        base = x.dim() - 2 * nd
        for i, a in enumerate(matrices):
            a = a.to(dtype=x.dtype, device=x.device)
            for axis in (base + i, base + nd + i):
                x = torch.movedim(torch.tensordot(x, a, dims=([axis], [1])), -1, axis)
        p = int(math.prod(positions))
        return x.reshape(*x.shape[:base], p, p)

    return _map_k_and_t(state, f, f, f, positions=tuple(positions))


def mix_positions(state: CovState, a1: torch.Tensor, a2: torch.Tensor | None = None,
                  positions: Sequence[int] | None = None) -> CovState:
    """General linear map on the flattened positions: ``K12 ← A1 K12 A2ᵀ``, ``K11 ← A1 K11 A1ᵀ``,
    ``K22 ← A2 K22 A2ᵀ`` (and Θ alike).

    ``a1``: ``(P', P)`` shared, or ``(..., n1, P', P)`` one matrix per input of side 1 (``(..., n, P', P)``
    in the diag layout); ``a2`` likewise for side 2 (default: ``a1``, which must then be shared or the
    two sides must be the same inputs). ``positions``: the new spatial shape (default ``(P',)``).
    """
    _require_full(state, "mix_positions")
    a2 = a1 if a2 is None else a2
    diag = pair_ndim(state) == 1

    def place(a: torch.Tensor, side: int) -> torch.Tensor:
        if a.dim() == 2 or diag:
            return a
        return a.unsqueeze(-3) if side == 1 else a.unsqueeze(-4)  # (..., n1, 1, P', P) / (..., 1, n2, P', P)

    m1, m2 = place(a1, 1), place(a2, 2)

    def f12(x):
        return m1 @ x @ m2.transpose(-1, -2)

    def f11(x):
        return m1 @ x @ m1.transpose(-1, -2)

    def f22(x):
        return m2 @ x @ m2.transpose(-1, -2)

    new_positions = tuple(positions) if positions is not None else (a1.shape[-2],)
    return _map_k_and_t(state, f12, f11, f22, positions=new_positions)


def average_matrix(n: int, window: int, stride: int, padding: str) -> torch.Tensor:
    """``(out, n)`` matrix of a 1-D average pool: each row averages its window, dividing by the full window
    size (padding included, neural-tangents convention); circular padding wraps."""
    out, lo, _ = conv_output_size(n, window, stride, 1, padding)
    a = torch.zeros(out, n, dtype=torch.float64)
    for o in range(out):
        for beta in range(window):
            i = stride * o + beta - lo
            if padding == "circular":
                a[o, i % n] += 1.0 / window
            elif 0 <= i < n:
                a[o, i] += 1.0 / window
    return a


# --------------------------------------------------------------------------------------------------
# Leaving the positional world; normalization


def reduce_positions(state: CovState, how: str) -> CovState:
    """A flat state from a positional one (K and Θ alike).

    ``how="mean_same"`` (Flatten): ``K' = (1/P)·Σ_p K[p, p]`` — the dense layer after it has fan-in C·P.
    ``how="mean_all"`` (global average pooling): ``K' = (1/P²)·Σ_{p,q} K[p, q]`` (full layout needed).
    """
    if how == "mean_all":
        _require_full(state, "global average pooling")

        def f(x):
            return x.mean(dim=(-2, -1))
    elif how == "mean_same":
        def f(x):
            return (_diagonal(x) if state.full_positions else x).mean(-1)
    else:
        raise ValueError(f"unknown reduction {how!r}")
    return _map_k_and_t(state, f, f, f, positions=None, full_positions=False, entry_ndim=pair_ndim(state),
                        pre_activation=None)


__all__ = [
    "apply_dual", "average_matrix", "conv_output_size", "ensure_positional", "from_inputs", "identical_positions",
    "is_positional", "mix_axes", "mix_positions", "num_positions", "pair_ndim", "position_ndim",
    "reduce_positions", "self_variances", "tap_axes", "tap_sum", "wants_full_positions",
]

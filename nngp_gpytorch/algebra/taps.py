"""Convolution taps on tensors of flattened positions: ``(1/k)·Σ_β x[s·o + d·β − lo]`` along matching axes.

The position map of a convolution (Novak et al. 2019, eq. 8) on covariance entries: with the full spatial layout
``(..., P, P)`` both position axes of an entry shift by the same tap ``β`` (``K'[p, p'] = (1/k)·Σ_β
K[s·p + d·β − lo, s·p' + d·β − lo]``); with the same-position layout ``(..., P)`` the one axis does. Separable over
spatial axes. Used by :mod:`.positional` (the conv rule) and :mod:`.conv_stack` (the fast engine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def conv_output_size(n: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """``(out, pad_low, pad_high)`` along one axis, neural-tangents conventions.

    SAME / CIRCULAR: ``out = ceil(n/stride)``, total pad ``max((out−1)·stride + d·(k−1) + 1 − n, 0)``, low
    side ``total//2``. VALID: ``out = floor((n − d·(k−1) − 1)/stride) + 1`` (``≤ 0``: the filter does not fit).
    """
    span = dilation * (kernel - 1) + 1
    if padding == "valid":
        return (n - span) // stride + 1 if n >= span else 0, 0, 0
    out = -(-n // stride)
    total = max((out - 1) * stride + span - n, 0)
    return out, total // 2, total - total // 2


def _pad_axis(x: torch.Tensor, axis: int, lo: int, hi: int, circular: bool) -> torch.Tensor:
    if lo == 0 and hi == 0:
        return x
    n = x.shape[axis]
    if circular:
        if lo <= n and hi <= n:
            return torch.cat([x.narrow(axis, n - lo, lo), x, x.narrow(axis, 0, hi)], dim=axis)
        idx = torch.arange(-lo, n + hi, device=x.device)
        return x.index_select(axis, idx % n)
    shape = list(x.shape)
    shape[axis] = n + lo + hi
    out = x.new_zeros(shape)
    out.narrow(axis, lo, n).copy_(x)
    return out


def _strided(axis: int, start: int, count: int, stride: int, ndim: int) -> tuple:
    index = [slice(None)] * ndim
    index[axis] = slice(start, start + stride * (count - 1) + 1, stride)
    return tuple(index)


def _tap_sum_padded(x: torch.Tensor, axes: Sequence[int], n: int, kernel: int, stride: int, dilation: int,
                    padding: str, mean: bool = True) -> torch.Tensor:
    """:func:`_tap_sum_tensor` by padding a copy first (circular padding wraps, so it needs the copy)."""
    out, lo, hi = conv_output_size(n, kernel, stride, dilation, padding)
    for axis in axes:
        x = _pad_axis(x, axis, lo, hi, padding == "circular")
    total = None
    for beta in range(kernel):
        piece = x
        for axis in axes:
            piece = piece[_strided(axis, dilation * beta, out, stride, x.dim())]
        total = piece if total is None else total + piece
    return total / kernel if mean else total


def _tap_range(n: int, out: int, offset: int, stride: int) -> tuple[int, int]:
    """Output indices ``[o0, o1)`` whose tap ``stride·o + offset`` falls inside ``[0, n)``."""
    o0 = max(0, -(offset // stride))  # ceil(−offset / stride)
    o1 = min(out, (n - 1 - offset) // stride + 1) if n - 1 - offset >= 0 else 0
    return o0, max(o0, o1)


def _tap_sum_tensor(x: torch.Tensor, axes: Sequence[int], n: int, kernel: int, stride: int, dilation: int,
                    padding: str, mean: bool = True) -> torch.Tensor:
    """``(1/k)·Σ_β x[s·o + d·β − lo]`` simultaneously along ``axes`` (one or two axes of length n).

    Zero padding: each tap adds its in-range slice into the output (no padded copy: taps outside the input
    contribute nothing, exactly as adding the padding's zeros; the same sums, in the same order, so the same
    bits as :func:`_tap_sum_padded`). Circular padding pads a wrapped copy.
    """
    if padding == "circular":
        return _tap_sum_padded(x, axes, n, kernel, stride, dilation, padding, mean)
    out, lo, _ = conv_output_size(n, kernel, stride, dilation, padding)
    shape = list(x.shape)
    for axis in axes:
        shape[axis] = out
    taps = []
    for beta in range(kernel):
        offset = dilation * beta - lo
        o0, o1 = _tap_range(n, out, offset, stride)
        if o1 > o0:
            taps.append((o0 == 0 and o1 == out, offset, o0, o1))
    taps.sort(key=lambda tap: not tap[0])  # a tap covering the whole output (if any) starts the sum as a copy
    total = None
    for covers, offset, o0, o1 in taps:
        src, dst = [slice(None)] * x.dim(), [slice(None)] * x.dim()
        for axis in axes:
            src[axis] = slice(stride * o0 + offset, stride * (o1 - 1) + offset + 1, stride)
            dst[axis] = slice(o0, o1)
        piece = x[tuple(src)]
        if total is None:
            total = piece.clone() if covers else x.new_zeros(shape)
            if covers:
                continue
        total[tuple(dst)] += piece  # in place on a fresh tensor: fine under autograd too
    if total is None:
        total = x.new_zeros(shape)
    return total / kernel if mean else total


def tap_axes(x: torch.Tensor, spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
             dilation: Sequence[int], padding: str, full: bool, mean: bool = True) -> torch.Tensor:
    """The convolution's position map on a tensor whose trailing axes are flattened positions: ``(..., P, P)``
    (``full``) or ``(..., P)``, for input positions ``spatial``; see :func:`tap_sum`. ``mean=False``: the sum
    over taps, without the ``1/k`` (callers that fold it into ``σw²``)."""
    nd = len(spatial)
    out_shape = tuple(conv_output_size(n, k, s, d, padding)[0]
                      for n, k, s, d in zip(spatial, kernel, stride, dilation, strict=True))
    if full:
        x = x.reshape(*x.shape[:-2], *spatial, *spatial)
        base = x.dim() - 2 * nd
        for i in range(nd):
            x = _tap_sum_tensor(x, (base + i, base + nd + i), spatial[i], kernel[i], stride[i], dilation[i], padding,
                                mean)
        p = int(math.prod(out_shape))
        return x.reshape(*x.shape[:base], p, p)
    x = x.reshape(*x.shape[:-1], *spatial)
    base = x.dim() - nd
    for i in range(nd):
        x = _tap_sum_tensor(x, (base + i,), spatial[i], kernel[i], stride[i], dilation[i], padding, mean)
    return x.reshape(*x.shape[:base], -1)


def pool_axes(x: torch.Tensor, spatial: Sequence[int], window: Sequence[int], stride: Sequence[int],
              padding: str) -> torch.Tensor:
    """The *sum* of an average pool's windows on both sides of a full layout ``(..., P, P)`` over input positions
    ``spatial``: ``Σ_β Σ_β' x[s·p + β − lo, s·q + β' − lo]`` per axis, the two sides' taps independent (an average
    pool shares no weights between its window's positions, so every pair of offsets meets; a convolution's taps meet
    only at matching offsets, :func:`tap_axes`). Times ``(1/k)²`` this is ``A K Aᵀ`` with ``A`` the window-mean
    matrix (:func:`nngp_gpytorch.algebra.positional.average_matrix`)."""
    nd = len(spatial)
    out_shape = tuple(conv_output_size(n, k, s, 1, padding)[0] for n, k, s in zip(spatial, window, stride, strict=True))
    x = x.reshape(*x.shape[:-2], *spatial, *spatial)
    base = x.dim() - 2 * nd
    for i in range(nd):
        for axis in (base + i, base + nd + i):
            x = _tap_sum_tensor(x, (axis,), spatial[i], window[i], stride[i], 1, padding, mean=False)
    p = int(math.prod(out_shape))
    return x.reshape(*x.shape[:base], p, p)


__all__ = ["conv_output_size", "pool_axes", "tap_axes"]

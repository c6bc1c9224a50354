"""The fast positional engine's torch path (:mod:`.conv_stack`): the arithmetic on one chunk of input pairs.

Used wherever the compiled loops (:mod:`.conv_stack_jit`) do not apply — autograd, accelerators, activations other
than ReLU/erf — and for each input's self chain. ``groups`` are the engine's per-layer records (``_Group`` of
:mod:`.conv_stack`: geometry, ``tap_weight``, ``bias_var``, ``dual``, ``pool``); the sides carry each input's
pre-activation variances (``_Side``).
"""

from __future__ import annotations

import math

import torch

from ..duals.dense_maps import affine as fused_affine
from .taps import pool_axes, tap_axes


def tap(x: torch.Tensor, g, full: bool) -> torch.Tensor:
    """The conv's tap *sum* on a chunk ``(c, P, P)`` (full) or ``(c, P)`` (same-position); ``1/k`` is in
    ``g.tap_weight = σw²/k``. A pool group: the sum of both sides' windows (full layout only)."""
    if g.pool:
        return pool_axes(x, g.positions_in, g.kernel, g.stride, g.padding)
    return tap_axes(x, g.positions_in, g.kernel, g.stride, g.dilation, g.padding, full, mean=False)


def self_chain(x: torch.Tensor, groups: list, with_ntk: bool):
    """Same-position chain of each input with itself: ``x`` ``(n, P, C)`` → the pre-activation variances of every
    group ``[(n, P_l)]`` and the final same-position ``(K, Θ)`` ``(n, P_L)`` (Θ None without the NTK)."""
    k = (x * x).sum(-1) / x.shape[-1]
    t = torch.zeros((), dtype=k.dtype, device=k.device) if with_ntk else None
    pre = []
    for g in groups:
        k = fused_affine(tap(k, g, False), g.tap_weight, g.bias_var)
        if with_ntk:
            t = k if t.dim() == 0 else torch.addcmul(k, g.tap_weight, tap(t, g, False))
        pre.append(k)
        if g.dual is not None:
            if with_ntk:
                t = g.dual.ntk_diag(k) * t
            k = g.dual.nngp_diag(k)
    return pre, k, t


def self_chain_pooled(x: torch.Tensor, groups: list, step: int) -> list[torch.Tensor]:
    """The pre-activation variances ``[(n, P_l)]`` of a run with average pools: a pool mixes positions, so the
    variance after it needs the input's *full* self covariance ``K(x, x)[p, q]`` before it. Each input's ``P×P``
    self block goes through the layers (identical inputs: the exact diagonal of every dual), ``step`` inputs at a
    time — ``O(n·P²)`` work, the pairs' ``O(n²·P²)`` being the rest."""
    n = x.shape[0]
    pre: list[list[torch.Tensor]] = [[] for _ in groups]
    for s in range(0, n, step):
        xa = x[s:s + step]
        k = xa @ xa.transpose(-1, -2) / xa.shape[-1]
        for i, g in enumerate(groups):
            k = tap(k, g, True) * g.tap_weight if g.pool else fused_affine(tap(k, g, True), g.tap_weight, g.bias_var)
            v = k.diagonal(dim1=-2, dim2=-1)
            pre[i].append(v.clone())
            if g.dual is not None:
                k = g.dual.nngp(v.unsqueeze(-1), v.unsqueeze(-2), k, eye(v.shape[-1], k.device))
    return [torch.cat(parts) for parts in pre]


def eye(p: int, device) -> torch.Tensor:
    """``(p, p)`` boolean identity: the same position of two identical inputs."""
    return torch.eye(p, dtype=torch.bool, device=device)


RELU_SCALE = 1.0 / (2.0 * math.pi)  # E[relu(u) relu(v)] = (1/2π)·s·J1(c)


def relu_in_place(k: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, neg_inv_q1: torch.Tensor, inv_q2: torch.Tensor,
                   t: torch.Tensor | None, ident: torch.Tensor | None):
    """The ReLU dual (arc-cosine kernel, Cho & Saul 2009) of a chunk without autograd, in place on ``k`` and ``t``:
    ``K' = (1/2π)·s·(sin θ + (π − θ)·c)``, ``Θ' = (1/2π)·(π − θ)·Θ`` with ``s = q1·q2`` (``q = √v``, given with
    ``−1/q1`` and ``1/q2``, computed once per input), ``c = clamp(k/s)``, ``θ = arccos c``. The conventions of
    :mod:`nngp_gpytorch.duals.fused` (identical inputs ``c = 1``; with Θ, ``|c| ≥ 1 − 8·eps`` snapped to ``±1``),
    with ``sin θ = √(1 − c²)`` (one ``sqrt`` instead of a ``sin``) and ``π − θ = arccos(−c)``: eight passes over
    the chunk, two of them transcendental."""
    c = k.mul_(neg_inv_q1).mul_(inv_q2).clamp_(-1.0, 1.0)  # holds −c: arccos(−c) = π − θ
    if t is not None:
        snap = 1.0 - 8 * torch.finfo(k.dtype).eps
        if bool(c.amax() >= snap) or bool(c.amin() <= -snap):
            c.copy_(torch.where(c >= snap, 1.0, torch.where(c <= -snap, -1.0, c)))
    if ident is not None:
        c.masked_fill_(ident, -1.0)
    pmt = torch.arccos(c)  # π − θ
    if t is not None:
        t = t.mul_(pmt).mul_(RELU_SCALE)
    j1 = torch.addcmul(torch.ones((), dtype=c.dtype, device=c.device), c, c, value=-1.0).sqrt_()  # sin θ
    j1.addcmul_(pmt, c, value=-1.0)  # J1 = sin θ + (π − θ)·c
    return j1.mul_(q1).mul_(q2 * RELU_SCALE), t


def cross_chunk(a, b, same: torch.Tensor | None, groups: list, full: bool, with_ntk: bool, trace: bool = False):
    """Flat ``(K, Θ)`` ``(c,)`` of ``c`` pairs ``(a[m], b[m])`` (each side gathered for the chunk); ``same``:
    ``(c,)`` bool, identical inputs (or None). Readout: the mean over all position pairs (``full``, GAP), over the
    same-position entries (Flatten), or over the diagonal of the full layout (``trace``: Flatten after pools)."""
    if full:
        k = a.x @ b.x.transpose(-1, -2) / a.x.shape[-1]
    else:
        k = (a.x * b.x).sum(1) / a.x.shape[1]
    t = torch.zeros((), dtype=k.dtype, device=k.device) if with_ntk else None
    for g, va, vb, ra, rb in zip(groups, a.pre, b.pre, a.roots, b.roots, strict=True):
        if g.pool:  # linear and parameter-free: K' = A K Aᵀ, Θ' = A Θ Aᵀ
            k = tap(k, g, True) * g.tap_weight
            if with_ntk:
                t = tap(t, g, True) * g.tap_weight
            continue
        k = fused_affine(tap(k, g, full), g.tap_weight, g.bias_var)
        if with_ntk:
            t = k.clone() if t.dim() == 0 else torch.addcmul(k, g.tap_weight, tap(t, g, full))
        if g.dual is None:
            continue
        if full:
            v1, v2 = va.unsqueeze(-1), vb.unsqueeze(-2)
            ident = None if same is None else same[:, None, None] & eye(va.shape[-1], k.device)
        else:
            v1, v2 = va, vb
            ident = None if same is None else same[:, None]
        if ra is not None and rb is not None and not (k.requires_grad or (with_ntk and t.requires_grad)):
            if full:
                ra, rb = tuple(r.unsqueeze(-1) for r in ra), tuple(r.unsqueeze(-2) for r in rb)
            k, t = relu_in_place(k, ra[0], rb[0], ra[1], rb[2], t, ident)
            continue
        if with_ntk:
            t = g.dual.ntk(v1, v2, k, ident) * t
        k = g.dual.nngp(v1, v2, k, ident)
    if trace:
        k, t = k.diagonal(dim1=-2, dim2=-1), (t.diagonal(dim1=-2, dim2=-1) if with_ntk else None)
    dims = (-2, -1) if full and not trace else (-1,)
    return k.mean(dims), (t.mean(dims) if with_ntk else None)


__all__ = ["RELU_SCALE", "cross_chunk", "eye", "relu_in_place", "self_chain", "self_chain_pooled", "tap"]

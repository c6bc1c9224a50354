"""Allocation-lean maps of a full ``(n1, n2)`` covariance block: the dense-layer map ``σw²·K + σb²`` and the
symmetrization ``(K + Kᵀ)/2``, both differentiable to any order (split from :mod:`.fused`, whose chunk size
they share)."""

from __future__ import annotations

import torch

from .fused import CHUNK_ELEMENTS


class _Affine(torch.autograd.Function):
    """``σw²·K + σb²`` (the dense-layer map, Lee et al. 2018 eq. 4) with an allocation-lean backward pass.

    Autograd's ``addcmul`` backward forms ``∂L/∂K ⊙ K`` (an N×N tensor) to reduce it to ``∂L/∂σw²``; here
    a scalar ``σw²`` gets ``Σ ∂L/∂K ⊙ K`` as a sum of chunked dot products (no N×N temporary). The backward
    pass is written in differentiable operations of the saved inputs, so second derivatives are exact.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_var: torch.Tensor, bias_var: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight_var)
        ctx.bias_shape = bias_var.shape
        return torch.addcmul(bias_var, weight_var, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (grad * w).sum_to_size(x.shape)
        if ctx.needs_input_grad[1]:
            if (w.numel() == 1 and grad.shape == x.shape and grad.is_contiguous() and x.is_contiguous()
                    and not torch.is_grad_enabled() and x.device.type == "cpu"):
                g1, x1 = grad.view(-1), x.view(-1)
                step = CHUNK_ELEMENTS * 4
                total = sum(float(torch.dot(g1[i:i + step], x1[i:i + step])) for i in range(0, g1.numel(), step))
                gw = torch.full(w.shape, total, dtype=w.dtype, device=w.device)
            else:
                gw = (grad * x).sum_to_size(w.shape)
        if ctx.needs_input_grad[2]:
            gb = grad.sum_to_size(ctx.bias_shape)
        return gx, gw, gb


def affine(x: torch.Tensor, weight_var: torch.Tensor, bias_var: torch.Tensor) -> torch.Tensor:
    """``weight_var·x + bias_var`` (broadcasting), through :class:`_Affine` when ``x`` is an N×N block of
    entries and plain ``addcmul`` otherwise (vectors, scalars)."""
    if x.dim() >= 2 and x.shape[-1] > 1 and x.shape[-2] > 1:
        return _Affine.apply(x, weight_var, bias_var)
    return torch.addcmul(bias_var, weight_var, x)


def _symmetric_part(k: torch.Tensor, block: int = 128) -> torch.Tensor:
    """``(k + kᵀ)/2`` over the last two axes, by blocks of ``block`` rows against ``block`` columns (cache-friendly
    transposed reads, one output allocation). Entry ``(i, j)`` and ``(j, i)`` are the same sum, hence equal."""
    if k.device.type != "cpu":  # one kernel on an accelerator (blocks would be many tiny launches)
        return (k + k.mT).mul_(0.5)
    out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    n = k.shape[-1]
    for i in range(0, n, block):
        torch.add(k[..., i:i + block, :], k[..., :, i:i + block].mT, out=out[..., i:i + block, :]).mul_(0.5)
    return out


class _Symmetrize(torch.autograd.Function):
    """``P(K) = (K + Kᵀ)/2``; ``P`` is self-adjoint, so the backward pass applies it to the gradient."""

    @staticmethod
    def forward(ctx, k: torch.Tensor) -> torch.Tensor:
        return _symmetric_part(k)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _Symmetrize.apply(grad) if torch.is_grad_enabled() else _symmetric_part(grad)


def is_exactly_symmetric(k: torch.Tensor, block: int = 128) -> bool:
    """Whether ``k (..., n, n)`` equals its transpose exactly, compared by strips of ``block`` rows against
    ``block`` columns (a cache-friendly read of the upper triangle; no N×N allocation)."""
    if k.device.type != "cpu":  # one comparison kernel and one host sync on an accelerator
        return torch.equal(k, k.mT)
    n = k.shape[-1]
    return all(torch.equal(k[..., i:i + block, i:], k[..., i:, i:i + block].mT) for i in range(0, n, block))


def symmetrize(k: torch.Tensor) -> torch.Tensor:
    """``(k + kᵀ)/2`` of a square ``(..., n, n)`` tensor, exactly symmetric.

    Returns ``k`` itself when it is already exactly symmetric (the closed-form duals preserve the symmetry of
    a symmetric Gram matrix entry by entry); otherwise 1 N×N allocation forward and 1 backward (the plain
    expression allocates 2 forward and 2–3 backward). Values equal ``(k + k.mT) / 2`` bit for bit."""
    return k if is_exactly_symmetric(k) else _Symmetrize.apply(k)

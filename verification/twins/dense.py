"""Finite twin of dense layers (literal weights, or an exact draw given the incoming features)."""

from __future__ import annotations

import math

import torch

from nngp_gpytorch.arch import Dense

from .registry import AffineRecord, TwinContext, finite_twin


def gram_conditional_preactivations(h: torch.Tensor, width: int, weight_var: float, bias_var: float,
                                    ctx: TwinContext) -> torch.Tensor:
    """Exact draw of ``h @ W·σw/sqrt(n) + σb·β`` given ``h`` (``(M, k, n)``), without forming ``W``.

    Given ``h``, the ``width`` output units are i.i.d. ``N(0, G)`` over the k inputs with
    ``G = σw²·h hᵀ/n + σb²`` (reference/verification.md): sample ``Z·L`` with ``G = L Lᵀ``. ``L`` comes
    from an eigendecomposition in float64, so a singular ``G`` (duplicate inputs, dead ReLUs) is fine;
    rows with ``G_ii = 0`` (a zero-variance input) are set exactly to zero.
    Cost ``O(M·k²·n + M·k·width)`` instead of ``O(M·k·n·width)``.
    """
    hd = h.to(torch.float64)
    gram = weight_var * hd @ hd.transpose(-1, -2) / h.shape[-1] + bias_var
    evals, evecs = torch.linalg.eigh(gram)
    root = evecs * evals.clamp_min(0.0).sqrt().unsqueeze(-2)  # (M, k, k), G = root rootᵀ
    # A zero-variance input (zero norm, no bias) must get exactly zero pre-activations, as with literal
    # weights: eigh leaks ~eps into its row, which a step or sign activation would turn into ±1.
    root = torch.where(gram.diagonal(dim1=-2, dim2=-1).unsqueeze(-1) == 0, torch.zeros_like(root), root).to(h.dtype)
    z = ctx.randn(h.shape[0], h.shape[-2], width)  # (M, k, width): k independent normals per unit
    return root @ z


@finite_twin(Dense)
def dense_twin(layer: Dense, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    weight_var, bias_var = ctx.variances(layer, layer.weight_var, layer.bias_var)
    width = layer.width or ctx.width
    fan_in = h.shape[-1]
    if ctx.sampler == "gram" and h.dim() == 3 and not ctx.record_affine:
        return gram_conditional_preactivations(h, width, weight_var, bias_var, ctx)
    m = h.shape[0]
    weight = ctx.randn(m, fan_in, width)
    bias = ctx.randn(m, 1, width)
    lead = h.reshape(m, -1, fan_in)
    out = (lead @ weight * math.sqrt(weight_var / fan_in) + math.sqrt(bias_var) * bias).reshape(
        *h.shape[:-1], width)
    if ctx.record_affine:
        out.requires_grad_(True)
        ctx.records.append(AffineRecord(h, out, weight_var, bias_var, fan_in))
    return out

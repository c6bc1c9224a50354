"""Finite twin of convolution (literal filters shared over positions), and the spatial layout the pooling
twins share.

Features are ``h`` of shape ``(M, k, *spatial, C)`` (channels last). The raw input arrives flat
``(M, k, C·H·W)`` (channels first, as the kernel's ``input_shape=(C, H, W)``) and the first structured
twin reshapes it. A convolution draws one literal filter bank per network, ``ω ~ N(0, 1)`` of shape
``(C·k, width)`` scaled by ``σw/√(C·k)``, shared by every output position, plus a bias ``σb·β`` per
channel; it is computed as a grouped ``conv{1,2,3}d`` over the M networks, or — when the empirical NTK
needs the patches (``ctx.record_affine``) — as ``patches @ ω`` with an :class:`AffineRecord` holding the
patches ``(M, k, *out, C·k)`` and the outputs ``(M, k, *out, width)``.

Padding follows the neural-tangents conventions, implemented here independently of the kernel rule.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from nngp_gpytorch.arch.conv import Conv

from .registry import AffineRecord, TwinContext, finite_twin


def structured(h: torch.Tensor, ctx: TwinContext, spatial_ndim_hint: int | None = None) -> torch.Tensor:
    """``h`` as ``(M, k, *spatial, C)``: reshapes the flat raw input ``(M, k, C·H·W)`` with ``ctx.input_shape``."""
    shape = getattr(ctx, "input_shape", None)
    if h.dim() == 3 and shape is not None and len(shape) >= 2 and h.shape[-1] == math.prod(shape):
        m, k = h.shape[:2]
        return torch.movedim(h.reshape(m, k, *shape), 2, -1)
    if h.dim() < 4:
        raise ValueError("a spatial twin received flat features; give input_shape=(C, H, W) to the ensemble")
    return h


def padding_amounts(n: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    span = dilation * (kernel - 1) + 1
    if padding == "valid":
        return (n - span) // stride + 1, 0, 0
    out = math.ceil(n / stride)
    total = max((out - 1) * stride + span - n, 0)
    return out, total // 2, total - total // 2


def pad_channels_first(x: torch.Tensor, pads: list[tuple[int, int]], circular: bool) -> torch.Tensor:
    """Pad the trailing spatial axes of a channels-first tensor ``(N, C, *spatial)``."""
    flat = []
    for lo, hi in reversed(pads):
        flat += [lo, hi]
    if not any(flat):
        return x
    if circular:
        # F.pad(circular) needs pad <= size; wrap by indexing instead (any pad size)
        for axis, (lo, hi) in enumerate(pads):
            dim = 2 + axis
            n = x.shape[dim]
            idx = torch.arange(-lo, n + hi, device=x.device) % n
            x = x.index_select(dim, idx)
        return x
    return F.pad(x, flat)


@finite_twin(Conv)
def conv_twin(layer: Conv, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    h = structured(h, ctx)
    m, k = h.shape[:2]
    spatial, channels = tuple(h.shape[2:-1]), h.shape[-1]
    nd = len(spatial)
    kernel, stride, dilation, out_shape = layer.geometry(spatial)
    weight_var, bias_var = ctx.variances(layer, layer.weight_var, layer.bias_var)
    width = layer.width or ctx.width
    taps = math.prod(kernel)
    fan_in = channels * taps
    geo = [padding_amounts(n, kk, s, d, layer.padding)
           for n, kk, s, d in zip(spatial, kernel, stride, dilation, strict=True)]
    pads = [(lo, hi) for _, lo, hi in geo]
    scale = math.sqrt(weight_var / fan_in)
    bias = ctx.randn(m, 1, width) * math.sqrt(bias_var)  # (M, 1, width)
    x = torch.movedim(h, -1, 2)  # (M, k, C, *spatial)
    if ctx.sampler == "gram" and not ctx.record_affine:
        return _gram_conv(x, kernel, stride, dilation, pads, out_shape, layer.padding, weight_var, bias_var,
                          width, ctx)
    if not ctx.record_affine:
        weight = ctx.randn(m * width, channels, *kernel)
        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        xin = x.transpose(0, 1).reshape(k, m * channels, *spatial)
        xin = pad_channels_first(xin, pads, layer.padding == "circular")
        y = conv(xin, weight, stride=stride, dilation=dilation, groups=m)  # (k, M·width, *out)
        y = y.reshape(k, m, width, *out_shape).transpose(0, 1)  # (M, k, width, *out)
        y = torch.movedim(y, 2, -1) * scale
        return y + bias.reshape(m, *([1] * (nd + 1)), width)
    # literal patches (needed for the empirical NTK): patches[..., β, c] = x_pad[c, s·o + d·β]
    xp = pad_channels_first(x.reshape(m * k, channels, *spatial), pads, layer.padding == "circular")
    pieces = []
    for beta in itertools.product(*(range(kk) for kk in kernel)):
        index = [slice(None), slice(None)]
        for i in range(nd):
            start = dilation[i] * beta[i]
            index.append(slice(start, start + stride[i] * (out_shape[i] - 1) + 1, stride[i]))
        pieces.append(xp[tuple(index)])  # (M·k, C, *out)
    patches = torch.stack(pieces, dim=1).reshape(m, k, taps * channels, *out_shape)
    patches = torch.movedim(patches, 2, -1)  # (M, k, *out, C·taps)
    weight = ctx.randn(m, fan_in, width)
    y = (patches.reshape(m, -1, fan_in) @ weight * scale + bias).reshape(m, k, *out_shape, width)
    y.requires_grad_(True)
    ctx.records.append(AffineRecord(patches, y, weight_var, bias_var, fan_in))
    return y


def _gram_conv(x, kernel, stride, dilation, pads, out_shape, padding, weight_var, bias_var, width, ctx):
    """Exact Gram-conditional draw of a convolution's outputs, without forming the filters.

    Given the inputs, each output channel is an independent Gaussian vector over (input, output position)
    with covariance ``G[(i,o),(j,o')] = σb² + σw²/(C·k)·Σ_β Σ_c x_pad[i, c, s·o + d·β]·x_pad[j, c, s·o' + d·β]``:
    the Gram ``F`` of the padded features over (input, position) pairs is formed once and tap-summed.
    """
    m, k, channels = x.shape[:3]
    nd = len(kernel)
    xp = pad_channels_first(x.reshape(m * k, channels, *x.shape[3:]), pads, padding == "circular")
    padded = tuple(xp.shape[2:])
    xf = xp.reshape(m, k, channels, -1).transpose(-1, -2).reshape(m, -1, channels).to(torch.float64)
    gram = (xf @ xf.transpose(-1, -2)).reshape(m, k, *padded, k, *padded)  # (M, k, *pad, k, *pad)
    total = 0.0
    for beta in itertools.product(*(range(kk) for kk in kernel)):
        index = [slice(None), slice(None)]
        for i in range(nd):
            start = dilation[i] * beta[i]
            index.append(slice(start, start + stride[i] * (out_shape[i] - 1) + 1, stride[i]))
        index = index + index[1:]
        total = total + gram[tuple(index)]
    q = k * math.prod(out_shape)
    cov = weight_var / (channels * math.prod(kernel)) * total.reshape(m, q, q) + bias_var
    evals, evecs = torch.linalg.eigh(cov)
    root = (evecs * evals.clamp_min(0.0).sqrt().unsqueeze(-2)).to(x.dtype)
    z = ctx.randn(m, q, width)
    return (root @ z).reshape(m, k, *out_shape, width)

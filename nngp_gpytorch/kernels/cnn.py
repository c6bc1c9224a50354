"""Convolutional kernels and memory tiling over pairs of inputs.

:class:`CNNKernel` / :class:`CNNNTKKernel`: ``depth`` convolutions with nonlinearities, then a global
average pooling (``readout="gap"``, needs the full spatial covariance: memory ``∝ P²`` per pair of
inputs) or a Flatten readout (``readout="flatten"``, same-position entries only: ``∝ P``), then a dense
readout. Inputs are flattened images ``(n, C·H·W)`` with ``input_shape=(C, H, W)``.

:class:`PairTiling` bounds peak memory: with ``max_memory`` (bytes) the kernel matrix is computed in tiles
of ``b1 × b2`` input pairs so that the largest intermediate (``~16`` float tensors of ``b1·b2·P²`` entries
in the full layout) fits; values are identical to the untiled evaluation (each entry depends only on its
own pair). Tiling bounds memory of evaluations without gradients (predictions); under autograd every
tile's graph is kept for the backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..algebra.positional import wants_full_positions
from ..arch import Activation, Dense, ReLU, Serial
from ..arch.spatial import Conv, Flatten, GlobalAvgPool
from .nngp import NNGPKernel, NTKKernel

#: float tensors of one tile's size alive at the peak of a layer (K, Θ, correlation, duals, temporaries)
LIVE_TENSORS = 16
#: default tile budget ("auto"): on a CPU 64 MiB, which bounds memory and is 2–4× faster than one big tile
#: (cache-friendly; bench_conv.py); on an accelerator 2 GiB (small tiles are many small kernel launches: on an
#: H100, 64 MiB tiles took 4.2 s for a 256×256 GAP Gram, 1 GiB 0.86 s, 2 GiB 0.18 s; bench_gpu.py conv).
DEFAULT_MAX_MEMORY = "auto"
CPU_MAX_MEMORY = 64 * 2**20
GPU_MAX_MEMORY = 2 * 2**30


def cnn(depth: int = 3, activation: Activation | None = None, kernel_size: int | Sequence[int] = 3,
        padding: str = "same", stride: int | Sequence[int] = 1, readout: str = "gap") -> Serial:
    """``Serial(Conv, φ, ..., Conv, φ, GlobalAvgPool() | Flatten(), Dense())`` with ``depth`` convolutions."""
    if int(depth) != depth or depth < 1:
        raise ValueError(f"cnn depth must be a positive integer, got {depth}")
    if readout not in ("gap", "flatten"):
        raise ValueError(f"readout must be 'gap' (global average pooling) or 'flatten', got {readout!r}")
    activation = activation or ReLU()
    ks = tuple(kernel_size) if not isinstance(kernel_size, int) else kernel_size
    st = tuple(stride) if not isinstance(stride, int) else stride
    layers = []
    for _ in range(int(depth)):
        layers += [Conv(kernel_size=ks, padding=padding, stride=st), activation]
    layers += [GlobalAvgPool() if readout == "gap" else Flatten(), Dense()]
    return Serial(*layers)


class PairTiling:
    """Mixin for :class:`~nngp_gpytorch.kernels.base.InfiniteWidthKernel`: evaluate in tiles of input pairs
    so that one tile's intermediates stay within ``max_memory`` bytes (set ``self.max_memory``)."""

    max_memory: int | str | None = None

    def entries_per_pair(self) -> int:
        """Covariance entries per input pair at the widest layer: ``P²`` (full spatial), ``P`` (same-position)."""
        shape = getattr(self, "input_shape", None)
        if not shape or len(shape) < 2:
            return 1
        p = math.prod(shape[1:])
        return p * p if wants_full_positions(self.architecture) else p

    def tile_budget(self) -> int:
        """Bytes per tile: ``max_memory``, or for ``"auto"`` 64 MiB on a CPU and 2 GiB on an accelerator (by the
        device of the kernel's parameters)."""
        if self.max_memory != "auto":
            return int(self.max_memory)
        param = next(self.parameters(), None)
        on_cpu = param is None or param.device.type == "cpu"
        return CPU_MAX_MEMORY if on_cpu else GPU_MAX_MEMORY

    def tile_sizes(self, n1: int, n2: int, dtype: torch.dtype) -> tuple[int, int]:
        """``(b1, b2)``: rows and columns per tile under ``max_memory`` (at least one pair)."""
        itemsize = torch.finfo(dtype).bits // 8
        pairs = max(1, int(self.tile_budget() // (LIVE_TENSORS * itemsize * self.entries_per_pair())))
        b1 = max(1, min(n1, math.isqrt(pairs)))
        b2 = max(1, min(n2, pairs // b1))
        return b1, b2

    def _evaluate(self, x1, x2, diag: bool, with_ntk: bool):
        if self.max_memory is None:
            return super()._evaluate(x1, x2, diag, with_ntk)
        n1, n2 = x1.shape[-2], x2.shape[-2]
        if diag:
            b, _ = self.tile_sizes(n1, 1, x1.dtype)
            b = max(1, min(n1, b * b))
            parts = [super(PairTiling, self)._evaluate(x1[..., i:i + b, :], x2[..., i:i + b, :], True, with_ntk)
                     for i in range(0, n1, b)]
            k = torch.cat([p[0] for p in parts], dim=-1)
            return k, (torch.cat([p[1] for p in parts], dim=-1) if with_ntk else None)
        b1, b2 = self.tile_sizes(n1, n2, x1.dtype)
        if b1 >= n1 and b2 >= n2:
            return super()._evaluate(x1, x2, diag, with_ntk)
        rows_k, rows_t = [], []
        for i in range(0, n1, b1):
            tiles = [super(PairTiling, self)._evaluate(x1[..., i:i + b1, :], x2[..., j:j + b2, :], False, with_ntk)
                     for j in range(0, n2, b2)]
            rows_k.append(torch.cat([t[0] for t in tiles], dim=-1))
            if with_ntk:
                rows_t.append(torch.cat([t[1] for t in tiles], dim=-1))
        return torch.cat(rows_k, dim=-2), (torch.cat(rows_t, dim=-2) if with_ntk else None)


def validate_memory(max_memory) -> int | str | None:
    if isinstance(max_memory, str) and max_memory != "auto":
        raise ValueError(f"max_memory must be a number of bytes, 'auto' or None, got {max_memory!r}")
    if max_memory is None or max_memory == "auto":
        return max_memory
    if not max_memory > 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
    return int(max_memory)


class _CNNArchitecture:
    """Builds :func:`cnn` from the constructor arguments; shared by :class:`CNNKernel` and its NTK twin."""

    def __init__(self, input_shape: Sequence[int], depth: int = 3, activation: Activation | None = None,
                 kernel_size: int | Sequence[int] = 3, padding: str = "same", stride: int | Sequence[int] = 1,
                 readout: str = "gap", max_memory: int | str | None = DEFAULT_MAX_MEMORY, **kwargs):
        super().__init__(cnn(depth, activation, kernel_size, padding, stride, readout), input_shape=input_shape,
                         **kwargs)
        self.depth, self.readout = depth, readout
        self.max_memory = validate_memory(max_memory)


class CNNKernel(_CNNArchitecture, PairTiling, NNGPKernel):
    """NNGP of a convolutional network on images (Novak et al. 2019; Garriga-Alonso et al. 2019).

    ``Serial(Conv(k), φ) × depth`` then ``GlobalAvgPool()`` (default; translation-invariant readout) or
    ``Flatten()`` (``readout="flatten"``), then ``Dense()``.

    Args:
        input_shape: ``(C, H, W)`` (or ``(C, L)``, ``(C, D, H, W)``); inputs are ``(..., n, C·H·W)``.
        depth, activation, kernel_size, padding, stride, readout: the architecture (see :func:`cnn`).
        max_memory: bytes per tile of input pairs (default ``"auto"``: 64 MiB on a CPU, 2 GiB on a GPU; None:
            one tile); see :class:`PairTiling`.
        **kwargs: as :class:`~nngp_gpytorch.kernels.nngp.NNGPKernel` (weight_var, bias_var, per_layer,
            priors, ...).
    """


class CNNNTKKernel(_CNNArchitecture, PairTiling, NTKKernel):
    """NTK of the same network as :class:`CNNKernel` (NTK parameterization; same arguments)."""

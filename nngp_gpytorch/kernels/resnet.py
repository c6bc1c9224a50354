"""Residual network kernels: skip connections ``h ← h + W·φ(h) + b`` (optionally layer-normalized)."""

from __future__ import annotations

from collections.abc import Sequence

from ..arch import Activation, Dense, ReLU, Serial
from ..arch.conv import Conv
from ..arch.layernorm import LayerNorm
from ..arch.pool import GlobalAvgPool
from ..arch.structure import Residual
from .nngp import NNGPKernel, NTKKernel
from .tiling import DEFAULT_MAX_MEMORY


def resnet(depth: int = 2, activation: Activation | None = None, layer_norm: bool = False, conv: bool = False,
           kernel_size: int | Sequence[int] = 3) -> Serial:
    """``Serial(A, [Residual(Serial(φ, A)), LayerNorm()?] × depth, φ, [GlobalAvgPool()], Dense())``.

    ``A`` is ``Dense()`` (flat inputs) or ``Conv(kernel_size, padding="same")`` (``conv=True``, images).
    Kernel per block: ``K ← K + σw²·V_φ(K) + σb²`` (then the correlation if ``layer_norm``).
    """
    if int(depth) != depth or depth < 0:
        raise ValueError(f"resnet depth must be a non-negative integer, got {depth}")
    activation = activation or ReLU()

    def affine():
        return Conv(kernel_size=kernel_size, padding="same") if conv else Dense()

    layers = [affine()]
    for _ in range(int(depth)):
        layers.append(Residual(Serial(activation, affine())))
        if layer_norm:
            layers.append(LayerNorm())
    layers.append(activation)
    if conv:
        layers.append(GlobalAvgPool())
    layers.append(Dense())
    return Serial(*layers)


class _ResNetArchitecture:
    """Builds :func:`resnet` from the constructor arguments; shared by :class:`ResNetKernel` and its NTK twin."""

    def __init__(self, depth: int = 2, activation: Activation | None = None, layer_norm: bool = False,
                 input_shape: Sequence[int] | None = None, kernel_size: int | Sequence[int] = 3,
                 max_memory: int | str | None = DEFAULT_MAX_MEMORY, **kwargs):
        conv = input_shape is not None and len(tuple(input_shape)) >= 2
        super().__init__(resnet(depth, activation, layer_norm, conv, kernel_size), input_shape=input_shape,
                         max_memory=max_memory, **kwargs)
        self.depth, self.layer_norm = depth, layer_norm


class ResNetKernel(_ResNetArchitecture, NNGPKernel):
    """NNGP of a residual network (see :func:`resnet`); with ``input_shape=(C, H, W)`` a convolutional
    ResNet with a global-average-pooling readout, else a fully connected one.

    Args:
        depth: number of residual blocks; activation: φ (ReLU); layer_norm: LayerNorm after each block;
        kernel_size: of the convolutions (images only); max_memory: see
        :mod:`nngp_gpytorch.kernels.tiling`; **kwargs: as :class:`NNGPKernel`.
    """


class ResNetNTKKernel(_ResNetArchitecture, NTKKernel):
    """NTK of the same network as :class:`ResNetKernel` (same arguments)."""

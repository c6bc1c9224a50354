"""Convolutional kernels (deprecated named classes; ``NNGPKernel(A.cnn(...))`` is the API).

:class:`CNNKernel` / :class:`CNNNTKKernel`: ``depth`` convolutions with nonlinearities, then a global
average pooling (``readout="gap"``, needs the full spatial covariance: memory ``∝ P²`` per pair of
inputs) or a Flatten readout (``readout="flatten"``, same-position entries only: ``∝ P``), then a dense
readout. Inputs are flattened images ``(n, C·H·W)`` with ``input_shape=(C, H, W)``.

Every kernel bounds its memory with ``max_memory`` (:mod:`nngp_gpytorch.kernels.tiling`); a conv stack with a
GAP or Flatten readout runs on the fast positional engine (:mod:`nngp_gpytorch.algebra.conv_stack`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..arch import Activation, Dense, ReLU, Serial
from ..arch.conv import Conv
from ..arch.pool import Flatten, GlobalAvgPool
from .nngp import NNGPKernel, NTKKernel
from .tiling import DEFAULT_MAX_MEMORY


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


class _CNNArchitecture:
    """Builds :func:`cnn` from the constructor arguments; shared by :class:`CNNKernel` and its NTK twin."""

    def __init__(self, input_shape: Sequence[int], depth: int = 3, activation: Activation | None = None,
                 kernel_size: int | Sequence[int] = 3, padding: str = "same", stride: int | Sequence[int] = 1,
                 readout: str = "gap", max_memory: int | str | None = DEFAULT_MAX_MEMORY, **kwargs):
        super().__init__(cnn(depth, activation, kernel_size, padding, stride, readout), input_shape=input_shape,
                         max_memory=max_memory, **kwargs)
        self.depth, self.readout = depth, readout


class CNNKernel(_CNNArchitecture, NNGPKernel):
    """NNGP of a convolutional network on images (Novak et al. 2019; Garriga-Alonso et al. 2019).

    ``Serial(Conv(k), φ) × depth`` then ``GlobalAvgPool()`` (default; translation-invariant readout) or
    ``Flatten()`` (``readout="flatten"``), then ``Dense()``.

    Args:
        input_shape: ``(C, H, W)`` (or ``(C, L)``, ``(C, D, H, W)``); inputs are ``(..., n, C·H·W)``.
        depth, activation, kernel_size, padding, stride, readout: the architecture (see :func:`cnn`).
        max_memory: bytes per tile of input pairs (default ``"auto"``: 64 MiB on a CPU, 2 GiB on a GPU; None:
            one tile); see :mod:`nngp_gpytorch.kernels.tiling`.
        **kwargs: as :class:`~nngp_gpytorch.kernels.nngp.NNGPKernel` (weight_var, bias_var, per_layer,
            priors, ...).
    """


class CNNNTKKernel(_CNNArchitecture, NTKKernel):
    """NTK of the same network as :class:`CNNKernel` (NTK parameterization; same arguments)."""

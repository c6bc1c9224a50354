"""Deprecated named kernels of the reference transformer (one release): ``NNGPKernel(A.transformer(depth, ...),
input_shape=(T, D))`` and ``NTKKernel(...)`` replace them."""

from __future__ import annotations

from collections.abc import Sequence

from ..arch import transformer
from .nngp import NNGPKernel, NTKKernel, warn_deprecated


def _check_shape(name: str, input_shape) -> None:
    if input_shape is None or len(tuple(input_shape)) != 2:
        raise ValueError(f"{name} needs input_shape=(T, D) (tokens × features per token; inputs flattened "
                         f"token-major to T·D features), got {input_shape}")


class TransformerKernel(NNGPKernel):
    """Deprecated: ``NNGPKernel(A.transformer(depth, temperature, causal, masked, readout), input_shape=(T, D))``
    (see :func:`nngp_gpytorch.arch.transformer` for the block and its kernel)."""

    def __init__(self, depth: int = 1, input_shape: Sequence[int] | None = None, temperature: float = 1.0,
                 causal: bool = False, masked: bool = False, readout: str = "mean", **kwargs):
        warn_deprecated("TransformerKernel", "NNGPKernel(arch.transformer(depth, ...), input_shape=(T, D))")
        _check_shape("TransformerKernel", input_shape)
        super().__init__(transformer(depth, temperature, causal, masked, readout), input_shape=input_shape, **kwargs)
        self.depth = depth


class TransformerNTKKernel(NTKKernel):
    """Deprecated: ``NTKKernel(A.transformer(...), input_shape=(T, D))``."""

    def __init__(self, depth: int = 1, input_shape: Sequence[int] | None = None, temperature: float = 1.0,
                 causal: bool = False, masked: bool = False, readout: str = "mean", **kwargs):
        warn_deprecated("TransformerNTKKernel", "NTKKernel(arch.transformer(depth, ...), input_shape=(T, D))")
        _check_shape("TransformerNTKKernel", input_shape)
        super().__init__(transformer(depth, temperature, causal, masked, readout), input_shape=input_shape, **kwargs)
        self.depth = depth

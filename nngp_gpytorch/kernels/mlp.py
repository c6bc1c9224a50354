"""Deprecated named kernels of multi-layer perceptrons (one release): ``NNGPKernel(A.mlp(depth, φ))`` and
``NTKKernel(A.mlp(depth, φ))`` replace them. The ReLU fast path they had is now the fusion pass of the
algebra (:mod:`nngp_gpytorch.algebra.fusion`), which every description with ``Dense → ReLU → Dense`` runs gets.
"""

from __future__ import annotations

from ..arch import Activation, mlp
from .nngp import NNGPKernel, NTKKernel, warn_deprecated


class MLPKernel(NNGPKernel):
    """Deprecated: ``NNGPKernel(A.mlp(depth, activation), ...)``, the NNGP of
    ``Serial(Dense(), φ, Dense(), φ, ..., Dense())`` with ``depth`` hidden layers (ReLU by default)."""

    def __init__(self, depth: int = 1, activation: Activation | None = None, **kwargs):
        warn_deprecated("MLPKernel", "NNGPKernel(arch.mlp(depth, activation))")
        super().__init__(mlp(depth, activation), **kwargs)
        self.depth = depth


class MLPNTKKernel(NTKKernel):
    """Deprecated: ``NTKKernel(A.mlp(depth, activation), ...)``."""

    def __init__(self, depth: int = 1, activation: Activation | None = None, **kwargs):
        warn_deprecated("MLPNTKKernel", "NTKKernel(arch.mlp(depth, activation))")
        super().__init__(mlp(depth, activation), **kwargs)
        self.depth = depth

"""Named convenience kernels for multi-layer perceptrons."""

from __future__ import annotations

from ..arch import Activation, ReLU, mlp
from .nngp import NNGPKernel, NTKKernel


class MLPKernel(NNGPKernel):
    """NNGP of an MLP with ``depth`` hidden layers: ``Serial(Dense(), φ, Dense(), φ, ..., Dense())``.

    ``depth = 0`` is the linear (Bayesian linear regression) kernel ``σw²·x·x'/d + σb²``.
    """

    def __init__(self, depth: int = 1, activation: Activation | None = None, **kwargs):
        super().__init__(mlp(depth, activation or ReLU()), **kwargs)
        self.depth = depth


class MLPNTKKernel(NTKKernel):
    """NTK of the same MLP as :class:`MLPKernel`."""

    def __init__(self, depth: int = 1, activation: Activation | None = None, **kwargs):
        super().__init__(mlp(depth, activation or ReLU()), **kwargs)
        self.depth = depth

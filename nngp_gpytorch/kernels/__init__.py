"""GPyTorch kernels: :class:`NNGPKernel` / :class:`NTKKernel` of any architecture, and named ones."""

from .base import InfiniteWidthKernel
from .mlp import MLPKernel, MLPNTKKernel
from .nngp import NNGPKernel, NTKKernel

__all__ = ["InfiniteWidthKernel", "MLPKernel", "MLPNTKKernel", "NNGPKernel", "NTKKernel"]

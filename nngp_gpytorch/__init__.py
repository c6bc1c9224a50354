"""nngp_gpytorch: exact infinite-width neural network Gaussian process (NNGP) and neural tangent (NTK)
kernels of any architecture, as GPyTorch kernels.

>>> from nngp_gpytorch import NNGPKernel, arch as A
>>> kernel = NNGPKernel(A.Serial(A.Dense(), A.ReLU(), A.Dense()))
"""

from . import algebra, arch, duals, sequences, tensor_programs
from .kernels import (
    BatchNormMLPKernel,
    CNNKernel,
    CNNNTKKernel,
    GraphConvKernel,
    GraphConvNTKKernel,
    GRUKernel,
    InfiniteWidthKernel,
    LSTMKernel,
    MLPKernel,
    MLPNTKKernel,
    NNGPKernel,
    NTKKernel,
    ResNetKernel,
    ResNetNTKKernel,
    RNNKernel,
    RNNNTKKernel,
    TransformerKernel,
    TransformerNTKKernel,
)
from .tensor_programs import Program, TensorProgramKernel
from .tensor_programs.gated_ntk import GRUNTKKernel, LSTMNTKKernel

__version__ = "0.1.0"

__all__ = [
    "algebra", "arch", "BatchNormMLPKernel", "CNNKernel", "CNNNTKKernel", "duals", "GraphConvKernel",
    "GraphConvNTKKernel", "GRUKernel", "GRUNTKKernel", "InfiniteWidthKernel",
    "LSTMKernel", "LSTMNTKKernel", "MLPKernel", "MLPNTKKernel",
    "NNGPKernel", "NTKKernel", "Program", "ResNetKernel", "ResNetNTKKernel", "RNNKernel", "RNNNTKKernel",
    "sequences", "tensor_programs", "TensorProgramKernel", "TransformerKernel", "TransformerNTKKernel",
]

"""nngp_gpytorch: exact infinite-width neural network Gaussian process (NNGP) and neural tangent (NTK)
kernels of any architecture, as GPyTorch kernels.

>>> from nngp_gpytorch import NNGPKernel, NTKKernel, arch as A
>>> kernel = NNGPKernel(A.Serial(A.Dense(), A.ReLU(), A.Dense()))
>>> theta = NTKKernel(A.cnn(depth=2), input_shape=(1, 8, 8))

``NNGPKernel(description)`` / ``NTKKernel(description)`` take any architecture tree (named families are
builders: ``A.mlp``, ``A.cnn``, ``A.resnet``, ``A.gcn``, ``A.transformer``, ``A.rnn``, ``A.gru``, ``A.lstm``,
``A.batchnorm_mlp``) or a tensor :class:`Program`. The named kernel classes are deprecated aliases.
"""

from . import (
    algebra,
    arch,
    duals,
    registrations,  # noqa: F401  (wires Programs and gated-cell NTKs into the front)
    sequences,
    tensor_programs,
)
from .kernels import (
    BatchNormMLPKernel,
    CNNKernel,
    CNNNTKKernel,
    GramTooLargeError,
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
from .tensor_programs import Program, TensorProgramKernel, TensorProgramNTKKernel
from .tensor_programs.gated_ntk import GRUNTKKernel, LSTMNTKKernel

__version__ = "0.1.0"

__all__ = [
    "algebra", "arch", "BatchNormMLPKernel", "CNNKernel", "CNNNTKKernel", "duals", "GraphConvKernel",
    "GraphConvNTKKernel", "GramTooLargeError", "GRUKernel", "GRUNTKKernel", "InfiniteWidthKernel",
    "LSTMKernel", "LSTMNTKKernel", "MLPKernel", "MLPNTKKernel",
    "NNGPKernel", "NTKKernel", "Program", "ResNetKernel", "ResNetNTKKernel", "RNNKernel", "RNNNTKKernel",
    "sequences", "tensor_programs", "TensorProgramKernel", "TensorProgramNTKKernel", "TransformerKernel",
    "TransformerNTKKernel",
]

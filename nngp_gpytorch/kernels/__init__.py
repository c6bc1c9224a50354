"""GPyTorch kernels: :class:`NNGPKernel` / :class:`NTKKernel` of any description (architecture tree or tensor
program). The named classes (``MLPKernel``, ``CNNKernel``, ``GRUKernel``, ...) are deprecated aliases kept for
one release: use ``NNGPKernel(arch.mlp(...))``, ``NNGPKernel(arch.cnn(...), input_shape=...)``, ..."""

from .base import InfiniteWidthKernel
from .batchnorm import BatchNormKernel, BatchNormMLPKernel
from .cnn import CNNKernel, CNNNTKKernel, cnn
from .graph import GraphConvKernel, GraphConvNTKKernel, GraphNNGPKernel, GraphNTKKernel, gcn
from .mlp import MLPKernel, MLPNTKKernel
from .nngp import NNGPKernel, NTKKernel, register_description, register_ntk_builder
from .recurrent import GRUKernel, LSTMKernel, RNNKernel, RNNNTKKernel
from .resnet import ResNetKernel, ResNetNTKKernel, resnet
from .tiling import GramTooLargeError
from .transformer import TransformerKernel, TransformerNTKKernel

__all__ = [
    "BatchNormKernel", "BatchNormMLPKernel", "cnn", "CNNKernel", "CNNNTKKernel", "gcn", "GraphConvKernel",
    "GraphConvNTKKernel", "GraphNNGPKernel", "GraphNTKKernel", "GramTooLargeError", "GRUKernel",
    "InfiniteWidthKernel", "LSTMKernel",
    "MLPKernel", "MLPNTKKernel", "NNGPKernel", "NTKKernel", "register_description",
    "register_ntk_builder", "resnet", "ResNetKernel", "ResNetNTKKernel", "RNNKernel", "RNNNTKKernel",
    "TransformerKernel", "TransformerNTKKernel",
]

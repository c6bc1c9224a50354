"""GPyTorch kernels: :class:`NNGPKernel` / :class:`NTKKernel` of any architecture, and named ones."""

from .base import InfiniteWidthKernel
from .batchnorm import BatchNormMLPKernel
from .cnn import CNNKernel, CNNNTKKernel, PairTiling, cnn
from .graph import GraphConvKernel, GraphConvNTKKernel, gcn
from .mlp import MLPKernel, MLPNTKKernel
from .nngp import NNGPKernel, NTKKernel
from .recurrent import GRUKernel, LSTMKernel, RNNKernel, RNNNTKKernel
from .resnet import ResNetKernel, ResNetNTKKernel, resnet
from .transformer import TransformerKernel, TransformerNTKKernel

__all__ = [
    "BatchNormMLPKernel", "cnn", "CNNKernel", "CNNNTKKernel", "gcn", "GraphConvKernel", "GraphConvNTKKernel",
    "GRUKernel", "InfiniteWidthKernel", "LSTMKernel", "MLPKernel", "MLPNTKKernel", "NNGPKernel", "NTKKernel",
    "PairTiling", "resnet", "ResNetKernel", "ResNetNTKKernel", "RNNKernel", "RNNNTKKernel", "TransformerKernel",
    "TransformerNTKKernel",
]

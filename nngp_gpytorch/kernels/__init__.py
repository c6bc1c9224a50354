"""GPyTorch kernels: :class:`NNGPKernel` / :class:`NTKKernel` of any architecture, and named ones."""

from .base import InfiniteWidthKernel
from .mlp import MLPKernel, MLPNTKKernel
from .nngp import NNGPKernel, NTKKernel

__all__ = ["InfiniteWidthKernel", "MLPKernel", "MLPNTKKernel", "NNGPKernel", "NTKKernel"]
from .batchnorm import BatchNormMLPKernel  # noqa: E402

__all__ += ["BatchNormMLPKernel"]
from .cnn import CNNKernel, CNNNTKKernel, PairTiling, cnn  # noqa: E402
from .graph import GraphConvKernel, GraphConvNTKKernel, gcn  # noqa: E402
from .resnet import ResNetKernel, ResNetNTKKernel, resnet  # noqa: E402

__all__ += ["CNNKernel", "CNNNTKKernel", "GraphConvKernel", "GraphConvNTKKernel", "PairTiling", "ResNetKernel",
            "ResNetNTKKernel", "cnn", "gcn", "resnet"]
from .recurrent import GRUKernel, LSTMKernel, RNNKernel, RNNNTKKernel  # noqa: E402

__all__ += ["GRUKernel", "LSTMKernel", "RNNKernel", "RNNNTKKernel"]
from .transformer import TransformerKernel, TransformerNTKKernel  # noqa: E402

__all__ += ["TransformerKernel", "TransformerNTKKernel"]

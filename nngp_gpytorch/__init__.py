"""nngp_gpytorch: exact infinite-width neural network Gaussian process (NNGP) and neural tangent (NTK)
kernels of any architecture, as GPyTorch kernels.

>>> from nngp_gpytorch import NNGPKernel, arch as A
>>> kernel = NNGPKernel(A.Serial(A.Dense(), A.ReLU(), A.Dense()))
"""

from . import algebra, arch, duals
from .kernels import InfiniteWidthKernel, MLPKernel, MLPNTKKernel, NNGPKernel, NTKKernel

__version__ = "0.1.0"

__all__ = [
    "InfiniteWidthKernel", "MLPKernel", "MLPNTKKernel", "NNGPKernel", "NTKKernel", "algebra", "arch", "duals",
]
from .kernels import BatchNormMLPKernel  # noqa: E402

__all__ += ["BatchNormMLPKernel"]
from .kernels import CNNKernel, CNNNTKKernel, GraphConvKernel, GraphConvNTKKernel, ResNetKernel, ResNetNTKKernel  # noqa: E402,I001

__all__ += ["CNNKernel", "CNNNTKKernel", "GraphConvKernel", "GraphConvNTKKernel", "ResNetKernel", "ResNetNTKKernel"]
from . import sequences  # noqa: E402
from .kernels import GRUKernel, LSTMKernel, RNNKernel, RNNNTKKernel  # noqa: E402

__all__ += ["GRUKernel", "LSTMKernel", "RNNKernel", "RNNNTKKernel", "sequences"]
from .kernels import TransformerKernel, TransformerNTKKernel  # noqa: E402

__all__ += ["TransformerKernel", "TransformerNTKKernel"]
from . import tensor_programs  # noqa: E402
from .tensor_programs import Program, TensorProgramKernel  # noqa: E402

__all__ += ["Program", "TensorProgramKernel", "tensor_programs"]

"""The architecture language: frozen layer descriptions composed into networks.

>>> from nngp_gpytorch import arch as A
>>> mlp = A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense())
"""

from .activations import (
    GELU,
    NAMED_ACTIVATIONS,
    Abs,
    Activation,
    Erf,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Sign,
    SiLU,
    Step,
    Tanh,
)
from .base import ArchitectureError, Layer, Serial, Signal, SignalKind, require_gaussian
from .dense import Dense

__all__ = [
    "GELU", "NAMED_ACTIVATIONS", "Abs", "Activation", "ArchitectureError", "Dense", "Erf", "Identity",
    "Layer", "LeakyReLU", "ReLU", "Serial", "SiLU", "Sigmoid", "Sign", "Signal", "SignalKind", "Step",
    "Tanh", "require_gaussian",
]
from .builders import mlp  # noqa: E402

__all__ += ["mlp"]
from .batchnorm import BatchNorm, batchnorm_mlp, homogeneity_degree  # noqa: E402

__all__ += ["BatchNorm", "batchnorm_mlp", "homogeneity_degree"]
from .spatial import AvgPool, Conv, Flatten, GlobalAvgPool  # noqa: E402

__all__ += ["AvgPool", "Conv", "Flatten", "GlobalAvgPool"]
from .graph import GraphConv, normalized_adjacency  # noqa: E402
from .norm import LayerNorm  # noqa: E402
from .structure import Parallel, Residual  # noqa: E402

__all__ += ["GraphConv", "LayerNorm", "Parallel", "Residual", "normalized_adjacency"]
from .recurrent import GRU, LSTM, RNN, RecurrentLayer  # noqa: E402

__all__ += ["GRU", "LSTM", "RNN", "RecurrentLayer"]
from .attention import SelfAttention, SequenceReadout, TokenDense, transformer  # noqa: E402

__all__ += ["SelfAttention", "SequenceReadout", "TokenDense", "transformer"]

"""The architecture language: frozen layer descriptions composed into networks.

>>> from nngp_gpytorch import arch as A
>>> mlp = A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense())
"""

from .activations import (
    GELU,
    NAMED_ACTIVATIONS,
    Abs,
    Activation,
    Composite,
    Erf,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Sign,
    SiLU,
    Step,
    SumOf,
    Tanh,
)
from .attention import SelfAttention, SequenceReadout, TokenDense
from .base import ArchitectureError, Capabilities, Layer, Serial, Signal, SignalKind, capabilities, require_gaussian
from .batchnorm import BatchNorm, homogeneity_degree
from .builders import batchnorm_mlp, cnn, gcn, gru, lstm, mlp, resnet, rnn, transformer
from .conv import Conv
from .dense import Dense
from .dropout import Dropout
from .graph import GraphConv, normalized_adjacency
from .layernorm import LayerNorm
from .pool import AvgPool, Flatten, GlobalAvgPool, MaxPool
from .recurrent import GRU, LSTM, RNN, RecurrentLayer
from .structure import Parallel, Residual

__all__ = [
    "Abs", "Activation", "ArchitectureError", "AvgPool", "BatchNorm", "batchnorm_mlp", "Capabilities",
    "capabilities", "cnn", "Conv", "gcn", "gru", "lstm", "resnet", "rnn", "Dense", "Erf",
    "Flatten", "GELU", "GlobalAvgPool", "GraphConv", "GRU", "homogeneity_degree", "Identity", "Layer", "LayerNorm",
    "LeakyReLU", "LSTM", "mlp", "NAMED_ACTIVATIONS", "normalized_adjacency", "Parallel", "RecurrentLayer", "ReLU",
    "require_gaussian", "Residual", "RNN", "SelfAttention", "SequenceReadout", "Serial", "Sigmoid", "Sign",
    "Signal", "SignalKind", "SiLU", "Step", "Tanh", "TokenDense", "transformer",
    "Composite", "Dropout", "MaxPool", "SumOf",
]

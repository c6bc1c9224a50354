"""Builders of the named architecture families: each returns a plain description (a layer tree).

A named family is a function of its sizes and options, not a kernel class: the kernel of any of them is
``NNGPKernel(A.cnn(...), input_shape=...)`` or ``NTKKernel(...)`` like that of any other description.

================  ==================================================================================
builder           description
================  ==================================================================================
``mlp``           ``Serial(Dense(), φ, ..., Dense(), φ, Dense())``
``cnn``           ``Serial(Conv, φ, ..., Conv, φ, GlobalAvgPool() | Flatten(), Dense())``
``resnet``        ``Serial(A, [Residual(Serial(φ, A)), LayerNorm()?] × depth, φ, [GlobalAvgPool()], Dense())``
``gcn``           ``Serial([GraphConv(Â), φ] × depth, GraphConv(Â))`` (Kipf & Welling 2017)
``transformer``   ``depth`` attention blocks, a sequence readout and a ``Dense()``
``rnn``           ``RNN(φ)``; ``gru``: ``GRU()``; ``lstm``: ``LSTM()`` (one recurrent layer with its readout)
``batchnorm_mlp`` ``Serial(Dense(), BatchNorm(φ), ..., Dense(), BatchNorm(φ), Dense())``
================  ==================================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

from .activations import Activation, Erf, ReLU
from .attention import SelfAttention, SequenceReadout, TokenDense
from .base import ArchitectureError, Layer, Serial
from .batchnorm import BatchNorm
from .conv import Conv
from .dense import Dense
from .graph import GraphConv
from .layernorm import LayerNorm
from .pool import Flatten, GlobalAvgPool
from .recurrent import GRU, LSTM, RNN
from .structure import Residual


def _depth(name: str, depth: int, minimum: int) -> int:
    if int(depth) != depth or depth < minimum:
        kind = "positive" if minimum >= 1 else "non-negative"
        raise ArchitectureError(f"{name} depth must be a {kind} integer, got {depth}")
    return int(depth)


def mlp(depth: int, activation: Activation | None = None) -> Serial:
    """``Serial(Dense(), φ, ..., Dense(), φ, Dense())`` with ``depth`` hidden layers (``depth = 0``: the
    linear kernel ``σw²·x·x'/d + σb²``)."""
    activation = activation or ReLU()
    layers: list[Layer] = []
    for _ in range(_depth("mlp", depth, 0)):
        layers += [Dense(), activation]
    return Serial(*layers, Dense())


def cnn(depth: int = 3, activation: Activation | None = None, kernel_size: int | Sequence[int] = 3,
        padding: str = "same", stride: int | Sequence[int] = 1, readout: str = "gap") -> Serial:
    """``Serial(Conv, φ, ..., Conv, φ, GlobalAvgPool() | Flatten(), Dense())`` with ``depth`` convolutions
    (``readout="gap"``: global average pooling; ``"flatten"``: a dense readout of every position)."""
    if readout not in ("gap", "flatten"):
        raise ArchitectureError(f"readout must be 'gap' (global average pooling) or 'flatten', got {readout!r}")
    activation = activation or ReLU()
    ks = tuple(kernel_size) if not isinstance(kernel_size, int) else kernel_size
    st = tuple(stride) if not isinstance(stride, int) else stride
    layers: list[Layer] = []
    for _ in range(_depth("cnn", depth, 1)):
        layers += [Conv(kernel_size=ks, padding=padding, stride=st), activation]
    layers += [GlobalAvgPool() if readout == "gap" else Flatten(), Dense()]
    return Serial(*layers)


def resnet(depth: int = 2, activation: Activation | None = None, layer_norm: bool = False, conv: bool = False,
           kernel_size: int | Sequence[int] = 3) -> Serial:
    """``Serial(A, [Residual(Serial(φ, A)), LayerNorm()?] × depth, φ, [GlobalAvgPool()], Dense())``.

    ``A`` is ``Dense()`` (flat inputs) or ``Conv(kernel_size, padding="same")`` (``conv=True``, images).
    Kernel per block: ``K ← K + σw²·V_φ(K) + σb²`` (then the correlation if ``layer_norm``).
    """
    activation = activation or ReLU()

    def affine() -> Layer:
        return Conv(kernel_size=kernel_size, padding="same") if conv else Dense()

    layers: list[Layer] = [affine()]
    for _ in range(_depth("resnet", depth, 0)):
        layers.append(Residual(Serial(activation, affine())))
        if layer_norm:
            layers.append(LayerNorm())
    layers.append(activation)
    if conv:
        layers.append(GlobalAvgPool())
    layers.append(Dense())
    return Serial(*layers)


def gcn(adjacency, depth: int = 1, activation: Activation | None = None, normalize: str = "sym",
        self_loops: bool = True) -> Serial:
    """``Serial([GraphConv(Â), φ] × depth, GraphConv(Â))`` over one fixed graph (Kipf & Welling 2017 with
    ``depth = 1``); ``Â`` is the ``normalize``-d adjacency ``(N, N)`` with ``self_loops``. Its kernel is
    transductive: inputs are node indices (see :class:`~nngp_gpytorch.kernels.NNGPKernel`)."""
    activation = activation or ReLU()
    layers: list[Layer] = []
    for _ in range(_depth("gcn", depth, 0)):
        layers += [GraphConv(adjacency, normalize, self_loops), activation]
    layers.append(GraphConv(adjacency, normalize, self_loops))
    return Serial(*layers)


def transformer(depth: int, temperature: float = 1.0, causal: bool = False, masked: bool = False,
                readout: str = "mean") -> Serial:
    """The reference transformer: ``depth`` blocks, then a sequence readout and a ``Dense``.

    Block (reference/kernels.md, "Attention"): ``k = U x``; ``h = LN(k + attention(k))``;
    ``x' = LN(W₂·ReLU(W₁ h + b₁) + b₂ + h)``. Kernel per block: ``Σ ← σu²Σ (+σb²)``;
    ``Σ̂ = (I+Δ)Σ(I+Δ)ᵀ``; ``Σ̂ ← corr(Σ̂)``; ``F = σw²·V_ReLU(σw²Σ̂ + σb²) + σb²``; ``Σ' = corr(F + Σ̂)``.
    Inputs are token sequences: the kernel needs ``input_shape=(T, D)``.
    """
    layers: list[Layer] = []
    for i in range(_depth("transformer", depth, 1)):
        layers += [
            TokenDense(masked=masked and i == 0),
            SelfAttention(temperature=temperature, causal=causal, residual=True, masked=masked),
            LayerNorm(),
            Residual(Serial(TokenDense(), ReLU(), TokenDense())),
            LayerNorm(),
        ]
    return Serial(*layers, SequenceReadout(readout=readout, masked=masked), Dense())


def rnn(activation: Activation | None = None, readout: str = "last", masked: bool = False,
        readout_bias_var: float | None = 0.0) -> RNN:
    """An Elman RNN with its readout (``Erf`` by default). Variance slots: input, hidden, readout (pass
    ``per_layer=True`` to the kernel for one (σw², σb²) each)."""
    return RNN(activation=activation or Erf(), readout=readout, masked=masked, readout_bias_var=readout_bias_var)


def gru(readout: str = "last", masked: bool = False, readout_bias_var: float | None = 0.0, samples: int = 2**13,
        qmc_seed: int = 0, **fields) -> GRU:
    """The erf-gated GRU (Yang 2019) with its readout; ``samples``/``qmc_seed``: the QMC rule of the gates;
    ``fields``: any other :class:`GRU` field, e.g. the per-gate ``gate_input_var=(z, r, h)``, ``gate_bias_mean``."""
    return GRU(readout=readout, masked=masked, readout_bias_var=readout_bias_var, samples=samples, qmc_seed=qmc_seed,
               **fields)


def lstm(readout: str = "last", masked: bool = False, readout_bias_var: float | None = 0.0, samples: int = 2**13,
         qmc_seed: int = 0, **fields) -> LSTM:
    """The sigmoid/tanh LSTM with its readout; ``samples``/``qmc_seed``: the QMC rule of the limit; ``fields``: any
    other :class:`LSTM` field, e.g. the per-gate ``gate_hidden_var=(i, f, o, g)``, ``gate_bias_mean``."""
    return LSTM(readout=readout, masked=masked, readout_bias_var=readout_bias_var, samples=samples,
                qmc_seed=qmc_seed, **fields)


def batchnorm_mlp(depth: int, activation: Activation | None = None) -> Serial:
    """``Serial(Dense(), BatchNorm(φ), ..., Dense(), BatchNorm(φ), Dense())`` with ``depth`` hidden layers."""
    activation = activation or ReLU()
    layers: list[Layer] = []
    for _ in range(_depth("batchnorm_mlp", depth, 1)):
        layers += [Dense(), BatchNorm(activation)]
    return Serial(*layers, Dense())


__all__ = ["batchnorm_mlp", "cnn", "gcn", "gru", "lstm", "mlp", "resnet", "rnn", "transformer"]

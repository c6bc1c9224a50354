"""Deprecated named kernels of recurrent networks (one release): ``NNGPKernel(A.rnn(...), input_shape=(T, D),
per_layer=True)`` and ``NTKKernel(...)`` replace them (``A.gru()``, ``A.lstm()`` likewise; the gated cells'
NTKs are their tensor programs' NTKs, :mod:`nngp_gpytorch.tensor_programs.gated_ntk`).

Inputs are sequences flattened to ``(..., n, T·D)`` with ``input_shape=(T, D)``; with ``masked=True`` the
last feature of each token is a prefix mask (variable lengths, :mod:`nngp_gpytorch.sequences`).
Hyperparameters (``per_layer=True``, the default here): ``weight_var[..., 0:3] = (σu², σw², σv²)``
(input, hidden, readout) and ``bias_var[..., 0:3] = (σb², unused, σvb²)``; the readout bias is fixed to
0 unless ``readout_bias_var=None``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..arch import Activation, gru, lstm, rnn
from .nngp import NNGPKernel, NTKKernel, warn_deprecated


class RNNKernel(NNGPKernel):
    """Deprecated: ``NNGPKernel(A.rnn(activation, readout, masked, readout_bias_var), input_shape=(T, D),
    per_layer=True)``, the NNGP of an Elman RNN (reference kernels.md "Simple RNN")."""

    def __init__(self, input_shape: Sequence[int], activation: Activation | None = None, readout: str = "last",
                 masked: bool = False, readout_bias_var: float | None = 0.0, per_layer: bool = True, **kwargs):
        warn_deprecated("RNNKernel", "NNGPKernel(arch.rnn(...), input_shape=(T, D), per_layer=True)")
        super().__init__(rnn(activation, readout, masked, readout_bias_var), input_shape=input_shape,
                         per_layer=per_layer, **kwargs)


class RNNNTKKernel(NTKKernel):
    """Deprecated: ``NTKKernel(A.rnn(...), input_shape=(T, D), per_layer=True)``."""

    def __init__(self, input_shape: Sequence[int], activation: Activation | None = None, readout: str = "last",
                 masked: bool = False, readout_bias_var: float | None = 0.0, per_layer: bool = True, **kwargs):
        warn_deprecated("RNNNTKKernel", "NTKKernel(arch.rnn(...), input_shape=(T, D), per_layer=True)")
        super().__init__(rnn(activation, readout, masked, readout_bias_var), input_shape=input_shape,
                         per_layer=per_layer, **kwargs)


class GRUKernel(NNGPKernel):
    """Deprecated: ``NNGPKernel(A.gru(readout, masked, readout_bias_var, samples, qmc_seed), input_shape=(T, D),
    per_layer=True)``, the NNGP of the erf-gated GRU (Yang 2019)."""

    def __init__(self, input_shape: Sequence[int], readout: str = "last", masked: bool = False,
                 readout_bias_var: float | None = 0.0, samples: int = 2**13, qmc_seed: int = 0,
                 per_layer: bool = True, **kwargs):
        warn_deprecated("GRUKernel", "NNGPKernel(arch.gru(...), input_shape=(T, D), per_layer=True)")
        super().__init__(gru(readout, masked, readout_bias_var, samples, qmc_seed), input_shape=input_shape,
                         per_layer=per_layer, **kwargs)


class LSTMKernel(NNGPKernel):
    """Deprecated: ``NNGPKernel(A.lstm(...), input_shape=(T, D), per_layer=True)``, the NNGP of the LSTM."""

    def __init__(self, input_shape: Sequence[int], readout: str = "last", masked: bool = False,
                 readout_bias_var: float | None = 0.0, samples: int = 2**13, qmc_seed: int = 0,
                 per_layer: bool = True, **kwargs):
        warn_deprecated("LSTMKernel", "NNGPKernel(arch.lstm(...), input_shape=(T, D), per_layer=True)")
        super().__init__(lstm(readout, masked, readout_bias_var, samples, qmc_seed), input_shape=input_shape,
                         per_layer=per_layer, **kwargs)


__all__ = ["GRUKernel", "LSTMKernel", "RNNKernel", "RNNNTKKernel"]

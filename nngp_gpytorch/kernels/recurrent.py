"""Named GPyTorch kernels of recurrent networks: :class:`RNNKernel`, :class:`RNNNTKKernel`,
:class:`GRUKernel`, :class:`LSTMKernel` (the gated cells' NTKs: :mod:`nngp_gpytorch.tensor_programs.gated_ntk`).

Inputs are sequences flattened to ``(..., n, T·D)`` with ``input_shape=(T, D)``; with ``masked=True`` the
last feature of each token is a prefix mask (variable lengths, :mod:`nngp_gpytorch.sequences`).
Hyperparameters (``per_layer=True``, the default here): ``weight_var[..., 0:3] = (σu², σw², σv²)``
(input, hidden, readout) and ``bias_var[..., 0:3] = (σb², unused, σvb²)``; the readout bias is fixed to
0 unless ``readout_bias_var=None``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..algebra.recurrent import per_step_kernel
from ..arch import Activation, Erf
from ..arch.recurrent import GRU, LSTM, RNN
from .nngp import NNGPKernel, NTKKernel


class _PerStep:
    """Mixin: the full per-step kernel of a recurrent kernel module."""

    def per_step(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        """``σv²·V(t, s) + σvb²`` for every pair and every pair of steps: ``(..., n1, n2, T, T)`` (the
        covariance of the readout applied at step t of ``x1[i]`` and step s of ``x2[j]``)."""
        self._check_inputs(x1, x2)
        return per_step_kernel(self.architecture, x1, x1 if x2 is None else x2,
                               self.hyperparameters_for_algebra(), self.input_shape, self.quadrature_degree)


class RNNKernel(_PerStep, NNGPKernel):
    r"""NNGP of an Elman RNN with weights shared over time (reference kernels.md "Simple RNN").

    ``Σ(t,s) = σw²·V_φ(Σ)(t−1,s−1)·[t,s>1] + σu²·x_t·x'_s/d + σb²``; output
    ``σv²·V_φ(Σ)(T_a, T_b) + σvb²`` at each sequence's own last step (``readout="mean"``: averaged over
    ``t ≤ T_a, s ≤ T_b``).

    >>> k = RNNKernel(input_shape=(8, 3), activation=Erf(), weight_var=[1.0, 1.5, 2.0], bias_var=[0.1, 0, 0])

    Args:
        input_shape: ``(T, D)``.
        activation: any activation with a dual (closed form or quadrature).
        readout: ``"last"`` or ``"mean"``; masked: variable lengths through the mask channel.
        readout_bias_var: fixed readout bias variance (default 0) or ``None`` to learn it.
        **kwargs: as :class:`~nngp_gpytorch.kernels.base.InfiniteWidthKernel` (``per_layer`` defaults
            to True: three slots input / hidden / readout).
    """

    def __init__(self, input_shape: Sequence[int], activation: Activation | None = None, readout: str = "last",
                 masked: bool = False, readout_bias_var: float | None = 0.0, per_layer: bool = True, **kwargs):
        layer = RNN(activation=activation or Erf(), readout=readout, masked=masked,
                    readout_bias_var=readout_bias_var)
        super().__init__(layer, input_shape=input_shape, per_layer=per_layer, **kwargs)


class RNNNTKKernel(NTKKernel):
    """NTK (NTK parameterization) of the same RNN as :class:`RNNKernel`: recurrent weights shared over
    time accumulate ``Θ(t,s) = Σ(t,s) + σw²·V_φ'(Σ)(t−1,s−1)·Θ(t−1,s−1)``; readout
    ``σv²·V_φ(Σ) + σvb² + σv²·V_φ'(Σ)⊙Θ`` at the read positions."""

    def __init__(self, input_shape: Sequence[int], activation: Activation | None = None, readout: str = "last",
                 masked: bool = False, readout_bias_var: float | None = 0.0, per_layer: bool = True, **kwargs):
        layer = RNN(activation=activation or Erf(), readout=readout, masked=masked,
                    readout_bias_var=readout_bias_var)
        super().__init__(layer, input_shape=input_shape, per_layer=per_layer, **kwargs)


class GRUKernel(_PerStep, NNGPKernel):
    """NNGP of the erf-gated GRU (Yang 2019; reference kernels.md "GRU").

    Gate expectations ``E[ω(a,t)ω'(b,s)]`` (Gaussian orthant probabilities) are integrated with a fixed
    scrambled Sobol rule of ``samples`` points (the accuracy knob), redrawn at every step from the
    principal components of the gate covariance: deterministic, differentiable. Measured max error on
    a 7×9-token pair (|K| ≈ 0.39): 3.2e-4 at the default 2¹³ points, 6.8e-5 at 2¹⁵, 2.2e-5 at 2¹⁷
    (docs/recurrent.md). A Gram ``K(X, X)`` is positive semi-definite (projected, diagonal kept; a
    warning if the negative part exceeds what the QMC error explains).
    Same arguments as :class:`RNNKernel` (no activation), plus ``samples`` (a power of two) and ``qmc_seed``.
    """

    def __init__(self, input_shape: Sequence[int], readout: str = "last", masked: bool = False,
                 readout_bias_var: float | None = 0.0, samples: int = 2**13, qmc_seed: int = 0,
                 per_layer: bool = True, **kwargs):
        layer = GRU(readout=readout, masked=masked, readout_bias_var=readout_bias_var, samples=samples,
                    qmc_seed=qmc_seed)
        super().__init__(layer, input_shape=input_shape, per_layer=per_layer, **kwargs)


class LSTMKernel(_PerStep, NNGPKernel):
    """NNGP of the standard sigmoid/tanh LSTM (master-theorem limit, :mod:`nngp_gpytorch.algebra.lstm`).

    ``samples`` QMC points of the limiting Gaussian (deterministic; the accuracy knob): measured max error
    on a 7×9-token pair (|K| ≈ 0.067) 1.6e-4 at the default 2¹³ points, 2.1e-5 at 2¹⁷
    (docs/recurrent.md). A Gram ``K(X, X)`` is positive semi-definite (projected, as :class:`GRUKernel`).
    """

    def __init__(self, input_shape: Sequence[int], readout: str = "last", masked: bool = False,
                 readout_bias_var: float | None = 0.0, samples: int = 2**13, qmc_seed: int = 0,
                 per_layer: bool = True, **kwargs):
        layer = LSTM(readout=readout, masked=masked, readout_bias_var=readout_bias_var, samples=samples,
                     qmc_seed=qmc_seed)
        super().__init__(layer, input_shape=input_shape, per_layer=per_layer, **kwargs)


__all__ = ["GRUKernel", "LSTMKernel", "RNNKernel", "RNNNTKKernel"]

"""NTKs of the gated recurrent cells (erf-GRU, LSTM) as the NTKs of their tensor programs.

The dedicated covariance algebra of :class:`~nngp_gpytorch.kernels.GRUKernel` and
:class:`~nngp_gpytorch.kernels.LSTMKernel` carries the NNGP only; the NTK comes from the generic
tensor-program NTK (:mod:`.ntk`, Yang 2020) of the same cells written as NETSOR programs (:mod:`.examples`),
under the names users look for.
"""

from __future__ import annotations

from collections.abc import Sequence

from .examples import gru_program, lstm_program
from .expectations import Accuracy
from .kernel import TensorProgramNTKKernel


class _GatedNTK(TensorProgramNTKKernel):
    """The NTK of a gated cell as the NTK of its tensor program (shared constructor of the two below)."""

    _program_factory = None

    def __init__(self, input_shape: Sequence[int], readout: str = "last", samples: int = 2**12, qmc_seed: int = 0,
                 input_var: float = 1.0, hidden_var: float = 1.0, bias_var: float = 0.0, readout_var: float = 1.0,
                 readout_bias_var: float = 0.0, **kwargs):
        name = type(self).__name__
        if input_shape is None or len(tuple(input_shape)) != 2:
            raise ValueError(f"{name} needs input_shape=(T, D) (sequences flattened to T·D features), got "
                             f"{input_shape}")
        if kwargs.pop("masked", False):
            raise ValueError(f"{name} supports sequences of one common length only (no mask channel): its tensor "
                             "program reads every sequence at step T. Use equal lengths, or the NNGP "
                             "GRUKernel/LSTMKernel for masked sequences")
        length, token_dim = (int(v) for v in input_shape)
        program = type(self)._program_factory(length, token_dim, readout, input_var, hidden_var, bias_var,
                                              readout_var, readout_bias_var)
        # target=None: the erf-gated cells' few product rules are smooth 1-2-D integrals (measured quadrature error
        # 3.4e-7 against a QMC error bar of 2.1e-3, GRU T = 4) and the end-to-end estimate would re-run the ~60 QMC
        # expectations twice (28 s → 82 s); the QMC standard error is the error bar (`last_result.ntk_error`).
        accuracy = kwargs.pop("accuracy", None) or Accuracy(qmc_points=int(samples), seed=int(qmc_seed), target=None)
        super().__init__(program, accuracy=accuracy, **kwargs)
        self.input_shape = (length, token_dim)


class GRUNTKKernel(_GatedNTK):
    r"""NTK of the erf-gated GRU (NTK parameterization), computed as the NTK of its tensor program
    (:func:`~nngp_gpytorch.tensor_programs.examples.gru_program`; Yang 2020, *Tensor Programs II*, Cor. 4.4):
    ``Θ = K + Σ_W σ_W²·Σ_{uses i,j} E[dgᵢ dg'ⱼ]·E[hᵢ h'ⱼ] + Σ_b σ_b²·E[db db']`` over the gates' input, hidden
    and bias parameters, shared over time (every pair of time steps contributes). Expectations by scrambled
    Sobol QMC with ``samples`` points per replicate; :meth:`evaluate_with_error` returns the standard errors
    (measured on a 16×16 Gram of length-6 sequences: 3e-3 at 2¹², 7.5e-4 at 2¹⁴, i.e. < 0.3% of the
    diagonal; docs/ntk.md).

    Inputs ``(..., n, T·D)`` with ``input_shape=(T, D)``, every sequence of length ``T`` (no mask channel).
    Hyperparameters are the program's named variances ``input_var`` (σu²), ``hidden_var`` (σw²),
    ``bias_var`` (σb², shared by the three gates), ``readout_var`` (σv²), ``readout_bias_var`` (σvb²) —
    the same numbers as :class:`GRUKernel`'s ``weight_var = (σu², σw², σv²)``, ``bias_var = (σb², ·, σvb²)``.
    :meth:`nngp_and_ntk` gives the NNGP beside Θ from the same pass. Cost: ~5–10× the NNGP of the same
    program; prefer a GPU for Grams beyond a few dozen sequences.
    """

    _program_factory = staticmethod(gru_program)


class LSTMNTKKernel(_GatedNTK):
    r"""NTK of the standard sigmoid/tanh LSTM (NTK parameterization) as the NTK of its tensor program
    (:func:`~nngp_gpytorch.tensor_programs.examples.lstm_program`); same construction, arguments and accuracy
    knob as :class:`GRUNTKKernel` (measured QMC error on a 16×16 Gram of length-6 sequences: 3.5e-4 at 2¹²).
    """

    _program_factory = staticmethod(lstm_program)


__all__ = ["GRUNTKKernel", "LSTMNTKKernel"]

"""Tensor programs (NETSOR, Yang 2019): write any architecture as a program, get its NNGP kernel and NTK.

* :class:`Program` — the builder (inputs, matrices, biases, ``matmul``, ``lincomb``, ``nonlin``,
  NETSOR+ ``moment``/``scalar``, ``readout``), validated instruction by instruction;
* :func:`evaluate_program` — the master-theorem kernel (closed-form duals, Gauss–Hermite, randomized QMC
  with a standard error; knobs in :class:`Accuracy`);
* :class:`TensorProgramKernel` — the GPyTorch kernel with learnable, named variances;
* :func:`evaluate_program_ntk`, :class:`TensorProgramNTKKernel` — the NTK (Yang 2020, Tensor Programs II:
  backward program under gradient independence), with the NNGP and QMC standard errors;
* :mod:`.examples` — MLP, RNN, GRU, LSTM, attention, minimal gated unit, tied-weight residual MLP;
* :func:`compile_program` — any architecture description as a program (:mod:`.compile`), with
  :class:`CompiledNNGPKernel` / :class:`CompiledNTKKernel`; importing this package also makes them the fallback of
  ``NNGPKernel`` / ``NTKKernel`` for the compositions the covariance algebra refuses (:mod:`.compiled_kernel`).

The finite twin (literal execution with random matrices) is ``verification.tensor_programs``.
"""

from ..numerics import psd_cholesky
from . import examples
from .compile import CompiledProgram, CompileError, compile_program
from .compiled_kernel import CompiledNNGPKernel, CompiledNTKKernel
from .expectations import Accuracy, gaussian_expectation
from .gated_ntk import GRUNTKKernel, LSTMNTKKernel
from .kernel import TensorProgramKernel, TensorProgramNTKKernel
from .master import ProgramKernelResult, evaluate_program
from .ntk import ProgramNTKResult, evaluate_program_ntk
from .program import Matrix, Program, ProgramError, Readout, Scalar, Token, Var

__all__ = [
    "Accuracy", "CompileError", "CompiledNNGPKernel", "CompiledNTKKernel", "CompiledProgram", "GRUNTKKernel",
    "LSTMNTKKernel", "compile_program",
    "Matrix", "Program", "ProgramError", "ProgramKernelResult", "ProgramNTKResult", "Readout", "Scalar",
    "TensorProgramKernel", "TensorProgramNTKKernel", "Token", "Var", "evaluate_program", "evaluate_program_ntk",
    "examples", "gaussian_expectation", "psd_cholesky",
]

"""Kernels of compiled descriptions, and the tensor-program fallback of ``NNGPKernel`` / ``NTKKernel``.

:class:`CompiledNNGPKernel` / :class:`CompiledNTKKernel` are the master-theorem NNGP and the Tensor Programs II
NTK (:class:`~.kernel.TensorProgramKernel`, :class:`~.kernel.TensorProgramNTKKernel`) of
:func:`~.compile.compile_program`'s program, built from a description (compiled when constructed, and again for
each new input dimension when the description fixes none) or from a :class:`~.compiler.CompiledProgram`.

**NTK of a unit readout.** When the network's last affine layer cannot be the program's readout (a ``Dense`` after
``Flatten`` reads ``P`` blocks with independent readout vectors; the output is a sum of branches), the program
reads the network's output G-var ``g`` with ``f = v·g/√n``, ``v ~ N(0, s)``: then ``K_program = s·K`` and, the
readout vector's own gradient adding ``s·E[g g']`` (Yang 2020), ``Θ_program = s·K + s·Θ``; the NTK kernels here
return ``Θ_program − K_program = s·Θ`` (``s = output_scale`` is 1 unless trained, like GPyTorch's outputscale).

**Fallback** (:func:`program_fallback`, registered with :func:`nngp_gpytorch.kernels.nngp.register_fallback` when
this module is imported): a description that the architecture validation refuses — compositions whose covariance
the dedicated algebra does not track — gets this kernel from ``NNGPKernel(description, ...)`` /
``NTKKernel(description, ...)`` instead of the :class:`~nngp_gpytorch.arch.ArchitectureError`, when it compiles;
otherwise the refusal is raised with the compiler's reason appended. Descriptions with ``MaxPool`` are not taken
(a max over windows costs ``2·window``-dimensional QMC per pair; call :func:`~.compile.compile_program` yourself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..arch import ArchitectureError, Layer, MaxPool
from ..kernels.nngp import register_description, register_fallback
from .compile import compile_program
from .compiler import CompiledProgram, CompileError
from .expectations import Accuracy
from .kernel import TensorProgramKernel, TensorProgramNTKKernel
from .ntk import ProgramNTKResult, evaluate_program_ntk

#: accuracy of the fallback: an activation after ``φ(g) + Gaussian`` is a Nonlin of two G-vars per input, whose cross
#: expectations are 4-D: randomized QMC at 2^14 points (measured on ``Serial(Dense(), ReLU(), Residual(Dense()), Erf(),
#: Dense())``, 5 inputs: max error 4.6e-5 against a 2^18-point × 16 reference, error bar 1.8e-4, 0.2 s; the 4-D
#: kink-split Gauss–Hermite rule at 16 nodes per axis was off by 1.5e-4 with a bar of 7.7e-5, in 1.5 s). The target
#: is relative to max|K|: above it, a warning.
FALLBACK_ACCURACY = Accuracy(qmc_points=2**14, target=1e-3)

_UNSUPPORTED = ("weight_var_constraint", "bias_var_constraint", "quadrature_degree", "block_size")


class CompiledNNGPKernel(TensorProgramKernel):
    r"""The NNGP kernel of a description through its compiled tensor program (master theorem, Yang 2019).

    Args:
        source: an :mod:`nngp_gpytorch.arch` description, or a :class:`~.compiler.CompiledProgram`.
        input_shape, input_dim: the inputs' per-example shape (``input_dim=d`` means ``(d,)``); without either, a
            flat description is compiled again for each new number of features (same named variances).
        weight_var, bias_var, per_layer: initial variances (see :func:`~.compile.compile_program`).
        weight_var_prior, bias_var_prior: priors of the shared ``weight_var`` / ``bias_var`` (``priors=`` names any).
        **kwargs: as :class:`~.kernel.TensorProgramKernel` (``variances``, ``priors``, ``accuracy``, ``batch_shape``,
            ``active_dims``).
    """

    def __init__(self, source: Layer | CompiledProgram, input_shape: Sequence[int] | None = None,
                 weight_var=1.0, bias_var=0.0, per_layer: bool = False, input_dim: int | None = None,
                 weight_var_prior=None, bias_var_prior=None, **kwargs):
        for name in _UNSUPPORTED:
            if kwargs.pop(name, None) is not None:
                raise TypeError(f"{type(self).__name__}: {name}= is not supported by the tensor-program route "
                                "(its accuracy is set by accuracy=Accuracy(...))")
        kwargs.pop("max_memory", None)  # expectations are chunked by Accuracy.max_chunk_elements instead
        if isinstance(source, CompiledProgram):
            program, self_flexible = source, False
        elif isinstance(source, Layer):
            shape = tuple(input_shape) if input_shape is not None else ((input_dim,) if input_dim else None)
            program = compile_program(source, shape or (1,), weight_var, bias_var, per_layer)
            self_flexible = shape is None
        else:
            raise TypeError(f"{type(self).__name__} needs a description or a CompiledProgram, got {source!r}")
        priors = dict(kwargs.pop("priors", None) or {})
        for name, prior in (("weight_var", weight_var_prior), ("bias_var", bias_var_prior)):
            if prior is not None:
                if name not in program.parameters:
                    raise ValueError(f"{name}_prior: the compiled program has no shared '{name}' (parameters "
                                     f"{list(program.parameters)}); pass priors={{name: Prior}}")
                priors[name] = prior
        super().__init__(program, priors=priors, **kwargs)
        self.flexible = self_flexible
        self._programs = {program.input_dim: program}
        self._compile_args = (program.description, weight_var, bias_var, per_layer)

    def _check_inputs(self, x1, x2) -> None:
        if self.flexible and isinstance(x1, torch.Tensor) and x1.dim() >= 2:
            d = x1.shape[-1] if self.active_dims is None else len(self.active_dims)
            if d != self.program.input_dim:
                if d not in self._programs:
                    description, w, b, per_layer = self._compile_args
                    self._programs[d] = compile_program(description, (d,), w, b, per_layer)
                self.program, self.input_dim = self._programs[d], d
        super()._check_inputs(x1, x2)

    def network_ntk(self, result: ProgramNTKResult) -> ProgramNTKResult:
        """The network's NTK from the program's (subtracts ``K`` after a unit readout, see the module docstring)."""
        if self.program.output_scale is None:
            return result
        ntk_error = None if result.ntk_error is None else result.ntk_error + result.kernel_error
        return replace(result, ntk=result.ntk - result.kernel, ntk_stderr=result.ntk_stderr + result.kernel_stderr,
                       ntk_error=ntk_error)

    def evaluate_ntk_with_error(self, x1, x2=None, diag: bool = False) -> ProgramNTKResult:
        return self.network_ntk(super().evaluate_ntk_with_error(x1, x2, diag=diag))

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if not self._returns_ntk:
            return super().forward(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch, **params)
        if last_dim_is_batch:
            raise NotImplementedError(f"{type(self).__name__} does not support last_dim_is_batch")
        same = x2 is x1 or (x1.shape == x2.shape and torch.equal(x1, x2))
        result = evaluate_program_ntk(self.program, x1, None if same else x2, self.variances, diag=diag,
                                      accuracy=self.accuracy)
        self.last_result = self.network_ntk(result)
        return self.last_result.ntk


class CompiledNTKKernel(CompiledNNGPKernel, TensorProgramNTKKernel):
    """The NTK of a description through its compiled tensor program (Tensor Programs II); as
    :class:`CompiledNNGPKernel` otherwise."""

    _returns_ntk = True


def program_fallback(description: Layer, refusal: ArchitectureError, ntk: bool, **kwargs):
    """The kernel of a description the validation refused, through its compiled program (see the module
    docstring); re-raises ``refusal`` (the compiler's reason appended) when it does not compile."""
    if any(isinstance(sub, MaxPool) for sub in description.walk()):
        raise refusal
    kwargs.setdefault("accuracy", FALLBACK_ACCURACY)
    dtype = kwargs.pop("dtype", None)
    try:
        kernel = (CompiledNTKKernel if ntk else CompiledNNGPKernel)(description, **kwargs)
    except CompileError as err:
        raise type(refusal)(f"{refusal} (nor does it compile to a tensor program: {err})") from err
    return kernel if dtype is None else kernel.to(dtype)


register_description(CompiledProgram, CompiledNNGPKernel, CompiledNTKKernel)
register_fallback(program_fallback)

__all__ = ["FALLBACK_ACCURACY", "CompiledNNGPKernel", "CompiledNTKKernel", "program_fallback"]

"""``compile_program(description)``: an architecture description as a NETSOR program (Yang 2019).

The third reading of a description made literal (DESIGN.md): the program's master-theorem kernel
(:class:`~nngp_gpytorch.tensor_programs.TensorProgramKernel`), its Tensor Programs II NTK and its finite twin
(``verification.tensor_programs.sample_program``) then apply to *any* description the rules of
:mod:`.compile_rules` cover — including the compositions the covariance algebra refuses (two independent
post-activation branches summed, an activation after ``φ(g) + Gaussian``, a skip around a weight-free branch,
an activation after ``MaxPool``). Dedicated rules stay the fast paths; ``tests/test_compile_program.py`` checks
they equal the compiled route on their domain.

>>> from nngp_gpytorch import arch as A
>>> net = A.Serial(A.Dense(), A.ReLU(), A.Parallel(A.Serial(A.Dense(), A.ReLU()), A.Serial(A.Dense(), A.Erf())),
...                A.Dense())
>>> program = compile_program(net, input_shape=(3,), weight_var=1.5, bias_var=0.1)
>>> program.parameter_names
('weight_var', 'bias_var')

Inputs are read as the architecture kernels read them (``x·x'/d``): flat vectors as one token; images
``input_shape=(C, *spatial)`` (channels first, flattened) as one scalar token per channel and position, so that a
convolution's per-tap input matrices see each pixel; sequences ``(T, D)`` (time-major) as ``T`` tokens when the
description has ``TokenDense`` or ``RNN`` layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..arch import AvgPool, Conv, GlobalAvgPool, Layer, MaxPool, RecurrentLayer, TokenDense
from . import compile_rules  # noqa: F401  (registers the per-layer rules)
from .compiler import CompiledProgram, CompileError, Compiler, Flow

#: the name of the unit output scale of a program whose readout is not the network's own (see CompiledProgram)
OUTPUT_SCALE = "output_scale"


def _slot_values(value, slots: int, name: str, allow_zero: bool) -> list[float]:
    values = torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist()
    if len(values) == 1:
        values = values * slots
    if len(values) != slots:
        raise ValueError(f"{name} has {len(values)} values but the description draws {slots} variance slot(s)")
    for v in values:
        if not math.isfinite(v) or (v < 0 if allow_zero else v <= 0):
            raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {values}")
    return values


def _input_flow(description: Layer, shape: tuple[int, ...], program: CompiledProgram) -> Flow:
    layers = list(description.walk())
    if any(isinstance(sub, TokenDense | RecurrentLayer) for sub in layers):
        if len(shape) != 2:
            raise CompileError(f"{description.describe()}: sequence layers need input_shape=(T, D), got {shape}")
        return Flow(raw=True, tokens=tuple(program.sequence("x", shape[0], shape[1])), layout="sequence")
    if len(shape) >= 2 and any(isinstance(sub, Conv | AvgPool | GlobalAvgPool | MaxPool) for sub in layers):
        channels, positions = shape[0], math.prod(shape[1:])
        tokens = [program.input(f"x[{ch},{q}]", 1) for ch in range(channels) for q in range(positions)]
        return Flow(raw=True, tokens=tuple(tokens), layout="image")
    return Flow(raw=True, tokens=(program.input("x", math.prod(shape)),))


def compile_program(description: Layer, input_shape: int | Sequence[int] | None = None,
                    weight_var: float | Sequence[float] = 1.0, bias_var: float | Sequence[float] = 0.0,
                    per_layer: bool = False, name: str | None = None) -> CompiledProgram:
    """Compile ``description`` (an :mod:`nngp_gpytorch.arch` tree ending in an affine readout) to a NETSOR program.

    Args:
        description: the architecture.
        input_shape: per-example input shape: ``d`` or ``(d,)`` for vectors, ``(C, *spatial)`` for images
            (channels first), ``(T, D)`` for sequences. Required (a program declares its inputs).
        weight_var, bias_var: initial σw², σb² — one value (shared, parameters ``weight_var``/``bias_var``) or one
            per variance slot with ``per_layer=True`` (``weight_var_0``, ``bias_var_0``, … in the traversal order
            of ``NNGPKernel(..., per_layer=True)``). A bias variance of exactly 0 writes no bias.
        name: the program's name (default: ``compiled <description>``).

    Returns:
        a :class:`~.compiler.CompiledProgram`, whose ``NNGPKernel`` / ``NTKKernel`` equal the description's kernels
        with the same variances (``output_scale`` explains the readout).

    Raises:
        CompileError (a :class:`~nngp_gpytorch.arch.ArchitectureError` and a
        :class:`~nngp_gpytorch.tensor_programs.ProgramError`): a layer without a compilation, named with its path.
    """
    if not isinstance(description, Layer):
        raise TypeError(f"compile_program needs an architecture description (nngp_gpytorch.arch), got {description!r}")
    if input_shape is None:
        raise ValueError(f"compile_program({description.describe()}): give input_shape (d for vectors, (C, H, W) for "
                         "images, (T, D) for sequences): a program declares its inputs")
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive sizes, got {input_shape}")
    slots = max(description.variance_slots(), 1) if per_layer else 1
    weights = _slot_values(weight_var, slots, "weight_var", allow_zero=False)
    biases = _slot_values(bias_var, slots, "bias_var", allow_zero=True)
    program = CompiledProgram(name or f"compiled {description.describe()}", description, shape)
    compiler = Compiler(program, weights, biases, bool(per_layer))
    out = compiler.compile(description, _input_flow(description, shape, program), description.describe(), final=True)
    if program.output is None:  # the network's output is a G-var built by the program: read it with unit scale
        if out.raw or out.spatial or len(out.vecs) != 1 or any(not h.is_g for _, h in out.vecs[0]):
            raise CompileError(f"{description.describe()}: the network does not end in one vector of Gaussian outputs"
                               "; a readout (an affine layer such as Dense()) must come last")
        program.readout(compiler.gaussian(out.vecs[0], description.describe(), description), var=OUTPUT_SCALE)
        program.output_scale = OUTPUT_SCALE
    return program


__all__ = ["OUTPUT_SCALE", "CompileError", "CompiledProgram", "compile_program"]

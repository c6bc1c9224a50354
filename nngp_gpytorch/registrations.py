"""Wiring of the descriptions computed above the kernels layer into ``NNGPKernel`` / ``NTKKernel``.

:mod:`nngp_gpytorch.kernels` imports only downward (arch, duals, algebra); tensor programs sit above it. This
module, imported by :mod:`nngp_gpytorch` itself, registers

* :class:`~nngp_gpytorch.tensor_programs.Program` → ``TensorProgramKernel`` / ``TensorProgramNTKKernel``;
* the NTK of ``GRU`` / ``LSTM`` descriptions → the NTK of the cell's tensor program
  (:mod:`nngp_gpytorch.tensor_programs.gated_ntk`), with the architecture kernel's variance slots mapped onto
  the program's named variances (slot order: input, hidden, readout, as the NNGP's ``per_layer=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .arch import GRU, LSTM, RecurrentLayer
from .kernels import register_description, register_ntk_builder
from .tensor_programs import Program, TensorProgramKernel, TensorProgramNTKKernel
from .tensor_programs.gated_ntk import GRUNTKKernel, LSTMNTKKernel

_UNSUPPORTED = ("weight_var_prior", "bias_var_prior", "weight_var_constraint", "bias_var_constraint",
                "quadrature_degree", "block_size", "input_dim", "max_memory")


def _slot_values(value, slots: int, name: str) -> list[float]:
    values = torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist()
    if len(values) == 1:
        return values * slots
    if len(values) != slots:
        raise ValueError(f"{name} has {len(values)} values but the cell draws {slots} variance slot(s)")
    return values


def gated_ntk_kernel(layer: RecurrentLayer, input_shape: Sequence[int] | None = None, weight_var=1.0,
                     bias_var=0.0, per_layer: bool = True, dtype: torch.dtype | None = None, **kwargs):
    """``NTKKernel(GRU(...) | LSTM(...), ...)``: the NTK of the cell's tensor program, its named variances set
    from ``weight_var`` / ``bias_var`` slots (the layer's fixed variances where it has them)."""
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise TypeError(f"NTKKernel({layer.describe()}): the gated-cell NTK is a tensor-program kernel; {name}= "
                            "is not supported (its variances are named: input_var, hidden_var, bias_var, "
                            "readout_var, readout_bias_var)")
        kwargs.pop(name, None)
    slots = max(layer.variance_slots(), 1) if per_layer else 1
    w, b = _slot_values(weight_var, slots, "weight_var"), _slot_values(bias_var, slots, "bias_var")
    values, slot = [], 0
    for fixed_w, fixed_b in layer.slot_requests():  # input, hidden, readout
        values.append((fixed_w if fixed_w is not None else w[slot], fixed_b if fixed_b is not None else b[slot]))
        if per_layer and (fixed_w is None or fixed_b is None):
            slot += 1
    (input_var, bias), (hidden_var, _), (readout_var, readout_bias) = values
    cls = GRUNTKKernel if type(layer) is GRU else LSTMNTKKernel
    named = dict(input_var=input_var, hidden_var=hidden_var, bias_var=bias, readout_var=readout_var,
                 readout_bias_var=readout_bias)
    kernel = cls(input_shape, readout=layer.readout, samples=layer.samples, qmc_seed=layer.qmc_seed,
                 masked=layer.masked, gates=layer.gate_overrides() if layer.per_gate else None, **named, **kwargs)
    if dtype is not None:
        kernel = kernel.to(dtype)
        kernel.set_variances(**named)
    return kernel


register_description(Program, TensorProgramKernel, TensorProgramNTKKernel)
register_ntk_builder(GRU, gated_ntk_kernel)
register_ntk_builder(LSTM, gated_ntk_kernel)

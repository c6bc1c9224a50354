"""Covariance algebra: the analytic reading of an architecture description.

Each family module registers kernel rules (:func:`kernel_rule`) mapping the covariance state
(:class:`CovState`, NNGP ``K`` with the NTK ``Θ`` as an optional passenger) through one layer.
:func:`evaluate` runs a whole architecture on two input sets.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch

from ..arch import Layer
from .conv_stack import fuse_conv_stacks
from .fusion import fuse_relu_chains
from .registry import Hyperparameters, RuleContext, VarianceCursor, broadcast_param, kernel_rule, propagate, rule_for
from .state import CovState, identical_rows, input_state

# Every module of this package registers its family's rules on import.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def evaluate(
    architecture: Layer,
    x1: torch.Tensor,
    x2: torch.Tensor,
    hyper: Hyperparameters,
    diag: bool = False,
    with_ntk: bool = False,
    quadrature_degree: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    optimize: bool = True,
    chunk_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NNGP ``K(x1, x2)`` (and NTK ``Θ`` if ``with_ntk``) of one output unit of ``architecture``.

    Args:
        x1: ``(..., n1, d)``; x2: ``(..., n2, d)``.
        hyper: variances, ``(*batch_shape, slots)``.
        diag: return only the pairs ``(x1[i], x2[i])`` (requires ``n1 == n2``), shape ``(..., n)``.
        input_shape: per-example shape of structured inputs (``(C, H, W)``, ``(T, d)``); ``d`` must equal
            its product.
        optimize: run the optimization passes over the description first (:func:`fuse_conv_stacks`,
            :func:`fuse_relu_chains`: the same values, computed faster and in bounded memory); ``False``
            evaluates the layers one by one.
        chunk_bytes: memory the rules that chunk their own work may hold at once (the fast positional engine's
            chunks of input pairs; a kernel passes its ``max_memory``); None: their defaults.

    Returns:
        ``(K, Θ)`` each ``(..., n1, n2)`` (or ``(..., n)``); ``Θ`` is ``None`` unless ``with_ntk``.
    """
    if hyper.weight_var.device != x1.device:  # e.g. constants built on the CPU for CUDA inputs
        hyper = Hyperparameters(hyper.weight_var.to(x1.device), hyper.bias_var.to(x1.device))
    description = architecture
    if optimize:
        architecture = fuse_relu_chains(fuse_conv_stacks(architecture))
    ctx = RuleContext(hyper=hyper, with_ntk=with_ntk, architecture=architecture, chunk_bytes=chunk_bytes)
    if quadrature_degree is not None:  # an explicit degree is used as given (smooth in the hyperparameters)
        ctx.quadrature_degree = int(quadrature_degree)
        ctx.adaptive_quadrature = False
    state = propagate(architecture, input_state(x1, x2, diag, with_ntk, input_shape), ctx)
    if not state.gaussian:
        raise ValueError(f"{description.describe()} does not end in an affine readout")
    return state.k12, state.t12


__all__ = [
    "CovState", "Hyperparameters", "RuleContext", "broadcast_param", "evaluate", "fuse_relu_chains", "identical_rows",
    "input_state", "kernel_rule", "propagate", "rule_for", "VarianceCursor",
]

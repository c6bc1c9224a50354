"""Input checks shared by every kernel module: a clear error instead of a silent NaN or a broadcast."""

from __future__ import annotations

import torch


def check_kernel_inputs(name: str, x1: torch.Tensor, x2: torch.Tensor | None, parameter: torch.Tensor) -> None:
    """Raise a clear error unless ``x1`` (and ``x2``) are finite floating-point ``(..., n, d)`` tensors with
    the dtype and device of the kernel's ``parameter`` and the same number of features.

    ``name`` prefixes every message (the kernel's class or program name).
    """
    for label, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(
                f"{name}: {label} has shape {tuple(x.shape)}; inputs must be (..., n, d). For n scalar "
                "inputs use x.unsqueeze(-1); for one d-dimensional input use x.unsqueeze(0)"
            )
        if not x.is_floating_point():
            raise TypeError(f"{name}: {label} must be a floating-point tensor, got {x.dtype}")
        if x.dtype != parameter.dtype:
            raise TypeError(
                f"{name}: {label} is {x.dtype} but the kernel's parameters are {parameter.dtype}; "
                f"convert one of them (e.g. kernel.to({x.dtype}))"
            )
        if x.device != parameter.device:
            raise ValueError(
                f"{name}: {label} is on {x.device} but the kernel's parameters are on {parameter.device}; "
                "move one of them"
            )
        if not torch.isfinite(x).all():  # after the device check: a meta tensor has no values to test
            raise ValueError(f"{name}: {label} contains NaN or Inf")
    if x2 is not None and x1.shape[-1] != x2.shape[-1]:
        raise ValueError(f"{name}: x1 has {x1.shape[-1]} features but x2 has {x2.shape[-1]}")

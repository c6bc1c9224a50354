"""What a stored Gram was computed from: kernel description, hyperparameters, dtype, a hash of the inputs.

A store written for one (kernel, inputs, dtype, tile) is never reused for another: :func:`fingerprint` is
recorded in the store's attributes when it is created and compared on every reopen
(:class:`~nngp_gpytorch.scale.store.GramStore`). The hash covers the input bytes, shape and dtype, so the
same points in another order, or cast to another precision, are different inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from ..hashing import hash_tensor

#: kernel attributes that govern how a value is computed (memory budget, blocking), not which value
_EVALUATION_ONLY = frozenset({"training", "max_memory", "block_size"})


def describe_kernel(kernel: torch.nn.Module) -> dict[str, Any]:
    """A JSON-ready description of a kernel: its class, its public configuration (the architecture tree's
    ``repr``, input shape, quadrature degree, ...) and every entry of its ``state_dict`` (raw hyperparameters,
    constraint bounds, fixed buffers) as nested lists."""
    config = {
        name: repr(value)
        for name, value in sorted(vars(kernel).items())
        if not name.startswith("_") and name not in _EVALUATION_ONLY
    }
    state = {name: tensor.detach().cpu().tolist() for name, tensor in sorted(kernel.state_dict().items())}
    return {"class": f"{type(kernel).__module__}.{type(kernel).__qualname__}", "config": config, "state": state}


def fingerprint(kernel: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, dtype: str,
                tile: int) -> dict[str, Any]:
    """The record a Gram store keeps of what it holds: ``kernel`` (:func:`describe_kernel`), the hashes and
    shapes of ``x1`` and ``x2`` (``x2 = None``: the symmetric Gram of ``x1``), the stored ``dtype`` name and
    the ``tile`` edge. Two fingerprints are the same store iff they are equal as dicts."""
    return {
        "kernel": describe_kernel(kernel),
        "x1": {"sha256": hash_tensor(x1), "shape": list(x1.shape)},
        "x2": None if x2 is None else {"sha256": hash_tensor(x2), "shape": list(x2.shape)},
        "dtype": str(dtype),
        "tile": int(tile),
    }


def rows_fingerprint(kernel: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The record a row store (:class:`~nngp_gpytorch.scale.saved_rows.SavedRows`) keeps: the rows of
    ``kernel(x, x)``, stored whole in float64 (:func:`fingerprint` without a tile edge)."""
    record = fingerprint(kernel, x, None, "float64", tile=0)
    del record["tile"]
    record["layout"] = "rows"
    return record


def differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Top-level fields in which two fingerprints differ (kernel, x1, x2, dtype, tile), for error messages."""
    keys = sorted(set(recorded) | set(wanted))
    return [key for key in keys if recorded.get(key) != wanted.get(key)]

"""Finite twin of :class:`~nngp_gpytorch.arch.BatchNorm`: a literal batch-norm layer.

The ``k`` inputs of one network in the ensemble are one batch, i.e. one forward pass of the whole batch:
for each network and unit, ``BN(g) = (g − mean(g))/std(g)`` over the batch axis (biased std, ``eps = 0``,
no affine), then the activation. :class:`BatchTwinContext` splits the ``k`` inputs into several
consecutive batches (several forward passes of the same network, each with its own statistics), and
:func:`sample_batch_ensemble` samples per-network covariances of such a set for the statistical tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from nngp_gpytorch.algebra import Hyperparameters
from nngp_gpytorch.arch import BatchNorm, Layer

from .registry import TwinContext, finite_twin, run_twin

if TYPE_CHECKING:
    from ..ensembles import EnsembleSample


@dataclass
class BatchTwinContext(TwinContext):
    """A :class:`TwinContext` whose ``k`` inputs form consecutive batches of sizes ``batch_sizes``
    (empty: one batch of all ``k`` inputs)."""

    batch_sizes: tuple[int, ...] = ()


def _normalize(g: torch.Tensor) -> torch.Tensor:
    """Batch statistics over axis 1 of ``(M, B, width)``: ``(g − mean)/std`` (biased, eps = 0)."""
    if g.shape[1] < 2:
        raise ValueError(f"batch norm needs batches of at least 2 inputs, got {g.shape[1]}")
    centred = g - g.mean(1, keepdim=True)
    return centred / centred.pow(2).mean(1, keepdim=True).sqrt()


@finite_twin(BatchNorm)
def batchnorm_twin(layer: BatchNorm, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    if h.dim() != 3:
        raise ValueError(f"{layer.describe()}: the finite twin needs flat features (M, k, width), got {tuple(h.shape)}")
    sizes = tuple(getattr(ctx, "batch_sizes", ()) or (h.shape[1],))
    if sum(sizes) != h.shape[1]:
        raise ValueError(f"{layer.describe()}: batch sizes {sizes} do not add up to the {h.shape[1]} inputs")
    hd = h.to(torch.float64)
    normalized = torch.cat([_normalize(part) for part in torch.split(hd, list(sizes), dim=1)], dim=1)
    return layer.activation(normalized).to(h.dtype)


def sample_batch_ensemble(architecture: Layer, inputs: torch.Tensor, batch_sizes: tuple[int, ...], networks: int,
                          width: int, seed: int = 0, weight_var: float | Hyperparameters = 1.0, bias_var: float = 0.0,
                          sampler: str = "gram", chunk_size: int = 64, dtype: torch.dtype = torch.float32,
                          return_features: bool = False) -> EnsembleSample | torch.Tensor:
    """Per-network covariances ``(M, N, N)`` of a batch-norm network over consecutive batches.

    Each network runs one forward pass per batch (its own batch statistics) with the same weights; the
    final ``Dense`` readout is averaged analytically (``C_m = σw²·ΦΦᵀ/n + σb²``), as in
    :func:`verification.ensembles.sample_ensemble`. ``inputs``: ``(N, d)``, ``sum(batch_sizes) = N``.
    With ``return_features`` the penultimate features ``(M, N, width)`` are returned instead.
    """
    from ..ensembles import EnsembleSample, as_hyperparameters, split_readout  # (circular at import time)

    architecture.validate()
    sizes = tuple(int(b) for b in batch_sizes)
    if sum(sizes) != inputs.shape[0]:
        raise ValueError(f"batch sizes {sizes} do not add up to the {inputs.shape[0]} inputs")
    hyper = as_hyperparameters(weight_var, bias_var)
    body, readout = split_readout(architecture)
    if readout is None:
        raise ValueError(f"{architecture.describe()} must end in a Dense readout")
    generator = torch.Generator().manual_seed(int(seed))
    start = time.perf_counter()
    parts = []
    for first in range(0, networks, chunk_size):
        m = min(chunk_size, networks - first)
        ctx = BatchTwinContext(generator=generator, width=width, hyper=hyper, sampler=sampler, dtype=dtype,
                               batch_sizes=sizes)
        with torch.no_grad():
            h = run_twin(body, inputs.to(dtype).expand(m, *inputs.shape), ctx)
        hd = h.to(torch.float64)
        if return_features:
            parts.append(hd)
            continue
        w, b = ctx.variances(readout, readout.weight_var, readout.bias_var)
        parts.append(w * hd @ hd.transpose(-1, -2) / hd.shape[-1] + b)
    out = torch.cat(parts)
    if return_features:
        return out
    return EnsembleSample(out, networks, width, sampler, time.perf_counter() - start)

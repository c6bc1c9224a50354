"""Named convenience kernels for multi-layer perceptrons."""

from __future__ import annotations

import math

import torch

from ..algebra import VarianceCursor, identical_rows
from ..arch import Activation, Dense, ReLU, mlp
from ..duals.fused import relu_after_affine
from .nngp import NNGPKernel, NTKKernel


class MLPKernel(NNGPKernel):
    """NNGP of an MLP with ``depth`` hidden layers: ``Serial(Dense(), φ, Dense(), φ, ..., Dense())``.

    ``depth = 0`` is the linear (Bayesian linear regression) kernel ``σw²·x·x'/d + σb²``.

    For ReLU (the default) the full matrix is computed by :meth:`_relu_chain`: each ``Dense → ReLU`` pair is
    one fused pass (:func:`~nngp_gpytorch.duals.fused.relu_after_affine`, arc-cosine kernel of Cho & Saul
    2009), so no pre-activation N×N block is formed; the values are those of the layer-by-layer algebra.
    """

    def __init__(self, depth: int = 1, activation: Activation | None = None, **kwargs):
        super().__init__(mlp(depth, activation or ReLU()), **kwargs)
        self.depth = depth
        self._fused_relu = type(activation or ReLU()) is ReLU and depth >= 1

    def _evaluate(self, x1, x2, diag: bool, with_ntk: bool):
        if (getattr(self, "_fused_relu", False) and not diag and not with_ntk and self.input_shape is None
                and (self.block_size is None or x1.shape[-2] <= self.block_size)):
            return self._relu_chain(x1, x2), None
        return super()._evaluate(x1, x2, diag=diag, with_ntk=with_ntk)

    def _relu_chain(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``K(x1, x2)``, shape ``(..., n1, n2)``, of the ReLU MLP: input Gram ``x·x'/d`` (Lee et al. 2018,
        eq. 4), then ``depth`` fused dense+ReLU passes, the last one with the affine readout."""
        d = x1.shape[-1]
        k12 = torch.matmul(x1, x2.mT).div_(d)  # == x1 @ x2ᵀ / d bit for bit, one N×N allocation
        k11 = ((x1 * x1).sum(-1) / d).unsqueeze(-1)
        k22 = ((x2 * x2).sum(-1) / d).unsqueeze(-2)
        cursor = VarianceCursor(self.hyperparameters_for_algebra())
        dense = [layer for layer in self.architecture.layers if isinstance(layer, Dense)]
        relu_scale = 1.0 / (2.0 * math.pi)  # b²/2π with b = 1
        variances = [tuple(p.reshape(*p.shape, 1, 1) for p in cursor.next(layer, layer.weight_var, layer.bias_var))
                     for layer in dense]
        # pair indices for unbatched outputs; the mask otherwise (batched inputs or hyperparameters, e.g. Pyro samples)
        batched = x1.dim() > 2 or x2.dim() > 2 or any(p.dim() > 2 for pair in variances for p in pair)
        identical = identical_rows(x1, x2) if batched else _identical_pairs(x1, x2)
        for i, (w, b) in enumerate(variances[:-1]):
            k11, k22 = torch.addcmul(b, w, k11), torch.addcmul(b, w, k22)  # pre-activation variances
            readout = variances[-1] if i == len(variances) - 2 else None  # the last ReLU also applies the readout
            k12 = relu_after_affine(k12, w, b, k11, k22, identical, scale=relu_scale, readout=readout)
            k11, k22 = k11 / 2, k22 / 2  # E[relu(u)²] = k/2
        return k12


def _identical_pairs(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Row-major indices ``(nnz, 2)`` of the pairs ``(i, j)`` with ``x1[i] == x2[j]`` exactly (by value), for
    ``(n1, d)`` and ``(n2, d)`` inputs: the True entries of :func:`~nngp_gpytorch.algebra.identical_rows`
    without its ``O(n)`` row-by-row comparisons or the ``n1×n2`` mask.

    Rows are grouped by a 64-bit hash of their bits (``-0.0`` normalized to ``0.0``) and the grouping is checked
    by comparing every row with its group's first row; on a hash collision, or non-finite entries, the exact
    :func:`identical_rows` is used instead.
    """
    n1 = x1.shape[0]
    rows = torch.cat([x1, x2]).detach() + 0.0  # + 0.0 maps −0.0 to 0.0, equal by value
    if rows.shape[0] == 0 or not torch.isfinite(rows).all():
        return torch.nonzero(identical_rows(x1, x2))
    int_type = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[rows.element_size()]
    bits = rows.contiguous().view(int_type).to(torch.int64)
    mult = torch.randint(1, 2**62, (rows.shape[1],), generator=torch.Generator().manual_seed(0x5EED)) * 2 + 1
    _, group = torch.unique((bits * mult.to(rows.device)).sum(-1), return_inverse=True)
    first = torch.full((int(group.max()) + 1,), rows.shape[0], dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, group, torch.arange(rows.shape[0], device=rows.device), reduce="amin")
    if not bool((rows == rows[first[group]]).all()):  # a hash collision: exact fallback
        return torch.nonzero(identical_rows(x1, x2))
    g1, g2 = group[:n1], group[n1:]
    order = torch.argsort(g2, stable=True)  # x2's rows by group, original order within a group
    sorted_g2 = g2[order]
    lo = torch.searchsorted(sorted_g2, g1)
    counts = torch.searchsorted(sorted_g2, g1, right=True) - lo
    i = torch.repeat_interleave(torch.arange(n1, device=rows.device), counts)
    start = torch.cumsum(counts, 0) - counts
    j = order[lo[i] + torch.arange(i.shape[0], device=rows.device) - start[i]]
    return torch.stack([i, j], dim=1)


class MLPNTKKernel(NTKKernel):
    """NTK of the same MLP as :class:`MLPKernel`."""

    def __init__(self, depth: int = 1, activation: Activation | None = None, **kwargs):
        super().__init__(mlp(depth, activation or ReLU()), **kwargs)
        self.depth = depth

"""The NNGP kernel of a network with batch norm: a kernel over a declared set of batches."""

from __future__ import annotations

import torch

from ..algebra import Hyperparameters
from ..algebra.batchnorm import DEFAULT_STEP, evaluate_batches, propagate_batches
from ..arch import Activation, Layer, Serial, batchnorm_mlp
from .nngp import NNGPKernel, warn_deprecated


def _hyperparameter_free_body(architecture: Layer) -> bool:
    """Whether ``architecture`` is ``Serial(A, BatchNorm(φ), ..., A, BatchNorm(φ), A)`` with fresh-weight affine
    layers ``A``: then every hidden block is invariant to its σw², σb² and only the readout's matter."""
    layers = architecture.children() if isinstance(architecture, Serial) else ()
    if len(layers) < 3 or len(layers) % 2 == 0 or not type(layers[-1]).fresh_weights:
        return False
    pairs = zip(layers[:-1:2], layers[1:-1:2], strict=True)
    return all(type(a).fresh_weights and not a.children() and type(n).set_semantics for a, n in pairs)


class BatchNormKernel(NNGPKernel, serves="set_semantics"):
    r"""NNGP of a description with batch norm (batch statistics), e.g. ``A.batchnorm_mlp(depth)`` =
    ``Serial(Dense(), BatchNorm(φ), ..., Dense(), BatchNorm(φ), Dense())``. ``NNGPKernel(description)`` returns
    this class for any description with a ``set_semantics`` layer.

    Batch norm makes a network's output at ``x`` depend on every input of ``x``'s batch, so this kernel is
    defined over a **declared set of batches**, not over pairs. Inputs carry their batch in column 0:
    a row is ``[batch_id, x_1, ..., x_d]``. Declare every batch once, with all of its points, through
    ``batches=`` or :meth:`declare_batches`; then ``K(a, b)`` for any rows ``a``, ``b`` of declared batches is
    the entry of the joint covariance of the whole set (within a batch: one forward pass of the network on
    that batch; across batches: two forward passes of the same network). Because every call recomputes the
    joint kernel of the declared batches involved and then selects the requested rows, GPyTorch's lazy
    sub-block evaluation in ``ExactGP`` prediction (``(test, test)``, ``(test, train)``) returns exactly the
    entries of the dense joint matrix. A row whose batch was not declared, or that is not one of its
    batch's declared points, raises ``ValueError`` instead of silently redefining the batch.

    Within-batch blocks: ``V = B·∫₀^∞ V_φ(Σ_G(I + 2sΣ_G)^{−1}) det(I + 2sΣ_G)^{−1/2} ds`` (Yang et al.
    2019; reference/kernels.md "Batch norm"), cross-batch blocks by the two-batch double integral, both
    to ~1e-14 (:mod:`nngp_gpytorch.algebra.batchnorm`). Only the readout's σw², σb² change the kernel
    (batch norm removes the scale and mean of each hidden layer's pre-activations), so those are the only
    hyperparameters with non-zero gradients. Batches need ``B ≥ 2`` points (``B = 2``: ``V = I/2`` for ReLU).
    Other descriptions with batch norm are evaluated by the general batch algebra at every call.

    The NTK of batch norm is not a pairwise kernel: ``NTKKernel`` of such a description raises.

    Args:
        architecture: a description with ``BatchNorm(φ)`` layers, ``φ`` positively homogeneous (ReLU,
            LeakyReLU, Abs, Identity, Step, Sign), ending in an affine readout.
        batches: optional ``(N, 1 + d)`` rows ``[batch_id, features]`` to declare at construction.
        step: quadrature step (see :mod:`nngp_gpytorch.algebra.batchnorm`).
        **kwargs: as for :class:`~nngp_gpytorch.kernels.NNGPKernel` (``weight_var``, ``bias_var``,
            ``per_layer``, priors, ``batch_shape``, ...).

    >>> from nngp_gpytorch import NNGPKernel, arch as A
    >>> kernel = NNGPKernel(A.batchnorm_mlp(2))
    >>> x = torch.cat([torch.tensor([[0.0]] * 4 + [[1.0]] * 4), torch.randn(8, 3)], dim=-1)
    >>> kernel.declare_batches(x)
    >>> K = kernel(x).to_dense()  # (8, 8), two batches of 4
    """

    def __init__(self, architecture: Layer, batches: torch.Tensor | None = None, step: float = DEFAULT_STEP,
                 **kwargs):
        if kwargs.get("input_shape") is not None:
            raise ValueError("a batch-norm kernel takes flat inputs [batch_id, features]; input_shape is not supported")
        super().__init__(architecture, **kwargs)
        self.hyperparameter_free_body = _hyperparameter_free_body(architecture)
        self.step = float(step)
        self._batches: dict[int, torch.Tensor] = {}
        self._cache: dict[tuple, torch.Tensor] = {}
        if batches is not None:
            self.declare_batches(batches)

    # --- the declared set ----------------------------------------------------------------------
    @staticmethod
    def _ids(x: torch.Tensor, label: str) -> torch.Tensor:
        ids = x[..., 0]
        if not torch.equal(ids, ids.round()) or (ids < 0).any():
            raise ValueError(f"BatchNormKernel: column 0 of {label} must hold non-negative integer batch ids")
        return ids.long()

    def declare_batches(self, x: torch.Tensor) -> None:
        """Declare batches from rows ``[batch_id, features]`` (``(N, 1 + d)``); each id's rows are one
        whole batch, in order. Re-declaring an id replaces it."""
        if x.dim() != 2 or x.shape[-1] < 2:
            raise ValueError(f"BatchNormKernel: batches must be (N, 1 + d) rows [batch_id, features], got "
                             f"{tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("BatchNormKernel: declared batches contain NaN or Inf")
        ids = self._ids(x, "the declared batches")
        for b in ids.unique().tolist():
            rows = x[ids == b, 1:].detach().clone()
            if rows.shape[0] < 2:
                raise ValueError(f"BatchNormKernel: batch {b} has {rows.shape[0]} point; batch norm needs at "
                                 "least 2 points per batch (with one the normalization is 0/0)")
            if self._batches and next(iter(self._batches.values())).shape[-1] != rows.shape[-1]:
                raise ValueError("BatchNormKernel: all batches must have the same number of features")
            self._batches[int(b)] = rows
        self._cache.clear()

    @property
    def declared_batches(self) -> dict[int, torch.Tensor]:
        """``{batch_id: (B, d) points}`` of the declared batches."""
        return dict(self._batches)

    def _locate(self, x: torch.Tensor, label: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch id and position within the declared batch of every row of ``x`` ``(n, 1 + d)``."""
        ids = self._ids(x, label)
        positions = torch.empty_like(ids)
        for b in ids.unique().tolist():
            if b not in self._batches:
                raise ValueError(
                    f"BatchNormKernel: {label} has rows of batch {b}, which was not declared; declare every "
                    "batch with all of its points (kernel.declare_batches) before evaluating the kernel"
                )
            declared = self._batches[b].to(x)
            rows = x[ids == b, 1:]
            if rows.shape[-1] != declared.shape[-1]:
                raise ValueError(f"BatchNormKernel: {label} has {rows.shape[-1]} features but batch {b} was "
                                 f"declared with {declared.shape[-1]}")
            match = (rows[:, None, :] == declared[None, :, :]).all(-1)  # (n_b, B)
            if not match.any(-1).all():
                raise ValueError(f"BatchNormKernel: a row of {label} with batch id {b} is not one of the declared "
                                 "points of that batch (batch norm would change its meaning); re-declare the batch")
            positions[ids == b] = match.float().argmax(-1)
        return ids, positions

    # --- evaluation ----------------------------------------------------------------------------
    def _check_inputs(self, x1, x2):
        super()._check_inputs(x1, x2)
        for label, x in (("x1", x1), ("x2", x2)):
            if x is not None and x.dim() != 2:
                raise ValueError(f"BatchNormKernel: {label} must be (n, 1 + d) rows [batch_id, features]; "
                                 f"batched inputs of shape {tuple(x.shape)} are not supported")

    def joint(self, batch_ids: list[int] | None = None) -> torch.Tensor:
        """The dense joint kernel ``(*batch_shape, N, N)`` over the declared batches ``batch_ids``
        (all declared batches by default), batch after batch in the order given.

        ``K = σw²·V + σb²`` with the readout's variances and ``V`` the post-batch-norm Gram of the last
        hidden layer. ``V`` does not depend on any hyperparameter (each hidden ``Dense → BatchNorm`` block
        is invariant to its σw², σb²), so it is computed once per set of batches and cached.
        """
        batch_ids = sorted(self._batches) if batch_ids is None else [int(b) for b in batch_ids]
        if not self.hyperparameter_free_body:
            x = torch.cat([self._batches[b] for b in batch_ids]).to(self.raw_weight_var)
            sizes = tuple(self._batches[b].shape[0] for b in batch_ids)
            return evaluate_batches(self.architecture, x, sizes, self.hyperparameters_for_algebra(), step=self.step,
                                    quadrature_degree=self.quadrature_degree)
        features = self._features(tuple(batch_ids))
        slot = self.slots - 1 if self.per_layer else 0
        w = self.weight_var[..., slot].unsqueeze(-1).unsqueeze(-1)
        b = self.bias_var[..., slot].unsqueeze(-1).unsqueeze(-1)
        return w * features + b

    def _features(self, batch_ids: tuple[int, ...]) -> torch.Tensor:
        key = (batch_ids, self.raw_weight_var.dtype, self.raw_weight_var.device, self.step, self.quadrature_degree)
        if key not in self._cache:
            x = torch.cat([self._batches[b] for b in batch_ids]).to(self.raw_weight_var)
            sizes = tuple(self._batches[b].shape[0] for b in batch_ids)
            body = Serial(*self.architecture.layers[:-1])
            unit = Hyperparameters.constant(1.0, 0.0, dtype=x.dtype)  # any values: V is invariant to them
            with torch.no_grad():
                state = propagate_batches(body, x, sizes, unit, step=self.step,
                                          quadrature_degree=self.quadrature_degree)
            if len(self._cache) >= 16:
                self._cache.clear()
            self._cache[key] = state.k12
        return self._cache[key]

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if last_dim_is_batch:
            raise NotImplementedError("BatchNormKernel does not support last_dim_is_batch")
        ids1, pos1 = self._locate(x1, "x1")
        ids2, pos2 = self._locate(x2, "x2")
        involved = sorted(set(ids1.tolist()) | set(ids2.tolist()))
        offsets, start = {}, 0
        for b in involved:
            offsets[b] = start
            start += self._batches[b].shape[0]
        k = self.joint(involved)
        index1 = torch.tensor([offsets[b] for b in ids1.tolist()], device=x1.device) + pos1
        index2 = torch.tensor([offsets[b] for b in ids2.tolist()], device=x2.device) + pos2
        if diag:
            if index1.shape != index2.shape:
                raise ValueError("diag=True needs as many points in x1 as in x2")
            return k[..., index1, index2]
        return k[..., index1, :][..., :, index2]


class BatchNormMLPKernel(BatchNormKernel):
    """Deprecated: ``NNGPKernel(A.batchnorm_mlp(depth, activation), ...)``; kept for one release."""

    def __init__(self, depth: int = 1, activation: Activation | None = None, batches: torch.Tensor | None = None,
                 step: float = DEFAULT_STEP, **kwargs):
        warn_deprecated("BatchNormMLPKernel", "NNGPKernel(arch.batchnorm_mlp(depth, activation))")
        super().__init__(batchnorm_mlp(depth, activation), batches=batches, step=step, **kwargs)
        self.depth = depth

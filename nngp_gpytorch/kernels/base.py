"""GPyTorch modules holding the hyperparameters of an infinite-width network and running its algebra."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from gpytorch.constraints import Interval, Positive
from gpytorch.kernels import Kernel
from gpytorch.priors import Prior

from ..algebra import Hyperparameters, evaluate
from ..algebra.per_step import per_step_kernel
from ..arch import Layer, RecurrentLayer
from ..duals.dense_maps import symmetrize
from .tiling import (
    DEFAULT_MAX_MEMORY,
    LIVE_TENSORS,
    budget_bytes,
    check_result_fits,
    conv_runs_compiled,
    engine_minimum_bytes,
    entries_per_pair,
    evaluate_in_tiles,
    rnn_runs_compiled,
    self_bounded,
    tile_sizes,
    validate_memory,
)
from .validation import check_kernel_inputs

#: A bias variance of 0 that must stay learnable (one with a prior) is stored as this value (softplus⁻¹(0) = −∞);
#: without a prior it is exactly 0 (a fixed zero, see :class:`InfiniteWidthKernel`).
ZERO_BIAS_FLOOR = 1e-12

_NAMES = ("weight_var", "bias_var")

Variance = float | Sequence[float] | torch.Tensor


# Prior closures are module-level functions (not lambdas) so that kernels with priors can be pickled.
def _weight_var_param(m: InfiniteWidthKernel) -> torch.Tensor:
    return m.weight_var


def _weight_var_closure(m: InfiniteWidthKernel, v: Variance) -> None:
    m._set_weight_var(v)


def _bias_var_param(m: InfiniteWidthKernel) -> torch.Tensor:
    return m.bias_var


def _bias_var_closure(m: InfiniteWidthKernel, v: Variance) -> None:
    m._set_bias_var(v)


class InfiniteWidthKernel(Kernel):
    r"""Shared machinery of :class:`NNGPKernel` and :class:`NTKKernel`.

    Hyperparameters: ``weight_var`` (σw²) and ``bias_var`` (σb²), each of shape
    ``(*batch_shape, slots)`` with ``slots = 1`` (shared by every affine layer, the default) or one per
    affine layer (``per_layer=True``, in traversal order). Both are positive (softplus constraint by
    default); each may have a prior registered as ``weight_var_prior`` / ``bias_var_prior`` so that
    ``pyro_sample_from_prior`` can drive NUTS over them.

    Convention: the first affine layer sees the input covariance ``σw²·x·x'/d + σb²``; the kernel is the
    covariance of one output unit (output units are i.i.d.).

    Args:
        architecture: an :mod:`nngp_gpytorch.arch` description ending in an affine readout.
        weight_var: initial σw² (a float, or a sequence of per-layer values).
        bias_var: initial σb². An entry given as exactly ``0`` is a **fixed zero**: ``bias_var`` returns exactly
            0 there (no bias at all, no gradient) until a new value is set. With ``bias_var_prior`` a zero is
            stored as ``1e-12`` instead (a random σb² is positive), as before.
        per_layer: one (σw², σb²) per affine layer instead of shared values.
        weight_var_prior, bias_var_prior: optional :class:`gpytorch.priors.Prior`.
        weight_var_constraint, bias_var_constraint: default :class:`~gpytorch.constraints.Positive`.
        quadrature_degree: Gauss–Hermite degree for activations without a closed-form dual. Default
            (``None``): 32 at unit variance, grown with the largest variance (piecewise smooth in the
            hyperparameters); an explicit value is used as given (smooth).
        block_size: evaluate the full matrix in blocks of this many rows of ``x1`` (bounds peak memory
            when gradients are not needed; the values are identical).
        input_dim: if given, inputs must have this many features.
        input_shape: per-example shape of structured inputs, flattened by the user: ``(C, H, W)`` for
            images (channels first), ``(T, d)`` for sequences. Inputs must have ``prod(input_shape)``
            features.
        dtype: dtype of the hyperparameters (default: torch's default dtype); the kernel computes in it.
        max_memory: bytes of intermediates per tile of input pairs (:mod:`~nngp_gpytorch.kernels.tiling`):
            ``"auto"`` (default) 64 MiB on a CPU, 2 GiB on an accelerator; None: one tile. The values do not
            depend on it (see the module for quadrature duals).
        **kwargs: ``batch_shape``, ``active_dims``, ... as for any GPyTorch kernel.

    Precision: the values given (constructor or setter) are kept in float64, and a dtype or device change
    (``.double()``, ``.to(torch.float64)``, ``.float()``) re-derives the raw parameters from them as long as
    training has not changed them, so ``NNGPKernel(net, weight_var=1.5).double()`` holds σw² = 1.5 to float64
    rounding (not the float32-rounded 1.5 of the default dtype). Once the raw values differ from the ones
    derived (an optimizer step, ``initialize``, ``load_state_dict``), a conversion converts them as usual.
    """

    is_stationary = False
    has_lengthscale = False

    def __init__(
        self,
        architecture: Layer,
        weight_var: Variance = 1.0,
        bias_var: Variance = 0.0,
        per_layer: bool = False,
        weight_var_prior: Prior | None = None,
        bias_var_prior: Prior | None = None,
        weight_var_constraint: Interval | None = None,
        bias_var_constraint: Interval | None = None,
        quadrature_degree: int | None = None,
        block_size: int | None = None,
        input_dim: int | None = None,
        input_shape: Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        max_memory: int | str | None = DEFAULT_MAX_MEMORY,
        **kwargs,
    ):
        if kwargs.get("ard_num_dims") is not None:
            raise ValueError("infinite-width kernels have no lengthscale; ard_num_dims is not supported")
        super().__init__(**kwargs)
        if not isinstance(architecture, Layer):
            raise TypeError(f"architecture must be an nngp_gpytorch.arch layer, got {architecture!r}")
        if input_shape is not None:
            input_shape = tuple(int(s) for s in input_shape)
            if not input_shape or any(s < 1 for s in input_shape):
                raise ValueError(f"input_shape must be a tuple of positive sizes, got {input_shape}")
            flat = int(torch.Size(input_shape).numel())
            if input_dim is not None and input_dim != flat:
                raise ValueError(f"input_dim={input_dim} does not match prod(input_shape={input_shape}) = {flat}")
            input_dim = flat
        self.input_shape = input_shape
        architecture.validate(input_shape)
        self.architecture = architecture
        self.per_layer = bool(per_layer)
        self.slots = max(architecture.variance_slots(), 1) if per_layer else 1
        self.quadrature_degree = quadrature_degree
        if block_size is not None and int(block_size) < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        self.block_size = block_size
        self.max_memory = validate_memory(max_memory)
        self.input_dim = input_dim

        shape = (*self.batch_shape, self.slots)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.register_parameter("raw_weight_var", torch.nn.Parameter(torch.zeros(shape, dtype=dtype)))
        self.register_parameter("raw_bias_var", torch.nn.Parameter(torch.zeros(shape, dtype=dtype)))
        self.register_buffer("bias_var_fixed_zero", torch.zeros(shape, dtype=torch.bool))
        self._given: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (float64 values, raw derived)
        self.register_constraint("raw_weight_var", weight_var_constraint or Positive())
        self.register_constraint("raw_bias_var", bias_var_constraint or Positive())
        self._set_weight_var(weight_var)
        self._set_bias_var(bias_var)
        if weight_var_prior is not None:
            self.register_variance_prior("weight_var", weight_var_prior)
        if bias_var_prior is not None:
            self.register_variance_prior("bias_var", bias_var_prior)

    def register_variance_prior(self, name: str, prior: Prior) -> None:
        """Register ``prior`` on ``weight_var`` or ``bias_var`` as ``<name>_prior`` (with module-level closures,
        so that the kernel pickles and ``pyro_sample_from_prior`` can set sampled values). A random σb² is
        positive: fixed zeros of ``bias_var`` become the learnable floor ``1e-12``."""
        if name not in _NAMES:
            raise ValueError(f"name must be one of {_NAMES}, got {name!r}")
        self._check_prior(prior, f"{name}_prior")
        if name == "weight_var":
            self.register_prior("weight_var_prior", prior, _weight_var_param, _weight_var_closure)
        else:
            self.register_prior("bias_var_prior", prior, _bias_var_param, _bias_var_closure)
            if bool(self.bias_var_fixed_zero.any()):
                self._set_bias_var(self.bias_var.detach())

    @staticmethod
    def _check_prior(prior, name: str) -> None:
        if not isinstance(prior, Prior):
            raise TypeError(f"{name} must be a gpytorch.priors.Prior, got {type(prior).__name__}")

    # --- hyperparameters -------------------------------------------------------------------------
    @property
    def weight_var(self) -> torch.Tensor:
        """σw², shape ``(*batch_shape, slots)``."""
        return self.raw_weight_var_constraint.transform(self.raw_weight_var)

    @weight_var.setter
    def weight_var(self, value: Variance) -> None:
        self._set_weight_var(value)

    @property
    def bias_var(self) -> torch.Tensor:
        """σb², shape ``(*batch_shape, slots)``; exactly 0 at the fixed zeros (``bias_var_fixed_zero``)."""
        value = self.raw_bias_var_constraint.transform(self.raw_bias_var)
        zero = self.bias_var_fixed_zero
        return value.masked_fill(zero, 0.0) if bool(zero.any()) else value

    @bias_var.setter
    def bias_var(self, value: Variance) -> None:
        self._set_bias_var(value)

    def _as_variance(self, value: Variance, name: str, allow_zero: bool) -> torch.Tensor:
        raw = getattr(self, f"raw_{name}")
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device)
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} must be finite, got {value}")
        if allow_zero and (value < 0).any() or not allow_zero and (value <= 0).any():
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{name} must be {bound}, got {value.tolist()}")
        if value.dim() >= 1 and value.shape[-1] not in (1, self.slots):
            raise ValueError(
                f"{name} has {value.shape[-1]} values but the kernel has {self.slots} variance slot(s) "
                f"({'per layer' if self.per_layer else 'shared; pass per_layer=True for one per layer'})"
            )
        return value

    def _set_variance(self, name: str, value: Variance) -> None:
        """Validate ``value``, keep it in float64 and set ``raw_<name>`` from it (in the kernel's dtype)."""
        raw = getattr(self, f"raw_{name}")
        exact = value.detach() if isinstance(value, torch.Tensor) else value
        exact = torch.as_tensor(exact, dtype=torch.float64, device="cpu")
        self._as_variance(exact, name, allow_zero=name == "bias_var")
        exact = exact.expand_as(raw).clone() if exact.dim() <= raw.dim() else exact
        if name == "bias_var":
            zero = exact == 0
            if hasattr(self, "bias_var_prior"):  # a random σb² is positive: keep zeros learnable
                exact, zero = exact.clamp_min(ZERO_BIAS_FLOOR), torch.zeros_like(zero)
            if zero.shape == self.bias_var_fixed_zero.shape:
                self.bias_var_fixed_zero.copy_(zero.to(self.bias_var_fixed_zero.device))
            else:
                self.bias_var_fixed_zero = zero.to(self.bias_var_fixed_zero.device)
            exact = exact.masked_fill(zero, 1.0)  # any positive raw value underneath a fixed zero
        if isinstance(value, torch.Tensor) and value.requires_grad:
            converted = value.to(raw.dtype).expand_as(exact) if value.dim() <= raw.dim() else value.to(raw.dtype)
            if name == "bias_var":
                converted = torch.where(self.bias_var_fixed_zero, torch.ones_like(converted), converted)
            self.initialize(**{f"raw_{name}": getattr(self, f"raw_{name}_constraint").inverse_transform(converted)})
            self._given.pop(name, None)  # a traced value (e.g. a Pyro sample): nothing exact to keep
            return
        self._derive_raw(name, exact)

    def _derive_raw(self, name: str, exact: torch.Tensor) -> None:
        raw = getattr(self, f"raw_{name}")
        derived = getattr(self, f"raw_{name}_constraint").inverse_transform(exact.to(raw.device)).to(raw.dtype)
        self.initialize(**{f"raw_{name}": derived})
        self._given[name] = (exact, getattr(self, f"raw_{name}").detach().clone())

    def _set_weight_var(self, value: Variance) -> None:
        self._set_variance("weight_var", value)

    def _set_bias_var(self, value: Variance) -> None:
        self._set_variance("bias_var", value)

    def _apply(self, fn, *args, **kwargs):
        """Module conversions (``.double()``, ``.to(...)``, ``.cuda()``): raw hyperparameters still equal to the
        ones derived from the given values are re-derived from those (float64) values in the new dtype."""
        untouched = {}
        for name in _NAMES:
            given = getattr(self, "_given", {}).get(name)
            raw = getattr(self, f"raw_{name}", None)
            if given is not None and raw is not None and given[1].shape == raw.shape \
                    and given[1].dtype == raw.dtype and torch.equal(given[1].to(raw.device), raw.detach()):
                untouched[name] = given[0]
        out = super()._apply(fn, *args, **kwargs)
        for name, exact in untouched.items():
            with torch.no_grad():
                self._derive_raw(name, exact)
        return out

    def hyperparameters_for_algebra(self) -> Hyperparameters:
        """The current (σw², σb²) as a :class:`~nngp_gpytorch.algebra.Hyperparameters`."""
        return Hyperparameters(self.weight_var, self.bias_var)

    # --- evaluation ------------------------------------------------------------------------------
    def __call__(self, x1, x2=None, diag=False, last_dim_is_batch=False, **params):
        self._check_inputs(x1, x2)
        return super().__call__(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch, **params)

    def _check_inputs(self, x1: torch.Tensor, x2: torch.Tensor | None) -> None:
        name = type(self).__name__
        check_kernel_inputs(name, x1, x2, self.raw_weight_var)
        if self.input_dim is not None and self.active_dims is None and x1.shape[-1] != self.input_dim:
            shape = f" = prod(input_shape={self.input_shape})" if self.input_shape else ""
            raise ValueError(
                f"{name}: inputs have {x1.shape[-1]} features, expected {self.input_dim}{shape}"
            )

    def nngp_and_ntk(
        self, x1: torch.Tensor, x2: torch.Tensor | None = None, diag: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both the NNGP ``K`` and the NTK ``Θ`` from one pass (they share all intermediate work).

        Shapes: ``(..., n1, n2)`` each, or ``(..., n)`` with ``diag=True``. Applies ``active_dims``.
        """
        self._check_inputs(x1, x2)
        if self.active_dims is not None:
            x1 = x1.index_select(-1, self.active_dims)
            x2 = None if x2 is None else x2.index_select(-1, self.active_dims)
        return self._evaluate_symmetrized(x1, x1 if x2 is None else x2, diag=diag, with_ntk=True)

    def per_step(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        """The per-step kernel of a recurrent description: ``σv²·V(t, s) + σvb²`` for every pair and every pair
        of steps, ``(..., n1, n2, T, T)`` (the covariance of the readout applied at step ``t`` of ``x1[i]`` and
        step ``s`` of ``x2[j]``). Raises ``ValueError`` for a description that is not a recurrent layer."""
        if not isinstance(self.architecture, RecurrentLayer):
            raise ValueError(f"per_step needs a recurrent description (RNN, GRU, LSTM), got "
                             f"{self.architecture.describe()}")
        self._check_inputs(x1, x2)
        return per_step_kernel(self.architecture, x1, x1 if x2 is None else x2,
                               self.hyperparameters_for_algebra(), self.input_shape, self.quadrature_degree)

    def _evaluate_symmetrized(self, x1, x2, diag: bool, with_ntk: bool):
        """:meth:`_evaluate`, made exactly symmetric when ``x1`` and ``x2`` are the same tensor.

        Quadrature/QMC rules and blocked reductions may round ``K[i, j]`` and ``K[j, i]`` differently;
        GPyTorch's solvers expect an exactly symmetric ``K(X, X)``, so the two triangles are averaged
        (:func:`~nngp_gpytorch.duals.dense_maps.symmetrize`: a no-op when they are already equal).
        """
        k, t = self._evaluate(x1, x2, diag=diag, with_ntk=with_ntk)
        if not diag and x1 is x2 and k.shape[-1] == k.shape[-2]:
            k = symmetrize(k)
            t = None if t is None else symmetrize(t)
        return k, t

    def entries_per_pair(self, needs_grad: bool | None = None) -> int:
        """Covariance entries per input pair at the widest layer (:func:`~.tiling.entries_per_pair`); an Elman RNN
        counts 1 where its compiled loops run (a CPU, and no gradient: ``needs_grad``, by default whether autograd
        is on and a hyperparameter requires grad)."""
        param = next(self.parameters(), None)
        if needs_grad is None:
            needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        device = param.device if param is not None else torch.device("cpu")
        return entries_per_pair(self.architecture, self.input_shape, rnn_runs_compiled(device, needs_grad))

    def tile_budget(self) -> int:
        """Bytes per tile: ``max_memory``, or for ``"auto"`` 64 MiB on a CPU and 2 GiB on an accelerator (by the
        device of the kernel's parameters)."""
        param = next(self.parameters(), None)
        return budget_bytes(self.max_memory, param.device if param is not None else torch.device("cpu"))

    def tile_sizes(self, n1: int, n2: int, dtype: torch.dtype, with_ntk: bool = False,
                   needs_grad: bool | None = None) -> tuple[int, int]:
        """``(b1, b2)``: rows and columns per tile under ``max_memory`` (``block_size`` caps the rows). An explicit
        ``max_memory`` below one pair (of a tile, or of the conv engine's chunks, which get ``max_memory`` too) is
        refused (:func:`~.tiling.tile_sizes`); ``"auto"`` takes at least one pair."""
        if self.max_memory is None:
            b1, b2 = n1, n2
        else:
            if needs_grad is None:
                needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
            entries, budget = self.entries_per_pair(needs_grad), self.tile_budget()
            engine = 0
            if self.max_memory == "auto":  # the default never refuses: at least one pair per tile
                budget = max(budget, LIVE_TENSORS * entries * torch.finfo(dtype).bits // 8)
            else:
                param = next(self.parameters(), None)
                compiled = conv_runs_compiled(param.device if param is not None else "cpu", needs_grad, dtype)
                engine = engine_minimum_bytes(self.architecture, self.input_shape, dtype, with_ntk, compiled)
            b1, b2 = tile_sizes(n1, n2, budget, entries, dtype, engine)
        return (min(b1, self.block_size) if self.block_size else b1), b2

    def _evaluate(self, x1, x2, diag: bool, with_ntk: bool):
        if diag and x1.shape[-2] != x2.shape[-2]:
            raise ValueError(f"diag=True needs as many points in x1 as in x2, got {x1.shape[-2]} and {x2.shape[-2]}")
        hyper = self.hyperparameters_for_algebra()
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        check_result_fits((*batch, x1.shape[-2], *(() if diag else x2.shape[-2:-1])), x1.dtype, with_ntk, x1.device)

        # an explicit max_memory also bounds the chunks of the rules that chunk their own work (the conv engine)
        chunk = self.tile_budget() if self.max_memory not in (None, "auto") else None

        def run(a, b, diag_):
            return evaluate(self.architecture, a, b, hyper, diag=diag_, with_ntk=with_ntk,
                            quadrature_degree=self.quadrature_degree, input_shape=self.input_shape, chunk_bytes=chunk)

        if self_bounded(self.architecture):
            b1, b2 = x1.shape[-2], x2.shape[-2]
            if self.block_size:
                b1 = min(b1, self.block_size)
        else:
            needs_grad = torch.is_grad_enabled() and (x1.requires_grad or x2.requires_grad or any(
                p.requires_grad for p in self.parameters()))
            b1, b2 = self.tile_sizes(x1.shape[-2], x2.shape[-2], x1.dtype, with_ntk, needs_grad)
        return evaluate_in_tiles(run, x1, x2, diag, with_ntk, b1, b2)

    def _output(self, x1, x2, diag, with_ntk):
        k, t = self._evaluate_symmetrized(x1, x2, diag=diag, with_ntk=with_ntk)
        return t if with_ntk else k

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if last_dim_is_batch:
            raise NotImplementedError(f"{type(self).__name__} does not support last_dim_is_batch")
        return self._output(x1, x2, diag, with_ntk=self._returns_ntk)

    _returns_ntk = False

    def extra_repr(self) -> str:
        return f"architecture={self.architecture.describe()}, slots={self.slots}"

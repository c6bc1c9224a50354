"""``TensorProgramKernel`` / ``TensorProgramNTKKernel``: the master-theorem NNGP kernel and the Tensor
Programs II NTK of a NETSOR program as GPyTorch kernels."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from gpytorch.constraints import Interval, Positive
from gpytorch.kernels import Kernel
from gpytorch.priors import Prior

from ..kernels.base import ZERO_BIAS_FLOOR
from ..kernels.validation import check_kernel_inputs
from .expectations import Accuracy
from .master import ProgramKernelResult, evaluate_program
from .ntk import ProgramNTKResult, evaluate_program_ntk
from .program import Program


def _get_variance(module: TensorProgramKernel, name: str) -> torch.Tensor:
    return module.variance(name)


def _set_variance(module: TensorProgramKernel, value, name: str) -> None:
    module.set_variances(**{name: value})


class TensorProgramKernel(Kernel):
    r"""NNGP kernel of a tensor program (Yang 2019): ``K(x, x') = σ_v²·E[Z^{h(x)} Z^{h(x')}] + σ_b²``.

    Hyperparameters: one positive variance per named parameter of the program
    (``program.parameter_names``: every ``var=`` of its matrices, biases and readout), stored as
    ``raw_variances`` of shape ``(*batch_shape, P)`` behind a :class:`~gpytorch.constraints.Positive`
    constraint; ``variances`` gives them, :meth:`variance` / :meth:`set_variances` read and write by name.
    ``priors={"name": Prior}`` registers ``<name>_prior`` with closures (so ``pyro_sample_from_prior``
    can drive NUTS). A variance of exactly 0 (biases) is stored as ``1e-12`` so it stays learnable.
    Conventions as :class:`~nngp_gpytorch.kernels.base.InfiniteWidthKernel`: input matrices give
    ``σ²·x·x'/d``; the kernel is the covariance of one output unit.

    Args:
        program: a complete :class:`~nngp_gpytorch.tensor_programs.Program` (has inputs and a readout).
        variances: initial values by name (default: the program's ``init`` values).
        priors: optional priors by parameter name.
        constraint: constraint of every variance (default :class:`Positive`).
        accuracy: quadrature / QMC knobs (:class:`~nngp_gpytorch.tensor_programs.Accuracy`).
        **kwargs: ``batch_shape``, ``active_dims`` as for any GPyTorch kernel.

    After each evaluation ``last_result`` holds the :class:`ProgramKernelResult` (QMC standard error and
    the rules used); :meth:`evaluate_with_error` returns both directly.
    """

    is_stationary = False
    has_lengthscale = False

    def __init__(
        self,
        program: Program,
        variances: Mapping[str, float] | None = None,
        priors: Mapping[str, Prior] | None = None,
        constraint: Interval | None = None,
        accuracy: Accuracy | None = None,
        **kwargs,
    ):
        if kwargs.get("ard_num_dims") is not None:
            raise ValueError("TensorProgramKernel has no lengthscale; ard_num_dims is not supported")
        super().__init__(**kwargs)
        if not isinstance(program, Program):
            raise TypeError(f"program must be a tensor_programs.Program, got {type(program).__name__}")
        program.check_complete()
        self.program = program
        self.accuracy = accuracy or Accuracy()
        self.names = program.parameter_names
        self.input_dim = program.input_dim
        self.register_parameter("raw_variances", torch.nn.Parameter(torch.zeros(*self.batch_shape, len(self.names))))
        self.register_constraint("raw_variances", constraint or Positive())
        values = dict(program.parameters)
        for name, value in (variances or {}).items():
            if name not in values:
                raise ValueError(f"unknown variance '{name}'; the program's parameters are {list(self.names)}")
            values[name] = value
        self.set_variances(**values)
        for name, prior in (priors or {}).items():
            if name not in values:
                raise ValueError(f"prior for unknown variance '{name}'; parameters are {list(self.names)}")
            if not isinstance(prior, Prior):
                raise TypeError(f"priors['{name}'] must be a gpytorch.priors.Prior, got {type(prior).__name__}")
            self.register_prior(f"{name}_prior", prior, functools.partial(_get_variance, name=name),
                                functools.partial(_set_variance, name=name))
        self.last_result: ProgramKernelResult | None = None

    # --------------------------------------------------------------------- hyperparameters
    @property
    def variances(self) -> torch.Tensor:
        """All variances, ``(*batch_shape, P)`` in the order of ``program.parameter_names``."""
        return self.raw_variances_constraint.transform(self.raw_variances)

    def variance(self, name: str) -> torch.Tensor:
        """The variance called ``name``, shape ``batch_shape``."""
        return self.variances[..., self._index(name)]

    def variance_dict(self) -> dict[str, float]:
        """The current values as floats (unbatched kernels), e.g. for the finite twin."""
        values = self.variances.detach()
        return {n: float(values[..., i].reshape(-1)[0]) for i, n in enumerate(self.names)}

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"unknown variance '{name}'; the program's parameters are {list(self.names)}")
        return self.names.index(name)

    def set_variances(self, **values) -> None:
        """Set variances by name (floats or tensors broadcastable to ``batch_shape``).

        As for :class:`~nngp_gpytorch.kernels.base.InfiniteWidthKernel`, the values given are kept in float64
        and a later dtype change (``.double()``) re-derives the raw parameters from them, as long as training
        has not moved them."""
        if any(isinstance(v, torch.Tensor) and v.requires_grad for v in values.values()):
            self._set_traced(values)  # e.g. a Pyro sample: keep the graph, nothing exact to keep
            return
        raw = self.raw_variances.detach()
        given = getattr(self, "_given", None)
        if given is not None and torch.equal(given[1].to(raw.device, raw.dtype), raw):
            current = given[0].clone()
        else:
            current = self.raw_variances_constraint.transform(raw.double()).cpu()
        for name, value in values.items():
            i = self._index(name)
            value = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value,
                                    dtype=torch.float64)
            if not torch.isfinite(value).all() or (value < 0).any():
                raise ValueError(f"variance '{name}' must be finite and >= 0, got {value}")
            current[..., i] = value.clamp_min(ZERO_BIAS_FLOOR).expand(current[..., i].shape)
        self._derive_raw(current)

    def _set_traced(self, values) -> None:
        current = self.raw_variances_constraint.transform(self.raw_variances)
        for name, value in values.items():
            i = self._index(name)
            value = torch.as_tensor(value, dtype=current.dtype, device=current.device)
            current = current.clone()
            current[..., i] = value.clamp_min(ZERO_BIAS_FLOOR).expand(current[..., i].shape)
        self.initialize(raw_variances=self.raw_variances_constraint.inverse_transform(current))
        self._given = None

    def _derive_raw(self, exact: torch.Tensor) -> None:
        raw = self.raw_variances
        derived = self.raw_variances_constraint.inverse_transform(exact.to(raw.device)).to(raw.dtype)
        self.initialize(raw_variances=derived)
        self._given = (exact, self.raw_variances.detach().clone())

    def _apply(self, fn, *args, **kwargs):
        """Module conversions re-derive untouched raw variances from the float64 values given."""
        given, raw = getattr(self, "_given", None), getattr(self, "raw_variances", None)
        untouched = (given is not None and raw is not None and given[1].shape == raw.shape
                     and given[1].dtype == raw.dtype and torch.equal(given[1].to(raw.device), raw.detach()))
        out = super()._apply(fn, *args, **kwargs)
        if untouched:
            with torch.no_grad():
                self._derive_raw(given[0])
        return out

    # --------------------------------------------------------------------- evaluation
    def __call__(self, x1, x2=None, diag=False, last_dim_is_batch=False, **params):
        self._check_inputs(x1, x2)
        return super().__call__(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch, **params)

    def _check_inputs(self, x1, x2) -> None:
        name = f"TensorProgramKernel({self.program.name})"
        check_kernel_inputs(name, x1, x2, self.raw_variances)
        if self.active_dims is None and x1.shape[-1] != self.input_dim:
            raise ValueError(f"{name}: x1 has {x1.shape[-1]} features, the program's inputs have "
                             f"{self.input_dim}")

    def evaluate_with_error(self, x1: torch.Tensor, x2: torch.Tensor | None = None,
                            diag: bool = False) -> ProgramKernelResult:
        """Kernel, QMC standard error and the rules used (applies ``active_dims``)."""
        self._check_inputs(x1, x2)
        if self.active_dims is not None:
            x1 = x1.index_select(-1, self.active_dims)
            x2 = None if x2 is None else x2.index_select(-1, self.active_dims)
        return evaluate_program(self.program, x1, x2, self.variances, diag=diag, accuracy=self.accuracy)

    def evaluate_ntk_with_error(self, x1: torch.Tensor, x2: torch.Tensor | None = None,
                                diag: bool = False) -> ProgramNTKResult:
        """NNGP ``K`` and NTK ``Θ`` (Tensor Programs II, :func:`~.ntk.evaluate_program_ntk`) with their QMC
        standard errors (applies ``active_dims``)."""
        self._check_inputs(x1, x2)
        if self.active_dims is not None:
            x1 = x1.index_select(-1, self.active_dims)
            x2 = None if x2 is None else x2.index_select(-1, self.active_dims)
        return evaluate_program_ntk(self.program, x1, x2, self.variances, diag=diag, accuracy=self.accuracy)

    def nngp_and_ntk(self, x1: torch.Tensor, x2: torch.Tensor | None = None,
                     diag: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, Θ)`` from one pass, each ``(*B, n1, n2)`` or ``(*B, n)`` with ``diag`` (as
        :meth:`nngp_gpytorch.kernels.base.InfiniteWidthKernel.nngp_and_ntk`)."""
        result = self.evaluate_ntk_with_error(x1, x2, diag=diag)
        return result.kernel, result.ntk

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if last_dim_is_batch:
            raise NotImplementedError(f"{type(self).__name__} does not support last_dim_is_batch")
        same = x2 is x1 or (x1.shape == x2.shape and torch.equal(x1, x2))
        if self._returns_ntk:
            result = evaluate_program_ntk(self.program, x1, None if same else x2, self.variances, diag=diag,
                                          accuracy=self.accuracy)
            self.last_result = result
            return result.ntk
        result = evaluate_program(self.program, x1, None if same else x2, self.variances, diag=diag,
                                  accuracy=self.accuracy)
        self.last_result = result
        return result.kernel

    _returns_ntk = False

    def extra_repr(self) -> str:
        return f"program={self.program.describe()}"


class TensorProgramNTKKernel(TensorProgramKernel):
    r"""Neural tangent kernel of a tensor program (Yang 2020, *Tensor Programs II*, Cor. 4.4), NTK
    parameterization: ``Θ(x, x') = K(x, x') + Σ_W σ_W² Σ_{i,j} E[dgᵢ dg'ⱼ]·E[hᵢ h'ⱼ] + Σ_b σ_b² E[db db']``
    (:mod:`~nngp_gpytorch.tensor_programs.ntk`).

    Same hyperparameters, priors, ``accuracy``, ``diag`` and batch support as :class:`TensorProgramKernel`
    (it relates to it as :class:`~nngp_gpytorch.kernels.NTKKernel` to
    :class:`~nngp_gpytorch.kernels.NNGPKernel`): calling it returns ``Θ``; :meth:`nngp_and_ntk` returns both;
    :meth:`evaluate_with_error` and ``last_result`` give a
    :class:`~nngp_gpytorch.tensor_programs.ntk.ProgramNTKResult` (``kernel``, ``ntk``, standard errors).

    >>> from nngp_gpytorch.tensor_programs.examples import gru_program
    >>> theta = TensorProgramNTKKernel(gru_program(3, 2)).double()   # erf-GRU NTK, sequences (N, 3·2)
    """

    _returns_ntk = True

    def evaluate_with_error(self, x1: torch.Tensor, x2: torch.Tensor | None = None,
                            diag: bool = False) -> ProgramNTKResult:
        """NNGP, NTK and their QMC standard errors (applies ``active_dims``)."""
        return self.evaluate_ntk_with_error(x1, x2, diag=diag)

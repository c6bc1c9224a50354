"""Hypothesis strategies: random architectures, hyperparameters and input sets, for testing kernels.

Exported for users to property-test their own kernels::

    from hypothesis import given
    from verification import strategies as vst

    @given(vst.kernel_cases())
    def test_my_kernel(case):
        result = verify(case.architecture, case.inputs, weight_var=case.hyper, networks=128, width=1024)
        assert result.passed

Composable: :func:`architectures` draws from every strategy registered with
:func:`register_architecture_strategy` (flat-input families: MLPs here; others add theirs with one call),
:func:`all_kernel_cases` also from :func:`register_case_strategy` (families whose cases carry an
``input_shape``: conv, recurrent), and the
building blocks (:func:`activations`, :func:`dense_layers`, :func:`mlps`, :func:`hyperparameters`,
:func:`input_sets`) are usable on their own. Strategies shrink towards shallow ReLU networks with shared
variances and few, generic inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters

#: Named activations with closed-form or quadrature duals (first = what shrinking goes to).
NAMED = (A.ReLU(), A.Erf(), A.Tanh(), A.Sign(), A.Step(), A.GELU(), A.Abs(), A.LeakyReLU(0.1),
         A.Identity(), A.Sigmoid(), A.SiLU())

#: User callables (dual by Gauss–Hermite quadrature), bounded growth so deep networks stay finite.
USER_CALLABLES = (
    A.Activation(torch.cos, name="cos"),
    A.Activation(torch.sin, name="sin"),
    A.Activation(torch.nn.functional.softplus, name="softplus"),
    A.Activation(lambda x: x * torch.exp(-0.5 * x * x), name="x·exp(-x²/2)"),
)


def activations(include_callables: bool = True, named=NAMED, callables=USER_CALLABLES) -> st.SearchStrategy:
    """An elementwise activation: a named one (``ReLU()``, ``Erf()``, ``LeakyReLU(a)`` with random ``a``,
    ...) or a user callable ``Activation(fn)``."""
    options = [st.sampled_from(named), st.floats(-0.5, 0.5).map(lambda a: A.LeakyReLU(round(a, 3)))]
    if include_callables and callables:
        options.append(st.sampled_from(callables))
    return st.one_of(*options)


def weight_vars(min_value: float = 0.5, max_value: float = 2.5) -> st.SearchStrategy[float]:
    """σw² (rounded to 3 decimals so that examples print readably)."""
    return st.floats(min_value, max_value).map(lambda v: round(v, 3))


def bias_vars(max_value: float = 0.5) -> st.SearchStrategy[float]:
    """σb² ≥ 0, zero with positive probability (dead-unit and zero-input edge cases)."""
    return st.one_of(st.just(0.0), st.floats(0.0, max_value).map(lambda v: round(v, 3)))


@st.composite
def dense_layers(draw, fixed_probability: float = 0.2) -> A.Dense:
    """``Dense()`` (variances from the kernel's hyperparameters) or, sometimes, fixed variances."""
    if draw(st.floats(0, 1)) < fixed_probability:
        return A.Dense(weight_var=draw(weight_vars()), bias_var=draw(bias_vars()))
    return A.Dense()


@st.composite
def mlps(draw, min_depth: int = 0, max_depth: int = 3, activation_strategy=None) -> A.Serial:
    """``Serial(Dense, φ1, Dense, φ2, ..., Dense)`` with ``min_depth..max_depth`` hidden layers, each
    activation drawn independently."""
    activation_strategy = activation_strategy or activations()
    depth = draw(st.integers(min_depth, max_depth))
    layers: list[A.Layer] = []
    for _ in range(depth):
        layers += [draw(dense_layers()), draw(activation_strategy)]
    return A.Serial(*layers, draw(dense_layers()))


_ARCHITECTURE_STRATEGIES: list[st.SearchStrategy] = []


def register_architecture_strategy(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Add a family's architecture strategy to :func:`architectures` (e.g. conv nets, RNNs)."""
    _ARCHITECTURE_STRATEGIES.append(strategy)
    return strategy


def architectures() -> st.SearchStrategy[A.Layer]:
    """Any registered architecture family (MLPs first, so that shrinking goes towards them)."""
    return st.one_of(*_ARCHITECTURE_STRATEGIES)


register_architecture_strategy(mlps())


@st.composite
def hyperparameters(draw, architecture: A.Layer, per_layer: bool | None = None) -> Hyperparameters:
    """Variances for ``architecture``: shared (one slot) or one (σw², σb²) slot per layer that draws
    from the kernel (``architecture.variance_slots()``)."""
    slots = architecture.variance_slots()
    if per_layer is None:
        per_layer = draw(st.booleans()) and slots > 1
    n = slots if per_layer and slots > 1 else 1
    w = [draw(weight_vars()) for _ in range(n)]
    b = [draw(bias_vars()) for _ in range(n)]
    return Hyperparameters(torch.tensor(w, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))


@st.composite
def input_sets(draw, min_points: int = 2, max_points: int = 6, min_dim: int = 1, max_dim: int = 5,
               edge_cases: bool = True) -> torch.Tensor:
    """``(k, d)`` float64 inputs of norm ~√d, with optional edge cases: a near-duplicate (relative
    perturbation 1e-3), an exact duplicate, a zero-norm input, an antipodal pair."""
    k = draw(st.integers(min_points, max_points))
    d = draw(st.integers(min_dim, max_dim))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(d) * draw(st.sampled_from([1.0, 0.5, 2.0]))
    if edge_cases and k >= 2:
        kinds = draw(st.lists(st.sampled_from(["near_duplicate", "duplicate", "zero", "antipodal"]),
                              max_size=2, unique=True))
        for slot, kind in enumerate(kinds):
            i = k - 1 - slot
            if i < 1:
                break
            if kind == "near_duplicate":
                x[i] = x[0] * (1 + 1e-3 * torch.randn(d, generator=g, dtype=torch.float64))
            elif kind == "duplicate":
                x[i] = x[0]
            elif kind == "zero":
                x[i] = 0.0
            elif kind == "antipodal":
                x[i] = -x[0]
    return x


@dataclass(frozen=True)
class KernelCase:
    """An architecture with its hyperparameters and a set of ``(k, d)`` inputs (with the per-example
    ``input_shape`` for structured families, ``d = prod(input_shape)``)."""

    architecture: A.Layer
    hyper: Hyperparameters
    inputs: torch.Tensor
    input_shape: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        return (f"KernelCase({self.architecture.describe()}, weight_var={self.hyper.weight_var.tolist()}, "
                f"bias_var={self.hyper.bias_var.tolist()}, inputs={tuple(self.inputs.shape)})")


@st.composite
def kernel_cases(draw, architecture_strategy=None, inputs_strategy=None) -> KernelCase:
    """An architecture (default :func:`architectures`), hyperparameters fitting it, and inputs."""
    architecture = draw(architecture_strategy or architectures())
    hyper = draw(hyperparameters(architecture))
    inputs = draw(inputs_strategy or input_sets())
    return KernelCase(architecture, hyper, inputs)


_CASE_STRATEGIES: list[st.SearchStrategy] = []


def register_case_strategy(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Add a strategy of whole :class:`KernelCase` values (architecture + hyperparameters + inputs with
    their ``input_shape``) to :func:`all_kernel_cases`: the way for families with structured inputs (conv,
    recurrent) to join the property tests."""
    _CASE_STRATEGIES.append(strategy)
    return strategy


def all_kernel_cases() -> st.SearchStrategy[KernelCase]:
    """:func:`kernel_cases` over flat architectures, or any registered structured case strategy."""
    return st.one_of(kernel_cases(), *_CASE_STRATEGIES)


__all__ = [
    "KernelCase", "NAMED", "USER_CALLABLES", "activations", "all_kernel_cases", "architectures", "bias_vars",
    "dense_layers", "hyperparameters", "input_sets", "kernel_cases", "mlps", "register_architecture_strategy",
    "register_case_strategy", "weight_vars",
]

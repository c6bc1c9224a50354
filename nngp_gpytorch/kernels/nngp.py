"""``NNGPKernel(description)`` and ``NTKKernel(description)``: the kernel of any description.

A description is an architecture tree (:mod:`nngp_gpytorch.arch`) or a tensor program
(:class:`~nngp_gpytorch.tensor_programs.Program`). The two front classes choose the implementation once, at
construction, from what the description declares (:func:`~nngp_gpytorch.arch.capabilities`), never from
its layer classes:

============================  ========================================  =========================================
description                   ``NNGPKernel``                            ``NTKKernel``
============================  ========================================  =========================================
pairwise tree (MLP, CNN, ...)  the covariance algebra (this class)      the same pass with Θ
``set_semantics`` (BatchNorm)  :class:`~.batchnorm.BatchNormKernel`      :class:`~nngp_gpytorch.arch.ArchitectureError`
``transductive`` (GraphConv)   :class:`~.graph.GraphNNGPKernel`          :class:`~.graph.GraphNTKKernel`
GRU / LSTM                     the covariance algebra                   the NTK of the cell's tensor program
``Program``                    ``TensorProgramKernel``                  ``TensorProgramNTKKernel``
============================  ========================================  =========================================

Implementations of a capability declare themselves with ``class X(NNGPKernel, serves="transductive")``;
kernels computed by another package (tensor programs) are registered with :func:`register_description` and
:func:`register_ntk_builder` by :mod:`nngp_gpytorch` itself, so that this module imports only downward.
``isinstance(NNGPKernel(program), NNGPKernel)`` holds for them too.

**Hyperparameter names.** An architecture tree has ``weight_var`` / ``bias_var`` of shape
``(*batch_shape, slots)``: one (σw², σb²) shared by every affine layer, or one per affine layer in traversal
order with ``per_layer=True``. A ``Program`` names each of its variances (``program.parameter_names``;
``kernel.variance(name)``, ``kernel.set_variances(name=value)``, ``variances={name: value}`` and
``priors={name: Prior}`` at construction), because a program's matrices have no traversal order. The
gated-cell NTKs are programs: ``NTKKernel(A.gru(), weight_var=[σu², σw², σv²], bias_var=[σb², ·, σvb²])`` maps
the slots onto the program's ``input_var``, ``hidden_var``, ``readout_var``, ``bias_var``,
``readout_bias_var``, and the kernel returned exposes those names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ..arch import ArchitectureError, Layer, capabilities
from .base import InfiniteWidthKernel

#: description type -> (NNGP class, NTK class), for descriptions that are not architecture trees
_DESCRIPTIONS: dict[type, tuple[type, type]] = {}
#: layer type -> builder(layer, **kwargs) of its NTK kernel, for layers whose rule carries no Θ (GRU, LSTM)
_NTK_BUILDERS: dict[type, Callable[..., Any]] = {}
#: builder(description, refusal, ntk, **kwargs) of the kernel of a tree the validation refuses (tensor programs)
_FALLBACK: list[Callable[..., Any]] = []


def register_description(description_type: type, nngp: type, ntk: type) -> None:
    """Let ``NNGPKernel(d)`` / ``NTKKernel(d)`` build ``nngp(d, **kwargs)`` / ``ntk(d, **kwargs)`` for every
    ``d`` of ``description_type`` (used for tensor programs). The two classes then pass ``isinstance`` checks
    against :class:`NNGPKernel` / :class:`NTKKernel` (they must set ``_returns_ntk``)."""
    _DESCRIPTIONS[description_type] = (nngp, ntk)


def register_fallback(builder: Callable[..., Any]) -> None:
    """``NNGPKernel(tree)`` / ``NTKKernel(tree)`` of a tree whose validation raises an ``ArchitectureError`` return
    ``builder(tree, error, ntk=..., **kwargs)`` (the compiled tensor program's kernel), which re-raises when it
    cannot help."""
    _FALLBACK[:] = [builder]


def register_ntk_builder(layer_type: type, builder: Callable[..., Any]) -> None:
    """``NTKKernel(layer, **kwargs)`` returns ``builder(layer, **kwargs)`` for a ``layer_type`` description
    (a recurrent cell whose NTK is computed by its tensor program)."""
    _NTK_BUILDERS[layer_type] = builder


class KernelFront(type):
    """Metaclass of the two front classes: ``isinstance`` also accepts the registered implementations of
    non-tree descriptions (a program's NNGP kernel is an ``NNGPKernel``, its NTK kernel an ``NTKKernel``)."""

    def __instancecheck__(cls, obj) -> bool:
        if super().__instancecheck__(obj):
            return True
        if not cls.__dict__.get("_front", False):
            return False
        classes = {pair[int(cls._returns_ntk)] for pair in _DESCRIPTIONS.values()}
        classes |= set(_NTK_BUILT) if cls._returns_ntk else set()
        return type(obj) in classes or any(
            isinstance(obj, c) and bool(getattr(obj, "_returns_ntk", False)) == cls._returns_ntk for c in classes)


#: classes returned by the NTK builders (filled as they are built; for isinstance)
_NTK_BUILT: set[type] = set()


class _Front(InfiniteWidthKernel, metaclass=KernelFront):
    """Dispatch shared by :class:`NNGPKernel` and :class:`NTKKernel` (``__new__`` picks the implementation)."""

    _front: ClassVar[bool] = False
    _served: ClassVar[dict[str, type]]

    def __init_subclass__(cls, serves: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_front" not in cls.__dict__:
            cls._front = False
        if cls.__dict__.get("_front"):
            cls._served = {}
        if serves is not None:
            front = next(base for base in cls.__mro__ if base.__dict__.get("_front"))
            front._served[serves] = cls

    def __new__(cls, description=None, *args, **kwargs):
        if not cls.__dict__.get("_front") or description is None:  # subclasses, unpickling, copies
            return super().__new__(cls)
        kind = next((k for k in type(description).__mro__ if k in _DESCRIPTIONS), None)  # the most specific
        if kind is not None:
            return _build_registered(_DESCRIPTIONS[kind][int(cls._returns_ntk)], description, kwargs)
        if not isinstance(description, Layer):
            raise TypeError(f"{cls.__name__} needs an architecture description (nngp_gpytorch.arch) or a tensor "
                            f"Program, got {description!r}")
        if cls._returns_ntk:
            builder = _NTK_BUILDERS.get(type(description))
            if builder is not None:
                kernel = builder(description, **kwargs)
                _NTK_BUILT.add(type(kernel))
                return kernel
        caps = capabilities(description)
        if cls._returns_ntk and not caps.has_ntk:
            raise ArchitectureError(
                f"NTKKernel: {caps.no_ntk} has no neural tangent kernel rule (e.g. batch norm: its NTK is not a "
                "pairwise kernel of the inputs); use NNGPKernel for its NNGP")
        for kind in ("set_semantics", "transductive"):
            if getattr(caps, kind):
                impl = cls._served.get(kind)
                if impl is None:
                    raise ArchitectureError(f"{cls.__name__}: no kernel for a {kind} description "
                                            f"{description.describe()}")
                return super().__new__(impl)
        refusal = _refusal(description, kwargs.get("input_shape"))
        if refusal is not None and _FALLBACK:
            return _FALLBACK[0](description, refusal, ntk=cls._returns_ntk, **kwargs)
        return super().__new__(cls)


def _refusal(description: Layer, input_shape) -> ArchitectureError | None:
    """The validation's ``ArchitectureError`` for ``description`` (``None`` when it is accepted)."""
    try:
        description.validate(tuple(int(s) for s in input_shape) if input_shape is not None else None)
    except ArchitectureError as err:
        return err
    except (TypeError, ValueError):
        return None  # a malformed input_shape: the kernel's own checks report it
    return None


def _build_registered(impl: type, description, kwargs: dict):
    """``impl(description, **kwargs)`` with ``dtype=`` applied exactly (values re-set after the conversion)."""
    for name in ("weight_var", "bias_var", "per_layer", "weight_var_prior", "bias_var_prior"):
        if name in kwargs:
            raise TypeError(f"a Program names its variances: pass variances={{name: value}} and priors={{name: "
                            f"Prior}} instead of {name}= (parameters: {list(description.parameter_names)})")
    dtype = kwargs.pop("dtype", None)
    kernel = impl(description, **kwargs)
    if dtype is not None:
        values = {**dict(description.parameters), **dict(kwargs.get("variances") or {})}
        kernel = kernel.to(dtype)
        kernel.set_variances(**values)  # from the given floats, not their float32 rounding
    return kernel


class NNGPKernel(_Front):
    r"""Neural network Gaussian process kernel (Neal 1995; Lee et al. 2018; Yang 2019) of any description.

    ``K(x, x') = lim_{width→∞} Cov[f(x), f(x')]`` for one output unit ``f`` of the network described by
    ``architecture`` with i.i.d. Gaussian weights ``N(0, σw²/fan_in)`` and biases ``N(0, σb²)``. The
    covariance is propagated layer by layer; for an MLP
    ``K¹ = σw²·x·x'/d + σb²`` and ``K^{l+1} = σw²·E[φ(u)φ(v)] + σb²`` with ``(u, v) ~ N(0, K^l)``
    (Lee et al. 2018, eq. 4–5).

    >>> from nngp_gpytorch import NNGPKernel, arch as A
    >>> kernel = NNGPKernel(A.Serial(A.Dense(), A.ReLU(), A.Dense()), weight_var=2.0, bias_var=0.1)
    >>> gru = NNGPKernel(A.gru(), input_shape=(8, 3), per_layer=True)

    See :class:`~nngp_gpytorch.kernels.base.InfiniteWidthKernel` for the arguments and the module docstring
    (:mod:`nngp_gpytorch.kernels.nngp`) for the kernel each kind of description gets.
    """

    _front = True


class NTKKernel(_Front):
    r"""Neural tangent kernel at initialization (Jacot et al. 2018; Yang 2019), NTK parameterization.

    Weights are ``ω ~ N(0, 1)`` scaled by ``σw/sqrt(fan_in)`` and biases ``σb·β`` with ``β ~ N(0, 1)``;
    ``Θ(x, x') = Σ_params ∂f(x)/∂p · ∂f(x')/∂p`` over all ``ω`` and ``β``, in the limit of infinite width
    (width-independent). For a dense layer ``Θ' = K' + σw²·V_φ'(K)⊙Θ``. In the standard
    parameterization the NTK would instead grow with the widths (see ``docs/ntk.md``).

    Same arguments, hyperparameters and behaviour as :class:`NNGPKernel`;
    :meth:`~nngp_gpytorch.kernels.base.InfiniteWidthKernel.nngp_and_ntk` gives both from one pass. A
    description with a layer that declares ``has_ntk = False`` (batch norm) raises
    :class:`~nngp_gpytorch.arch.ArchitectureError`.
    """

    _front = True
    _returns_ntk = True


def warn_deprecated(old: str, replacement: str) -> None:
    """The one-release :class:`DeprecationWarning` of a named kernel class replaced by a builder."""
    import warnings

    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {replacement}",
                  DeprecationWarning, stacklevel=3)

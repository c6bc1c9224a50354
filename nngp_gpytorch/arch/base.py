"""Base vocabulary of architecture descriptions.

An architecture is a tree of frozen dataclasses. It holds no weights: the analytic kernel
(:mod:`nngp_gpytorch.algebra`) and the finite random network (:mod:`verification.twins`) both read it.

Validation walks the tree with a :class:`Signal` describing what flows between layers: raw inputs,
Gaussian pre-activations (the output of an affine layer, a GP in the infinite-width limit) or
post-activation features (not Gaussian).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar


class ArchitectureError(ValueError):
    """An architecture description that does not define a Gaussian-process limit."""


class SignalKind(enum.Enum):
    INPUT = "input"  # raw data: x (not a random variable)
    GAUSSIAN = "gaussian"  # output of an affine layer: jointly Gaussian in the limit
    FEATURES = "features"  # post-nonlinearity features: not Gaussian


@dataclass(frozen=True)
class Signal:
    """What flows between two layers during validation.

    ``spatial`` is the shape of the spatial/temporal axes of the features (``()`` for plain vectors);
    ``input_shape`` is the per-example shape of the raw input declared to the kernel (``(C, H, W)`` for
    images, ``(T, d)`` for sequences, ``None`` for flat vectors), carried along so that the first layer
    of a structured family can interpret it. Families use both to check shapes before any computation.
    """

    kind: SignalKind
    spatial: tuple[int, ...] = ()
    input_shape: tuple[int, ...] | None = None
    #: the layer (its ``describe()``) after which the features are no longer a pointwise function of one
    #: Gaussian coordinate — batch norm couples the batch, dropout multiplies by a random mask — so no dual
    #: activation applies to them until an affine layer makes them Gaussian again; ``None`` otherwise
    not_pointwise: str | None = None

    def with_kind(self, kind: SignalKind) -> Signal:
        return replace(self, kind=kind, not_pointwise=None if kind is SignalKind.GAUSSIAN else self.not_pointwise)


@dataclass(frozen=True)
class Layer:
    """Base class of every layer description.

    Subclasses implement :meth:`propagate` (validation: what signal comes out given what goes in) and,
    if they hold learnable variances, :meth:`variance_slots` (how many (σw², σb²) pairs they draw from
    the kernel's hyperparameters, in traversal order).

    ``has_ntk`` declares whether the layer's kernel rule can carry the neural tangent kernel Θ. A layer
    without an NTK (batch norm: its infinite-width NTK is not a pairwise kernel) sets it to ``False``;
    the covariance algebra then raises :class:`ArchitectureError` naming the layer whenever Θ is asked for.

    ``fresh_weights`` marks layers that multiply by freshly drawn weights (Dense, Conv, GraphConv, ...):
    in the limit their output is independent of their input, which is what makes a skip connection's
    sum ``h + branch(h)`` a sum of independent Gaussians (see :func:`has_fresh_weights`).

    Capabilities a kernel reads (through :func:`capabilities`, once per tree) instead of testing layer
    classes:

    * ``needs_full_positions``: the rule mixes positions (pooling, attention, readouts over tokens), so the
      state must keep the full position×position covariance rather than its diagonal;
    * ``transductive``: the layer is defined over the nodes of one fixed graph (``GraphConv``): the kernel's
      inputs are node indices, and it is computed over all nodes at once;
    * ``set_semantics``: the layer's output at ``x`` depends on the other inputs of ``x``'s batch (batch
      norm), so the kernel is defined over a declared set of batches, not over pairs.
    """

    has_ntk: ClassVar[bool] = True
    fresh_weights: ClassVar[bool] = False
    needs_full_positions: ClassVar[bool] = False
    transductive: ClassVar[bool] = False
    set_semantics: ClassVar[bool] = False

    def propagate(self, signal: Signal, path: str) -> Signal:  # pragma: no cover - abstract
        raise NotImplementedError

    def variance_slots(self) -> int:
        """Number of (σw², σb²) slots this layer (and its children) draw from the kernel."""
        return 0

    def children(self) -> tuple[Layer, ...]:
        return ()

    def walk(self) -> Iterator[Layer]:
        """Depth-first traversal (pre-order) over this layer and its descendants."""
        yield self
        for child in self.children():
            yield from child.walk()

    def describe(self) -> str:
        """Short human-readable form used in error messages: ``Dense()``, ``LeakyReLU(a=0.1)``."""
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.default is not value and f.default != value:
                shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def validate(self, input_shape: tuple[int, ...] | None = None) -> Signal:
        """Check that this description, as a whole network on inputs of per-example shape
        ``input_shape``, has a Gaussian-process output.

        Raises :class:`ArchitectureError` naming the offending layer by its path
        (e.g. ``Serial[2] ReLU()``).
        """
        start = Signal(SignalKind.INPUT, input_shape=tuple(input_shape) if input_shape is not None else None)
        signal = self.propagate(start, path=self.describe())
        if signal.kind is not SignalKind.GAUSSIAN:
            raise ArchitectureError(
                f"the network {self.describe()} ends in {signal.kind.value} outputs; a readout "
                "(an affine layer such as Dense()) must come last so that the output is a Gaussian process"
            )
        return signal


@dataclass(frozen=True)
class Capabilities:
    """What a whole description needs of its kernel, combined once over the tree (:func:`capabilities`).

    Attributes:
        has_ntk: every layer's rule carries the NTK Θ (``False`` names the first that does not in ``no_ntk``).
        needs_full_positions, transductive, set_semantics: some layer declares it (see :class:`Layer`).
        no_ntk: ``describe()`` of the first layer without an NTK, or ``None``.
    """

    has_ntk: bool
    needs_full_positions: bool
    transductive: bool
    set_semantics: bool
    no_ntk: str | None = None


def capabilities(layer: Layer) -> Capabilities:
    """The :class:`Capabilities` of the tree rooted at ``layer``: the ``or`` of each layer's declaration
    (``and`` for ``has_ntk``), in one depth-first walk."""
    layers = list(layer.walk())
    no_ntk = next((sub.describe() for sub in layers if not type(sub).has_ntk), None)
    return Capabilities(
        has_ntk=no_ntk is None,
        needs_full_positions=any(type(sub).needs_full_positions for sub in layers),
        transductive=any(type(sub).transductive for sub in layers),
        set_semantics=any(type(sub).set_semantics for sub in layers),
        no_ntk=no_ntk,
    )


def has_fresh_weights(layer: Layer) -> bool:
    """Whether ``layer`` applies freshly drawn weights somewhere, so its output is independent of its input
    in the infinite-width limit (a branch without one, e.g. ``SelfAttention()`` or ``LayerNorm()``, stays
    correlated with its input, and summing it with that input as if independent would give a wrong kernel)."""
    return any(type(sub).fresh_weights for sub in layer.walk())


def require_gaussian(layer: Layer, signal: Signal, path: str) -> None:
    """Raise unless ``signal`` is Gaussian (the output of an affine layer)."""
    if signal.kind is not SignalKind.GAUSSIAN:
        what = "the raw input" if signal.kind is SignalKind.INPUT else "non-Gaussian post-activation features"
        raise ArchitectureError(
            f"{path}: {layer.describe()} needs Gaussian pre-activations but receives {what}; "
            "put an affine layer (e.g. Dense()) before it"
        )


@dataclass(frozen=True, init=False)
class Serial(Layer):
    """Layers applied one after the other: ``Serial(Dense(), ReLU(), Dense())``."""

    layers: tuple[Layer, ...] = field(default=())

    def __init__(self, *layers: Layer):
        if len(layers) == 1 and isinstance(layers[0], list | tuple):
            layers = tuple(layers[0])
        if not layers:
            raise ArchitectureError("Serial() needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ArchitectureError(
                    f"Serial[{i}] is {layer!r}, not a layer description (did you forget the parentheses, "
                    "e.g. ReLU() instead of ReLU?)"
                )
        object.__setattr__(self, "layers", tuple(layers))

    def children(self) -> tuple[Layer, ...]:
        return self.layers

    def propagate(self, signal: Signal, path: str) -> Signal:
        for i, layer in enumerate(self.layers):
            signal = layer.propagate(signal, f"Serial[{i}] {layer.describe()}")
        return signal

    def variance_slots(self) -> int:
        return sum(layer.variance_slots() for layer in self.layers)

    def describe(self) -> str:
        return f"Serial({', '.join(layer.describe() for layer in self.layers)})"

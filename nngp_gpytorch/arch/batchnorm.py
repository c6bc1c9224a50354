"""Batch normalization followed by a positively homogeneous activation.

Batch norm makes a network's output at one input depend on the other inputs of its batch, so the
infinite-width kernel is a kernel of a *set* (Yang et al. 2019, "A mean field theory of batch
normalization"), not of pairs: see :mod:`nngp_gpytorch.algebra.batchnorm` and
:class:`~nngp_gpytorch.kernels.BatchNormMLPKernel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from .activations import Abs, Activation, Identity, LeakyReLU, ReLU, Sign, Step
from .base import ArchitectureError, Layer, Signal, SignalKind, require_gaussian

#: Activations ``φ`` with ``φ(c·x) = c^α·φ(x)`` for ``c > 0``, and their degree ``α``.
HOMOGENEOUS_DEGREE: dict[type, int] = {ReLU: 1, LeakyReLU: 1, Abs: 1, Identity: 1, Step: 0, Sign: 0}


def homogeneity_degree(activation: Activation) -> int:
    """Degree ``α`` of a positively homogeneous activation (``φ(c x) = c^α φ(x)``, ``c > 0``).

    Raises :class:`ArchitectureError` for activations that are not positively homogeneous (erf, tanh,
    GELU, ...): their batch-norm kernel has no one-dimensional integral representation here.
    """
    degree = HOMOGENEOUS_DEGREE.get(type(activation))
    if degree is None:
        supported = ", ".join(f"{t.__name__}()" for t in HOMOGENEOUS_DEGREE)
        raise ArchitectureError(
            f"BatchNorm({activation.describe()}): the activation after batch norm must be positively "
            f"homogeneous (one of {supported}); {activation.describe()} is not"
        )
    return degree


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch norm with batch statistics (no affine parameters, ``eps = 0``) then ``activation``.

    For one unit with pre-activations ``g ∈ R^B`` over a batch of ``B`` inputs,
    ``BN(g) = (g − mean(g)) / std(g) = √B·G g/‖G g‖`` with ``G = I − 11ᵀ/B`` and the biased standard
    deviation; the layer outputs ``φ(BN(g))``. ``activation`` must be positively homogeneous
    (ReLU, LeakyReLU, Abs, Identity of degree 1; Step, Sign of degree 0); the default ``Identity()``
    is batch norm alone. The activation is part of this layer because ``BN(g)`` is not Gaussian
    (it lies on a sphere), so ``Serial(BatchNorm(), ReLU())`` would apply a Gaussian dual to a
    non-Gaussian signal; write ``BatchNorm(ReLU())`` instead.

    Batch statistics make the network's output a function of the whole batch: the kernel is defined
    over a declared set of batches (:class:`~nngp_gpytorch.kernels.BatchNormMLPKernel`), and a generic
    pairwise kernel containing this layer raises an error. A batch of one input is undefined
    (``G g = 0``); a batch of two gives ``BN(g) = ±(1, −1)``. The neural tangent kernel is not provided
    (``has_ntk = False``).
    """

    activation: Activation = field(default_factory=Identity)

    has_ntk: ClassVar[bool] = False
    set_semantics: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.activation, Activation):
            raise ArchitectureError(f"BatchNorm(activation=...) needs an activation, got {self.activation!r}")
        homogeneity_degree(self.activation)

    @property
    def degree(self) -> int:
        """Homogeneity degree ``α`` of the activation."""
        return homogeneity_degree(self.activation)

    def propagate(self, signal: Signal, path: str) -> Signal:
        require_gaussian(self, signal, path)
        if signal.spatial:
            raise ArchitectureError(
                f"{path}: BatchNorm needs flat features but receives spatial shape {signal.spatial}"
            )
        return replace(signal.with_kind(SignalKind.FEATURES), not_pointwise=self.describe())

    def describe(self) -> str:
        return f"BatchNorm({self.activation.describe()})"

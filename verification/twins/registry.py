"""Finite twins: each layer description read as a random finite layer, vectorized over M networks.

A twin maps the features of M independent networks on k inputs, ``h`` of shape ``(M, k, *structure,
features)`` (features last), to the next layer's features. Twins are written independently of the
kernel rules — the point of verification is that two independent computations agree — and registered
with :func:`finite_twin`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nngp_gpytorch.algebra import Hyperparameters, VarianceCursor
from nngp_gpytorch.arch import Layer
from nngp_gpytorch.arch.dispatch import LayerDispatch

Twin = Callable[[Layer, torch.Tensor, "TwinContext"], torch.Tensor]
_TWINS: LayerDispatch[Twin] = LayerDispatch()

SAMPLERS = ("literal", "gram")


class NoFiniteTwinError(NotImplementedError):
    """The architecture contains a layer without a finite twin."""


def finite_twin(*layer_types: type) -> Callable[[Twin], Twin]:
    """Decorator registering ``twin(layer, h, ctx) -> h`` for the given layer types."""
    return _TWINS.register(*layer_types)


def twin_for(layer: Layer) -> Twin:
    twin = _TWINS.lookup(layer)
    if twin is None:
        raise NoFiniteTwinError(f"{layer.describe()} has no finite twin in verification.twins")
    return twin


def run_twin(layer: Layer, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    """Apply ``layer``'s finite twin and check that the result is finite (naming the layer if not)."""
    out = twin_for(layer)(layer, h, ctx)
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"the finite twin of {layer.describe()} produced non-finite values")
    return out


@dataclass
class AffineRecord:
    """One affine map used in a forward pass, kept for the empirical NTK (δ-trick).

    ``inputs``: what the weight multiplied, ``(M, k, ..., fan_in)``; ``outputs``: the pre-activations it
    produced (requires grad), ``(M, k, ..., width)``; σw², σb² and the fan-in used for scaling.

    ``outputs`` may also be a list of ``P`` tensors ``(M, k, width)``, one per position sharing the weight,
    when the positions are separate nodes of the autograd graph (a recurrent map applied at every time
    step: ``z_t = a_t·W`` for ``t < P``); ``inputs`` is then ``(M, k, P, fan_in)`` and the δ's of the
    positions are stacked on axis ``-2`` (``(R, M, k, P, width)``). Several records may share the same
    outputs (the input and the hidden map of one gate both produce its pre-activation).

    ``readout``: this map is the network's own final readout (a layer that holds its readout, e.g. the
    recurrent layers), ``outputs`` being the network outputs; the empirical NTK then adds its term
    ``σv²·ΦΦᵀ/n + σvb²`` exactly instead of sampling it.
    """

    inputs: torch.Tensor
    outputs: torch.Tensor | list[torch.Tensor]
    weight_var: float
    bias_var: float
    fan_in: int
    readout: bool = False


@dataclass
class TwinContext:
    """Randomness, width and variances shared by the twins of one forward pass of M networks.

    Args:
        generator: the seeded random stream.
        width: width of every hidden layer whose description leaves it open.
        hyper: the same :class:`~nngp_gpytorch.algebra.Hyperparameters` the kernel uses.
        sampler: ``"literal"`` (weight matrices drawn entry by entry, the reference) or ``"gram"``
            (exact Gram-conditional sampling of pre-activations where a weight is used once per pass).
        dtype: sampling dtype (float32 by default; estimates are accumulated in float64).
        record_affine: keep :class:`AffineRecord` entries (the empirical NTK needs them).
        input_shape: per-example shape of structured inputs (``(C, H, W)``, ``(T, d)``) or ``None``. The
            ensemble feeds flat inputs ``(M, k, d)``; the first twin of a structured family reshapes
            them with this shape.
        exact_readout_of: a layer that holds its own readout (a recurrent layer) and ends the network: its twin
            returns the readout's input features ``Φ`` instead of sampled readout units and leaves the readout's
            variances in ``readout_variances``, so that the ensemble averages the readout exactly
            (``C_m = σv²·ΦΦᵀ/n + σvb²``, Rao–Blackwell) as it does for a final ``Dense``.
    """

    generator: torch.Generator
    width: int
    hyper: Hyperparameters
    sampler: str = "literal"
    dtype: torch.dtype = torch.float32
    record_affine: bool = False
    records: list[AffineRecord] = field(default_factory=list)
    input_shape: tuple[int, ...] | None = None
    exact_readout_of: Layer | None = None
    readout_variances: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        self.cursor = VarianceCursor(self.hyper)

    def variances(self, layer: Layer, weight_var=None, bias_var=None) -> tuple[float, float]:
        w, b = self.cursor.next(layer, weight_var, bias_var)
        return float(w), float(b)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, dtype=self.dtype, device=self.generator.device)

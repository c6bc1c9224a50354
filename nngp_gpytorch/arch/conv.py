"""Convolution over spatial positions (1, 2 or 3 spatial dimensions), and the geometry shared with pooling.

Structured inputs are flattened by the user, channels first (``(n, C·H·W)``), and the kernel is told
``input_shape=(C, H, W)`` once. Padding conventions follow neural-tangents (reference/kernels.md,
"Structural rules"): SAME and CIRCULAR give ``ceil(n/stride)`` outputs with total padding
``max((out−1)·stride + dilation·(k−1) + 1 − n, 0)``, the extra row on the high side; padded taps count in
the ``1/k`` factor; average pooling divides by the full window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ArchitectureError, Layer, Signal, SignalKind

PADDINGS = ("same", "valid", "circular")

IntOrTuple = int | tuple[int, ...]


def per_axis(value: IntOrTuple, ndim: int, name: str, layer: Layer, path: str | None = None) -> tuple[int, ...]:
    """``value`` as one positive int per spatial axis (an int is repeated)."""
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim:
        raise ArchitectureError(f"{path or layer.describe()}: {name}={value!r} has {len(values)} entries but the "
                                f"features have {ndim} spatial dimension(s)")
    return values


def output_size(n: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    """Number of output positions along one axis (0 when a ``valid`` filter does not fit)."""
    span = dilation * (kernel - 1) + 1
    if padding == "valid":
        return (n - span) // stride + 1 if n >= span else 0
    return -(-n // stride)


def incoming_spatial(layer: Layer, signal: Signal, path: str) -> tuple[int, ...]:
    """The spatial shape entering ``layer``: from ``input_shape[1:]`` for raw inputs, else the signal's."""
    if signal.spatial:
        return signal.spatial
    if signal.kind is SignalKind.INPUT:
        if signal.input_shape is None or len(signal.input_shape) < 2:
            raise ArchitectureError(
                f"{path}: {layer.describe()} needs structured inputs; give the kernel input_shape=(C, H, W) "
                "(channels first, inputs flattened to C·H·W features)"
            )
        return tuple(signal.input_shape[1:])
    raise ArchitectureError(f"{path}: {layer.describe()} needs spatial features but receives flat features "
                            "(after Dense, Flatten or GlobalAvgPool)")


def check_common(layer: Layer, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(layer, name)
        values = (value,) if isinstance(value, int) else tuple(value)
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ArchitectureError(f"{layer.describe()}: {name} must be a positive int or a tuple of positive "
                                    f"ints, got {value!r}")
    if layer.padding not in PADDINGS:
        raise ArchitectureError(f"{layer.describe()}: padding must be one of {PADDINGS}, got {layer.padding!r}")


@dataclass(frozen=True)
class Conv(Layer):
    """Convolution with i.i.d. ``N(0, σw²/(C·k))`` filter weights and ``N(0, σb²)`` biases (fan-in ``C·k``,
    ``k = prod(kernel_size)``).

    Kernel (Novak et al. 2019, eq. 8): ``K'[p, p'] = σb² + (σw²/k)·Σ_β K[s·p + d·β − lo, s·p' + d·β − lo]``,
    NTK ``Θ' = K' + (σw²/k)·Σ_β Θ[...]``. ``kernel_size``, ``stride``, ``dilation``: an int (every axis) or
    one per spatial axis; the number of spatial axes (1, 2 or 3) is that of the input. ``width``: channels
    of the finite twin (``None``: the run's width).
    """

    kernel_size: IntOrTuple = 3
    stride: IntOrTuple = 1
    dilation: IntOrTuple = 1
    padding: str = "same"
    weight_var: float | None = None
    bias_var: float | None = None
    width: int | None = None

    fresh_weights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_common(self, ("kernel_size", "stride", "dilation"))
        if self.weight_var is not None and not self.weight_var > 0:
            raise ArchitectureError(f"{self.describe()}: weight_var must be > 0")
        if self.bias_var is not None and not self.bias_var >= 0:
            raise ArchitectureError(f"{self.describe()}: bias_var must be >= 0")
        if self.width is not None and self.width < 1:
            raise ArchitectureError(f"{self.describe()}: width must be a positive integer")

    def geometry(self, spatial: tuple[int, ...], path: str | None = None):
        """``(kernel, stride, dilation, out_shape)`` per axis for input positions ``spatial``."""
        nd = len(spatial)
        if nd > 3:
            raise ArchitectureError(f"{path or self.describe()}: Conv supports 1, 2 or 3 spatial dimensions, got {nd}")
        kernel = per_axis(self.kernel_size, nd, "kernel_size", self, path)
        stride = per_axis(self.stride, nd, "stride", self, path)
        dilation = per_axis(self.dilation, nd, "dilation", self, path)
        out = tuple(output_size(n, k, s, d, self.padding)
                    for n, k, s, d in zip(spatial, kernel, stride, dilation, strict=True))
        if any(o < 1 for o in out):
            raise ArchitectureError(
                f"{path or self.describe()}: the filter {kernel} (dilation {dilation}) is larger than the input "
                f"{spatial} with padding='valid'"
            )
        return kernel, stride, dilation, out

    def propagate(self, signal: Signal, path: str) -> Signal:
        spatial = incoming_spatial(self, signal, path)
        *_, out = self.geometry(spatial, path)
        return Signal(SignalKind.GAUSSIAN, spatial=out, input_shape=signal.input_shape)

    def variance_slots(self) -> int:
        return 1 if self.weight_var is None or self.bias_var is None else 0

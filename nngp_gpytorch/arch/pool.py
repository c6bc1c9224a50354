"""Pooling and readouts over spatial positions (1, 2 or 3 spatial dimensions): average, global average and max
pooling, and ``Flatten``. Padding conventions are those of :mod:`.conv`; average pooling divides by the full
window (padding included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ArchitectureError, Layer, Signal, SignalKind
from .conv import IntOrTuple, check_common, incoming_spatial, output_size, per_axis


def window_geometry(layer: Layer, spatial: tuple[int, ...], path: str | None = None):
    """``(window, stride, out_shape)`` per axis of a pooling ``layer`` (fields ``window``, ``stride`` — default the
    window —, ``padding``) over input positions ``spatial``; an empty output is an error naming the layer."""
    nd = len(spatial)
    window = per_axis(layer.window, nd, "window", layer, path)
    stride = per_axis(layer.stride if layer.stride is not None else layer.window, nd, "stride", layer, path)
    out = tuple(output_size(n, k, s, 1, layer.padding) for n, k, s in zip(spatial, window, stride, strict=True))
    if any(o < 1 for o in out):
        raise ArchitectureError(f"{path or layer.describe()}: the window {window} is larger than the input "
                                f"{spatial} with padding='valid'")
    return window, stride, out


@dataclass(frozen=True)
class AvgPool(Layer):
    """Average pooling over windows of ``window`` positions (``stride`` defaults to ``window``), dividing
    by the full window (padding included). Linear, no parameters: ``K ← A K Aᵀ`` (needs the full spatial
    covariance)."""

    needs_full_positions: ClassVar[bool] = True

    window: IntOrTuple = 2
    stride: IntOrTuple | None = None
    padding: str = "valid"

    def __post_init__(self) -> None:
        check_common(self, ("window",) + (("stride",) if self.stride is not None else ()))

    def geometry(self, spatial: tuple[int, ...], path: str | None = None):
        return window_geometry(self, spatial, path)

    def propagate(self, signal: Signal, path: str) -> Signal:
        spatial = incoming_spatial(self, signal, path)
        *_, out = self.geometry(spatial, path)
        return Signal(signal.kind, spatial=out, input_shape=signal.input_shape)


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """Mean over all positions: ``K' = (1/P²)·Σ_{p,q} K[p, q]``; the next Dense has fan-in C."""

    needs_full_positions: ClassVar[bool] = True

    def propagate(self, signal: Signal, path: str) -> Signal:
        incoming_spatial(self, signal, path)
        return Signal(signal.kind, spatial=(), input_shape=signal.input_shape)


@dataclass(frozen=True)
class Flatten(Layer):
    """Flatten channels × positions into one feature vector. With the next Dense's fan-in C·P the kernel is
    the mean of the same-position diagonal, ``K' = (1/P)·Σ_p K[p, p]`` (no off-diagonal positions needed)."""

    def propagate(self, signal: Signal, path: str) -> Signal:
        if not signal.spatial and signal.kind is not SignalKind.INPUT:
            return signal
        return Signal(signal.kind, spatial=(), input_shape=signal.input_shape)


@dataclass(frozen=True)
class MaxPool(Layer):
    """Max pooling over windows of ``window`` positions per channel (``stride`` defaults to ``window``).

    ``padding``: ``"valid"`` (full windows only), ``"same"`` (``ceil(n/stride)`` outputs; positions outside the
    input are ignored, i.e. padded with −∞ as in torch/TF) or ``"circular"`` (windows wrap around).

    In the limit the channels are i.i.d., so the kernel is a Nonlin of the window's jointly Gaussian
    pre-activations (Yang 2019): ``K'[o, o'] = E[max_{a∈W_o} φ(u_a) · max_{b∈W_o'} φ(v_b)]`` with ``φ`` the
    activation before the pool (identity on Gaussian inputs), and the NTK
    ``Θ'[o, o'] = Σ_{a,b} E[φ'(u_a)·1[a = argmax] · φ'(v_b)·1[b = argmax]]·Θ[a, b]``
    (:mod:`nngp_gpytorch.algebra.maxpool`): exact for windows of two Gaussian cells, otherwise quasi-Monte Carlo
    with ``samples`` scrambled Sobol points (seed ``qmc_seed``) and a warning when the standard error exceeds
    ``tolerance`` × the largest variance. Needs the full spatial covariance. An activation after it acts on a
    max of Gaussians and is refused (for monotone ``φ``, ``φ → MaxPool`` is the same network).
    """

    needs_full_positions: ClassVar[bool] = True

    window: IntOrTuple = 2
    stride: IntOrTuple | None = None
    padding: str = "valid"
    samples: int = 2**13
    qmc_seed: int = 0
    tolerance: float = 1e-2

    def __post_init__(self) -> None:
        check_common(self, ("window",) + (("stride",) if self.stride is not None else ()))
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 8:
            raise ArchitectureError(f"{self.describe()}: samples must be an int >= 8, got {self.samples!r}")
        if not (isinstance(self.tolerance, int | float) and self.tolerance > 0):
            raise ArchitectureError(f"{self.describe()}: tolerance must be a positive number, got {self.tolerance!r}")

    def geometry(self, spatial: tuple[int, ...], path: str | None = None):
        """``(window, stride, out_shape)`` per axis for input positions ``spatial``."""
        if len(spatial) > 3:
            raise ArchitectureError(f"{path or self.describe()}: MaxPool supports 1, 2 or 3 spatial dimensions, "
                                    f"got {len(spatial)}")
        return window_geometry(self, spatial, path)

    def windows(self, spatial: tuple[int, ...]) -> list[list[int]]:
        """For each output position (row-major), the flat row-major input positions its window covers
        (positions outside the input dropped for ``"same"``, wrapped for ``"circular"``)."""
        import itertools

        window, stride, out = self.geometry(spatial)
        lows = []
        for n, k, s, o in zip(spatial, window, stride, out, strict=True):
            total = max((o - 1) * s + k - n, 0) if self.padding != "valid" else 0
            lows.append(total // 2)
        result = []
        for opos in itertools.product(*(range(o) for o in out)):
            cells = []
            for beta in itertools.product(*(range(k) for k in window)):
                coord = []
                for axis, (o, b) in enumerate(zip(opos, beta, strict=True)):
                    c = o * stride[axis] + b - lows[axis]
                    if self.padding == "circular":
                        c %= spatial[axis]
                    elif not 0 <= c < spatial[axis]:
                        coord = None
                        break
                    coord.append(c)
                if coord is None:
                    continue
                flat = 0
                for axis, c in enumerate(coord):
                    flat = flat * spatial[axis] + c
                if flat not in cells:
                    cells.append(flat)
            result.append(cells)
        return result

    def propagate(self, signal: Signal, path: str) -> Signal:
        spatial = incoming_spatial(self, signal, path)
        if signal.kind is SignalKind.INPUT:
            raise ArchitectureError(f"{path}: {self.describe()} pools the raw input (not a random variable); put a "
                                    "Conv before it")
        *_, out = self.geometry(spatial, path)
        return Signal(SignalKind.FEATURES, spatial=out, input_shape=signal.input_shape, not_pointwise=self.describe())

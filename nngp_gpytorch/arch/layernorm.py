"""Layer normalization over channels."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .base import ArchitectureError, Layer, Signal, SignalKind


@dataclass(frozen=True)
class LayerNorm(Layer):
    """``h ← (h − mean_c h)/std_c(h)`` over the channels at each position (biased std, no ε, no affine).

    Kernel (reference/kernels.md): on zero-mean Gaussian pre-activations the channel mean vanishes in the
    limit and ``K[p, q] ← K[p, q]/√(K_xx[p, p]·K_yy[q, q])`` (a correlation). Directly after a nonlinearity
    the features have mean ``μ = E[φ(u)]`` per position, subtracted first:
    ``K ← (K − μ_x μ_yᵀ)/√((K_xx − μ_x²)(K_yy − μ_y²))``. Θ is divided by the same factor. On Gaussian
    pre-activations the output is still Gaussian (the normalizer is deterministic in the limit); after a
    nonlinearity it is not, and an activation may not follow until an affine layer does (refused at validation).
    """

    def propagate(self, signal: Signal, path: str) -> Signal:
        if signal.kind is SignalKind.INPUT:
            raise ArchitectureError(f"{path}: LayerNorm() on the raw input is not supported; put an affine "
                                    "layer (Dense/Conv) first")
        if signal.kind is SignalKind.GAUSSIAN:
            return signal  # a Gaussian divided by a deterministic (limit) scale stays Gaussian
        # (φ(g) − μ_x)/σ_x: pointwise in g, but through per-input constants that no dual activation carries
        return replace(signal, not_pointwise=signal.not_pointwise or self.describe())

"""NNGP / NTK of the reference transformer over token sequences."""

from __future__ import annotations

from collections.abc import Sequence

from ..arch.attention import transformer
from .nngp import NNGPKernel, NTKKernel


class _TransformerMixin:
    def _build(self, depth, input_shape, temperature, causal, masked, readout):
        if input_shape is None or len(tuple(input_shape)) != 2:
            raise ValueError(f"{type(self).__name__} needs input_shape=(T, D) (tokens × features per token; inputs "
                             f"flattened token-major to T·D features), got {input_shape}")
        return transformer(depth, temperature=temperature, causal=causal, masked=masked, readout=readout)


class TransformerKernel(_TransformerMixin, NNGPKernel):
    r"""NNGP of ``depth`` transformer blocks (tensor-program attention limit), then a sequence readout.

    Block: ``k = U x``; ``h = LN(k + attention(k))``; ``x' = LN(W₂·ReLU(W₁ h + b₁) + b₂ + h)`` with
    single-head attention whose queries and keys are tied and whose logits are scaled by ``1/(n·temp)``
    (:mod:`nngp_gpytorch.arch.attention` names the exact finite network). Kernel per block
    (reference/kernels.md, "Attention"): ``Σ ← σu²Σ + σb²``; ``Σ̂ = (I+Δ)Σ(I+Δ)ᵀ`` with
    ``Δ = row-softmax(Σ_self/temp)`` per sequence; ``Σ̂ ← corr(Σ̂)``; ``F = σw²·V_ReLU(σw²Σ̂ + σb²) + σb²``;
    ``Σ' = corr(F + Σ̂)``. Readout: mean over tokens (or the last token), then a dense layer.

    Args:
        depth: number of blocks (≥ 1).
        input_shape: ``(T, D)``; inputs are ``(n, T·D)`` token-major (:mod:`nngp_gpytorch.sequences`).
        temperature: softmax temperature; causal: causal attention mask.
        masked: variable lengths via the mask channel (last feature of each token).
        readout: ``"mean"`` or ``"last"``.
        **kwargs: as for :class:`~nngp_gpytorch.kernels.NNGPKernel`.
    """

    def __init__(self, depth: int = 1, input_shape: Sequence[int] | None = None, temperature: float = 1.0,
                 causal: bool = False, masked: bool = False, readout: str = "mean", **kwargs):
        arch = self._build(depth, input_shape, temperature, causal, masked, readout)
        super().__init__(arch, input_shape=input_shape, **kwargs)
        self.depth = depth


class TransformerNTKKernel(_TransformerMixin, NTKKernel):
    """NTK (NTK parameterization) of the same network as :class:`TransformerKernel`; the attention weights
    are deterministic in this limit, so Θ is mapped by the same ``I + Δ`` as K."""

    def __init__(self, depth: int = 1, input_shape: Sequence[int] | None = None, temperature: float = 1.0,
                 causal: bool = False, masked: bool = False, readout: str = "mean", **kwargs):
        arch = self._build(depth, input_shape, temperature, causal, masked, readout)
        super().__init__(arch, input_shape=input_shape, **kwargs)
        self.depth = depth

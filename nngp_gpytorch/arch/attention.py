"""Self-attention over token sequences in the tensor-program (Gaussian) limit, and its companions.

Sequences follow the one convention of :mod:`nngp_gpytorch.sequences`: inputs ``(n, T·D)`` with
``input_shape=(T, D)``; with ``masked=True`` the last channel of each token is a prefix mask (variable
lengths) and ``d = D − 1`` features remain.

**Which finite network this is the limit of** (Yang 2019, tensor programs; reference/kernels.md,
"Attention"). One head of width ``n → ∞``. Keys ``k_t = U x_t (+ b)`` come from a position-wise affine
layer (:class:`TokenDense`). Queries are *the same vectors* as the keys (tied: ``W_Q = W_K``, i.e. the
logits are ``⟨k_t, k_s⟩``), and values are the keys too (no separate value/output projection). Logits are
scaled by ``1/(n·temperature)`` — not ``1/√n`` — so ``⟨k_t, k_s⟩/n → K[t, s]`` (the keys' covariance)
and the attention weights become deterministic, ``Δ = row-softmax(K/temperature)`` per sequence (causal:
keys ``s ≤ t`` only; masked: the sequence's own tokens only). The output ``Δ·k`` (plus ``k`` with
``residual=True``) is then a deterministic linear map of Gaussian vectors: Gaussian, with
``K' = A₁ K A₂ᵀ`` where ``A = Δ`` or ``I + Δ`` is each sequence's own matrix.

Supported: ``queries="tied"`` (the above) and ``queries="independent"`` (independent ``W_Q``, ``W_K`` with
``1/n`` scaling: ``⟨q_t, k_s⟩/n → 0`` so the attention is a uniform average over the allowed keys).
Rejected with :class:`ArchitectureError`: ``scaling="1/sqrt(n)"`` — with finitely many heads the limit is
not Gaussian (Hron et al. 2020, "Infinite attention"), and the infinitely-many-heads limit is not
implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ArchitectureError, Layer, Signal, SignalKind

_SCALINGS = ("1/n", "1/sqrt(n)")
_QUERIES = ("tied", "independent")


def _sequence_positions(layer: Layer, signal: Signal, path: str) -> tuple[int, ...]:
    """The token axis ``(T,)`` entering ``layer``: from ``input_shape = (T, D)`` for raw inputs."""
    if signal.spatial:
        if len(signal.spatial) != 1:
            raise ArchitectureError(f"{path}: {layer.describe()} needs a sequence (one position axis), got positions "
                                    f"{signal.spatial}")
        return signal.spatial
    if signal.kind is SignalKind.INPUT:
        if signal.input_shape is None or len(signal.input_shape) != 2:
            raise ArchitectureError(f"{path}: {layer.describe()} needs sequence inputs: give the kernel "
                                    f"input_shape=(T, D), got {signal.input_shape}")
        return (signal.input_shape[0],)
    raise ArchitectureError(f"{path}: {layer.describe()} needs token features but receives flat features")


@dataclass(frozen=True)
class TokenDense(Layer):
    """Position-wise affine layer ``h_t' = W h_t + b`` with the same ``W``, ``b`` at every token.

    Kernel: ``K'[t, s] = σw²·K[t, s] + σb²`` for every pair of tokens (``Θ' = K' + σw²·Θ``). As the first
    layer it reads raw sequences ``input_shape=(T, D)`` with input covariance ``K⁰[t, s] = x_t·x'_s/d``;
    ``masked=True`` drops the mask channel (see :mod:`nngp_gpytorch.sequences`). Variances as
    :class:`~nngp_gpytorch.arch.Dense` (``None``: learnable slot).
    """

    weight_var: float | None = None
    bias_var: float | None = None
    width: int | None = None
    masked: bool = False

    needs_full_positions: ClassVar[bool] = True
    fresh_weights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.weight_var is not None and not self.weight_var > 0:
            raise ArchitectureError(f"{self.describe()}: weight_var must be > 0")
        if self.bias_var is not None and not self.bias_var >= 0:
            raise ArchitectureError(f"{self.describe()}: bias_var must be >= 0")

    def propagate(self, signal: Signal, path: str) -> Signal:
        positions = _sequence_positions(self, signal, path)
        return Signal(SignalKind.GAUSSIAN, spatial=positions, input_shape=signal.input_shape)

    def variance_slots(self) -> int:
        return 1 if self.weight_var is None or self.bias_var is None else 0


@dataclass(frozen=True)
class SelfAttention(Layer):
    """Single-head self-attention, tensor-program limit (see the module docstring for the exact network).

    Args:
        temperature: logits ``⟨k_t, k_s⟩/(n·temperature)``; ``Δ = row-softmax(K/temperature)``.
        causal: token ``t`` attends to ``s ≤ t`` only.
        residual: output ``k + Δk`` (the reference transformer block) instead of ``Δk``. Do not wrap
            ``SelfAttention()`` alone in :class:`~nngp_gpytorch.arch.Residual`: its output is correlated with
            its input, while ``Residual`` adds independent branches.
        masked: exclude padded keys (mask channel of the raw input, :mod:`nngp_gpytorch.sequences`).
        queries: ``"tied"`` (queries = keys) or ``"independent"`` (uniform attention in the limit).
        scaling: ``"1/n"`` only; ``"1/sqrt(n)"`` raises (not Gaussian with finitely many heads).

    Kernel: ``K'₁₂ = A₁ K₁₂ A₂ᵀ`` with ``A = Δ`` or ``I + Δ`` computed from each sequence's own ``K``;
    the NTK rides along as ``Θ' = A₁ Θ₁₂ A₂ᵀ`` (the softmax path's contribution to the NTK is O(1/n)).
    """

    temperature: float = 1.0
    causal: bool = False
    residual: bool = True
    masked: bool = False
    queries: str = "tied"
    scaling: str = "1/n"

    needs_full_positions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ArchitectureError(f"{self.describe()}: temperature must be > 0")
        if self.queries not in _QUERIES:
            raise ArchitectureError(f"{self.describe()}: queries must be one of {_QUERIES}")
        if self.scaling not in _SCALINGS:
            raise ArchitectureError(f"{self.describe()}: scaling must be one of {_SCALINGS}")
        if self.scaling == "1/sqrt(n)":
            raise ArchitectureError(
                f"{self.describe()}: logits scaled by 1/sqrt(n) with finitely many heads do not have a Gaussian "
                "limit (the attention weights stay random; Hron et al. 2020), and the infinite-heads limit is not "
                "implemented; use the tensor-program regime scaling='1/n'"
            )

    def propagate(self, signal: Signal, path: str) -> Signal:
        if signal.kind is not SignalKind.GAUSSIAN:
            raise ArchitectureError(f"{path}: {self.describe()} needs Gaussian keys (the output of a TokenDense); put "
                                    "TokenDense() before it")
        positions = _sequence_positions(self, signal, path)
        return Signal(SignalKind.GAUSSIAN, spatial=positions, input_shape=signal.input_shape)


@dataclass(frozen=True)
class SequenceReadout(Layer):
    """Leave the token axis: ``"mean"`` over each sequence's own tokens or its ``"last"`` token.

    ``K' = w₁ᵀ K w₂`` with per-sequence weights ``w`` (``1/L`` on ``t < L``, or one-hot at ``L − 1``;
    ``L = T`` unless ``masked``). Follow with a ``Dense`` readout.
    """

    readout: str = "mean"
    masked: bool = False

    needs_full_positions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.readout not in ("mean", "last"):
            raise ArchitectureError(f"{self.describe()}: readout must be 'mean' or 'last'")

    def propagate(self, signal: Signal, path: str) -> Signal:
        if signal.kind is SignalKind.INPUT:
            raise ArchitectureError(f"{path}: {self.describe()} needs token features; put TokenDense() first")
        _sequence_positions(self, signal, path)
        return Signal(signal.kind, spatial=(), input_shape=signal.input_shape)

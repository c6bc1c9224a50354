r"""Kernel rules of token sequences: :class:`TokenDense`, :class:`SelfAttention`, :class:`SequenceReadout`.

The state is position-structured (:mod:`.positional`, full layout): for each pair of sequences the
``T×T'`` covariance ``K[t, s]`` between their tokens, plus each sequence's own ``T×T`` block.

* TokenDense: ``K' = σw²·K + σb²`` entrywise, ``Θ' = K' + σw²·Θ``; on raw sequences the input covariance
  ``K⁰[t, s] = x_t·x'_s/d`` is built first.
* SelfAttention (tensor-program limit, tied queries/keys, ``1/n`` logits): per sequence
  ``Δ = row-softmax(K_self/temperature)`` over the allowed keys (causal, mask); ``A = I + Δ`` (residual) or
  ``Δ``; ``K'₁₂ = A₁ K₁₂ A₂ᵀ``, self blocks ``A K Aᵀ``, and the same map on Θ (the attention weights are
  deterministic in the limit; their fluctuations contribute O(1/n) to the NTK). With independent
  queries, ``Δ`` is the uniform average over the allowed keys.
* SequenceReadout: ``K' = w₁ᵀ K w₂`` with per-sequence weights (mean over own tokens, or last token).
"""

from __future__ import annotations

import torch

from ..arch.attention import SelfAttention, SequenceReadout, TokenDense
from ..arch.base import ArchitectureError
from ..sequences import readout_weights, split_sequences
from .dense import affine
from .positional import from_inputs, mix_positions, pair_ndim, reduce_positions
from .registry import RuleContext, broadcast_param, kernel_rule
from .state import CovState


def _lengths(state: CovState, masked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence lengths ``(n1,)``, ``(n2,)`` (all ``T`` unless ``masked``) from the raw inputs."""
    if state.inputs is None:
        raise ValueError("sequence layers need the raw inputs: give the kernel input_shape=(T, D)")
    return split_sequences(state.inputs[0], masked)[1], split_sequences(state.inputs[1], masked)[1]


def sequence_input_state(state: CovState, masked: bool) -> CovState:
    """Full positional state of raw sequences ``(..., n, T, D)``: ``K⁰[t, s] = x_t·x'_s/d`` (mask dropped)."""
    if state.inputs is None or state.gaussian or state.input_shape is None or len(state.input_shape) != 2:
        raise ValueError("TokenDense on raw inputs needs sequences: give the kernel input_shape=(T, D)")
    tokens1, _ = split_sequences(state.inputs[0], masked)
    tokens2, _ = split_sequences(state.inputs[1], masked)
    flat = state.replace(inputs=(tokens1, tokens2), input_shape=tuple(tokens1.shape[-2:]))
    out = from_inputs(flat, channel_axis=-1, full=True)
    return out.replace(inputs=state.inputs, input_shape=state.input_shape)


@kernel_rule(TokenDense)
def token_dense_rule(layer: TokenDense, state: CovState, ctx: RuleContext) -> CovState:
    if state.positions is None:
        state = sequence_input_state(state, layer.masked)
    elif not state.full_positions:
        raise ArchitectureError(f"{layer.describe()}: needs the full token covariance")
    w, b = ctx.variances(layer, layer.weight_var, layer.bias_var)
    return affine(state, broadcast_param(w, state), broadcast_param(b, state)).replace(pre_activation=None)


def attention_matrix(self_block: torch.Tensor, layer: SelfAttention, lengths: torch.Tensor | None) -> torch.Tensor:
    """``A = Δ`` or ``I + Δ`` ``(..., n, T, T)`` from each sequence's own covariance ``(..., n, T, T)``.

    ``lengths``: ``(n,)`` valid tokens per sequence (keys beyond are excluded), or ``None``.
    """
    t = self_block.shape[-1]
    allowed = torch.ones(t, t, dtype=torch.bool, device=self_block.device)
    if layer.causal:
        allowed = torch.tril(allowed)
    if lengths is not None:
        keys = torch.arange(t, device=self_block.device) < lengths.to(self_block.device).unsqueeze(-1)  # (n, T)
        allowed = allowed & keys.unsqueeze(-2)  # (n, T, T)
    if layer.queries == "tied":
        logits = self_block / layer.temperature
    else:  # independent queries with 1/n logits: ⟨q_t, k_s⟩/n → 0, uniform attention
        logits = torch.zeros_like(self_block)
    logits = torch.where(allowed, logits, torch.full_like(logits, float("-inf")))
    delta = torch.softmax(logits, dim=-1)
    if layer.residual:
        delta = delta + torch.eye(t, dtype=delta.dtype, device=delta.device)
    return delta


@kernel_rule(SelfAttention)
def self_attention_rule(layer: SelfAttention, state: CovState, ctx: RuleContext) -> CovState:
    if state.positions is None or not state.full_positions or len(state.positions) != 1 or not state.gaussian:
        raise ArchitectureError(f"{layer.describe()}: needs Gaussian keys with the full token covariance "
                                "(put TokenDense() before it)")
    lengths = _lengths(state, True) if layer.masked else (None, None)
    if pair_ndim(state) == 1:  # diag layout: (..., n, T, T)
        s1, s2 = state.k11, state.k22
    else:
        s1, s2 = state.k11.squeeze(-3), state.k22.squeeze(-4)
    a1 = attention_matrix(s1, layer, lengths[0])
    a2 = attention_matrix(s2, layer, lengths[1])
    out = mix_positions(state, a1, a2, positions=state.positions)
    return out.replace(gaussian=True, pre_activation=None)


@kernel_rule(SequenceReadout)
def sequence_readout_rule(layer: SequenceReadout, state: CovState, ctx: RuleContext) -> CovState:
    if state.positions is None or not state.full_positions or len(state.positions) != 1:
        raise ArchitectureError(f"{layer.describe()}: needs token features (full token covariance)")
    t = state.positions[0]
    l1, l2 = _lengths(state, layer.masked)
    w1 = readout_weights(l1, t, layer.readout, state.k12.dtype).unsqueeze(-2)  # (n1, 1, T)
    w2 = readout_weights(l2, t, layer.readout, state.k12.dtype).unsqueeze(-2)
    out = mix_positions(state, w1, w2, positions=(1,))
    return reduce_positions(out, "mean_same").replace(gaussian=state.gaussian)

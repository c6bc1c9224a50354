"""Finite twins of token sequences: a literal transformer block, vectorized over M networks.

Features are ``(M, k, T, width)`` (tokens on axis 2, channels last). The raw input arrives flat
``(M, k, T·D)`` and the first :class:`TokenDense` reshapes it with ``ctx.input_shape = (T, D)`` (and, with
``masked=True``, removes the mask channel and stores each sequence's length in ``ctx.sequence_lengths``).

* TokenDense: one weight matrix ``W ~ N(0, σw²/fan_in)`` and bias ``N(0, σb²)`` per network, shared by all
  tokens (literal); with the Gram sampler, the pre-activations of all ``k·T`` tokens are drawn exactly
  from their Gram matrix (the weight is used once per token, so given ``h`` they are i.i.d. ``N(0, G)``
  across output units).
* SelfAttention: logits ``⟨k_t, k_s⟩/(n·temperature)`` with queries = keys = the features themselves
  (tied), softmax over the allowed keys (causal, mask), output ``Δk`` (+ ``k`` with residual). With
  ``queries="independent"`` a literal ``W_Q ~ N(0, 1/n)`` per network gives ``q = W_Q k``.
* SequenceReadout: mean over each sequence's own tokens, or its last token.
"""

from __future__ import annotations

import math

import torch

from nngp_gpytorch.arch import Dense
from nngp_gpytorch.arch.attention import SelfAttention, SequenceReadout, TokenDense
from nngp_gpytorch.sequences import readout_weights, split_sequences

from .dense import dense_twin, gram_conditional_preactivations
from .registry import TwinContext, finite_twin


def _lengths(ctx: TwinContext, k: int, t: int, device) -> torch.Tensor:
    lengths = getattr(ctx, "sequence_lengths", None)
    return torch.full((k,), t, dtype=torch.long, device=device) if lengths is None else lengths


@finite_twin(TokenDense)
def token_dense_twin(layer: TokenDense, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    if h.dim() == 3:  # raw flat sequences
        shape = getattr(ctx, "input_shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(f"{layer.describe()}: give input_shape=(T, D) to the ensemble")
        m, k = h.shape[:2]
        tokens, lengths = split_sequences(h.reshape(m, k, *shape), layer.masked)
        ctx.sequence_lengths = lengths[0]
        h = tokens
    m, k, t, fan_in = h.shape
    if ctx.sampler == "gram" and not ctx.record_affine:
        weight_var, bias_var = ctx.variances(layer, layer.weight_var, layer.bias_var)
        out = gram_conditional_preactivations(h.reshape(m, k * t, fan_in), layer.width or ctx.width, weight_var,
                                              bias_var, ctx)
        return out.reshape(m, k, t, -1)
    as_dense = Dense(weight_var=layer.weight_var, bias_var=layer.bias_var, width=layer.width)
    return dense_twin(as_dense, h, ctx)  # shared over tokens; draws the same variance slot


@finite_twin(SelfAttention)
def self_attention_twin(layer: SelfAttention, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    m, k, t, n = h.shape
    if layer.queries == "tied":
        queries = h
    else:
        w_q = ctx.randn(m, n, n) / math.sqrt(n)
        queries = (h.reshape(m, k * t, n) @ w_q).reshape(m, k, t, n)
    logits = queries @ h.transpose(-1, -2) / (n * layer.temperature)  # (M, k, T, T)
    allowed = torch.ones(t, t, dtype=torch.bool, device=h.device)
    if layer.causal:
        allowed = torch.tril(allowed)
    if layer.masked:
        keys = torch.arange(t, device=h.device) < _lengths(ctx, k, t, h.device).unsqueeze(-1)  # (k, T)
        allowed = allowed & keys.unsqueeze(-2)
    delta = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    out = delta @ h
    return out + h if layer.residual else out


@finite_twin(SequenceReadout)
def sequence_readout_twin(layer: SequenceReadout, h: torch.Tensor, ctx: TwinContext) -> torch.Tensor:
    m, k, t, n = h.shape
    lengths = _lengths(ctx, k, t, h.device) if layer.masked else torch.full((k,), t, dtype=torch.long)
    w = readout_weights(lengths, t, layer.readout, h.dtype).to(h.device)  # (k, T)
    return torch.einsum("kt,mktn->mkn", w, h)

"""The per-step output kernel of a recurrent layer: the readout applied at every pair of steps."""

from __future__ import annotations

import torch

from ..arch.recurrent import LSTM, RNN, RecurrentLayer
from .gated import gate_parameters, gated_tables, pair_block, same_inputs
from .gru import gru_tables
from .lstm import lstm_table_fn
from .recurrent import SequencePair, bp, recurrent_variances, rnn_chain, rnn_table
from .registry import RuleContext
from .state import input_state


def per_step_kernel(layer: RecurrentLayer, x1: torch.Tensor, x2: torch.Tensor, hyper, input_shape,
                    quadrature_degree: int | None = None) -> torch.Tensor:
    """The full per-step output kernel ``σv²·V(t, s) + σvb²`` of every pair: ``(..., n1, n2, T, T)``.

    ``V`` is ``V_φ(Σ)`` for the RNN and the hidden-state kernel ``K`` for the GRU and LSTM, i.e. the
    covariance of the readout applied at step ``t`` of ``x1[i]`` and step ``s`` of ``x2[j]`` (steps past a
    sequence's own length are computed on its padding and carry no meaning).
    """
    ctx = RuleContext(hyper=hyper)
    if quadrature_degree is not None:
        ctx.quadrature_degree = int(quadrature_degree)
    state = input_state(x1, x2, False, False, tuple(input_shape))
    seq = SequencePair.from_state(layer, state)
    (wu, b), (ww, _), (wv, bv) = recurrent_variances(layer, ctx)
    if isinstance(layer, RNN):
        dual = ctx.dual(layer.activation)
        d1, _ = rnn_chain(seq.c11.diagonal(dim1=-2, dim2=-1), wu, b, ww, dual, False)
        d2, _ = rnn_chain(seq.c22.diagonal(dim1=-2, dim2=-1), wu, b, ww, dual, False)
        table, _ = rnn_table(seq.c12, seq.side(d1, 1, 1), seq.side(d2, 2, 1), seq.same12, wu, b, ww, dual, False, 3)
    else:
        fn = lstm_table_fn(ctx, layer) if isinstance(layer, LSTM) else gru_tables
        WU, B, WW, mu = gate_parameters(layer, wu, b, ww)
        table, _, _ = gated_tables(layer, seq, WU, B, WW, fn, pair_block(layer.samples, seq.T), same_inputs(state), mu)
    return bp(wv, 4) * table + bp(bv, 4)

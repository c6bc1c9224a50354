"""Architectures written as tensor programs.

The first five mirror dedicated kernels of the library (same variances, same conventions), so the
program kernel, the dedicated kernel and finite networks can be compared three ways:

* :func:`mlp_program` — ``Serial(Dense(), φ, …, Dense())`` (shared ``weight_var``/``bias_var``, as
  :class:`~nngp_gpytorch.kernels.MLPKernel`);
* :func:`rnn_program`, :func:`gru_program`, :func:`lstm_program` — the cells of
  :mod:`nngp_gpytorch.arch.recurrent` (variances ``input_var``, ``hidden_var``, ``bias_var``,
  ``readout_var``, ``readout_bias_var``; inputs flattened time-major, ``input_shape = (T, d)``);
* :func:`attention_program` — tied query/key self-attention with ``1/n`` logits (reference kernels.md,
  "Attention"): deterministic weights ``Δ = softmax(σu²·Σ/temp)`` via NETSOR+ moments;
* :func:`transformer_program` — the reference transformer block (attention, layer norms as NETSOR+
  moments, position-wise ReLU MLP with residual), as :class:`~nngp_gpytorch.kernels.TransformerKernel`.

Two outside the layer vocabulary:

* :func:`minimal_gated_unit_program` — the minimal gated unit (Zhou et al. 2016), sigmoid gate and
  tanh candidate, any callables;
* :func:`tied_mlp_program` — an MLP whose single hidden matrix is reused in every layer, with residual
  connections ``g_{l+1} = g_l + W φ(g_l)`` (with tying, cross-layer covariances
  ``σ²·E[φ(g_l) φ(g'_m)]`` enter; without the residual the tied MLP's NNGP equals the untied one).
"""

from __future__ import annotations

import torch

from ..arch import Activation, Erf, ReLU, Tanh
from .gated_ntk import gated_program, readout_over_time
from .program import Program, Var


def mlp_program(depth: int, input_dim: int, activation: Activation | None = None,
                weight_var: float = 1.0, bias_var: float = 0.0) -> Program:
    """``Serial(Dense(), φ, Dense(), φ, …, Dense())`` with ``depth`` hidden layers (``depth >= 1``).

    ``g¹ = U x + b¹``; ``g^{l+1} = W^{l+1} φ(g^l) + b^{l+1}``; ``f = v·φ(g^depth)/√n + b``. Every weight
    variance is the parameter ``weight_var`` and every bias variance ``bias_var``, as in ``MLPKernel``.
    """
    if depth < 1:
        raise ValueError(f"mlp_program needs depth >= 1, got {depth}")
    act = activation or ReLU()
    p = Program(f"mlp(depth={depth}, {act.describe()})")
    x = p.input("x", input_dim)
    u = p.input_matrix("U", var="weight_var", init=weight_var)
    g = p.lincomb(p.matmul(u, x), p.bias("b1", var="bias_var", init=bias_var), name="g1")
    for layer in range(2, depth + 1):
        h = p.nonlin(act, g, name=f"h{layer - 1}")
        w = p.matrix(f"W{layer}", var="weight_var", init=weight_var)
        g = p.lincomb(p.matmul(w, h), p.bias(f"b{layer}", var="bias_var", init=bias_var), name=f"g{layer}")
    h = p.nonlin(act, g, name=f"h{depth}")
    p.readout(h, var="weight_var", init=weight_var, bias="bias_var", bias_init=bias_var)
    return p


def rnn_program(length: int, token_dim: int, activation: Activation | None = None, readout: str = "last",
                input_var: float = 1.0, hidden_var: float = 1.0, bias_var: float = 0.0,
                readout_var: float = 1.0, readout_bias_var: float = 0.0) -> Program:
    """Elman RNN ``h_t = W φ(h_{t−1}) + U x_t + b`` (no ``W`` term at ``t = 1``), ``f = v·φ(h_T)/√n + b_v``
    (``readout="mean"``: ``v·(1/T)Σ_t φ(h_t)/√n``), as :class:`nngp_gpytorch.arch.RNN`."""
    act = activation or Erf()
    p = Program(f"rnn(T={length}, {act.describe()}, {readout})")
    xs = p.sequence("x", length, token_dim)
    u = p.input_matrix("U", var="input_var", init=input_var)
    w = p.matrix("W", var="hidden_var", init=hidden_var)
    b = p.bias("b", var="bias_var", init=bias_var)
    hs: list[Var] = []
    for t, x in enumerate(xs):
        terms = [p.matmul(u, x), b] + ([p.matmul(w, hs[-1])] if hs else [])
        g = p.lincomb(*terms, name=f"g{t + 1}")
        hs.append(p.nonlin(act, g, name=f"h{t + 1}"))
    readout_over_time(p, hs, readout, readout_var, readout_bias_var)
    return p


def gru_program(length: int, token_dim: int, readout: str = "last", input_var: float = 1.0,
                hidden_var: float = 1.0, bias_var: float = 0.0, readout_var: float = 1.0,
                readout_bias_var: float = 0.0) -> Program:
    """Yang's erf-GRU (:class:`nngp_gpytorch.arch.GRU`): gates ``ς``, candidate ``erf``, ``h_0 = 0``::

        z_t = ς(U_z x_t + W_z h_{t−1} + b_z), r_t = ς(U_r x_t + W_r h_{t−1} + b_r)
        h_t = (1 − z_t) h_{t−1} + z_t erf(U_h x_t + W_h (h_{t−1} ⊙ r_t) + b_h)

    ``h_t`` is an H-var of ``2t`` G-vars (``z̃_1..t``, ``h̃_1..t``); its expectations beyond 4 dimensions
    are computed by randomized QMC. Readout ``f = v·h_T/√n + b_v``.
    """
    return gated_program("gru", length, token_dim, readout, input_var, hidden_var, bias_var, readout_var,
                         readout_bias_var)


def lstm_program(length: int, token_dim: int, readout: str = "last", input_var: float = 1.0,
                 hidden_var: float = 1.0, bias_var: float = 0.0, readout_var: float = 1.0,
                 readout_bias_var: float = 0.0) -> Program:
    """LSTM with sigmoid gates and tanh (:class:`nngp_gpytorch.arch.LSTM`), ``h_0 = c_0 = 0``::

        i, f, o = σ(U x_t + W h_{t−1} + b),  g = tanh(U_g x_t + W_g h_{t−1} + b_g)
        c_t = f ⊙ c_{t−1} + i ⊙ g,  h_t = o ⊙ tanh(c_t)
    """
    return gated_program("lstm", length, token_dim, readout, input_var, hidden_var, bias_var, readout_var,
                         readout_bias_var)


def _attend(p: Program, keys: list[Var], temperature: float, causal: bool, tag: str) -> list[Var]:
    """``y_t = k_t + Σ_s a_ts k_s`` with ``a_t· = softmax_s(⟨k_t, k_s⟩/(n·temperature))`` (NETSOR+)."""
    ys = []
    for t, k in enumerate(keys):
        visible = list(range(t + 1)) if causal else list(range(len(keys)))
        logits = [p.moment(None, k, keys[s], name=f"{tag}theta{t},{s}") for s in visible]
        terms = [k]
        for j, s in enumerate(visible):
            weight = p.scalar(lambda *th, j=j: torch.softmax(torch.stack(th, -1) / temperature, -1)[..., j],
                              *logits, name=f"{tag}a{t},{s}")
            terms.append((weight, keys[s]))
        ys.append(p.lincomb(*terms, name=f"{tag}y{t}"))
    return ys


def _rsqrt(theta: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(theta)


def _layer_norm(p: Program, g: Var, name: str) -> Var:
    """``g/√(⟨g, g⟩/n)``: layer norm over the width (the coordinate mean of a centred G-var vanishes)."""
    scale = p.scalar(_rsqrt, p.moment(None, g, g, name=f"{name}.ms"), name=f"{name}.scale")
    return p.lincomb((scale, g), name=name)


def attention_program(length: int, token_dim: int, temperature: float = 1.0, causal: bool = False,
                      readout: str = "mean", input_var: float = 1.0, bias_var: float | None = None,
                      readout_var: float = 1.0, readout_bias_var: float | None = None) -> Program:
    """Tied query/key self-attention with ``1/n`` logits and a residual, read out linearly.

    ``k_t = U x_t (+ b)``; logits ``θ_ts = ⟨k_t, k_s⟩/n`` (NETSOR+ moments, → ``Cov(k_t, k_s)``);
    ``a_t· = softmax_s(θ_t·/temperature)`` (causal: ``s ≤ t``); ``y_t = k_t + Σ_s a_ts k_s``;
    ``f = v·(1/T)Σ_t y_t/√n (+ b_v)`` (``readout="last"``: ``y_T``). Kernel (reference kernels.md):
    ``Σ̂ = (I + Δ)·Σ·(I + Δ′)ᵀ`` with each sequence's own ``Δ``, read out by ``σv²``. With
    ``input_var = readout_var`` and both biases this is
    ``Serial(TokenDense(), SelfAttention(residual=True), SequenceReadout(), Dense())``.
    """
    p = Program(f"attention(T={length}, temp={temperature}, {'causal' if causal else 'full'}, {readout})")
    xs = p.sequence("x", length, token_dim)
    u = p.input_matrix("U", var="input_var", init=input_var)
    b = p.bias("b", var="bias_var", init=bias_var) if bias_var is not None else None
    keys = [p.matmul(u, x, name=f"ux{t}") for t, x in enumerate(xs)]
    if b is not None:
        keys = [p.lincomb(k, b, name=f"k{t}") for t, k in enumerate(keys)]
    ys = _attend(p, keys, temperature, causal, "")
    terms = ys[-1] if readout == "last" else [(1.0 / length, y) for y in ys]
    bias = "readout_bias_var" if readout_bias_var is not None else None
    p.readout(terms, var="readout_var", init=readout_var, bias=bias, bias_init=readout_bias_var or 0.0)
    return p


def transformer_program(length: int, token_dim: int, temperature: float = 1.0, causal: bool = False,
                        readout: str = "mean", weight_var: float = 1.0, bias_var: float = 0.1) -> Program:
    """One reference transformer block (:func:`nngp_gpytorch.arch.attention.transformer` with depth 1)::

        k_t = U x_t + b;  h_t = LN(k_t + Σ_s a_ts k_s);  z_t = LN(W₂ ReLU(W₁ h_t + b₁) + b₂ + h_t)
        f = v·(1/T)Σ_t z_t/√n + b_v

    with ``LN(g) = g/√(⟨g, g⟩/n)`` (NETSOR+ moments), ``W₁``, ``W₂`` shared by all tokens, and every weight
    variance ``weight_var``, every bias variance ``bias_var`` (as ``TransformerKernel``).
    """
    p = Program(f"transformer(T={length}, temp={temperature}, {'causal' if causal else 'full'}, {readout})")
    xs = p.sequence("x", length, token_dim)
    u = p.input_matrix("U", var="weight_var", init=weight_var)
    b0 = p.bias("b0", var="bias_var", init=bias_var)
    keys = [p.lincomb(p.matmul(u, x), b0, name=f"k{t}") for t, x in enumerate(xs)]
    hs = [_layer_norm(p, y, f"h{t}") for t, y in enumerate(_attend(p, keys, temperature, causal, ""))]
    w1, w2 = p.matrix("W1", var="weight_var", init=weight_var), p.matrix("W2", var="weight_var", init=weight_var)
    b1, b2 = p.bias("b1", var="bias_var", init=bias_var), p.bias("b2", var="bias_var", init=bias_var)
    zs = []
    for t, h in enumerate(hs):
        mid = p.nonlin(ReLU(), p.lincomb(p.matmul(w1, h), b1, name=f"m{t}"), name=f"r{t}")
        zs.append(_layer_norm(p, p.lincomb(p.matmul(w2, mid), b2, h, name=f"s{t}"), f"z{t}"))
    terms = zs[-1] if readout == "last" else [(1.0 / length, z) for z in zs]
    p.readout(terms, var="weight_var", init=weight_var, bias="bias_var", bias_init=bias_var)
    return p


def minimal_gated_unit_program(length: int, token_dim: int, input_var: float = 1.0, hidden_var: float = 1.0,
                               bias_var: float = 0.1, readout_var: float = 1.0) -> Program:
    """Minimal gated unit (Zhou et al. 2016) — not in the layer vocabulary::

        f_t = sigmoid(U_f x_t + W_f h_{t−1} + b_f)
        h̃_t = tanh(U_h x_t + W_h (f_t ⊙ h_{t−1}) + b_h)
        h_t = (1 − f_t) ⊙ h_{t−1} + f_t ⊙ h̃_t,  h_0 = 0;   f = v·h_T/√n
    """
    p = Program(f"mgu(T={length})")
    xs = p.sequence("x", length, token_dim)
    uf, wf, bf = (p.input_matrix("U_f", var="input_var", init=input_var),
                  p.matrix("W_f", var="hidden_var", init=hidden_var), p.bias("b_f", var="bias_var", init=bias_var))
    uh, wh, bh = (p.input_matrix("U_h", var="input_var", init=input_var),
                  p.matrix("W_h", var="hidden_var", init=hidden_var), p.bias("b_h", var="bias_var", init=bias_var))
    h = None
    for t, x in enumerate(xs, start=1):
        f = p.lincomb(*([p.matmul(uf, x), bf] + ([p.matmul(wf, h)] if h is not None else [])), name=f"f~{t}")
        if h is None:
            cand = p.lincomb(p.matmul(uh, x), bh, name=f"h~{t}")
            h = p.nonlin(lambda ff, cc: torch.sigmoid(ff) * torch.tanh(cc), f, cand, name=f"h{t}")
        else:
            fh = p.nonlin(lambda ff, hh: torch.sigmoid(ff) * hh, f, h, name=f"fh{t}")
            cand = p.lincomb(p.matmul(uh, x), p.matmul(wh, fh), bh, name=f"h~{t}")
            h = p.nonlin(lambda hh, ff, cc: (1 - torch.sigmoid(ff)) * hh + torch.sigmoid(ff) * torch.tanh(cc),
                         h, f, cand, name=f"h{t}")
    p.readout(h, var="readout_var", init=readout_var)
    return p


def tied_mlp_program(depth: int, input_dim: int, activation: Activation | None = None, residual: bool = True,
                     weight_var: float = 1.0, bias_var: float = 0.0, hidden_var: float = 0.5) -> Program:
    """An MLP whose one hidden matrix ``W`` is reused in every layer — not in the layer vocabulary.

    ``g¹ = U x + b``; ``g^{l+1} = g^l + W φ(g^l)`` (``residual=False``: ``W φ(g^l) + b``); readout
    ``f = v·φ(g^depth)/√n + b_v``. ``hidden_var`` scales the shared ``W`` (``< 1`` keeps residual variances
    moderate).
    """
    act = activation or Tanh()
    p = Program(f"tied_mlp(depth={depth}, {act.describe()}, residual={residual})")
    x = p.input("x", input_dim)
    u = p.input_matrix("U", var="weight_var", init=weight_var)
    w = p.matrix("W", var="hidden_var", init=hidden_var)
    b = p.bias("b", var="bias_var", init=bias_var)
    g = p.lincomb(p.matmul(u, x), b, name="g1")
    for layer in range(2, depth + 1):
        wh = p.matmul(w, p.nonlin(act, g, name=f"h{layer - 1}"))
        g = p.lincomb(g, wh, name=f"g{layer}") if residual else p.lincomb(wh, b, name=f"g{layer}")
    p.readout(p.nonlin(act, g, name=f"h{depth}"), var="weight_var", init=weight_var, bias="bias_var",
              bias_init=bias_var)
    return p


__all__ = ["attention_program", "gru_program", "lstm_program", "minimal_gated_unit_program",
           "mlp_program", "rnn_program", "tied_mlp_program", "transformer_program"]

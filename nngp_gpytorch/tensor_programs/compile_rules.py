"""Per-layer compilation rules: each layer of :mod:`nngp_gpytorch.arch` as NETSOR instructions (Yang 2019).

With ``n`` the width, ``σw²``/``σb²`` the layer's variances and ``h`` the incoming features (a :data:`~.compiler.Vec`
per position, see :mod:`.compiler`):

* ``Dense``: ``g = Σ_i (1/√k)·W_i h_i + b`` over the ``k`` flattened blocks (``k = 1`` for flat features), each
  ``W_i`` a fresh ``n×n`` matrix ``N(0, σw²/n)``; on the raw input ``x`` of ``D`` features split in tokens ``x_t``,
  ``g = Σ_t √(d_t/D)·U_t x_t + b`` (``Cov = σw²·x·x'/D + σb²``). As the network's last layer on one vector it is the
  program's readout ``f = v·h/√n + b``.
* activations: ``h' = φ(h)``, one ``Nonlin`` (a named activation of one G-var keeps its closed-form dual;
  ``Identity`` writes nothing).
* ``Residual``/``Parallel``: formal sums of the branches' vectors (exact cross terms; no fresh weights needed).
* ``LayerNorm``: on G-vars ``g/√(⟨g, g⟩/n)`` (NETSOR+ moment); on features ``(h − μ)/σ`` with ``μ = ⟨h⟩/n`` and
  ``σ² = ⟨h, h⟩/n − μ²`` (moments) and the all-ones vector ``1 = Nonlin(1, h)``, as coefficients of the next
  matrix: ``W h' = (1/σ)·W h − (μ/σ)·W 1``.
* ``Conv``: per tap ``β`` a matrix ``W_β`` (``n×n``) reused at every output position,
  ``g_o = Σ_β (1/√k)·W_β h_{s·o + d·β − lo} + b`` (padded taps dropped, counted in ``k``); on the raw input of
  ``C`` channels one input matrix ``U_{β,c}`` (fan-in 1) per tap and channel, coefficient ``1/√(kC)``.
* ``AvgPool``/``GlobalAvgPool``: means of vectors (full-window divisor); ``Flatten``: positions become blocks;
  ``MaxPool``: ``Nonlin(max, window)``.
* ``TokenDense``: one ``W`` (or ``U`` on raw tokens) and one ``b`` shared by the tokens; ``SelfAttention`` (tied
  queries, ``1/n`` logits): ``y_t = k_t + Σ_s a_ts k_s`` with ``a_t· = softmax(⟨k_t, k_s⟩/(n·temperature))``
  (NETSOR+ moments and scalars), independent queries: ``a_ts = 1/|visible|``; ``SequenceReadout``: mean / last.
* ``RNN``: ``g_t = U x_t + W φ(g_{t−1}) + b`` with one reused ``W``; its readout ``v·φ(g_T)/√n + b_v`` (mean: of
  ``(1/T)Σ_t φ(g_t)``).

Refused, naming the layer: ``Dropout`` (a random mask per input is no NETSOR instruction), ``BatchNorm`` (couples
the batch), ``GraphConv`` (transductive), ``GRU``/``LSTM`` (use :mod:`.examples`), masked sequences.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import torch

from ..algebra.taps import conv_output_size
from ..arch import (
    GRU,
    LSTM,
    RNN,
    Activation,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GraphConv,
    Identity,
    Layer,
    LayerNorm,
    MaxPool,
    Parallel,
    Residual,
    SelfAttention,
    SequenceReadout,
    Serial,
    TokenDense,
)
from ..arch.pool import window_geometry
from .compiler import CompileError, Compiler, Flow, Term, Vec, check_float_coefficients, compile_rule
from .elementwise import identity


class MaxOf:
    """``max_i a_i`` elementwise (picklable)."""

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return torch.stack(torch.broadcast_tensors(*args)).amax(0)


class Ones:
    """The all-ones vector as a Nonlin of any variable (written ``0·a + 1`` so that autograd sees a zero gradient)."""

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        return a * 0.0 + 1.0


class InverseStd:
    """``1/√(m₂ − μ²)`` from the moments ``μ = E[h]``, ``m₂ = E[h²]``."""

    def __call__(self, mu: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt((m2 - mu * mu).clamp_min(1e-30))


class NegativeMeanOverStd:
    """``−μ/√(m₂ − μ²)``."""

    def __call__(self, mu: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        return -mu * torch.rsqrt((m2 - mu * mu).clamp_min(1e-30))


class SoftmaxEntry:
    """Entry ``j`` of ``softmax(θ/temperature)`` over the scalars ``θ``."""

    def __init__(self, j: int, temperature: float):
        self.j, self.temperature = j, float(temperature)

    def __call__(self, *theta: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.stack(theta, -1) / self.temperature, -1)[..., self.j]


def _refuse(path: str, layer: Layer, why: str) -> CompileError:
    return CompileError(f"{path}: {layer.describe()} cannot be compiled to a tensor program: {why}")


def _no_raw(layer: Layer, flow: Flow, path: str) -> None:
    if flow.raw:
        raise CompileError(f"{path}: {layer.describe()} receives the raw input; put an affine layer (Dense/Conv/"
                           "TokenDense) before it")


# ---------------------------------------------------------------------------------------------------- structure
@compile_rule(Serial)
def serial(layer: Serial, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    last = len(layer.layers) - 1
    for i, sub in enumerate(layer.layers):
        flow = c.compile(sub, flow, f"Serial[{i}] {sub.describe()}", final and i == last)
    return flow


def _add(layer: Layer, flows: list[Flow], path: str) -> Flow:
    if any(f.raw for f in flows):
        raise CompileError(f"{path}: {layer.describe()} sums the raw input; put an affine layer (Dense/Conv) before it")
    shapes = {(f.spatial, len(f.vecs)) for f in flows}
    if len(shapes) > 1:
        raise CompileError(f"{path}: {layer.describe()} sums features of different shapes "
                           f"{[f.spatial or len(f.vecs) for f in flows]}")
    vecs = tuple(tuple(t for f in flows for t in f.vecs[i]) for i in range(len(flows[0].vecs)))
    return Flow(vecs=vecs, spatial=flows[0].spatial)


@compile_rule(Residual)
def residual(layer: Residual, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    _no_raw(layer, flow, path)
    return _add(layer, [flow, c.compile(layer.branch, flow, f"{path} > branch {layer.branch.describe()}")], path)


@compile_rule(Parallel)
def parallel(layer: Parallel, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    outs = [c.compile(b, flow, f"{path} > branch {i} {b.describe()}") for i, b in enumerate(layer.branches)]
    return _add(layer, outs, path)


# ---------------------------------------------------------------------------------------------------- dense
@compile_rule(Dense)
def dense(layer: Dense, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    if flow.spatial:
        raise CompileError(f"{path}: Dense() needs flat features but receives spatial shape {flow.spatial}; add "
                           "Flatten() or GlobalAvgPool() first")
    tag = c.tag(layer)
    w, b = c.variances(layer, layer.weight_var, layer.bias_var, tag)
    if not flow.raw and final and len(flow.vecs) == 1:  # the network's readout f = v·h/√n + b
        vec = flow.vecs[0]
        if not check_float_coefficients(vec) and all(h.is_g for _, h in vec):
            vec = ((1.0, c.gaussian(vec, path, layer)),)  # NETSOR+ coefficients of G-vars: one LinComb
        if check_float_coefficients(vec):
            c.p.readout(list(vec), var=w[0], init=w[1], bias=b[0] if b else None, bias_init=b[1] if b else 0.0)
            return Flow()
    terms: list[Term] = []
    if flow.raw:
        total = sum(t.dim for t in flow.tokens)
        for i, token in enumerate(flow.tokens):
            u = c.matrix(f"{tag}.U{i}", w, "input")
            terms.append((math.sqrt(token.dim / total), c.p.matmul(u, token)))
    else:
        k = len(flow.vecs)
        for i, vec in enumerate(flow.vecs):
            terms += c.matmul(c.matrix(f"{tag}.W{i}", w), vec, 1.0 / math.sqrt(k))
    g = c.lincomb(terms + c.bias_terms(b, f"{tag}.b"))
    return Flow(vecs=(((1.0, g),),))


@compile_rule(Activation)
def activation(layer: Activation, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    if flow.raw:
        raise CompileError(f"{path}: {layer.describe()} needs Gaussian pre-activations but receives the raw input; "
                           "put an affine layer (e.g. Dense()) before it")
    if isinstance(layer, Identity):
        return flow
    vecs = tuple(((1.0, c.p.nonlin(layer, c.variable(vec, path, layer))),) for vec in flow.vecs)
    return replace(flow, vecs=vecs)


@compile_rule(LayerNorm)
def layer_norm(layer: LayerNorm, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    _no_raw(layer, flow, path)
    p = c.p
    out = []
    for vec in flow.vecs:
        if all(h.is_g for _, h in vec):
            g = c.gaussian(vec, path, layer)
            out.append(((p.scalar(_rsqrt, p.moment(None, g, g)), g),))
            continue
        if not check_float_coefficients(vec):
            raise _refuse(path, layer, "a LayerNorm of features already rescaled by NETSOR+ scalars (put an affine "
                                       "layer between the two normalizations)")
        # μ = Σ c_i ⟨h_i⟩/n and m₂ = Σ c_i c_j ⟨h_i, h_j⟩/n term by term: low-dimensional moments, no joint Nonlin
        terms = [(float(k), h) for k, h in vec]
        mu = p.scalar(WeightedSum([k for k, _ in terms]), *(p.moment(identity, h) for _, h in terms))
        pairs = [(i, j) for i in range(len(terms)) for j in range(i, len(terms))]
        weights = [terms[i][0] * terms[j][0] * (1 if i == j else 2) for i, j in pairs]
        m2 = p.scalar(WeightedSum(weights), *(p.moment(None, terms[i][1], terms[j][1]) for i, j in pairs))
        scale, shift = p.scalar(InverseStd(), mu, m2), p.scalar(NegativeMeanOverStd(), mu, m2)
        out.append(tuple((c.mul(scale, k), h) for k, h in terms) + ((shift, p.nonlin(Ones(), terms[0][1])),))
    return replace(flow, vecs=tuple(out))


class WeightedSum:
    """``Σ_i w_i θ_i`` over NETSOR+ scalars."""

    def __init__(self, weights):
        self.weights = tuple(float(w) for w in weights)

    def __call__(self, *theta: torch.Tensor) -> torch.Tensor:
        out = self.weights[0] * theta[0]
        for w, t in zip(self.weights[1:], theta[1:], strict=True):
            out = out + w * t
        return out


def _rsqrt(theta: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(theta)


# ---------------------------------------------------------------------------------------------------- spatial
def taps(spatial: tuple[int, ...], kernel, stride, dilation, padding: str) -> list[list[int | None]]:
    """For each output position (row-major), the flat input position of each tap ``β`` (row-major), ``None`` where
    the tap falls in the zero padding: ``q = s·o + d·β − lo`` per axis (circular: modulo ``n``)."""
    axes = []
    for n, k, s, d in zip(spatial, kernel, stride, dilation, strict=True):
        out, lo, _ = conv_output_size(n, k, s, d, padding)
        table = []
        for o in range(out):
            row = []
            for beta in range(k):
                q = s * o + d * beta - lo
                row.append(q % n if padding == "circular" else (q if 0 <= q < n else None))
            table.append(row)
        axes.append(table)
    result = []
    for opos in itertools.product(*(range(len(t)) for t in axes)):
        row = []
        for beta in itertools.product(*(range(k) for k in kernel)):
            coords = [axes[a][opos[a]][beta[a]] for a in range(len(spatial))]
            flat = None
            if all(q is not None for q in coords):
                flat = 0
                for n, q in zip(spatial, coords, strict=True):
                    flat = flat * n + q
            row.append(flat)
        result.append(row)
    return result


def _spatial(layer: Layer, flow: Flow, c: Compiler, path: str) -> tuple[int, ...]:
    if flow.raw:
        shape = c.p.input_shape
        if flow.layout != "image" or len(shape) < 2:
            raise CompileError(f"{path}: {layer.describe()} needs structured inputs; give input_shape=(C, H, W) "
                               "(channels first)")
        return tuple(shape[1:])
    if not flow.spatial:
        raise CompileError(f"{path}: {layer.describe()} needs spatial features but receives flat features")
    return flow.spatial


@compile_rule(Conv)
def conv(layer: Conv, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    spatial = _spatial(layer, flow, c, path)
    kernel, stride, dilation, out = layer.geometry(spatial, path)
    table = taps(spatial, kernel, stride, dilation, layer.padding)
    k = math.prod(kernel)
    tag = c.tag(layer)
    w, b = c.variances(layer, layer.weight_var, layer.bias_var, tag)
    bias = c.bias_terms(b, f"{tag}.b")
    vecs = []
    if flow.raw:
        channels, positions = c.p.input_shape[0], math.prod(spatial)
        mats = [[c.matrix(f"{tag}.U{beta},{ch}", w, "input") for ch in range(channels)] for beta in range(k)]
        coef = 1.0 / math.sqrt(k * channels)
        for row in table:
            terms = [(coef, c.p.matmul(mats[beta][ch], flow.tokens[ch * positions + q]))
                     for beta, q in enumerate(row) if q is not None for ch in range(channels)]
            vecs.append(terms)
    else:
        mats = [c.matrix(f"{tag}.W{beta}", w) for beta in range(k)]
        for row in table:
            vecs.append([t for beta, q in enumerate(row) if q is not None
                         for t in c.matmul(mats[beta], flow.vecs[q], 1.0 / math.sqrt(k))])
    if any(not terms and not bias for terms in vecs):
        raise _refuse(path, layer, "an output position sees only padding and there is no bias")
    return Flow(vecs=tuple(((1.0, c.lincomb(terms + bias)),) for terms in vecs), spatial=tuple(out))


@compile_rule(AvgPool)
def avg_pool(layer: AvgPool, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    _no_raw(layer, flow, path)
    spatial = _spatial(layer, flow, c, path)
    window, stride, out = window_geometry(layer, spatial, path)
    weight = 1.0 / math.prod(window)
    table = taps(spatial, window, stride, (1,) * len(spatial), layer.padding)
    vecs = tuple(c.sum([(weight, flow.vecs[q]) for q in row if q is not None]) for row in table)
    return Flow(vecs=vecs, spatial=tuple(out))


@compile_rule(GlobalAvgPool)
def global_avg_pool(layer: GlobalAvgPool, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    _no_raw(layer, flow, path)
    _spatial(layer, flow, c, path)
    return Flow(vecs=(c.sum([(1.0 / len(flow.vecs), vec) for vec in flow.vecs]),))


@compile_rule(Flatten)
def flatten(layer: Flatten, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    return replace(flow, spatial=())  # positions become blocks; the raw input is read flat anyway


@compile_rule(MaxPool)
def max_pool(layer: MaxPool, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    _no_raw(layer, flow, path)
    spatial = _spatial(layer, flow, c, path)
    _, _, out = layer.geometry(spatial, path)
    vecs = []
    for cells in layer.windows(spatial):
        args = [c.variable(flow.vecs[q], path, layer) for q in cells]
        vecs.append(((1.0, args[0] if len(args) == 1 else c.p.nonlin(MaxOf(), *args)),))
    return Flow(vecs=tuple(vecs), spatial=tuple(out))


# ---------------------------------------------------------------------------------------------------- sequences
def _unmasked(layer: Layer, path: str) -> None:
    if getattr(layer, "masked", False):
        raise _refuse(path, layer, "masked (variable-length) sequences are not compiled; use equal lengths")


@compile_rule(TokenDense)
def token_dense(layer: TokenDense, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    _unmasked(layer, path)
    tag = c.tag(layer)
    w, b = c.variances(layer, layer.weight_var, layer.bias_var, tag)
    bias = c.bias_terms(b, f"{tag}.b")
    if flow.raw:
        if flow.layout != "sequence":
            raise CompileError(f"{path}: {layer.describe()} needs sequence inputs: input_shape=(T, D)")
        u = c.matrix(f"{tag}.U", w, "input")
        vecs = [[(1.0, c.p.matmul(u, x))] for x in flow.tokens]
    else:
        if len(flow.spatial) != 1:
            raise CompileError(f"{path}: {layer.describe()} needs token features (one position axis), got "
                               f"{flow.spatial or 'flat features'}")
        mat = c.matrix(f"{tag}.W", w)
        vecs = [c.matmul(mat, vec) for vec in flow.vecs]
    return Flow(vecs=tuple(((1.0, c.lincomb(terms + bias)),) for terms in vecs), spatial=(len(vecs),))


def _tokens(layer, flow: Flow, path: str) -> None:
    """What attention and sequence readouts need: unmasked token features, already mapped by a token layer."""
    _unmasked(layer, path)
    _no_raw(layer, flow, path)
    if len(flow.spatial) != 1:
        raise CompileError(f"{path}: {layer.describe()} needs token features, got {flow.spatial or 'flat features'}")


@compile_rule(SelfAttention)
def self_attention(layer: SelfAttention, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    _tokens(layer, flow, path)
    keys = [c.gaussian(vec, path, layer) for vec in flow.vecs]
    out = []
    for t, key in enumerate(keys):
        visible = range(t + 1) if layer.causal else range(len(keys))
        if layer.queries == "tied":
            logits = [c.p.moment(None, key, keys[s]) for s in visible]
            weights = [c.p.scalar(SoftmaxEntry(j, layer.temperature), *logits) for j in range(len(logits))]
        else:  # independent queries: ⟨q_t, k_s⟩/n → 0, uniform attention
            weights = [1.0 / len(visible)] * len(visible)
        terms: Vec = ((1.0, key),) if layer.residual else ()
        out.append(terms + tuple((a, keys[s]) for a, s in zip(weights, visible, strict=True)))
    return Flow(vecs=tuple(out), spatial=flow.spatial)


@compile_rule(SequenceReadout)
def sequence_readout(layer: SequenceReadout, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    _tokens(layer, flow, path)
    if layer.readout == "last":
        return Flow(vecs=(flow.vecs[-1],))
    return Flow(vecs=(c.sum([(1.0 / len(flow.vecs), vec) for vec in flow.vecs]),))


@compile_rule(RNN)
def rnn(layer: RNN, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    _unmasked(layer, path)
    if not flow.raw or flow.layout != "sequence":
        raise CompileError(f"{path}: {layer.describe()} reads raw sequences (input_shape=(T, D)) and must come first")
    tag = c.tag(layer)
    (wi, bi), (wh, _), (wr, br) = (c.variances(layer, w, b, f"{tag}.{slot}") for (w, b), slot in
                                   zip(layer.slot_requests(), ("input", "hidden", "readout"), strict=True))
    u, mat = c.matrix(f"{tag}.U", wi, "input"), c.matrix(f"{tag}.W", wh)
    bias = c.bias_terms(bi, f"{tag}.b")
    hs = []
    for x in flow.tokens:
        recurrent = c.matmul(mat, ((1.0, hs[-1]),)) if hs else []
        g = c.lincomb([(1.0, c.p.matmul(u, x))] + bias + recurrent)
        hs.append(g if isinstance(layer.activation, Identity) else c.p.nonlin(layer.activation, g))
    vec: Vec = ((1.0, hs[-1]),) if layer.readout == "last" else tuple((1.0 / len(hs), h) for h in hs)
    if final:
        c.p.readout(list(vec), var=wr[0], init=wr[1], bias=br[0] if br else None, bias_init=br[1] if br else 0.0)
        return Flow()
    terms = c.matmul(c.matrix(f"{tag}.V", wr), vec) + c.bias_terms(br, f"{tag}.bv")
    return Flow(vecs=(((1.0, c.lincomb(terms)),),))


# ---------------------------------------------------------------------------------------------------- refused
_REFUSED = {
    Dropout: "its random mask is drawn anew for every input, which is no NETSOR instruction (the dedicated rule "
             "handles it)",
    BatchNorm: "it couples the inputs of a batch (a set kernel, not a pairwise one)",
    GraphConv: "it mixes the nodes of one fixed graph (a transductive kernel)",
    GRU: "write it with nngp_gpytorch.tensor_programs.examples.gru_program",
    LSTM: "write it with nngp_gpytorch.tensor_programs.examples.lstm_program",
}


@compile_rule(*_REFUSED)
def refused(layer: Layer, flow: Flow, c: Compiler, path: str, final: bool) -> Flow:
    raise _refuse(path, layer, _REFUSED[next(t for t in type(layer).__mro__ if t in _REFUSED)])


__all__ = ["InverseStd", "MaxOf", "NegativeMeanOverStd", "Ones", "SoftmaxEntry", "taps"]

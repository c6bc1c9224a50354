r"""The fast positional engine: a run ``Conv, φ, ..., Conv, φ`` ending in a global average pool or a Flatten.

Such a run (Novak et al. 2019's CNN-GP; Arora et al. 2019's CNTK with GAP) is most of the cost of every
conv kernel. Its rule here computes exactly what the layer-by-layer rules compute (:mod:`.conv`,
:mod:`.dense`, :mod:`.pool`), in a different order:

* **Per input, once:** the per-position pre-activation variances ``v_l[p] = K_l(x, x)[p, p]`` of every layer
  (the same-position chain of ``x`` with itself: ``O(P)`` per input). The dual of a pair at positions
  ``(p, q)`` needs only ``v_l[p]`` of one input and ``v_l[q]`` of the other, so no input's own ``P×P``
  covariance is ever formed for the pairs.
* **Per pair of inputs, in chunks of pairs:** the cross covariance ``K_l(x, x')[p, q]`` (GAP readout: all
  ``P²`` position pairs; Flatten: the ``P`` same-position entries) through the layers, reduced to the flat
  readout at the end of the chunk. Peak memory is ``chunk_bytes`` plus the ``(n1, n2)`` result, whatever
  ``n1·n2·P²`` is.
* **Symmetric blocks** ``K(X, X)`` compute the pairs ``i ≤ j`` only (``K(x, x')[p, q] = K(x', x)[q, p]``).
* The output's own variances ``K(x, x)`` (the flat state's ``k11``, ``k22``, which later layers need) are the
  pairs ``(x, x)`` of the same engine (GAP) or the mean of the same-position chain (Flatten).

Recurrences (per conv with taps ``β``, ``k = prod(kernel)``; Novak et al. 2019, eq. 8; Arora et al. 2019):
``S_l[p, q] = σw²·(1/k)·Σ_β K_{l−1}[s·p + d·β − lo, s·q + d·β − lo] + σb²``,
``K_l = V_φ(v_l[p], v_l'[q], S_l)``, ``Θ_l = S_l + σw²·(1/k)·Σ_β Θ̇_{l−1}[...]`` with ``Θ̇_l = V_φ'(S_l)⊙Θ_l``;
readout ``(1/P²)·Σ_{p,q}`` (GAP) or ``(1/P)·Σ_p [p, p]`` (Flatten).

The rule applies when the run starts from the raw inputs of a kernel without batch dimensions; elsewhere
(batch shapes, a run after another positional layer) it runs the layers one by one with their own rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..arch import Activation, ArchitectureError, Layer, ReLU
from ..arch.conv import Conv
from ..arch.pool import Flatten, GlobalAvgPool
from ..duals import dual_for
from ..duals.dense_maps import affine as fused_affine
from . import conv_stack_jit as jit
from .conv_stack_compiled import CompiledRun
from .fusion import FusedRun, fuse_runs
from .registry import RuleContext, kernel_rule, propagate
from .state import CovState
from .taps import conv_output_size, tap_axes

#: bytes of one chunk's live tensors on a CPU (cache-sized: 8 MiB was the fastest of 2–64 MiB at 16×16)
CPU_CHUNK_BYTES = 8 << 20
#: on an accelerator: large chunks (each chunk is a few dozen kernel launches)
GPU_CHUNK_BYTES = 1 << 30
#: tensors of one chunk's size alive at once (K, Θ, the pre-activation, the dual's temporaries)
LIVE_TENSORS = 10
#: run chunks through the compiled loops of :mod:`.conv_stack_jit` where they apply (numba installed, a CPU, no
#: autograd, every activation a ReLU or erf); False: always the torch path (tests compare the two)
COMPILED = True
#: pairs per call of the compiled loops (their memory is per-thread scratch, not per chunk)
COMPILED_CHUNK_PAIRS = 1024


@dataclass(frozen=True, init=False)
class ConvStack(FusedRun):
    """``Conv, [φ], ..., Conv, [φ], GlobalAvgPool() | Flatten()`` fused by :func:`fuse_conv_stacks`."""

    @property
    def readout(self) -> str:
        return "gap" if isinstance(self.layers[-1], GlobalAvgPool) else "flatten"


def _is_activation(layer: Layer) -> bool:
    return isinstance(layer, Activation) and not getattr(type(layer), "not_pointwise", None)


def _stack_length(layers: tuple[Layer, ...], start: int) -> int:
    """Length of the ``Conv [φ] ... GlobalAvgPool|Flatten`` run at ``start`` (0 if none)."""
    i = start
    while i < len(layers) and type(layers[i]) is Conv:
        i += 1
        if i < len(layers) and _is_activation(layers[i]):
            i += 1
    if i > start and i < len(layers) and type(layers[i]) in (GlobalAvgPool, Flatten):
        return i + 1 - start
    return 0


def fuse_conv_stacks(layer: Layer) -> Layer:
    """``layer`` with every ``Conv [φ] ... Conv [φ] GlobalAvgPool|Flatten`` run of a top-level or nested
    :class:`~nngp_gpytorch.arch.Serial` replaced by a :class:`ConvStack` (other layers: the same objects)."""
    return fuse_runs(layer, _stack_length, ConvStack)


@dataclass
class _Group:
    """One ``Conv [φ]``: its tap geometry, variances, dual, and the positions before and after it."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: str
    positions_in: tuple[int, ...]
    positions_out: tuple[int, ...]
    weight_var: torch.Tensor
    bias_var: torch.Tensor
    dual: object | None
    activation: Activation | None = None

    @property
    def tap_weight(self) -> torch.Tensor:
        """``σw²/k``: the conv's ``1/k`` folded into its weight variance."""
        return self.weight_var / math.prod(self.kernel)


def _groups(stack: ConvStack, positions: tuple[int, ...], ctx: RuleContext) -> list[_Group]:
    groups, layers = [], stack.layers[:-1]
    for i, layer in enumerate(layers):
        if type(layer) is not Conv:
            continue
        try:
            kernel, stride, dilation, _ = layer.geometry(positions)
        except ArchitectureError as err:
            raise ArchitectureError(f"{err} (positions {positions})") from None
        out = tuple(conv_output_size(n, k, s, d, layer.padding)[0]
                    for n, k, s, d in zip(positions, kernel, stride, dilation, strict=True))
        w, b = ctx.variances(layer, layer.weight_var, layer.bias_var)
        act = layers[i + 1] if i + 1 < len(layers) and _is_activation(layers[i + 1]) else None
        groups.append(_Group(kernel, stride, dilation, layer.padding, positions, out, w, b,
                             None if act is None else ctx.dual(act), act))
        positions = out
    return groups


def _applicable(state: CovState, ctx: RuleContext) -> bool:
    if state.positions is not None or state.inputs is None or state.gaussian or state.pre_activation is not None:
        return False
    x1, x2 = state.inputs
    nd = len(state.input_shape)
    return (ctx.hyper.weight_var.dim() == 1 and x1.dim() == nd + 1 and x2.dim() == nd + 1 and nd >= 2
            and state.k12.dim() == state.entry_ndim)


def _tap(x: torch.Tensor, g: _Group, full: bool) -> torch.Tensor:
    """The conv's tap *sum* on a chunk ``(c, P, P)`` (full) or ``(c, P)`` (same-position); ``1/k`` is in
    ``g.tap_weight = σw²/k``."""
    return tap_axes(x, g.positions_in, g.kernel, g.stride, g.dilation, g.padding, full, mean=False)


def _self_chain(x: torch.Tensor, groups: list[_Group], with_ntk: bool):
    """Same-position chain of each input with itself: ``x`` ``(n, P, C)`` → the pre-activation variances of every
    group ``[(n, P_l)]`` and the final same-position ``(K, Θ)`` ``(n, P_L)`` (Θ None without the NTK)."""
    k = (x * x).sum(-1) / x.shape[-1]
    t = torch.zeros((), dtype=k.dtype, device=k.device) if with_ntk else None
    pre = []
    for g in groups:
        k = fused_affine(_tap(k, g, False), g.tap_weight, g.bias_var)
        if with_ntk:
            t = k if t.dim() == 0 else torch.addcmul(k, g.tap_weight, _tap(t, g, False))
        pre.append(k)
        if g.dual is not None:
            if with_ntk:
                t = g.dual.ntk_diag(k) * t
            k = g.dual.nngp_diag(k)
    return pre, k, t


def _pin_degrees(groups: list[_Group], pre1: list, pre2: list) -> None:
    """Fix each adaptive quadrature dual's degree from the largest variance of its layer over both sides, so that
    every chunk of pairs uses the degree the whole block would (values independent of the chunking)."""
    for g, a, b in zip(groups, pre1, pre2, strict=True):
        if g.dual is not None and getattr(g.dual, "adaptive", False) and hasattr(g.dual, "effective_degree"):
            vmax = max(float(a.detach().max()), float(b.detach().max()))
            g.dual = dual_for(g.activation, g.dual.effective_degree(vmax), adaptive=False)


def _eye(p: int, device) -> torch.Tensor:
    return torch.eye(p, dtype=torch.bool, device=device)


_RELU_SCALE = 1.0 / (2.0 * math.pi)  # E[relu(u) relu(v)] = (1/2π)·s·J1(c)


def _relu_in_place(k: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, neg_inv_q1: torch.Tensor, inv_q2: torch.Tensor,
                   t: torch.Tensor | None, ident: torch.Tensor | None):
    """The ReLU dual (arc-cosine kernel, Cho & Saul 2009) of a chunk without autograd, in place on ``k`` and ``t``:
    ``K' = (1/2π)·s·(sin θ + (π − θ)·c)``, ``Θ' = (1/2π)·(π − θ)·Θ`` with ``s = q1·q2`` (``q = √v``, given with
    ``−1/q1`` and ``1/q2``, computed once per input), ``c = clamp(k/s)``, ``θ = arccos c``. The conventions of
    :mod:`nngp_gpytorch.duals.fused` (identical inputs ``c = 1``; with Θ, ``|c| ≥ 1 − 8·eps`` snapped to ``±1``),
    with ``sin θ = √(1 − c²)`` (one ``sqrt`` instead of a ``sin``) and ``π − θ = arccos(−c)``: eight passes over
    the chunk, two of them transcendental."""
    c = k.mul_(neg_inv_q1).mul_(inv_q2).clamp_(-1.0, 1.0)  # holds −c: arccos(−c) = π − θ
    if t is not None:
        snap = 1.0 - 8 * torch.finfo(k.dtype).eps
        if bool(c.amax() >= snap) or bool(c.amin() <= -snap):
            c.copy_(torch.where(c >= snap, 1.0, torch.where(c <= -snap, -1.0, c)))
    if ident is not None:
        c.masked_fill_(ident, -1.0)
    pmt = torch.arccos(c)  # π − θ
    if t is not None:
        t = t.mul_(pmt).mul_(_RELU_SCALE)
    j1 = torch.addcmul(torch.ones((), dtype=c.dtype, device=c.device), c, c, value=-1.0).sqrt_()  # sin θ
    j1.addcmul_(pmt, c, value=-1.0)  # J1 = sin θ + (π − θ)·c
    return j1.mul_(q1).mul_(q2 * _RELU_SCALE), t


@dataclass
class _Side:
    """One input set's per-input data for the engine: inputs ``(n, P, C)`` (GAP) or ``(n, C, P)`` (Flatten), and
    per group the pre-activation variances ``v`` ``(n, P_l)`` with ``√v``, ``−1/√v``, ``1/√v`` (ReLU groups)."""

    x: torch.Tensor
    pre: list[torch.Tensor]
    roots: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]

    def take(self, index: torch.Tensor) -> _Side:
        return _Side(self.x[index], [v[index] for v in self.pre],
                     [None if r is None else tuple(a[index] for a in r) for r in self.roots])


def _side(x: torch.Tensor, pre: list[torch.Tensor], groups: list[_Group], full: bool) -> _Side:
    roots = []
    for g, v in zip(groups, pre, strict=True):
        q = v.clamp_min(0.0).sqrt()
        # a zero-norm input (√v below √tiny) goes through the dual's own conventions instead
        fast = type(g.activation) is ReLU and bool(q.min() > math.sqrt(torch.finfo(v.dtype).tiny))
        roots.append((q, -1.0 / q, 1.0 / q) if fast else None)
    return _Side(x if full else x.transpose(-1, -2).contiguous(), pre, roots)


def _cross_chunk(a: _Side, b: _Side, same: torch.Tensor | None, groups: list[_Group], full: bool, with_ntk: bool):
    """Flat ``(K, Θ)`` ``(c,)`` of ``c`` pairs ``(a[m], b[m])`` (each side gathered for the chunk); ``same``:
    ``(c,)`` bool, identical inputs (or None)."""
    if full:
        k = a.x @ b.x.transpose(-1, -2) / a.x.shape[-1]
    else:
        k = (a.x * b.x).sum(1) / a.x.shape[1]
    t = torch.zeros((), dtype=k.dtype, device=k.device) if with_ntk else None
    for g, va, vb, ra, rb in zip(groups, a.pre, b.pre, a.roots, b.roots, strict=True):
        k = fused_affine(_tap(k, g, full), g.tap_weight, g.bias_var)
        if with_ntk:
            t = k.clone() if t.dim() == 0 else torch.addcmul(k, g.tap_weight, _tap(t, g, full))
        if g.dual is None:
            continue
        if full:
            v1, v2 = va.unsqueeze(-1), vb.unsqueeze(-2)
            ident = None if same is None else same[:, None, None] & _eye(va.shape[-1], k.device)
        else:
            v1, v2 = va, vb
            ident = None if same is None else same[:, None]
        if ra is not None and rb is not None and not (k.requires_grad or (with_ntk and t.requires_grad)):
            if full:
                ra, rb = tuple(r.unsqueeze(-1) for r in ra), tuple(r.unsqueeze(-2) for r in rb)
            k, t = _relu_in_place(k, ra[0], rb[0], ra[1], rb[2], t, ident)
            continue
        if with_ntk:
            t = g.dual.ntk(v1, v2, k, ident) * t
        k = g.dual.nngp(v1, v2, k, ident)
    dims = (-2, -1) if full else (-1,)
    return k.mean(dims), (t.mean(dims) if with_ntk else None)


def _compiled(sa: _Side, sb: _Side, groups: list[_Group], full: bool, with_ntk: bool) -> CompiledRun | None:
    """The compiled loops for this block (:class:`.conv_stack_CompiledRun`), or None where they do not apply:
    ``COMPILED`` off, numba missing, not a CPU, not float32/64, something autograd must see, or an activation the
    loops do not have (they have ReLU and erf) or a zero pre-activation variance."""
    if not (COMPILED and jit.AVAILABLE and sa.x.device.type == "cpu" and sa.x.dtype in (torch.float32, torch.float64)):
        return None
    tensors = [sa.x, sb.x] + [t for g in groups for t in (g.weight_var, g.bias_var)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    return CompiledRun.build(sa.x, sa.pre, sb.x, sb.pre, sb is sa, groups, full, with_ntk)


def chunk_pairs(positions: tuple[int, ...], full: bool, with_ntk: bool, dtype: torch.dtype, device) -> int:
    """Pairs per chunk: :data:`LIVE_TENSORS` tensors of ``P²`` (full) or ``P`` entries each within the chunk
    budget (:data:`CPU_CHUNK_BYTES` on a CPU, :data:`GPU_CHUNK_BYTES` on an accelerator); at least one."""
    p = math.prod(positions)
    entries = p * p if full else p
    budget = CPU_CHUNK_BYTES if torch.device(device).type == "cpu" else GPU_CHUNK_BYTES
    live = LIVE_TENSORS + (4 if with_ntk else 0)
    return max(1, budget // (live * entries * torch.finfo(dtype).bits // 8))


def _run_pairs(sa: _Side, sb: _Side, ia, ib, same, groups, full, with_ntk):
    """The engine over the pair list ``(a[ia[m]], b[ib[m]])`` in chunks; flat ``(K, Θ)`` of shape ``(m,)``."""
    step = chunk_pairs(groups[0].positions_in, full, with_ntk, sa.x.dtype, sa.x.device)
    compiled = _compiled(sa, sb, groups, full, with_ntk)
    if compiled is not None:  # per-pair scratch only: chunks just bound the time between interrupt checks
        step = max(step, COMPILED_CHUNK_PAIRS)
    ks, ts = [], []
    for s in range(0, ia.shape[0], step):
        i, j = ia[s:s + step], ib[s:s + step]
        sm = None if same is None else same[s:s + step]
        if sm is not None and not bool(sm.any()):
            sm = None
        if compiled is not None:
            k, t = compiled(i, j, sm)
        else:
            k, t = _cross_chunk(sa.take(i), sb.take(j), sm, groups, full, with_ntk)
        ks.append(k)
        ts.append(t)
        if len(ks) == 64 and not (k.requires_grad or (with_ntk and t.requires_grad)):
            # consolidate: many small results interleaved with the chunks' large temporaries pin glibc's heap,
            # whose size then grows with the number of pairs (measured 1.9 GB instead of 0.4 GB at N = 600)
            ks, ts = [torch.cat(ks)], ([torch.cat(ts)] if with_ntk else ts[:1])
    k = torch.cat(ks)
    return k, (torch.cat(ts) if with_ntk else None)


def _flatten_inputs(x: torch.Tensor) -> torch.Tensor:
    """``(n, C, *spatial)`` → ``(n, P, C)``."""
    return torch.movedim(x, 1, -1).reshape(x.shape[0], -1, x.shape[1])


@kernel_rule(ConvStack)
def conv_stack_rule(stack: ConvStack, state: CovState, ctx: RuleContext) -> CovState:
    """The run's flat output state, computed by the engine of the module docstring."""
    if not _applicable(state, ctx):
        for layer in stack.layers:
            state = propagate(layer, state, ctx)
        return state
    r1, r2 = state.inputs
    groups = _groups(stack, tuple(r1.shape[2:]), ctx)
    full, ntk = stack.readout == "gap", ctx.with_ntk
    x1, x2 = _flatten_inputs(r1), _flatten_inputs(r2)
    symmetric = r1 is r2 or (r1.data_ptr() == r2.data_ptr() and r1.shape == r2.shape and r1.stride() == r2.stride())
    pre1, k1, t1 = _self_chain(x1, groups, ntk)
    pre2, k2, t2 = (pre1, k1, t1) if symmetric else _self_chain(x2, groups, ntk)
    _pin_degrees(groups, pre1, pre2)
    n1, n2 = x1.shape[0], x2.shape[0]
    dev = x1.device
    side1 = _side(x1, pre1, groups, full)
    side2 = side1 if symmetric else _side(x2, pre2, groups, full)

    def own(side, k, t):  # K(x, x), Θ(x, x) after the readout, (n,)
        if not full:
            return k.mean(-1), (t.mean(-1) if ntk else None)
        idx = torch.arange(side.x.shape[0], device=dev)
        return _run_pairs(side, side, idx, idx, torch.ones_like(idx, dtype=torch.bool), groups, True, ntk)

    diag = state.entry_ndim == 1
    # K(X, X) with GAP: the pairs (i, i) are among the pairs i ≤ j, flagged identical: their values are K(x, x)
    reuse = full and symmetric and not diag and state.identical is not None and bool(state.identical.diagonal().all())
    if not reuse:
        s11, s11t = own(side1, k1, t1)
        s22, s22t = (s11, s11t) if symmetric else own(side2, k2, t2)
    if diag:
        if symmetric:
            k12, t12 = s11, s11t
        else:
            idx = torch.arange(n1, device=dev)
            k12, t12 = _run_pairs(side1, side2, idx, idx, state.identical, groups, full, ntk)
        new = dict(k12=k12, k11=s11, k22=s22)
        if ntk:
            new.update(t12=t12, t11=s11t, t22=s22t)
    else:
        if symmetric:
            ia, ib = torch.triu_indices(n1, n1, device=dev)
        else:
            ia = torch.arange(n1, device=dev).repeat_interleave(n2)
            ib = torch.arange(n2, device=dev).repeat(n1)
        same = None if state.identical is None else state.identical[ia, ib]
        k, t = _run_pairs(side1, side2, ia, ib, same, groups, full, ntk)
        if reuse:
            on_diagonal = ia == ib
            s11 = s22 = k[on_diagonal]
            s11t = s22t = t[on_diagonal] if ntk else None

        def block(v):
            if not symmetric:
                return v.reshape(n1, n2)
            out = v.new_zeros(n1, n1).index_put((ia, ib), v)
            return out.index_put((ib, ia), v)

        new = dict(k12=block(k), k11=s11.unsqueeze(-1), k22=s22.unsqueeze(-2))
        if ntk:
            new.update(t12=block(t), t11=s11t.unsqueeze(-1), t22=s22t.unsqueeze(-2))
    return state.replace(**new, gaussian=groups[-1].dual is None, positions=None, full_positions=False,
                         pre_activation=None)


__all__ = ["ConvStack", "chunk_pairs", "conv_stack_rule", "fuse_conv_stacks"]

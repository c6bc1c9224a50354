r"""The fast positional engine: a run ``Conv, φ, ..., Conv, φ`` ending in a global average pool or a Flatten,
with average pools between the convolutions (Myrtle-style CNN-GPs, Shankar et al. 2020; LeNet-style nets).

Such a run (Novak et al. 2019's CNN-GP; Arora et al. 2019's CNTK with GAP) is most of the cost of every
conv kernel. Its rule here computes exactly what the layer-by-layer rules compute (:mod:`.conv`,
:mod:`.dense`, :mod:`.pool`), in a different order:

* **Per input, once:** the per-position pre-activation variances ``v_l[p] = K_l(x, x)[p, p]`` of every layer
  (the same-position chain of ``x`` with itself: ``O(P)`` per input). The dual of a pair at positions
  ``(p, q)`` needs only ``v_l[p]`` of one input and ``v_l[q]`` of the other, so no input's own ``P×P``
  covariance is ever formed for the pairs. This per-set work and the readout's ``K(x, x)`` are kept between calls
  (:mod:`.conv_stack_sides`: a preconditioner asks for ``K(x_i, X)`` row after row against the same ``X``).
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
readout ``(1/P²)·Σ_{p,q}`` (GAP) or ``(1/P)·Σ_p [p, p]`` (Flatten). An average pool of window ``k`` is
``K' = A K Aᵀ``, ``Θ' = A Θ Aᵀ``: ``(1/k)²·Σ_β Σ_β' K[s·p + β − lo, s·q + β' − lo]``, both sides' offsets independent
(no weights shared). It mixes positions, so the variances ``v_l`` after it need each input's full ``P×P`` self
covariance: a run with pools computes them per input through the layers (``O(n·P²)``, in chunks of inputs) and only
closed-form duals are fused with pools (a quadrature degree would otherwise depend on the chunk).

Memory: the chunks of pairs are sized from ``ctx.chunk_bytes`` (a kernel's explicit ``max_memory``) or the device
default; the compiled loops' per-thread scratch (four tables of the widest ``P²``) limits their threads to that budget,
and below one thread's tables 2-D runs go in bands of rows (:mod:`.conv_stack_bands`; a pooled run's per-input
variances too), down to :func:`band_minimum_bytes`; the torch path refuses a budget below one pair.

The rule applies when the run starts from the raw inputs of a kernel without batch dimensions; elsewhere
(batch shapes, a run after another positional layer) it runs the layers one by one with their own rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..arch import Abs, Activation, ArchitectureError, Erf, Identity, Layer, LeakyReLU, ReLU, Sign, Step
from ..arch.conv import Conv
from ..arch.pool import AvgPool, Flatten, GlobalAvgPool
from ..duals import dual_for
from . import conv_stack_jit as jit
from .conv_stack_compiled import CompiledRun, band_bytes, bands_apply, geometry_of, pooled_variances
from .conv_stack_sides import Side, cached_side, groups_key, make_side
from .conv_stack_torch import cross_chunk, self_chain, self_chain_pooled
from .fusion import FusedRun, fuse_runs
from .registry import RuleContext, kernel_rule, propagate
from .state import CovState, same_tensor
from .taps import conv_output_size

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

    @property
    def full(self) -> bool:
        """Whether pairs carry all ``P²`` position pairs (a GAP readout, or average pools anywhere) rather than the
        ``P`` same-position entries a Flatten readout of convolutions alone needs."""
        return self.readout == "gap" or any(type(layer) is AvgPool for layer in self.layers)


def _is_activation(layer: Layer) -> bool:
    return isinstance(layer, Activation) and not getattr(type(layer), "not_pointwise", None)


#: activations whose duals are closed forms (no adaptive quadrature degree to pin across chunks of inputs)
_CLOSED_FORM = (ReLU, LeakyReLU, Abs, Step, Sign, Erf, Identity)


def _stack_length(layers: tuple[Layer, ...], start: int) -> int:
    """Length of the ``Conv [φ] ... GlobalAvgPool|Flatten`` run at ``start`` (0 if none). Average pools may sit
    between the convolutions when the run ends in a global average pool and its activations have closed-form duals
    (the pooled run's per-input variances come from each input's full self covariance, computed in chunks of
    inputs; a quadrature dual's adaptive degree would then depend on the chunk). With pools a Flatten readout reads
    the diagonal of the full layout."""
    i, convs, pooled = start, 0, False
    while i < len(layers):
        if type(layers[i]) is Conv:
            convs, i = convs + 1, i + 1
            if i < len(layers) and _is_activation(layers[i]):
                i += 1
        elif type(layers[i]) is AvgPool and convs:
            pooled, i = True, i + 1
        else:
            break
    if not convs or i >= len(layers) or type(layers[i]) not in (GlobalAvgPool, Flatten):
        return 0
    if pooled and not all(type(layer) in _CLOSED_FORM for layer in layers[start:i] if _is_activation(layer)):
        return 0
    return i + 1 - start


def fuse_conv_stacks(layer: Layer) -> Layer:
    """``layer`` with every ``Conv [φ] ... Conv [φ] GlobalAvgPool|Flatten`` run of a top-level or nested
    :class:`~nngp_gpytorch.arch.Serial` replaced by a :class:`ConvStack` (other layers: the same objects)."""
    return fuse_runs(layer, _stack_length, ConvStack)


@dataclass
class _Group:
    """One ``Conv [φ]`` or ``AvgPool`` (``pool``): its tap geometry, variances, dual, and the positions before and
    after it. A pool's ``weight_var`` is ``1/k`` and ``bias_var`` 0, so that ``tap_weight = (1/k)²`` turns the sum
    of both sides' windows into ``A K Aᵀ``."""

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
    pool: bool = False

    @property
    def tap_weight(self) -> torch.Tensor:
        """``σw²/k``: the conv's ``1/k`` folded into its weight variance."""
        return self.weight_var / math.prod(self.kernel)


def _groups(stack: ConvStack, positions: tuple[int, ...], ctx: RuleContext | None) -> list[_Group]:
    """The run's groups on inputs of ``positions``; without ``ctx`` only their geometry and activations (unit
    variances, no duals)."""
    groups, layers = [], stack.layers[:-1]
    for i, layer in enumerate(layers):
        if type(layer) is AvgPool:
            window, stride, out = layer.geometry(positions)
            k = math.prod(window)
            groups.append(_Group(window, stride, (1,) * len(window), layer.padding, positions, out,
                                 torch.tensor(1.0 / k, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                                 None, pool=True))
            positions = out
            continue
        if type(layer) is not Conv:
            continue
        try:
            kernel, stride, dilation, _ = layer.geometry(positions)
        except ArchitectureError as err:
            raise ArchitectureError(f"{err} (positions {positions})") from None
        out = tuple(conv_output_size(n, k, s, d, layer.padding)[0]
                    for n, k, s, d in zip(positions, kernel, stride, dilation, strict=True))
        w, b = ctx.variances(layer, layer.weight_var, layer.bias_var) if ctx else (torch.ones(()), torch.zeros(()))
        act = layers[i + 1] if i + 1 < len(layers) and _is_activation(layers[i + 1]) else None
        groups.append(_Group(kernel, stride, dilation, layer.padding, positions, out, w, b,
                             None if act is None or ctx is None else ctx.dual(act), act))
        positions = out
    return groups


def _applicable(state: CovState, ctx: RuleContext) -> bool:
    if state.positions is not None or state.inputs is None or state.gaussian or state.pre_activation is not None:
        return False
    x1, x2 = state.inputs
    nd = len(state.input_shape)
    return (ctx.hyper.weight_var.dim() == 1 and x1.dim() == nd + 1 and x2.dim() == nd + 1 and nd >= 2
            and state.k12.dim() == state.entry_ndim)


def _pin_degrees(groups: list[_Group], pre1: list, pre2: list) -> None:
    """Fix each adaptive quadrature dual's degree from the largest variance of its layer over both sides, so that
    every chunk of pairs uses the degree the whole block would (values independent of the chunking)."""
    for g, a, b in zip(groups, pre1, pre2, strict=True):
        if g.dual is not None and getattr(g.dual, "adaptive", False) and hasattr(g.dual, "effective_degree"):
            vmax = max(float(a.detach().max()), float(b.detach().max()))
            g.dual = dual_for(g.activation, g.dual.effective_degree(vmax), adaptive=False)


def compiled_loops_apply(device, dtype: torch.dtype, needs_grad: bool) -> bool:
    """Whether the compiled loops can take a run on ``device`` in ``dtype``: :data:`COMPILED` on, numba installed, a
    CPU, float32/64, no gradient needed (the activations are checked by :class:`.conv_stack_compiled.CompiledRun`)."""
    return bool(COMPILED and jit.AVAILABLE and torch.device(device).type == "cpu"
                and dtype in (torch.float32, torch.float64) and not needs_grad)


def _runs_compiled(x: torch.Tensor, groups: list[_Group], other: torch.Tensor | None = None) -> bool:
    """:func:`compiled_loops_apply` for inputs ``x``, ``other`` and the groups' variances."""
    tensors = [x, x if other is None else other] + [t for g in groups for t in (g.weight_var, g.bias_var)]
    return compiled_loops_apply(x.device, x.dtype, torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _compiled(sa: Side, sb: Side, groups: list[_Group], full: bool, with_ntk: bool,
              budget: int | None, trace: bool = False) -> CompiledRun | None:
    """The compiled loops for this block (:class:`.conv_stack_CompiledRun`), or None where they do not apply:
    ``COMPILED`` off, numba missing, not a CPU, not float32/64, something autograd must see, or an activation the
    loops do not have (they have ReLU and erf) or a zero pre-activation variance."""
    if not _runs_compiled(sa.x, groups, sb.x):
        return None
    return CompiledRun.build(sa, sb, groups, full, with_ntk, budget, trace)


def _pooled(x: torch.Tensor, groups: list[_Group], budget: int | None) -> list[torch.Tensor] | None:
    """A pooled run's per-input variances from the compiled loops in bands (:func:`.conv_stack_compiled.
    pooled_variances`) where they will run the pairs in bands too (``budget`` below one pair's tables); else None."""
    if budget is None or not _runs_compiled(x, groups) or not bands_apply(groups):
        return None
    widest = max([math.prod(groups[0].positions_in)] + [math.prod(g.positions_out) for g in groups])
    if 4 * widest * widest * x.element_size() <= budget:
        return None
    return pooled_variances(x, groups, budget)


def pair_bytes(positions: tuple[int, ...], full: bool, with_ntk: bool, dtype: torch.dtype) -> int:
    """Bytes one input pair holds in a chunk: :data:`LIVE_TENSORS` (4 more with Θ) tensors of ``P²`` (full) or
    ``P`` entries at the run's input positions (its widest layer: convs and pools never add positions here)."""
    p = math.prod(positions)
    live = LIVE_TENSORS + (4 if with_ntk else 0)
    return live * (p * p if full else p) * torch.finfo(dtype).bits // 8


def stack_pair_bytes(stack: ConvStack, input_shape: tuple[int, ...], with_ntk: bool, dtype: torch.dtype) -> int:
    """:func:`pair_bytes` of a fused run on inputs of shape ``(C, *spatial)``: the least memory the engine needs."""
    return pair_bytes(tuple(input_shape[1:]), stack.full, with_ntk, dtype)


def band_minimum_bytes(stack: ConvStack, input_shape: tuple[int, ...], dtype: torch.dtype) -> int | None:
    """The least memory of a fused run where its compiled loops go in bands of rows (:mod:`.conv_stack_bands`:
    full layout, two spatial axes, ReLU/erf/no activations, float32/64, :data:`COMPILED` and numba): one thread's
    scratch for a band of one row of the last layer with its halos (:func:`.conv_stack_compiled.band_bytes`); None
    where they do not apply (the torch path's one pair, :func:`stack_pair_bytes`, is the minimum there)."""
    if not (stack.full and compiled_loops_apply("cpu", dtype, False)):
        return None
    groups = _groups(stack, tuple(input_shape[1:]), None)
    if not bands_apply(groups) or any(g.activation is not None and type(g.activation) not in (ReLU, Erf)
                                      for g in groups):
        return None
    return band_bytes(geometry_of(groups), torch.finfo(dtype).bits // 8, 1)


def chunk_pairs(positions: tuple[int, ...], full: bool, with_ntk: bool, dtype: torch.dtype, device,
                budget: int | None = None) -> int:
    """Pairs per chunk within ``budget`` bytes (default :data:`CPU_CHUNK_BYTES` on a CPU, :data:`GPU_CHUNK_BYTES`
    on an accelerator), :func:`pair_bytes` each; at least one."""
    if budget is None:
        budget = CPU_CHUNK_BYTES if torch.device(device).type == "cpu" else GPU_CHUNK_BYTES
    return max(1, budget // pair_bytes(positions, full, with_ntk, dtype))


def _run_pairs(sa: Side, sb: Side, ia, ib, same, groups, full, with_ntk, budget: int | None, trace: bool = False):
    """The engine over the pair list ``(a[ia[m]], b[ib[m]])`` in chunks of at most ``budget`` bytes (None: the
    device's default); flat ``(K, Θ)`` of shape ``(m,)``. ``trace``: a Flatten readout of the full layout."""
    step = chunk_pairs(groups[0].positions_in, full, with_ntk, sa.x.dtype, sa.x.device, budget)
    compiled = _compiled(sa, sb, groups, full, with_ntk, budget, trace)
    minimum = pair_bytes(groups[0].positions_in, full, with_ntk, sa.x.dtype)
    if compiled is None and budget is not None and budget < minimum:  # the torch path holds whole pairs
        raise ValueError(f"max_memory={budget} bytes is below one input pair of the conv engine's torch path "
                         f"({minimum} bytes; it runs under autograd, on accelerators, for activations other than "
                         f"ReLU/erf and for zero-norm inputs); raise max_memory to at least {minimum}")
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
            k, t = cross_chunk(sa.take(i), sb.take(j), sm, groups, full, with_ntk, trace)
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


def _side_key(groups: list[_Group], r1: torch.Tensor, r2: torch.Tensor, full: bool, trace: bool, ntk: bool,
              ctx: RuleContext) -> tuple | None:
    """What the sides' cached work depends on besides their inputs (:mod:`.conv_stack_sides`), or None where it is
    not cached: a gradient to keep, a quadrature dual (its degree is pinned from both sides), or an accelerator
    (keys hash the inputs on the host; the per-set work is cheap there beside the pairs)."""
    if r1.device.type != "cpu":
        return None
    tensors = [r1, r2] + [t for g in groups for t in (g.weight_var, g.bias_var)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    if any(g.dual is not None and type(g.activation) not in _CLOSED_FORM for g in groups):
        return None
    return groups_key(groups), full, trace, ntk, ctx.chunk_bytes, COMPILED


def _prepared_side(r: torch.Tensor, groups: list[_Group], full: bool, ntk: bool, ctx: RuleContext,
                   key: tuple | None) -> Side:
    """The side of raw inputs ``r`` ``(n, C, *spatial)``: its variances (the same-position chain, or with pools each
    input's full self covariance), cached under ``key`` (:func:`_side_key`)."""

    def compute() -> Side:
        x = _flatten_inputs(r)
        if any(g.pool for g in groups):  # full layout: K(x, x) comes from the pairs (x, x), not from the chain
            step = chunk_pairs(groups[0].positions_in, True, False, x.dtype, x.device, ctx.chunk_bytes)
            return make_side(x, _pooled(x, groups, ctx.chunk_bytes) or self_chain_pooled(x, groups, step), groups,
                             full)
        pre, k, t = self_chain(x, groups, ntk)
        return make_side(x, pre, groups, full, (k, t))

    return cached_side(r, key, compute)


@kernel_rule(ConvStack)
def conv_stack_rule(stack: ConvStack, state: CovState, ctx: RuleContext) -> CovState:
    """The run's flat output state, computed by the engine of the module docstring."""
    if not _applicable(state, ctx):
        for layer in stack.layers:
            state = propagate(layer, state, ctx)
        return state
    r1, r2 = state.inputs
    groups = _groups(stack, tuple(r1.shape[2:]), ctx)
    full, ntk = stack.full, ctx.with_ntk
    trace = full and stack.readout == "flatten"
    symmetric = same_tensor(r1, r2)
    key = _side_key(groups, r1, r2, full, trace, ntk, ctx)
    side1 = _prepared_side(r1, groups, full, ntk, ctx, key)
    side2 = side1 if symmetric else _prepared_side(r2, groups, full, ntk, ctx, key)
    _pin_degrees(groups, side1.pre, side2.pre)
    n1, n2 = side1.x.shape[0], side2.x.shape[0]
    dev = r1.device

    def own(side):  # K(x, x), Θ(x, x) after the readout, (n,): kept with the side (copies leave: it may be cached)
        if side.own is None:
            if not full:
                k, t = side.chain
                side.own = k.mean(-1), (t.mean(-1) if ntk else None)
            else:
                idx = torch.arange(side.x.shape[0], device=dev)
                side.own = _run_pairs(side, side, idx, idx, torch.ones_like(idx, dtype=torch.bool), groups, True, ntk,
                                      ctx.chunk_bytes, trace)
        return tuple(None if v is None else v.clone() for v in side.own)

    diag = state.entry_ndim == 1
    # K(X, X) with GAP: the pairs (i, i) are among the pairs i ≤ j, flagged identical: their values are K(x, x)
    reuse = full and symmetric and not diag and state.identical is not None and bool(state.identical.diagonal().all())
    if not reuse:
        s11, s11t = own(side1)
        s22, s22t = (s11, s11t) if symmetric else own(side2)
    if diag:
        if symmetric:
            k12, t12 = s11, s11t
        else:
            idx = torch.arange(n1, device=dev)
            k12, t12 = _run_pairs(side1, side2, idx, idx, state.identical, groups, full, ntk, ctx.chunk_bytes, trace)
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
        k, t = _run_pairs(side1, side2, ia, ib, same, groups, full, ntk, ctx.chunk_bytes, trace)
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


__all__ = ["ConvStack", "band_minimum_bytes", "chunk_pairs", "compiled_loops_apply", "conv_stack_rule",
           "fuse_conv_stacks", "pair_bytes", "stack_pair_bytes"]

"""The driver of the compiled conv loops (:mod:`.conv_stack_jit`): a block's arrays packed once, calls over threads.

:class:`CompiledRun` turns the engine's per-group data (:mod:`.conv_stack`: geometry, variances, activations, the
per-input pre-activation variances) into the flat arrays the loops read, and runs a list of pairs through them,
split over ``torch.get_num_threads()`` threads (the loops release the GIL).
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..arch import Erf, ReLU
from . import conv_stack_bands as bands
from . import conv_stack_jit as jit
from .compiled_math import variance_roots
from .taps import conv_output_size


class CompiledRun:
    """The arrays :func:`.conv_stack_jit.gap_pairs` / ``flatten_pairs`` read, packed once per block, and their calls.

    Per layer: the geometry ``(L, 3, 7)`` (module docstring), ``σw²/k``, ``σb²`` and the activation code (0 none,
    1 ReLU, 2 erf; −1 an average pool, its ``(1/k)²`` in place of ``σw²/k``); per side ``√v``, ``1/√v`` and
    ``1/√(1 + 2v)`` of the pre-activation variances ``v``, concatenated over layers. A call splits its pairs over
    ``torch.get_num_threads()`` threads (the loops release the GIL; each writes its own slice of the result)."""

    CODES = {"ReLU": 1, "Erf": 2}

    @classmethod
    def build(cls, side1, side2, groups, full: bool, with_ntk: bool, budget: int | None = None,
              trace: bool = False) -> CompiledRun | None:
        """The run for two sides (:class:`.conv_stack_sides.Side`: inputs ``x`` in the engine's layouts, per-group
        variances ``pre`` ``[(n, P_l)]`` and their :attr:`compiled_roots`, kept with the side), or None if an
        activation has no loop here or a variance is zero (the duals' own conventions for zero-norm inputs apply
        there). ``side2 is side1``: a symmetric block. ``budget``: bytes the threads' scratch may take (None: no
        limit); each thread holds four tables of the widest layer's ``P²`` (GAP) or ``P`` (Flatten) entries, or,
        where one thread's tables exceed ``budget`` in a 2-D full layout, four tables of a band of rows
        (:mod:`.conv_stack_bands`, :func:`band_plan`). ``trace``: the full layout read out by a Flatten (the mean of
        its diagonal)."""
        codes = layer_codes(groups)
        if codes is None:
            return None
        tiny = torch.finfo(side1.x.dtype).tiny
        for code, v1, v2 in zip(codes, side1.pre, side2.pre, strict=True):
            if code > 0 and not (float(v1.min()) > tiny and float(v2.min()) > tiny):
                return None
        return cls(side1, side2, groups, codes, full, with_ntk, budget, trace)

    def __init__(self, side1, side2, groups, codes, full, with_ntk, budget=None, trace=False):
        self.geometry, self.w, self.b, self.act, self.offsets = pack_layers(groups, codes)
        x1 = side1.x
        self.side1, self.side2 = side1.compiled_roots, side2.compiled_roots
        self.snap = 1.0 - 8 * torch.finfo(x1.dtype).eps if with_ntk else 2.0
        self.x1, self.x2 = x1.numpy(), side2.x.numpy()
        self.run = jit.gap_pairs if full else jit.flatten_pairs
        self.with_ntk, self.dtype, self.full, self.trace = with_ntk, x1.dtype, full, trace
        widest = max([math.prod(groups[0].positions_in)] + [math.prod(g.positions_out) for g in groups])
        scratch = 4 * (widest * widest if full else widest) * x1.element_size()
        self.max_threads = None if budget is None else max(1, int(budget) // scratch)
        self.height = 0  # rows per band of the last layer (0: whole tables)
        if full and budget is not None and scratch > budget and bands_apply(groups):
            self.max_threads, self.height = band_plan(self.geometry, x1.element_size(), int(budget))
            self.run = bands.band_pairs

    @staticmethod
    def roots_of(pre) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``√v``, ``1/√v``, ``1/√(1 + 2v)`` of the variances ``pre`` ``[(n, P_l)]``, concatenated over groups
        ``(n, Σ P_l)`` (float64)."""
        v = torch.cat([p.detach().double() for p in pre], -1).numpy()
        q, inverse, erf_scale = np.empty_like(v), np.empty_like(v), np.empty_like(v)
        variance_roots(v.reshape(-1), q.reshape(-1), inverse.reshape(-1), erf_scale.reshape(-1))
        return q, inverse, erf_scale

    def __call__(self, ia: torch.Tensor, ib: torch.Tensor, same: torch.Tensor | None):
        """``(K, Θ)`` ``(m,)`` of the pairs ``(x1[ia], x2[ib])`` (``same``: identical inputs, or None)."""
        m = ia.shape[0]
        k, t = np.empty(m), np.empty(m)
        flags = np.zeros(m, dtype=np.bool_) if same is None else same.numpy()
        ia, ib = ia.numpy(), ib.numpy()

        def run(lo: int, hi: int) -> None:
            extra = ((self.trace, self.height) if self.height else (self.trace,)) if self.full else ()
            self.run(self.x1, self.x2, ia[lo:hi], ib[lo:hi], flags[lo:hi], self.geometry, self.w, self.b, self.act,
                     *self.side1, *self.side2, self.offsets, self.snap, self.with_ntk, *extra, k[lo:hi], t[lo:hi])

        threads = min(torch.get_num_threads(), m, self.max_threads or m)
        if threads <= 1:
            run(0, m)
        else:
            bounds = np.linspace(0, m, threads + 1).astype(int)
            list(thread_pool(threads).map(run, bounds[:-1], bounds[1:]))
        k, t = torch.from_numpy(k).to(self.dtype), torch.from_numpy(t).to(self.dtype)
        return k, (t if self.with_ntk else None)


def layer_codes(groups) -> list[int] | None:
    """The loops' code of each group (−1 an average pool, 0 no activation, 1 ReLU, 2 erf), or None if an activation
    has no loop here."""
    codes = []
    for g in groups:
        kind = None if g.dual is None else type(g.activation)
        if kind is not None and kind not in (ReLU, Erf):
            return None
        codes.append(-1 if g.pool else 0 if kind is None else CompiledRun.CODES[kind.__name__])
    return codes


def pack_layers(groups, codes: list[int]):
    """``(geometry, w, b, act, offsets)``: the per-layer arrays the loops read (:class:`CompiledRun`)."""
    w = np.array([float(g.tap_weight) for g in groups])
    b = np.array([float(g.bias_var) for g in groups])
    offsets = np.cumsum([0] + [math.prod(g.positions_out) for g in groups]).astype(np.int64)
    return geometry_of(groups), w, b, np.array(codes, dtype=np.int64), offsets


def bands_apply(groups) -> bool:
    """Whether the full-layout loops may go in bands of rows (:mod:`.conv_stack_bands`): every layer on two spatial
    axes (1-D and 3-D runs keep whole tables)."""
    return all(len(g.positions_in) == 2 for g in groups)


def geometry_of(groups) -> np.ndarray:
    """The loops' ``(L, 3, 7)`` geometry of the groups (module docstring of :mod:`.conv_stack_jit`)."""
    geometry = np.zeros((len(groups), 3, 7), dtype=np.int64)
    geometry[:, :, :5] = 1  # padded axes: one position, one tap, stride and dilation 1
    for i, g in enumerate(groups):
        nd = len(g.positions_in)
        for ax, (n, out, k, st, d) in enumerate(zip(g.positions_in, g.positions_out, g.kernel, g.stride,
                                                     g.dilation, strict=True)):
            low = conv_output_size(n, k, st, d, g.padding)[1]
            geometry[i, 3 - nd + ax] = (n, out, k, st, d, low, g.padding == "circular")
    return geometry


def band_bytes(geometry: np.ndarray, itemsize: int, height: int) -> int:
    """Scratch bytes of one thread of :func:`.conv_stack_bands.band_pairs` in bands of ``height`` rows: four tables
    of the largest band, two row buffers."""
    largest, middle = bands.band_entries(geometry, height)
    return (4 * int(largest) + 2 * int(middle)) * itemsize


def band_plan(geometry: np.ndarray, itemsize: int, budget: int) -> tuple[int, int]:
    """``(threads, height)``: as many threads (up to ``torch.get_num_threads()``) as bands of one row fit in
    ``budget``, then the tallest band whose scratch fits ``budget / threads`` (at least one row)."""
    threads = max(1, min(torch.get_num_threads(), budget // band_bytes(geometry, itemsize, 1)))
    return threads, band_height(geometry, itemsize, budget // threads)


def band_height(geometry: np.ndarray, itemsize: int, budget: int) -> int:
    """The tallest band of the last layer's rows whose scratch fits ``budget`` (at least one row)."""
    rows = int(geometry[-1, 1, 1])
    return next((h for h in range(rows, 1, -1) if band_bytes(geometry, itemsize, h) <= budget), 1)


def pooled_variances(x: torch.Tensor, groups, budget: int) -> list[torch.Tensor] | None:
    """The pre-activation variances ``[(n, P_l)]`` of a run with average pools (those of
    :func:`.conv_stack_torch.self_chain_pooled`) by :func:`.conv_stack_bands.band_variances`, within ``budget``
    bytes of scratch; None where the loops do not apply (an activation other than ReLU/erf, a zero variance)."""
    codes = layer_codes(groups)
    if codes is None:
        return None
    geometry, w, b, act, offsets = pack_layers(groups, codes)
    itemsize = x.element_size()
    threads, _ = band_plan(geometry, itemsize, budget)
    threads = min(threads, x.shape[0])
    heights = np.array([band_height(geometry[:d], itemsize, budget // threads) for d in range(1, len(groups) + 1)])
    xs = x.numpy()
    v, q, iq, r = (np.zeros((x.shape[0], int(offsets[-1]))) for _ in range(4))

    def run(lo: int, hi: int) -> None:
        bands.band_variances(xs[lo:hi], geometry, w, b, act, offsets, heights, v[lo:hi], q[lo:hi], iq[lo:hi],
                             r[lo:hi])

    bounds = np.linspace(0, x.shape[0], threads + 1).astype(int)
    list(thread_pool(threads).map(run, bounds[:-1], bounds[1:]))
    pre = [torch.from_numpy(v[:, offsets[i]:offsets[i + 1]]).to(x.dtype) for i in range(len(groups))]
    tiny = torch.finfo(x.dtype).tiny
    if any(code > 0 and not float(p.min()) > tiny for code, p in zip(act, pre, strict=True)):
        return None
    return pre


@functools.lru_cache(maxsize=4)
def thread_pool(threads: int) -> ThreadPoolExecutor:
    """A thread pool of ``threads`` workers, kept for the process (one per thread count asked)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="nngp-conv")


__all__ = ["CompiledRun", "band_bytes", "band_height", "band_plan", "bands_apply", "geometry_of", "layer_codes",
           "pack_layers", "pooled_variances", "thread_pool"]

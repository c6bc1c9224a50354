r"""The compiled full-layout loops of :mod:`.conv_stack_jit` in position-pair blocks: bands of rows of the first input.

One pair's tables in the full layout hold ``P_p × P_q`` entries (``P²``: 134 MB per float64 table for 64×64 images,
four per thread). :func:`band_pairs` computes the same ``(K, Θ)`` readouts as :func:`.conv_stack_jit.gap_pairs`
with the first input's positions ``p`` split along the image's row axis (the outer spatial axis of a 2-D layer):
for a band of output rows of the last layer, :func:`band_rows` walks the layers backwards to the rows each earlier
layer must hold (a conv's output row ``b`` reads rows ``s·b + d·β − lo`` over its taps ``β``, a pool's its window;
clipped to the image; a circular axis takes the whole axis), then the band goes depth-first through the layers with
the second input's side whole (all ``P_q`` columns), and its readout is added (GAP: all its entries; ``trace``: the
entries ``p = q``). Rows outside a layer's band are never computed; the halos (rows a band's taps read beyond it)
are recomputed by the neighbouring bands. The duals read the per-position variances at absolute positions, so the
values are the whole table's up to the order of the readout's sum.

The scratch is four tables of the largest band (over layers and bands) plus the row buffer of
:func:`.conv_stack_jit.layer_by_rows`: :func:`band_entries`. Runs on two spatial axes only (1-D and 3-D runs are
evaluated whole, see :mod:`.conv_stack_compiled`).
"""

from __future__ import annotations

import math

import numpy as np

from .compiled_math import jit_function
from .conv_stack_jit import input_rows, layer_by_rows, pool_taps


@jit_function()
def band_rows(geometry, first, last, bands):
    """Rows of axis 1 each layer holds for the output rows ``[first, last)`` of the last layer: ``bands[l]`` =
    ``(in_lo, in_hi, out_lo, out_hi)`` (``(L, 4)``, filled in place), the input band the smallest range of rows the
    output band's taps read, clipped to the axis (a circular axis: all of it)."""
    lo, hi = first, last
    for layer in range(geometry.shape[0] - 1, -1, -1):
        n_in, k, s, d, low, circ = (geometry[layer, 1, 0], geometry[layer, 1, 2], geometry[layer, 1, 3],
                                    geometry[layer, 1, 4], geometry[layer, 1, 5], geometry[layer, 1, 6])
        bands[layer, 2], bands[layer, 3] = lo, hi
        if circ != 0:
            lo, hi = 0, n_in
        else:
            top = min(max(0, s * lo - low), n_in)
            hi = max(top, min(n_in, s * (hi - 1) + d * (k - 1) - low + 1))
            lo = top
        bands[layer, 0], bands[layer, 1] = lo, hi


@jit_function()
def band_entries(geometry, height):
    """``(table, row buffer)``: entries of the largest table (or intermediate stage of a pool) any band of
    ``height`` output rows holds, and of the row buffer of :func:`.conv_stack_jit.layer_by_rows`."""
    layers = geometry.shape[0]
    bands = np.empty((layers, 4), np.int64)
    rows_last, largest, middle = geometry[layers - 1, 1, 1], 1, 1
    for first in range(0, rows_last, height):
        band_rows(geometry, first, min(first + height, rows_last), bands)
        for layer in range(layers):
            g = geometry[layer]
            rows = max(bands[layer, 1] - bands[layer, 0], bands[layer, 3] - bands[layer, 2])
            q = max(g[1, 0] * g[2, 0], g[1, 1] * g[2, 1])
            largest = max(largest, rows * max(g[2, 0], g[2, 1]) * q)
            middle = max(middle, g[2, 0] * g[1, 1] * g[2, 0])
    return largest, middle


@jit_function()
def _band(xa, xbt, i, j, ident, geometry, w, b, act, qa, iqa, ra, qb, iqb, rb, offsets, snap, ntk, bands, k0, k1, t0,
          t1, mid, tmid):
    """One band (rows ``bands``, :func:`band_rows`) of the pair ``(xa, x2[j])`` (``xbt``: ``x2[j]`` transposed,
    ``i``, ``j``: the pair's rows of the variances) through the layers; returns the tables holding the last layer's
    band ``(K, Θ)``: its positions ``p`` of rows ``bands[L − 1, 2:4]``, each a row of all ``P_q`` positions ``q``."""
    layers = geometry.shape[0]
    cols0 = geometry[0, 2, 0]
    input_rows(k0, xa, xbt, bands[0, 0] * cols0, (bands[0, 1] - bands[0, 0]) * cols0)  # K₀ on the band's rows
    kbuf, kspare, tbuf, tspare = k0, k1, t0, t1
    for layer in range(layers):
        g, carry = geometry[layer], ntk and layer > 0
        off, wl, bl = offsets[layer], w[layer], b[layer]
        po = offsets[layer + 1] - off
        rows_in, rows_out = bands[layer, 1] - bands[layer, 0], bands[layer, 3] - bands[layer, 2]
        row_low = g[1, 5] + bands[layer, 0] - g[1, 3] * bands[layer, 2]  # the band's offsets: lo + a − s·o₀
        if act[layer] < 0:  # average pool: K' = A K Aᵀ, Θ' = A Θ Aᵀ
            kbuf, kspare = pool_taps(kbuf, kspare, g, rows_in, rows_out, row_low, wl)
            if ntk:
                tbuf, tspare = pool_taps(tbuf, tspare, g, rows_in, rows_out, row_low, wl)
            continue
        q1, iq1, r1 = qa[i, off:off + po], iqa[i, off:off + po], ra[i, off:off + po]
        qrow, iqrow, rrow = qb[j, off:off + po], iqb[j, off:off + po], rb[j, off:off + po]
        layer_by_rows(kbuf, kspare, tbuf, tspare, mid, tmid, g, rows_in, rows_out, row_low, bands[layer, 2] * g[2, 1],
                      carry, ntk, wl, bl, act[layer], q1, iq1, r1, qrow, iqrow, rrow, snap, ident)
        kbuf, kspare, tbuf, tspare = kspare, kbuf, tspare, tbuf
    return kbuf, tbuf


@jit_function(nogil=True)
def band_pairs(x1, x2, ia, ib, same, geometry, w, b, act, qa, iqa, ra, qb, iqb, rb, offsets, snap, ntk, trace, height,
               out_k, out_t):
    """:func:`.conv_stack_jit.gap_pairs` (same arguments; every layer on two spatial axes, the first axis of
    ``geometry`` trivial) in bands of ``height`` output rows of the last layer (module docstring)."""
    layers = geometry.shape[0]
    size, middle = band_entries(geometry, height)
    dt = x1.dtype
    k0, k1, t0, t1 = np.empty(size, dt), np.empty(size, dt), np.empty(size, dt), np.empty(size, dt)
    mid, tmid = np.empty(middle, dt), np.empty(middle, dt)
    bands = np.empty((layers, 4), np.int64)
    rows_last, cols_last = geometry[layers - 1, 1, 1], geometry[layers - 1, 2, 1]
    po = offsets[layers] - offsets[layers - 1]
    xbt = np.ascontiguousarray(x2.transpose(0, 2, 1))
    for n in range(ia.shape[0]):
        sk, st = 0.0, 0.0
        for first in range(0, rows_last, height):
            band_rows(geometry, first, min(first + height, rows_last), bands)
            kbuf, tbuf = _band(x1[ia[n]], xbt[ib[n]], ia[n], ib[n], same[n], geometry, w, b, act, qa, iqa, ra, qb,
                               iqb, rb, offsets, snap, ntk, bands, k0, k1, t0, t1, mid, tmid)
            held = (bands[layers - 1, 3] - bands[layers - 1, 2]) * cols_last  # the band's positions p at the end
            if trace:  # the diagonal p = q (a Flatten after pools)
                p_first = bands[layers - 1, 2] * cols_last
                for pl in range(held):
                    sk += kbuf[pl * po + p_first + pl]
                    if ntk:
                        st += tbuf[pl * po + p_first + pl]
                continue
            for e in range(held * po):
                sk += kbuf[e]
            if ntk:
                for e in range(held * po):
                    st += tbuf[e]
        count = po if trace else po * po
        out_k[n] = sk / count
        out_t[n] = st / count


@jit_function(nogil=True)
def band_variances(x, geometry, w, b, act, offsets, heights, v, qv, iqv, rv):
    """The per-position pre-activation variances of a run with average pools, in bands: each input's pair with
    itself (identical inputs) through layers ``0..l`` in bands of ``heights[l]`` rows, the last layer without its
    dual, its diagonal ``K_l(x, x)[p, p]`` into ``v[n, offsets[l] + p]``; ``qv``, ``iqv``, ``rv``: ``√v``, ``1/√v``,
    ``1/√(1 + 2v)`` (the later layers' duals read them), all ``(n, ΣP_l)``, filled in place. The work of ``l + 1``
    layers per layer ``l``, instead of one ``P×P`` self covariance per input held whole."""
    layers = geometry.shape[0]
    size, middle = 1, 1
    for layer in range(layers):
        entries = band_entries(geometry[:layer + 1], heights[layer])
        size, middle = max(size, entries[0]), max(middle, entries[1])
    dt = x.dtype
    k0, k1, t0, t1 = np.empty(size, dt), np.empty(size, dt), np.empty(1, dt), np.empty(1, dt)
    mid, tmid = np.empty(middle, dt), np.empty(middle, dt)
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    for n in range(x.shape[0]):
        for depth in range(1, layers + 1):
            g, acts = geometry[:depth], act[:depth].copy()
            acts[depth - 1] = min(acts[depth - 1], 0)  # the pre-activation: no dual at the last layer
            bands = np.empty((depth, 4), np.int64)
            rows_last, cols_last = g[depth - 1, 1, 1], g[depth - 1, 2, 1]
            off, po = offsets[depth - 1], offsets[depth] - offsets[depth - 1]
            for first in range(0, rows_last, heights[depth - 1]):
                band_rows(g, first, min(first + heights[depth - 1], rows_last), bands)
                kbuf = _band(x[n], xt[n], n, n, True, g, w, b, acts, qv, iqv, rv, qv, iqv, rv, offsets, 2.0, False,
                             bands, k0, k1, t0, t1, mid, tmid)[0]
                p_first = bands[depth - 1, 2] * cols_last
                for pl in range((bands[depth - 1, 3] - bands[depth - 1, 2]) * cols_last):
                    v[n, off + p_first + pl] = kbuf[pl * po + p_first + pl]
            for p in range(off, off + po):
                qv[n, p] = math.sqrt(max(v[n, p], 0.0))
                iqv[n, p] = 1.0 / qv[n, p]
                rv[n, p] = 1.0 / math.sqrt(1.0 + 2.0 * v[n, p])


__all__ = ["band_entries", "band_pairs", "band_rows", "band_variances"]

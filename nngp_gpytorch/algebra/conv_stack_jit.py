r"""Compiled CPU loops for the fast positional engine (:mod:`.conv_stack`): every pair through every layer in cache.

The engine's torch path makes ~20 passes over each chunk per layer (``k`` slice-adds for the taps, then eight
element-wise passes for the ReLU dual, two of them transcendental: torch's float64 ``arccos`` alone costs ~5.5 ns per
element). Here one compiled loop (numba) takes each pair of inputs through the whole run with a few ``P×P`` scratch
buffers that stay in cache, never forming a chunk-sized tensor:

* ``K₀[p, q] = x[p]·x'[q]/C`` (the input covariance, channels averaged);
* per conv layer, the taps (Novak et al. 2019, eq. 8) **separably**, one spatial axis at a time on both position
  axes: ``U[.., o, .., o', ..] = Σ_β V[.., s·o + d·β − lo, .., s·o' + d·β − lo, ..]`` (zero padding: out-of-range
  taps add nothing; circular: they wrap), in contiguous runs for stride 1;
* then in one pass over the ``P_out²`` entries: ``S = σb² + (σw²/k)·U``, the ReLU dual (Cho & Saul 2009's
  arc-cosine kernel) ``c = S/(√v[p]·√v'[q])`` clamped to ``[−1, 1]``, ``θ = arccos c``,
  ``K'[p, q] = (√(v[p]·v'[q])/2π)·(sin θ + (π − θ)·c)`` and the NTK (Jacot et al. 2018; Arora et al. 2019)
  ``Θ'[p, q] = ((π − θ)/2π)·(S + (σw²/k)·U_Θ)``;
* the readout: ``(1/P²)·Σ_{p,q}`` (GAP) or, in the same-position layout, ``(1/P)·Σ_p`` (Flatten).

The duals and the vectorizing arc cosine/sine are :mod:`.compiled_math`'s. The conventions are the torch
path's (:func:`.conv_stack_torch.relu_in_place`): identical inputs at the same position get ``c = 1`` exactly; with the
NTK, ``|c| ≥ 1 − 8·eps`` snaps to ``±1``. Values agree with the torch path to ~1e-15 in float64. Float32 inputs keep
float32 tables (taps summed in float32, as the torch path does: half the memory traffic) while each entry's affine
map and dual are evaluated in float64 and rounded once.

Layer data are packed in arrays (numba wants homogeneous arguments): ``geometry`` ``(L, 3, 7)`` holds per layer and
spatial axis (padded in front to three axes) ``(n_in, n_out, k, stride, dilation, pad_low, circular)``; per-input
roots of the pre-activation variances of all layers are concatenated along positions, layer ``l`` at
``offsets[l]:offsets[l + 1]``.
"""

from __future__ import annotations

import numpy as np

from .compiled_math import AVAILABLE, erf_dual, jit_function, relu_dual


@jit_function(inline="always")
def _add(dst, src):
    """``dst += src`` on two 1-D views (a loop over views of their own vectorizes: LLVM sees both bases)."""
    for e in range(dst.shape[0]):
        dst[e] += src[e]


@jit_function(inline="always")
def _source(x, offset, stride, n_in, circular):
    """The input index ``s·x + offset`` an output ``x`` reads through one tap: wrapped when ``circular``, −1 when it
    falls in a zero padding."""
    xi = stride * x + offset
    if circular:
        return xi % n_in
    return xi if 0 <= xi < n_in else -1


@jit_function(inline="always")
def _tap_row(src, dst, outer, n_in, n_out, inner, offset, stride, circular):
    """``dst[o, x, i] += src[o, s·x + offset, i]`` over flat ``[outer, n, inner]`` rows (out of range: skipped, or
    wrapped when ``circular``); stride 1 without wrapping is one contiguous run per ``o``."""
    for o in range(outer):
        if stride == 1 and not circular:
            x0, x1 = max(0, -offset), min(n_out, n_in - offset)
            if x1 > x0:
                a0, b0, length = (o * n_out + x0) * inner, (o * n_in + x0 + offset) * inner, (x1 - x0) * inner
                _add(dst[a0:a0 + length], src[b0:b0 + length])
            continue
        for x in range(n_out):
            xi = _source(x, offset, stride, n_in, circular)
            if xi < 0:
                continue
            a0, b0 = (o * n_out + x) * inner, (o * n_in + xi) * inner
            for e in range(inner):
                dst[a0 + e] += src[b0 + e]


@jit_function()
def _tap_stage(src, dst, outer, n_in, n_out, inner, k, stride, dilation, low, circular, both):
    """The taps of one spatial axis on flat arrays: ``both``: ``dst[o, x, i, o', x', i'] = Σ_β src[o, s·x + d·β − lo,
    i, o', s·x' + d·β − lo, i']`` (the full layout); else ``dst[o, x, i] = Σ_β src[o, s·x + d·β − lo, i]``."""
    row_in, row_out = outer * n_in * inner, outer * n_out * inner
    if not both:
        dst[:row_out] = 0.0
        for beta in range(k):
            _tap_row(src, dst, outer, n_in, n_out, inner, dilation * beta - low, stride, circular)
        return
    dst[:row_out * row_out] = 0.0
    for r in range(row_out):
        o, x, i = r // (n_out * inner), (r // inner) % n_out, r % inner
        dr = dst[r * row_out:(r + 1) * row_out]
        for beta in range(k):
            xi = _source(x, dilation * beta - low, stride, n_in, circular)
            if xi < 0:
                continue
            start = ((o * n_in + xi) * inner + i) * row_in
            _tap_row(src[start:start + row_in], dr, outer, n_in, n_out, inner, dilation * beta - low, stride,
                     circular)


@jit_function()
def _taps(buf, spare, geometry, layer, both):
    """All spatial axes of ``layer``'s taps on ``buf`` (outermost axis first), ping-ponging with ``spare``;
    returns the buffer holding the result (trivial axes — one tap, stride 1, no padding — are skipped)."""
    g = geometry[layer]
    n0, n1, n2 = g[0, 0], g[1, 0], g[2, 0]  # current sizes: outputs of the axes already done, inputs of the rest
    for ax in range(3):
        n_in, n_out, k, s, d, lo, circ = g[ax, 0], g[ax, 1], g[ax, 2], g[ax, 3], g[ax, 4], g[ax, 5], g[ax, 6]
        if k == 1 and s == 1 and lo == 0 and n_in == n_out:
            continue
        outer = 1 if ax == 0 else (n0 if ax == 1 else n0 * n1)
        inner = n1 * n2 if ax == 0 else (n2 if ax == 1 else 1)
        _tap_stage(buf, spare, outer, n_in, n_out, inner, k, s, d, lo, circ != 0, both)
        if ax == 0:
            n0 = n_out
        elif ax == 1:
            n1 = n_out
        else:
            n2 = n_out
        buf, spare = spare, buf
    return buf, spare


@jit_function()
def pool_taps(buf, spare, g, rows_in, rows_out, row_low, scale):
    """An average pool on both sides of a full ``P×P`` buffer (``g``: its ``(3, 7)`` geometry): the flat layout
    ``[p₀, p₁, p₂, q₀, q₁, q₂]`` gets one one-sided tap stage per non-trivial axis of each side, the two sides' offsets
    independent, times ``scale = (1/k)²`` (``K' = A K Aᵀ``: ``(1/k)²·Σ_β Σ_β' K[s·p + β − lo, s·q + β' − lo]``); the
    first side's axis 1 as in :func:`layer_by_rows`. Returns the buffer holding the result."""
    sizes = np.empty(6, np.int64)
    for ax in range(3):
        sizes[ax] = rows_in if ax == 1 else g[ax, 0]
        sizes[3 + ax] = g[ax, 0]
    for a in range(6):
        ax = a % 3
        n_in, n_out, k, s, d, lo, circ = g[ax, 0], g[ax, 1], g[ax, 2], g[ax, 3], g[ax, 4], g[ax, 5], g[ax, 6]
        if a == 1:
            n_in, n_out, lo = rows_in, rows_out, row_low
        if k == 1 and s == 1 and lo == 0 and n_in == n_out:
            continue
        outer, inner = 1, 1
        for e in range(a):
            outer *= sizes[e]
        for e in range(a + 1, 6):
            inner *= sizes[e]
        _tap_stage(buf, spare, outer, n_in, n_out, inner, k, s, d, lo, circ != 0, False)
        sizes[a] = n_out
        buf, spare = spare, buf
    for e in range(sizes.prod()):
        buf[e] *= scale
    return buf, spare


@jit_function(inline="always")
def input_rows(dst, xa, xbt, first, count):
    """Rows ``first … first + count − 1`` of ``K₀ = x·x'ᵀ/C`` into ``dst`` (``xa`` ``(P, C)``, ``xbt`` = ``x'ᵀ``
    ``(C, P)``: contiguous per channel, so each row is a vectorized pass over ``q``)."""
    channels, positions = xbt.shape
    for pl in range(count):
        row = dst[pl * positions:(pl + 1) * positions]
        row[:] = 0.0
        for c in range(channels):
            a, bt = xa[first + pl, c], xbt[c]
            for q in range(positions):
                row[q] += a * bt[q]
        for q in range(positions):
            row[q] /= channels


@jit_function(inline="always")
def _finish_row(row, trow, p, wl, bl, carry, ntk, act, q1, iq1, r1, qrow, iqrow, rrow, snap, ident):
    """Row ``p`` of a layer after its taps: ``S = σb² + (σw²/k)·U``, ``Θ = S + (σw²/k)·U_Θ`` (``carry``; the first
    layer's ``Θ = S``), then the dual in place (``act``: 0 none, 1 ReLU, 2 erf); ``q1``, ``iq1``, ``r1`` the first
    input's ``√v``, ``1/√v``, ``1/√(1 + 2v)`` at ``p``, ``qrow``, ``iqrow``, ``rrow`` the second input's row."""
    for q in range(row.shape[0]):
        row[q] = bl + wl * row[q]
    if carry:
        for q in range(row.shape[0]):
            trow[q] = row[q] + wl * trow[q]
    elif ntk:
        trow[:] = row
    if act == 1:
        if ntk:
            for q in range(row.shape[0]):
                kv, dv = relu_dual(row[q], q1, iq1, qrow[q], iqrow[q], snap, ident & (p == q))
                row[q] = kv
                trow[q] *= dv
        else:
            for q in range(row.shape[0]):
                row[q] = relu_dual(row[q], q1, iq1, qrow[q], iqrow[q], snap, ident & (p == q))[0]
    elif act == 2:
        if ntk:
            for q in range(row.shape[0]):
                kv, dv = erf_dual(row[q], q1, iq1, r1, qrow[q], iqrow[q], rrow[q], ident & (p == q))
                row[q] = kv
                trow[q] *= dv
        else:
            for q in range(row.shape[0]):
                row[q] = erf_dual(row[q], q1, iq1, r1, qrow[q], iqrow[q], rrow[q], ident & (p == q))[0]


@jit_function()
def layer_by_rows(src, dst, tsrc, tdst, mid, tmid, g, rows_in, rows_out, row_low, p0, carry, ntk, wl, bl, act, qa,
                  iqa, ra, qrow, iqrow, rrow, snap, ident):
    """One layer of a run on at most two spatial axes (``g``: its ``(3, 7)`` geometry, the first axis trivial), row
    block by row block: for each output position row ``b`` of the outer axis, the outer axis's taps of the ``C_in``
    input rows it reads go to ``mid`` (``C_in`` rows of ``B_out·C_in`` columns, in cache), then each output row
    ``(b, c)`` takes the inner axis's taps from ``mid`` and its dual at once. ``src`` is read once per outer tap and
    ``dst`` written once, instead of three passes over ``P²`` entries per layer. The first side: ``rows_in`` rows to
    ``rows_out`` (offsets ``−row_low``) from position ``p0`` on (a band, :mod:`.conv_stack_bands`; else ``g``'s)."""
    b_in, b_out, kb, sb, db, lob, cb = g[1, 0], g[1, 1], g[1, 2], g[1, 3], g[1, 4], g[1, 5], g[1, 6] != 0
    c_in, c_out, kc, sc, dc, loc, cc = g[2, 0], g[2, 1], g[2, 2], g[2, 3], g[2, 4], g[2, 5], g[2, 6] != 0
    p_in, p_mid, p_out = b_in * c_in, b_out * c_in, b_out * c_out
    for b in range(rows_out):
        mid[:c_in * p_mid] = 0.0
        if carry:
            tmid[:c_in * p_mid] = 0.0
        for beta in range(kb):
            bi = _source(b, db * beta - row_low, sb, rows_in, cb)
            if bi < 0:
                continue
            for ci in range(c_in):
                r = (bi * c_in + ci) * p_in
                _tap_row(src[r:r + p_in], mid[ci * p_mid:(ci + 1) * p_mid], 1, b_in, b_out, c_in, db * beta - lob,
                         sb, cb)
                if carry:
                    _tap_row(tsrc[r:r + p_in], tmid[ci * p_mid:(ci + 1) * p_mid], 1, b_in, b_out, c_in,
                             db * beta - lob, sb, cb)
        for c in range(c_out):
            p, pa = b * c_out + c, p0 + b * c_out + c  # local and absolute (the variances') position
            row, trow = dst[p * p_out:(p + 1) * p_out], tdst[p * p_out:(p + 1) * p_out]
            row[:] = 0.0
            if carry:
                trow[:] = 0.0
            for beta in range(kc):
                ci = _source(c, dc * beta - loc, sc, c_in, cc)
                if ci < 0:
                    continue
                _tap_row(mid[ci * p_mid:(ci + 1) * p_mid], row, b_out, c_in, c_out, 1, dc * beta - loc, sc, cc)
                if carry:
                    _tap_row(tmid[ci * p_mid:(ci + 1) * p_mid], trow, b_out, c_in, c_out, 1, dc * beta - loc, sc, cc)
            _finish_row(row, trow, pa, wl, bl, carry, ntk, act, qa[pa], iqa[pa], ra[pa], qrow, iqrow, rrow, snap, ident)


@jit_function(nogil=True)
def gap_pairs(x1, x2, ia, ib, same, geometry, w, b, act, qa, iqa, ra, qb, iqb, rb, offsets, snap, ntk, trace, out_k,
              out_t):
    """``(K, Θ)`` after the GAP readout for pairs ``(x1[ia[m]], x2[ib[m]])``: ``x1`` ``(n1, P, C)``, ``x2``
    ``(n2, P, C)``; ``same`` ``(m,)``: identical inputs; ``w`` ``(L,)`` = ``σw²/k``, ``b`` ``(L,)`` = ``σb²``,
    ``act`` ``(L,)``: the activation after each conv (0 none, 1 ReLU, 2 erf; −1: the layer is an average pool,
    ``w`` = ``(1/k)²``, no bias, no dual); ``qa``, ``iqa``, ``ra`` ``(n1, ΣP_l)``: ``√v``, ``1/√v``,
    ``1/√(1 + 2v)`` of the first inputs' pre-activation variances, ``qb``, ``iqb``, ``rb`` ``(n2, ΣP_l)`` of the
    second; ``trace``: the mean of the diagonal (a Flatten after pools) instead of all entries; results into
    ``out_k``, ``out_t`` ``(m,)``. Layers on at most two spatial axes go by rows (:func:`layer_by_rows`)."""
    layers, positions = geometry.shape[0], x1.shape[1]
    largest, middle = positions, 1
    for layer in range(layers):
        g = geometry[layer]
        largest = max(largest, offsets[layer + 1] - offsets[layer])
        largest = max(largest, g[0, 0] * g[1, 0] * g[2, 0])
        middle = max(middle, g[2, 0] * g[1, 1] * g[2, 0])
    size = largest * largest
    dt = x1.dtype  # float32 inputs keep float32 tables (half the memory traffic); each entry's dual is float64
    k0, k1, t0, t1 = np.empty(size, dt), np.empty(size, dt), np.empty(size, dt), np.empty(size, dt)
    mid, tmid = np.empty(middle, dt), np.empty(middle, dt)
    xbt = np.ascontiguousarray(x2.transpose(0, 2, 1))
    for n in range(ia.shape[0]):
        input_rows(k0, x1[ia[n]], xbt[ib[n]], 0, positions)
        kbuf, kspare, tbuf, tspare = k0, k1, t0, t1
        for layer in range(layers):
            g, carry = geometry[layer], ntk and layer > 0
            off, wl, bl = offsets[layer], w[layer], b[layer]
            po = offsets[layer + 1] - off
            q1, iq1, r1 = qa[ia[n], off:off + po], iqa[ia[n], off:off + po], ra[ia[n], off:off + po]
            qrow, iqrow, rrow = qb[ib[n], off:off + po], iqb[ib[n], off:off + po], rb[ib[n], off:off + po]
            if act[layer] < 0:  # average pool: K' = A K Aᵀ, Θ' = A Θ Aᵀ
                kbuf, kspare = pool_taps(kbuf, kspare, g, g[1, 0], g[1, 1], g[1, 5], wl)
                if ntk:
                    tbuf, tspare = pool_taps(tbuf, tspare, g, g[1, 0], g[1, 1], g[1, 5], wl)
                continue
            if g[0, 0] == 1 and g[0, 1] == 1 and g[0, 2] == 1:
                layer_by_rows(kbuf, kspare, tbuf, tspare, mid, tmid, g, g[1, 0], g[1, 1], g[1, 5], 0, carry, ntk, wl,
                              bl, act[layer], q1, iq1, r1, qrow, iqrow, rrow, snap, same[n])
                kbuf, kspare, tbuf, tspare = kspare, kbuf, tspare, tbuf
                continue
            kbuf, kspare = _taps(kbuf, kspare, geometry, layer, True)
            if carry:
                tbuf, tspare = _taps(tbuf, tspare, geometry, layer, True)
            for p in range(po):
                _finish_row(kbuf[p * po:(p + 1) * po], tbuf[p * po:(p + 1) * po], p, wl, bl, carry, ntk,
                            act[layer], q1[p], iq1[p], r1[p], qrow, iqrow, rrow, snap, same[n])
        po = offsets[layers] - offsets[layers - 1]
        sk, st = 0.0, 0.0
        step, count = (po + 1, po) if trace else (1, po * po)  # trace: the diagonal (a Flatten after pools)
        for e in range(0, po * po, step):
            sk += kbuf[e]
        if ntk:
            for e in range(0, po * po, step):
                st += tbuf[e]
        out_k[n] = sk / count
        out_t[n] = st / count


@jit_function(nogil=True)
def flatten_pairs(x1, x2, ia, ib, same, geometry, w, b, act, qa, iqa, ra, qb, iqb, rb, offsets, snap, ntk, out_k,
                  out_t):
    """:func:`gap_pairs` in the same-position layout (Flatten readout, ``(1/P)·Σ_p``): ``x1`` ``(n1, C, P)``,
    ``x2`` ``(n2, C, P)``; the taps act on one position axis."""
    layers, channels, positions = geometry.shape[0], x1.shape[1], x1.shape[2]
    largest = positions
    for layer in range(layers):
        largest = max(largest, geometry[layer, 0, 0] * geometry[layer, 1, 0] * geometry[layer, 2, 0])
    k0, k1 = np.empty(largest, x1.dtype), np.empty(largest, x1.dtype)
    t0, t1 = np.empty(largest, x1.dtype), np.empty(largest, x1.dtype)
    for n in range(ia.shape[0]):
        xa, xb = x1[ia[n]], x2[ib[n]]
        row = k0[:positions]
        row[:] = 0.0
        for c in range(channels):
            a, bb = xa[c], xb[c]
            for p in range(positions):
                row[p] += a[p] * bb[p]
        for p in range(positions):
            row[p] /= channels
        kbuf, kspare, tbuf, tspare = k0, k1, t0, t1
        sk, st = 0.0, 0.0
        for layer in range(layers):
            kbuf, kspare = _taps(kbuf, kspare, geometry, layer, False)
            carry = ntk and layer > 0
            if carry:
                tbuf, tspare = _taps(tbuf, tspare, geometry, layer, False)
            off, wl, bl = offsets[layer], w[layer], b[layer]
            po = offsets[layer + 1] - off
            row, trow = kbuf[:po], tbuf[:po]
            for p in range(po):
                row[p] = bl + wl * row[p]
            if carry:
                for p in range(po):
                    trow[p] = row[p] + wl * trow[p]
            elif ntk:
                trow[:] = row
            if act[layer] != 0:
                q1, iq1, r1 = qa[ia[n], off:off + po], iqa[ia[n], off:off + po], ra[ia[n], off:off + po]
                q2, iq2, r2 = qb[ib[n], off:off + po], iqb[ib[n], off:off + po], rb[ib[n], off:off + po]
                ident, relu = same[n], act[layer] == 1
                for p in range(po):
                    if relu:
                        kv, dv = relu_dual(row[p], q1[p], iq1[p], q2[p], iq2[p], snap, ident)
                    else:
                        kv, dv = erf_dual(row[p], q1[p], iq1[p], r1[p], q2[p], iq2[p], r2[p], ident)
                    row[p] = kv
                    trow[p] *= dv
            if layer == layers - 1:
                for p in range(po):
                    sk += row[p]
                if ntk:
                    for p in range(po):
                        st += trow[p]
        po = offsets[layers] - offsets[layers - 1]
        out_k[n] = sk / po
        out_t[n] = st / po


__all__ = ["AVAILABLE", "flatten_pairs", "gap_pairs", "input_rows", "layer_by_rows", "pool_taps"]

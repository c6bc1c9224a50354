"""Fused ReLU layers (NNGP and NTK) for the full ``(n1, n2)`` block.

The ReLU dual is the degree-1 arc-cosine kernel (Cho & Saul 2009, eq. 6, with the ``1/π`` of their
normalization replaced by the Gaussian expectation's ``1/(2π)``): with ``s = √k11·√k22``,
``c = k12/s`` and ``θ = arccos c``,

    V(k11, k22, k12) = (b²/2π)·s·J1(c),      J1(c) = sin θ + (π − θ)·c.

Its derivatives are bounded everywhere (the ``1/√(1−c²)`` terms of ``∂θ/∂c`` cancel):

    ∂V/∂k12 = (b²/2π)·(π − θ),               ∂V/∂s = (b²/2π)·sin θ,      ∂s/∂k11 = √k22/(2√k11),

so ``∂V/∂k11 = (b²/4π)·sin θ·√(k22/k11)``. The backward pass therefore needs only ``θ`` (saved by the
forward pass; ``π − θ`` and ``sin θ`` are recomputed from it), and the sums over the other side that turn
``∂V/∂s`` into the ``(n,)``-vector gradients of ``k11`` and ``k22`` are matrix–vector products. The NTK's
ReLU derivative dual is ``(b²/2π)·(π − θ)`` with ``∂(π − θ)/∂c = 1/√(1 − c²)`` (Jacot et al. 2018).

The generic path (:class:`~nngp_gpytorch.duals.closed_form.LeakyReLUDual` through
:func:`~nngp_gpytorch.duals.safe_math.correlation` and autograd) makes ~13 N×N passes forward and ~20
backward per layer, each allocating a fresh N×N tensor; on CPU such an allocation (page faults) costs as
much as several arithmetic passes. Here both passes run over chunks of rows with cache-sized temporaries:
a ReLU layer allocates 2 N×N tensors forward (output, ``θ``) and 1 backward (the gradient of ``k12``).

Numerical conventions (the same as the generic path, see :func:`~.safe_math.correlation`):

* ``c`` is clamped to ``[−1, 1]``; pairs flagged ``identical`` get ``c = 1`` exactly (and, with the NTK,
  ``|c| ≥ 1 − 8·eps`` is snapped to ``±1``);
* where ``s`` underflows (a zero-norm input), ``c = k12/max(s, tiny)`` (so ``c = 0``) and
  ``∂V/∂s = (b²/2π)·J1(c)`` (the denominator is constant there), ``∂V/∂k12 = (b²/2π)·(π − θ)·s/tiny``;
* ``√k`` has the gradient ``1/(2·max(√k, eps))`` (finite at zero-norm inputs);
* a **pinned** entry, one whose correlation was set to ±1 (identical inputs, clamped from above, or
  snapped), is treated as a constant ``c``: ``∂V/∂k12 = 0`` and ``∂V/∂s = (b²/2π)·J1(c)`` (``b²/2`` at
  ``c = 1``). For identical inputs this is the exact derivative (``c`` stays 1 under any perturbation); for
  clamped entries it is the derivative of the clamped formula. The generic path differs only at an
  unclamped, non-identical ``c = 1.0`` (a kink; it takes the other one-sided derivative there); the total
  derivative with respect to the inputs is the same (``c`` is maximal, ``∂c/∂x = 0``).

The ReLU functions are differentiable once (the backward pass uses the saved ``θ``): second derivatives
through them raise an error rather than return wrong values. The allocation-lean dense map and symmetrization
are in :mod:`.dense_maps`.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

_TWO_PI = 2.0 * math.pi


def _is_full_layout(k11: torch.Tensor, k22: torch.Tensor, k12: torch.Tensor) -> bool:
    """True for the full layout of :class:`~nngp_gpytorch.algebra.state.CovState`: ``k12`` of shape
    ``(..., n1, n2)``, ``k11`` of shape ``(..., n1, 1)`` and ``k22`` of shape ``(..., 1, n2)``."""
    if k12.dim() < 2 or k11.dim() < 2 or k22.dim() < 2:
        return False
    n1, n2 = k12.shape[-2:]
    return k11.shape[-2:] == (n1, 1) and k22.shape[-2:] == (1, n2) and k12.numel() > 0


#: Above this size (bytes) of one N×N block the ReLU layers keep no θ for the backward pass and recompute it: glibc
#: serves allocations above 32 MiB by fresh ``mmap`` (page faults on every use), which costs more than an
#: ``arccos`` per entry; below it freed blocks are reused and keeping θ is cheaper.
RECOMPUTE_BYTES = 32 << 20

#: Elements per chunk of rows on a CPU: the few temporaries of one chunk (≈ 7 × 128 Ki entries) stay in L2/L3
#: cache (2¹⁷ was the fastest of 2¹⁵…2¹⁸ for a depth-2 MLP at N = 2000, float32, one thread).
CHUNK_ELEMENTS = 1 << 17
#: On a GPU small chunks mean many tiny kernel launches (measured on an H100: N = 10000 ran 30× slower with
#: CPU-sized chunks); chunks of 2²⁵ entries keep each temporary ≤ 256 MiB in float64.
GPU_CHUNK_ELEMENTS = 1 << 25


def chunk_elements(device: torch.device | None = None) -> int:
    """Entries per chunk of rows on ``device`` (:data:`CHUNK_ELEMENTS` on a CPU, :data:`GPU_CHUNK_ELEMENTS`
    on an accelerator)."""
    return CHUNK_ELEMENTS if device is None or torch.device(device).type == "cpu" else GPU_CHUNK_ELEMENTS


def rows_per_chunk(batch: torch.Size, n2: int, device: torch.device | None = None) -> int:
    """Rows per chunk: about :func:`chunk_elements` entries (at least one row)."""
    return max(1, chunk_elements(device) // max(1, int(torch.Size(batch).numel()) * n2))


def _row_chunks(n_batch: int, n1: int, n2: int, device: torch.device | None = None):
    """``(r0, r1)`` row ranges of about :func:`chunk_elements` entries each (at least one row)."""
    rows = max(1, chunk_elements(device) // max(1, n_batch * n2))
    return [(r0, min(n1, r0 + rows)) for r0 in range(0, n1, rows)]


def _true_entries(mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """Indices ``(nnz, len(shape))`` of the True entries of ``mask`` broadcast to ``shape``, in row-major order
    (so sorted by the row index within each batch element); None for no mask. An integer ``mask`` is taken to
    be such an index tensor already (callers that reuse one mask over several layers pass its indices, as the
    ReLU fusion pass :mod:`nngp_gpytorch.algebra.fusion` does; nothing is cached here)."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        if mask.shape[1] == len(shape):
            return mask
        # (nnz, 2) pairs for an output with batch dimensions: the same pairs in every batch element
        nb = int(torch.Size(shape[:-2]).numel())
        flat = torch.arange(nb, device=mask.device).repeat_interleave(mask.shape[0])
        batch_idx = torch.stack(torch.unravel_index(flat, tuple(shape[:-2])), dim=1)
        return torch.cat([batch_idx, mask.repeat(nb, 1)], dim=1)
    return torch.nonzero(mask.expand(shape))


def _split_by_rows(idx: torch.Tensor | None, chunks: list[tuple[int, int]], batch_ndim: int):
    """For each row chunk ``(r0, r1)``, the index tuple (rows made chunk-relative) of the entries of ``idx``
    in that chunk, or None when there are none."""
    out: list[tuple[torch.Tensor, ...] | None] = [None] * len(chunks)
    if idx is None or idx.shape[0] == 0:
        return out
    rows = idx[:, batch_ndim].contiguous()
    if batch_ndim == 0:  # rows sorted: one searchsorted for all chunk bounds
        starts = torch.tensor([r0 for r0, _ in chunks] + [chunks[-1][1]], dtype=rows.dtype, device=rows.device)
        bounds = torch.searchsorted(rows, starts).tolist()
        selections = [idx[bounds[k]:bounds[k + 1]] for k in range(len(chunks))]
    else:
        selections = [idx[(rows >= r0) & (rows < r1)] for r0, r1 in chunks]
    for k, (r0, _) in enumerate(chunks):
        sel = selections[k]
        if sel.shape[0]:
            cols = list(sel.unbind(1))
            cols[batch_ndim] = cols[batch_ndim] - r0
            out[k] = tuple(cols)
    return out


class _ReLUCross(torch.autograd.Function):
    """``V = (b²/2π)·s·J1(c)`` on the full block and, with a Θ block, ``Θ' = (b²/2π)·(π − θ)·Θ`` (the ReLU
    derivative dual times the incoming NTK, Jacot et al. 2018), with the analytic backward pass of the module.

    Both passes run over chunks of rows with cache-sized temporaries. The forward pass allocates the outputs
    and ``θ`` (saved); the backward pass the gradients of ``k12`` (and Θ). ``π − θ``, ``sin θ`` and, for the
    NTK, ``c`` are recomputed in the backward pass by the same operations as in the forward pass, hence to
    the same bits.

    With Θ (``snap``): ``|c| ≥ 1 − 8·eps`` is set to ``±1`` as in :func:`~.safe_math.correlation` with
    ``snap=True``, and these entries are pinned too. ``∂(π − θ)/∂c = 1/√(max(1 − c², eps²))`` elsewhere.
    """

    @staticmethod
    def forward(ctx, k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor, t12: torch.Tensor | None,
                identical: torch.Tensor | None, scale: float, weight_var: torch.Tensor | None = None,
                bias_var: torch.Tensor | None = None, out_weight_var: torch.Tensor | None = None,
                out_bias_var: torch.Tensor | None = None, differentiable: bool = True):
        finfo = torch.finfo(k12.dtype)
        tiny, snap = finfo.tiny, 1.0 - 8 * finfo.eps
        q1 = k11.clamp_min(0.0).sqrt()  # (..., n1, 1)
        q2 = k22.clamp_min(0.0).sqrt()  # (..., 1, n2)
        extra = [t.shape for t in (t12, weight_var, bias_var, out_weight_var, out_bias_var) if t is not None]
        shape = torch.broadcast_shapes(k12.shape, q1.shape, q2.shape, *extra)
        batch, (n1, n2) = shape[:-2], shape[-2:]
        q1e, q2e, k12e = q1.expand(*batch, n1, 1), q2.expand(*batch, 1, n2), k12.expand(shape)
        # fl(min q1 · min q2) bounds every rounded product q1_i·q2_j from below: one O(n) test decides
        # whether any entry needs the underflow branch (zero-norm inputs).
        small = bool(q1.min() * q2.min() < tiny)
        new = dict(dtype=k12.dtype, device=k12.device)
        out = torch.empty(shape, **new)
        # θ is kept for the backward pass only when there will be one (else a chunk-sized temporary)
        # Above RECOMPUTE_BYTES θ is recomputed in the backward pass rather than kept (an N×N allocation costs
        # more than one more arccos there).
        # (On a GPU the caching allocator makes the allocation cheap: θ is kept.)
        keep = differentiable and (shape.numel() * k12.element_size() < RECOMPUTE_BYTES or k12.device.type != "cpu")
        theta = torch.empty(shape if keep else (*batch, rows_per_chunk(batch, n2, k12.device), n2), **new)
        t_out = None if t12 is None else torch.empty(shape, **new)
        chunks = _row_chunks(int(torch.Size(batch).numel()), n1, n2, k12.device)
        rows = chunks[0][1] - chunks[0][0]
        ts, tc, tt, tp, tk = (torch.empty((*batch, rows, n2), **new) for _ in range(5))
        pre = _Prologue(k12e, weight_var, bias_var, tk)
        identical_at = _split_by_rows(_true_entries(identical, shape), chunks, len(batch))
        pinned_at = []  # per chunk: (entries set to c = 1, entries set to c = −1), index tuples or None
        for k, (r0, r1) in enumerate(chunks):
            m = r1 - r0
            s, c, sin, pmt = ts[..., :m, :], tc[..., :m, :], tt[..., :m, :], tp[..., :m, :]
            torch.mul(q1e[..., r0:r1, :], q2e, out=s)  # s = √k11·√k22 (exactly symmetric)
            torch.div(pre(r0, r1), s.clamp_min(tiny) if small else s, out=c)
            pins = _pin(c, identical_at[k], snap if t12 is not None else None)
            pinned_at.append(pins)
            th = torch.arccos(c, out=theta[..., r0:r1, :] if keep else theta[..., :m, :])
            _pi_minus(th, out=pmt)
            torch.sin(th, out=sin)
            if t_out is not None:
                torch.mul(pmt, t12.expand(shape)[..., r0:r1, :], out=t_out[..., r0:r1, :]).mul_(scale)
            j1 = torch.addcmul(sin, pmt, c, out=c)  # J1(c) = sin θ + (π − θ)·c
            if out_weight_var is None:
                torch.mul(j1, s, out=out[..., r0:r1, :]).mul_(scale)  # (b²/2π)·s·J1(c)
            else:  # the dense layer after: σw²·V + σb², the same addcmul as affine()
                v = torch.mul(j1, s, out=c).mul_(scale)
                torch.addcmul(out_bias_var, out_weight_var, v, out=out[..., r0:r1, :])
        ctx.scale, ctx.small, ctx.pinned_at = scale, small, pinned_at
        ctx.snap = snap if t12 is not None else None
        ctx.out_bias_shape = None if out_bias_var is None else out_bias_var.shape
        ctx.shapes = (k12.shape, k11.shape, k22.shape, None if t12 is None else t12.shape)
        ctx.out_shape = shape
        keep_k12 = small or t12 is not None or weight_var is not None or out_weight_var is not None or not keep
        ctx.save_for_backward(q1, q2, theta if keep else None, k12 if keep_k12 else None, t12, weight_var, bias_var,
                              out_weight_var)
        return out if t_out is None else (out, t_out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor, grad_t: torch.Tensor | None = None):
        q1, q2, theta, k12, t12, weight_var, bias_var, out_w = ctx.saved_tensors
        scale, small = ctx.scale, ctx.small
        shape12, shape11, shape22, shape_t = ctx.shapes
        shape = ctx.out_shape
        batch, (n1, n2) = shape[:-2], shape[-2:]
        finfo = torch.finfo(q1.dtype)
        tiny, eps = finfo.tiny, finfo.eps
        new = dict(dtype=q1.dtype, device=q1.device)
        q1e, q2e = q1.expand(*batch, n1, 1), q2.expand(*batch, 1, n2)
        grad = torch.zeros((), **new).expand(shape) if grad is None else grad.expand(shape)
        ntk = t12 is not None and grad_t is not None
        if ntk:
            grad_t, t12e = grad_t.expand(shape), t12.expand(shape)
        k12e = None if k12 is None else k12.expand(shape)
        want12, want_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        want_t = t12 is not None and ctx.needs_input_grad[3] and grad_t is not None
        g12 = torch.empty(shape, **new) if want12 else None
        gt = torch.empty(shape, **new) if want_t else None
        gq1 = torch.empty((*batch, n1, 1), **new) if want_s else None
        gq2 = torch.zeros((*batch, 1, n2), **new) if want_s else None
        chunks = _row_chunks(int(torch.Size(batch).numel()), n1, n2, q1.device)
        rows = chunks[0][1] - chunks[0][0]
        tt, tp, te, tk, tpre, tg, tv, ts, tc, tth = (torch.empty((*batch, rows, n2), **new) for _ in range(10))
        pre = _Prologue(k12e, weight_var, bias_var, tpre)
        affine = weight_var is not None
        want_w = affine and ctx.needs_input_grad[6]
        want_b = affine and ctx.needs_input_grad[7]
        gw = torch.zeros(weight_var.shape, dtype=torch.float64, device=q1.device) if want_w else None
        gb = torch.zeros(bias_var.shape, dtype=torch.float64, device=q1.device) if want_b else None
        epilogue = out_w is not None
        want_ow = epilogue and ctx.needs_input_grad[8]
        want_ob = epilogue and ctx.needs_input_grad[9]
        gow = torch.zeros(out_w.shape, dtype=torch.float64, device=q1.device) if want_ow else None
        gob = torch.zeros(ctx.out_bias_shape, dtype=torch.float64, device=q1.device) if want_ob else None
        for k, (r0, r1) in enumerate(chunks):
            m = r1 - r0
            sin, pmt, e, dk = tt[..., :m, :], tp[..., :m, :], te[..., :m, :], tk[..., :m, :]
            g = grad[..., r0:r1, :]
            hi, lo = ctx.pinned_at[k]
            if theta is not None:
                th = theta[..., r0:r1, :]
            else:  # θ recomputed by the forward pass's operations (same bits)
                s_ = torch.mul(q1e[..., r0:r1, :], q2e, out=ts[..., :m, :])
                c_ = torch.div(pre(r0, r1), s_.clamp_min(tiny) if small else s_, out=tc[..., :m, :])
                _pin(c_, None, ctx.snap, hi, lo)
                th = torch.arccos(c_, out=tth[..., :m, :])
            _pi_minus(th, out=pmt)
            torch.sin(th, out=sin)
            if epilogue:  # the dense layer after: ∂L/∂V = σw²·∂L/∂out; σw², σb² get Σ ∂L/∂out ⊙ V and Σ ∂L/∂out
                g_out, g = g, torch.mul(g, out_w, out=tv[..., :m, :])
                if want_ob:
                    gob.add_(g_out.sum_to_size(ctx.out_bias_shape))
                if want_ow:  # V recomputed by the forward pass's operations (same bits)
                    s_ = q1e[..., r0:r1, :] * q2e
                    c_ = torch.div(pre(r0, r1), s_.clamp_min(tiny) if small else s_)
                    _pin(c_, None, ctx.snap, hi, lo)
                    v = torch.addcmul(sin, pmt, c_, out=c_).mul_(s_).mul_(scale)
                    gow.add_((g_out * v).sum_to_size(out_w.shape))
            if want_t:
                torch.mul(grad_t[..., r0:r1, :], pmt, out=gt[..., r0:r1, :]).mul_(scale)
            # ∂L/∂k12 (into dk) and ∂L/∂s (into e), both divided by scale
            torch.mul(g, pmt, out=dk)
            torch.mul(g, sin, out=e)
            if small or ntk:
                s = q1e[..., r0:r1, :] * q2e
                den = s.clamp_min(tiny)
            if small:  # ∂c/∂k12 = 1/max(s, tiny); where s < tiny, ∂V/∂s = J1(c) (the denominator is constant)
                under = s < tiny
                c0 = (pre(r0, r1) / den).clamp(-1.0, 1.0)
                dk.mul_(s / den)
                e.copy_(torch.where(under, g * torch.addcmul(sin, pmt, c0), e))
            if ntk:  # the derivative dual's ∂(π − θ)/∂c = 1/√(1 − c²), through c = k12/max(s, tiny)
                c = torch.div(pre(r0, r1), den).clamp_(-1.0, 1.0)
                _pin(c, None, ctx.snap, hi, lo)
                a = torch.addcmul(torch.ones((), **new), c, c, value=-1.0).clamp_min_(eps * eps).rsqrt_()
                a.mul_(grad_t[..., r0:r1, :]).mul_(t12e[..., r0:r1, :]).div_(den)  # ∂L/∂c / (scale·den)
                dk.add_(a)
                a.mul_(c)
                if small:
                    a.masked_fill_(under, 0.0)
                e.sub_(a)
            for idx in (hi, lo):  # pinned: c is a constant, ∂V/∂s = J1(c) = sin θ + (π − θ)·c
                if idx is not None:
                    dk[idx] = 0.0
                    e[idx] = g[idx] * (sin[idx] + pmt[idx] * (1.0 if idx is hi else -1.0))
            if affine:  # the dense layer before: ∂L/∂K = σw²·∂L/∂k12, ∂L/∂σw² = Σ ∂L/∂k12 ⊙ K, ∂L/∂σb² = Σ ∂L/∂k12
                gpre = torch.mul(dk, scale, out=tg[..., :m, :])
                if want12:
                    torch.mul(gpre, weight_var, out=g12[..., r0:r1, :])
                if want_w:
                    gw.add_((gpre * k12e[..., r0:r1, :]).sum_to_size(weight_var.shape))
                if want_b:
                    gb.add_(gpre.sum_to_size(bias_var.shape))
            elif want12:
                torch.mul(dk, scale, out=g12[..., r0:r1, :])
            if want_s:
                torch.matmul(e, q2e.mT, out=gq1[..., r0:r1, :])
                gq2.add_(q1e[..., r0:r1, :].mT @ e)
        g11 = g22 = None
        if ctx.needs_input_grad[1]:
            g11 = gq1.sum_to_size(shape11) * (0.5 * scale) / q1.clamp_min(eps)
        if ctx.needs_input_grad[2]:
            g22 = gq2.sum_to_size(shape22) * (0.5 * scale) / q2.clamp_min(eps)
        if g12 is not None:
            g12 = g12.sum_to_size(shape12)
        if gt is not None:
            gt = gt.sum_to_size(shape_t)
        if gw is not None:
            gw = gw.to(weight_var.dtype)
        if gb is not None:
            gb = gb.to(bias_var.dtype)
        gow = None if gow is None else gow.to(out_w.dtype)
        gob = None if gob is None else gob.to(out_w.dtype)
        return g12, g11, g22, gt, None, None, gw, gb, gow, gob, None


class _Prologue:
    """Rows ``r0:r1`` of the pre-activation: ``k12`` itself, or ``σw²·k12 + σb²`` (the dense layer before the
    ReLU, computed chunk by chunk into ``buf`` instead of as an N×N tensor; the same ``addcmul`` as
    :func:`affine`)."""

    def __init__(self, k12, weight_var, bias_var, buf):
        self.k12, self.w, self.b, self.buf = k12, weight_var, bias_var, buf

    def __call__(self, r0: int, r1: int) -> torch.Tensor:
        rows = self.k12[..., r0:r1, :]
        if self.w is None:
            return rows
        return torch.addcmul(self.b, self.w, rows, out=self.buf[..., :r1 - r0, :])


def _pin(c: torch.Tensor, identical, snap: float | None, hi=None, lo=None):
    """Clamp ``c`` to ``[−1, 1]`` in place and set the pinned entries: ``identical`` and (with ``snap``)
    ``c ≥ snap`` to 1, ``c ≤ −snap`` to −1 (without ``snap``: ``c ≥ 1``, i.e. clamped from above, to 1).
    Given ``hi``/``lo`` (from the forward pass), sets those instead of searching. Returns ``(hi, lo)``."""
    if hi is None and lo is None:
        hi = identical
        top = 1.0 if snap is None else snap
        if hi is not None:
            c[hi] = 0.0  # set to 1 below; kept out of the search for other pinned entries
        if bool(c.amax() >= top):  # rare: (anti)parallel inputs
            over = torch.nonzero(c >= top, as_tuple=True)
            hi = over if hi is None else tuple(torch.cat(p) for p in zip(hi, over, strict=True))
        if snap is not None and bool(c.amin() <= -snap):
            lo = torch.nonzero(c <= -snap, as_tuple=True)
    c.clamp_(-1.0, 1.0)
    if hi is not None:
        c[hi] = 1.0
    if lo is not None:
        c[lo] = -1.0
    return hi, lo


def relu_after_affine(k12: torch.Tensor, weight_var: torch.Tensor, bias_var: torch.Tensor, k11: torch.Tensor,
                      k22: torch.Tensor, identical: torch.Tensor | None = None, scale: float = 1.0 / _TWO_PI,
                      readout: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """A dense layer and a ReLU in one pass: ``relu_nngp(k11, k22, σw²·k12 + σb²)`` without forming the
    pre-activation block (Lee et al. 2018, eq. 4–5).

    Shapes: ``k12 (..., n1, n2)`` (the previous layer's post-activation covariance), ``weight_var``/``bias_var``
    broadcastable as ``(*batch, 1, 1)``, ``k11 (..., n1, 1)`` and ``k22 (..., 1, n2)`` the *pre-activation*
    variances (``σw²·k + σb²``, computed by the caller). ``identical``: a bool mask broadcastable to the output, or
    (for an output without batch dimensions) the ``(nnz, 2)`` row-major indices of its True entries. With
    ``readout = (σw², σb²)`` the dense layer after the ReLU is applied too (``σw²·V + σb²``, written directly into
    the output). Values equal the step-by-step computation bit for bit.
    """
    out_w, out_b = readout if readout is not None else (None, None)
    return _ReLUCross.apply(k12, k11, k22, None, identical, float(scale), weight_var, bias_var, out_w, out_b,
                            _differentiable(k12, k11, k22, weight_var, bias_var, out_w, out_b))


def _differentiable(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record the call (grad mode on and an input requiring a gradient)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _pi_minus(theta: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``π − θ`` into ``out`` (rounded as ``math.pi - theta``: the negation is exact)."""
    return torch.neg(theta, out=out).add_(math.pi)


def relu_nngp(k11: torch.Tensor, k22: torch.Tensor, k12: torch.Tensor, identical: torch.Tensor | None = None,
              scale: float = 1.0 / _TWO_PI) -> torch.Tensor | None:
    """Fused ReLU dual ``scale·√(k11k22)·J1(c)`` on the full block (``scale = b²/2π`` for ``b·max(x, 0)``).

    Shapes: ``k12 (..., n1, n2)``, ``k11 (..., n1, 1)``, ``k22 (..., 1, n2)``, ``identical`` a bool mask
    broadcastable to the output ``(..., n1, n2)``. Returns ``None`` for any other layout (the caller then
    uses the generic path). Values agree with
    :meth:`~nngp_gpytorch.duals.closed_form.LeakyReLUDual.nngp` to rounding; gradients are the analytic
    ones of the module docstring.
    """
    if not _is_full_layout(k11, k22, k12):
        return None
    if identical is not None:
        out_shape = torch.broadcast_shapes(k12.shape, k11.shape, k22.shape)
        if identical.dtype != torch.bool or torch.broadcast_shapes(identical.shape, out_shape) != out_shape:
            return None
    return _ReLUCross.apply(k12, k11, k22, None, identical, float(scale), None, None, None, None,
                            _differentiable(k12, k11, k22))


def relu_nngp_ntk(k11: torch.Tensor, k22: torch.Tensor, k12: torch.Tensor, t12: torch.Tensor,
                  identical: torch.Tensor | None = None, scale: float = 1.0 / _TWO_PI
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fused ReLU layer for the NNGP and the NTK: ``(scale·s·J1(c), scale·(π − θ)·Θ)``.

    The second output is the NTK recursion's ``V_φ'(K) ⊙ Θ`` (Jacot et al. 2018; Arora et al. 2019, eq. 8)
    for ``φ = b·max(x, 0)`` (``V_φ' = b²(π − θ)/2π``), with the correlation snapped to ±1 within 8 ulps as in
    :meth:`~nngp_gpytorch.duals.closed_form.LeakyReLUDual.nngp_and_ntk`. Shapes as :func:`relu_nngp`, ``t12``
    broadcastable to ``(..., n1, n2)``. Returns ``None`` for any other layout.
    """
    if not _is_full_layout(k11, k22, k12) or t12.dim() < 2:
        return None
    out_shape = torch.broadcast_shapes(k12.shape, k11.shape, k22.shape, t12.shape)
    if identical is not None and (identical.dtype != torch.bool
                                  or torch.broadcast_shapes(identical.shape, out_shape) != out_shape):
        return None
    return _ReLUCross.apply(k12, k11, k22, t12, identical, float(scale), None, None, None, None,
                            _differentiable(k12, k11, k22, t12))

"""Kernel rule of :class:`~nngp_gpytorch.arch.pool.MaxPool`: a Nonlin of each window's jointly Gaussian
pre-activations (Yang 2019), evaluated by exact formulas for windows of two and by quasi-Monte Carlo otherwise.

Channels are i.i.d. in the limit, so for the features ``h = φ(g)`` before the pool (``φ`` the activations since
the last affine layer, identity on Gaussian ``g``) and windows ``W_o``, ``W_o'`` of two inputs,

    K'[o, o'] = E[max_{a∈W_o} φ(u_a) · max_{b∈W_o'} φ(v_b)],         (u, v) ~ N(0, Σ_oo')
    Θ'[o, o'] = Σ_{a∈W_o, b∈W_o'} E[φ'(u_a)·1[a = a*] · φ'(v_b)·1[b = b*]] · Θ_g[a, b]

with ``Σ_oo'`` the ``(|W_o| + |W_o'|)``-dimensional covariance of the pre-activations ``g`` over both windows
(``K_g`` blocks of the full spatial covariance), ``a*``, ``b*`` the argmax cells (the gradient of a max flows
through its maximal entry), and ``Θ_g`` the NTK of ``g``.

**Windows of two cells on Gaussian features** (``φ`` = identity, e.g. ``Conv → MaxPool`` in 1-D): with
``max(a, b) = (a + b)/2 + |a − b|/2``, the odd cross terms vanish and

    E[max(u₁, u₂)·max(v₁, v₂)] = ¼·(E[s_u s_v] + E[|d_u|·|d_v|]),   s = sum, d = difference,
    E[|X||Y|] = (2/π)·σ_X σ_Y·(√(1 − ρ²) + ρ·arcsin ρ),
    E[1[u₁ > u₂]·1[v₁ > v₂]] = ¼ + arcsin(ρ)/(2π),   ρ = corr(d_u, d_v)        (orthant probabilities)

**Otherwise**: randomized quasi-Monte Carlo. ``R = 4`` independently Owen-scrambled Sobol sequences of
``samples/R`` points each (:func:`~nngp_gpytorch.numerics.sobol_replicates`; the same points for every entry:
common random numbers) are mapped through an exact factor of ``Σ_oo'``
(:func:`~nngp_gpytorch.numerics.psd_cholesky`); the value is the mean over all points and the standard error the
spread of the ``R`` replicate means. Cells a padded window lacks enter as independent dummy coordinates whose value
is −∞. Work is chunked so that the sample tensors stay below ``CHUNK_BYTES``.

**Determinism and symmetry.** The estimate is a fixed function of the pair's joint covariance ``Σ_oo'`` (and of
``samples``, ``qmc_seed``), and it is *symmetric in the two sides*. A Cholesky factor alone is not: ordering the
``u`` coordinates first gives a different QMC estimate than ordering ``v`` first (2e-3 relative apart on a
window of three), and ``K(X, X)``, averaged with its transpose for exact symmetry, disagreed with ``K(X1, X2)``
on the same inputs by that much. So the factor is taken in a *canonical order*: the side with the larger total
variance ``tr Σ_uu`` vs ``tr Σ_vv`` first (``chol(Σ)``, or ``P·chol(PΣP)`` with ``P`` the permutation exchanging
the sides); exchanging the sides gives the same samples with ``u`` and ``v`` exchanged. Where the traces tie
(within ``TIE_TOL`` relative) both factors are used, on the first and second half of each replicate's points when
the pair is a window with itself on identical inputs (``u = v``: both factors give the same samples), on the same
``samples/(2R)`` points otherwise (the mean of the two is symmetric). A block of ``K(X, X)`` therefore equals the
cross kernel, and ``K(X2, X1) = K(X1, X2)ᵀ``, to the rounding of the covariances below the pool (~1e-16 relative
measured), far below the QMC error; the accuracy per sample is that of one factor (as before the fix).

**K(X, X).** When both sides hold the same inputs (equal self blocks and a cross block equal to its own
transpose, checked by value), only the pairs ``i ≤ j`` are estimated and ``K'[j, i] = K'[i, j]ᵀ`` (over the output
positions) is mirrored: by the symmetry above this is the value the pair ``(j, i)`` would get, at half the cost.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..arch import Activation, ArchitectureError, Erf, Identity, LeakyReLU, ReLU, Sigmoid, Sign, Step, Tanh
from ..arch.pool import MaxPool
from ..duals.quadrature import Recomputed, autograd_derivative
from ..duals.safe_math import safe_arcsin
from ..numerics import psd_cholesky, safe_sqrt, sobol_replicates
from .activations import elementwise_source
from .positional import ensure_positional
from .state import CovState

#: bytes of QMC sample tensors held at once (per chunk of window pairs)
CHUNK_BYTES = 32 * 2**20
#: independently scrambled replicates behind the standard error
REPLICATES = 4
#: relative gap of the two sides' total variances below which the canonical order is a tie
TIE_TOL = 1e-9
#: window pairs whose covariance factors are computed in one call (without autograd)
FACTOR_BLOCK = 4096


def window_index(layer: MaxPool, positions: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, valid)`` ``(O, w)``: each output's window cells (flat positions, padded with 0) and which are
    real (``w`` the largest window)."""
    cells = layer.windows(positions)
    w = max(len(c) for c in cells)
    index = torch.zeros(len(cells), w, dtype=torch.long, device=device)
    valid = torch.zeros(len(cells), w, dtype=torch.bool, device=device)
    for o, c in enumerate(cells):
        index[o, :len(c)] = torch.as_tensor(c, dtype=torch.long, device=device)
        valid[o, :len(c)] = True
    return index, valid


def _blocks(k: torch.Tensor, index: torch.Tensor, cross: bool) -> torch.Tensor:
    """Window blocks of a ``(..., P, P)`` covariance: ``(..., O, w, w)`` (same window) or ``(..., O, O, w, w)``."""
    if not cross:
        return k[..., index[:, :, None], index[:, None, :]]
    return k[..., index[:, None, :, None], index[None, :, None, :]]


def _pair_mask(valid: torch.Tensor) -> torch.Tensor:
    """``(O, O, 2w)``: the real cells of window ``o`` (first ``w``) and window ``o'`` (last ``w``)."""
    o, w = valid.shape
    return torch.cat([valid[:, None, :].expand(o, o, w), valid[None, :, :].expand(o, o, w)], -1)


def _joint_covariance(ka, kb, kab, index, valid) -> torch.Tensor:
    """``Σ`` ``(..., O, O, 2w, 2w)`` over the windows of both sides; padded cells are independent unit normals."""
    a = _blocks(ka, index, cross=False).unsqueeze(-3)  # (..., O, 1, w, w)
    b = _blocks(kb, index, cross=False).unsqueeze(-4)  # (..., 1, O, w, w)
    c = _blocks(kab, index, cross=True)  # (..., O, O, w, w)
    a, b, c = torch.broadcast_tensors(a, b, c)
    top = torch.cat([a, c], -1)
    bottom = torch.cat([c.transpose(-1, -2), b], -1)
    sigma = torch.cat([top, bottom], -2)
    both = _pair_mask(valid)
    real = both[..., :, None] & both[..., None, :]
    eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device)
    return torch.where(real, sigma, eye * (~both[..., None]).to(sigma.dtype))


def _elementwise_derivative(phi: Activation):
    """``φ'`` by one reverse pass over the whole tensor (``φ`` is elementwise, so ``∇ Σ φ(x) = φ'(x)``), differentiable
    again when ``x`` carries a graph; far lighter than a vmapped scalar gradient on millions of points."""

    def derivative(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            graph = x.requires_grad
            y = x if graph else x.detach().requires_grad_(True)
            (d,) = torch.autograd.grad(phi(y).sum(), y, create_graph=graph)
        return d

    return derivative


def _is_monotone(activation: Activation) -> bool:
    """Non-decreasing named activations, for which ``max φ(u) = φ(max u)`` and the argmax is that of ``u``."""
    if isinstance(activation, LeakyReLU):
        return activation.a >= 0
    return type(activation) in (Identity, ReLU, Erf, Tanh, Sigmoid, Step, Sign)


def _side_swap(w: int, device) -> torch.Tensor:
    """The permutation ``P`` of the ``2w`` coordinates that exchanges side ``u`` (first ``w``) and side ``v``."""
    return torch.cat([torch.arange(w, 2 * w, device=device), torch.arange(w, device=device)])


def _canonical_order(sigma: torch.Tensor, w: int) -> torch.Tensor:
    """``(E,)`` codes for ``sigma`` ``(E, 2w, 2w)``: 0 where side ``u`` has the larger total variance
    (``tr Σ_uu > tr Σ_vv`` by more than ``TIE_TOL`` relative), 1 where ``v`` has, 2 for a tie. Exchanging the sides
    exchanges 0 and 1 and keeps 2."""
    diag = sigma.diagonal(dim1=-2, dim2=-1)
    tu, tv = diag[:, :w].sum(-1), diag[:, w:].sum(-1)
    tol = TIE_TOL * torch.maximum(tu.abs(), tv.abs())
    return torch.where(tu - tv > tol, 0, torch.where(tv - tu > tol, 1, 2))


def _average_factors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a + b)/2``: one commutative sum, so that exchanging the two factors (exchanging the sides) gives
    bit-identical values."""
    return (a + b) / 2


def _qmc(sigma: torch.Tensor, valid: torch.Tensor, phi, dphi, samples: int, seed: int, same: torch.Tensor):
    """Values ``(E,)``, standard errors ``(E,)`` and, with ``dphi``, NTK weights ``(E, w, w)`` for flattened window
    pairs ``sigma`` ``(E, 2w, 2w)`` with masks ``valid`` ``(E, 2w)``.

    Samples are laid out ``(entries, coordinate, point)`` so that the map ``x = L z`` is one batched matrix
    product and the max over a window a reduction over contiguous rows."""
    e, m = sigma.shape[0], sigma.shape[-1]
    w = m // 2
    half = max(1, samples // (2 * REPLICATES))  # points per replicate and factor
    n = REPLICATES * half
    both = sobol_replicates(m, 2 * half, REPLICATES, seed, sigma).unflatten(1, (2, half))  # (R, 2, h, m)
    z, z_next = (both[:, j].reshape(n, m).T.contiguous() for j in range(2))  # (m, N) each
    swap = _side_swap(w, sigma.device)
    order = _canonical_order(sigma.detach(), w)  # (E,)
    monotone = _is_monotone(phi)
    per_entry = 2 * n * m * sigma.element_size() * (4 if dphi is not None else 2)
    step = max(1, CHUNK_BYTES // per_entry)
    pad = None if bool(valid.all()) else torch.where(valid, 0.0, -math.inf).to(sigma.dtype)  # (E, m)

    def factors(sig: torch.Tensor) -> torch.Tensor:
        """``(2c, m, m)``: ``L_a``, ``L_b`` of each entry of ``sig`` ``(c, m, m)`` (one factorization call)."""
        both = psd_cholesky(torch.stack([sig, sig[:, swap[:, None], swap[None, :]]], 1).flatten(0, 1))
        both = both.unflatten(0, (-1, 2))
        return torch.stack([both[:, 0], both[:, 1][:, swap]], 1).flatten(0, 1)  # L_b's rows in the original order

    def one_slot(x: torch.Tensor, pad_c: torch.Tensor | None):
        """Replicate means ``(c, R)`` and NTK weights ``(c, w, w)`` (or ``None``) of samples ``x`` ``(c, m, N)``."""
        f = x if monotone else phi(x)
        if pad_c is not None:
            f = f + pad_c[:, :, None]
        if dphi is not None:
            fu, iu = f[:, :w].max(1)  # (c, N)
            fv, iv = f[:, w:].max(1)
        else:  # a chain of elementwise maxima over contiguous rows is several times faster than max(dim)
            fu, fv = f[:, 0], f[:, w]
            for j in range(1, w):
                fu, fv = torch.maximum(fu, f[:, j]), torch.maximum(fv, f[:, w + j])
        if monotone:
            fu, fv = phi(fu), phi(fv)
        means = (fu * fv).reshape(-1, REPLICATES, half).mean(-1)  # (c, R)
        if dphi is None:
            return means, None
        if monotone:  # φ' at the maximal cell's value
            du, dv = dphi(x[:, :w].gather(1, iu[:, None])[:, 0]), dphi(x[:, w:].gather(1, iv[:, None])[:, 0])
        else:
            d = dphi(x)
            du, dv = d[:, :w].gather(1, iu[:, None])[:, 0], d[:, w:].gather(1, iv[:, None])[:, 0]
        cells = torch.arange(w, device=x.device)[None, :, None]
        hu = (iu[:, None, :] == cells).to(x.dtype) * du[:, None, :]  # (c, w, N)
        hv = (iv[:, None, :] == cells).to(x.dtype) * dv[:, None, :]
        return means, hu @ hv.transpose(-1, -2) / n

    def chunk(lf: torch.Tensor, pad_c: torch.Tensor | None, same_c: torch.Tensor, order_c: torch.Tensor):
        la, lb = lf[0::2], lf[1::2]  # (c, m, m) each
        first = torch.where((order_c == 1)[:, None, None], lb, la)  # the canonical factor, or L_a on a tie
        second = torch.where((order_c == 0)[:, None, None], la, lb)
        means, weights = one_slot(first @ z, pad_c)  # the first slot: the first half of each replicate's points
        x = second @ z_next  # the second slot: the next points (the same canonical factor, or L_b on a tie)
        tied = (order_c == 2) & ~same_c  # both factors on the same points (the symmetric average)
        if bool(tied.any()):
            rows = tied.nonzero()[:, 0]
            x = x.index_copy(0, rows, lb[rows] @ z)
        means_2, weights_2 = one_slot(x, pad_c)
        return _average_factors(means, means_2), None if weights is None else _average_factors(weights, weights_2)

    def packed(lf: torch.Tensor, pad_c: torch.Tensor | None, same_c: torch.Tensor, order_c: torch.Tensor):
        means, weights = chunk(lf, pad_c, same_c, order_c)
        return means if weights is None else torch.cat([means, weights.flatten(1)], 1)  # (c, R [+ w²])

    parts = []
    if torch.is_grad_enabled() and sigma.requires_grad:  # recompute in the backward pass: memory stays a chunk
        for lo in range(0, e, step):
            pad_c = None if pad is None else pad[lo:lo + step]
            parts.append(Recomputed.apply(
                lambda sig, p=pad_c, sc=same[lo:lo + step], oc=order[lo:lo + step]: packed(factors(sig), p, sc, oc),
                sigma[lo:lo + step]))
    else:  # factorize blocks of >= FACTOR_BLOCK entries at once (the factorization's cost is per call, not per entry)
        block = max(step, FACTOR_BLOCK)
        for lo in range(0, e, block):
            lf = factors(sigma[lo:lo + block])
            for lo2 in range(lo, min(e, lo + block), step):
                hi2 = min(e, lo2 + step, lo + block)
                parts.append(packed(lf[2 * (lo2 - lo):2 * (hi2 - lo)], None if pad is None else pad[lo2:hi2],
                                    same[lo2:hi2], order[lo2:hi2]))
    out = torch.cat(parts)
    means = out[:, :REPLICATES]
    return (means.mean(-1), means.std(-1) / math.sqrt(REPLICATES),
            out[:, REPLICATES:].reshape(-1, w, w) if dphi is not None else None)


def _pair_exact(sigma: torch.Tensor, with_ntk: bool):
    """Windows of two cells, ``φ`` = identity: exact value and NTK weights for ``sigma`` ``(..., 4, 4)``."""
    # s = u1 + u2, d = u1 − u2 on each side: covariances by the linear maps
    plus = sigma.new_tensor([1.0, 1.0])
    minus = sigma.new_tensor([1.0, -1.0])
    su_sv = plus @ sigma[..., :2, 2:] @ plus
    du_dv = minus @ sigma[..., :2, 2:] @ minus
    du2 = minus @ sigma[..., :2, :2] @ minus
    dv2 = minus @ sigma[..., 2:, 2:] @ minus
    scale = safe_sqrt(du2) * safe_sqrt(dv2)
    rho = (du_dv / scale.clamp_min(torch.finfo(sigma.dtype).tiny)).clamp(-1.0, 1.0)
    asin = safe_arcsin(rho)
    abs_abs = (2.0 / math.pi) * scale * (safe_sqrt(1.0 - rho * rho) + rho * asin)
    value = 0.25 * (su_sv + abs_abs)
    if not with_ntk:
        return value, None
    same = 0.25 + asin / (2.0 * math.pi)  # P(u1 > u2, v1 > v2) = P(u2 > u1, v2 > v1)
    other = 0.5 - same
    weights = torch.stack([torch.stack([same, other], -1), torch.stack([other, same], -1)], -2)
    return value, weights


def max_pool_moments(sigma: torch.Tensor, window: int, activation: Activation, samples: int = 2**13,
                     seed: int = 0, with_ntk: bool = False, valid: torch.Tensor | None = None,
                     same: torch.Tensor | None = None):
    """``E[max_{a<w} φ(u_a)·max_{b<w} φ(v_b)]`` for ``(u, v) ~ N(0, Σ)``, ``Σ`` ``(..., 2w, 2w)`` (first ``w``
    coordinates ``u``), its standard error, and with ``with_ntk`` the weights ``E[φ'(u_a)1[a*]·φ'(v_b)1[b*]]``
    ``(..., w, w)`` (else ``None``). Exact (standard error 0) for ``w = 2`` and ``φ`` = :class:`Identity`, else
    quasi-Monte Carlo (module docstring). ``valid`` ``(..., 2w)`` marks real cells (default all); ``same`` (bool,
    broadcastable to ``...``) the pairs whose two windows are the same cells of identical inputs (``u = v``)."""
    m = sigma.shape[-1]
    if m != 2 * window:
        raise ValueError(f"sigma must be (..., 2w, 2w) for w = {window}, got {tuple(sigma.shape)}")
    lead = sigma.shape[:-2]
    if isinstance(activation, Identity) and window == 2 and (valid is None or bool(valid.all())):
        value, weights = _pair_exact(sigma, with_ntk)
        return value, torch.zeros_like(value), weights
    if valid is None:
        valid = torch.ones(m, dtype=torch.bool, device=sigma.device)
    valid = valid.expand(*lead, m).reshape(-1, m)
    dphi = None
    if with_ntk:
        autograd_derivative(activation, activation.describe())(sigma.new_zeros(3))  # a clear error if φ' is missing
        dphi = _elementwise_derivative(activation)
    same = torch.zeros((), dtype=torch.bool, device=sigma.device) if same is None else same
    same = same.to(sigma.device).expand(lead).reshape(-1)
    value, err, weights = _qmc(sigma.reshape(-1, m, m), valid, activation, dphi, samples, seed, same)
    return (value.reshape(lead), err.reshape(lead),
            weights.reshape(*lead, window, window) if weights is not None else None)


def _pool_pairs(ka, kb, kab, tab, index, valid, psi: Activation, layer: MaxPool, with_ntk: bool,
                same: torch.Tensor | None = None):
    """``K'`` (and ``Θ'``) ``(..., O, O)`` of the windows of two sides with self blocks ``ka``, ``kb`` and cross block
    ``kab`` (``(..., P, P)``, broadcastable) of the Gaussian ``g``; ``tab`` the cross block of ``Θ_g``; and the
    standard errors of ``K'``."""
    sigma = _joint_covariance(ka, kb, kab, index, valid)  # (..., O, O, 2w, 2w)
    value, err, weights = max_pool_moments(sigma, index.shape[1], psi, layer.samples, layer.qmc_seed, with_ntk,
                                           _pair_mask(valid), same)
    theta = (weights * _blocks(tab, index, cross=True)).sum((-1, -2)) if with_ntk else None
    return value, theta, err


def _mirror(k: torch.Tensor) -> torch.Tensor:
    """``k`` ``(..., n, n, P, P)`` with the pairs exchanged: ``k[..., j, i, q, p]`` at ``[..., i, j, p, q]``."""
    return k.transpose(-3, -4).transpose(-1, -2)


def _symmetric_pairs(k12: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether the cross block ``(..., n, n, P, P)`` of ``K(X, X)`` equals its mirror (to 1e-13 of ``scale``: the
    covariances below the pool may carry rounding asymmetries, e.g. ``x @ xᵀ`` from BLAS)."""
    if k12.shape[-3] != k12.shape[-4]:
        return False
    return bool(((k12 - _mirror(k12)).abs() <= 1e-13 * scale).all())


def _same_windows(identical: torch.Tensor | None, outputs: int, device) -> torch.Tensor:
    """``(..., O, O)`` bool: identical inputs (``identical`` ``(...)``; ``None``: a side with itself) at the same
    output window, where ``u = v``."""
    eye = torch.eye(outputs, dtype=torch.bool, device=device)
    return eye if identical is None else identical[..., None, None] & eye


def _pool_upper_pairs(k_self, k12, t12, identical, index, valid, psi: Activation, layer: MaxPool, with_ntk: bool):
    """:func:`_pool_pairs` for ``K(X, X)``: self blocks ``k_self`` ``(..., n, P, P)`` of both sides, cross block
    ``k12`` ``(..., n, n, P, P)``. Only the pairs ``i ≤ j`` are estimated; ``K'[j, i] = K'[i, j]ᵀ`` (the estimate is
    symmetric in the two sides, module docstring). Returns ``(..., n, n, O, O)`` tensors and the standard errors of
    the estimated pairs."""
    n = k12.shape[-3]
    rows, cols = torch.triu_indices(n, n, device=k12.device)
    same = _same_windows(None if identical is None else identical[..., rows, cols], index.shape[0], k12.device)
    value, theta, err = _pool_pairs(k_self[..., rows, :, :], k_self[..., cols, :, :], k12[..., rows, cols, :, :],
                                    t12[..., rows, cols, :, :] if with_ntk else None, index, valid, psi, layer,
                                    with_ntk, same)  # (..., E, O, O)
    pair = torch.empty(n, n, dtype=torch.long, device=k12.device)
    pair[rows, cols] = torch.arange(len(rows), device=k12.device)
    pair[cols, rows] = pair[rows, cols]
    lower = (torch.arange(n, device=k12.device)[:, None] > torch.arange(n, device=k12.device))[:, :, None, None]

    def spread(v):  # (..., E, O, O) -> (..., n, n, O, O), transposed below the diagonal
        v = v[..., pair, :, :]
        return torch.where(lower, v.transpose(-1, -2), v)

    return spread(value), spread(theta) if with_ntk else None, err


def max_pool(layer: MaxPool, state: CovState, ctx) -> CovState:
    """The map of :class:`MaxPool` on the covariance state (module docstring); registered in :mod:`.pool`."""
    state = ensure_positional(state, ctx, layer)
    psi, g = elementwise_source(layer, state)
    if not g.full_positions:
        raise ArchitectureError(f"{layer.describe()} needs the full spatial covariance of its input")
    window, stride, out = layer.geometry(g.positions)
    index, valid = window_index(layer, g.positions, g.k12.device)
    with_ntk = state.has_ntk
    if index.shape[1] == 1:  # one cell per window: a subsampling of the features, exact
        cells = index[:, 0]

        def pick(k):
            return k if k is None or k.dim() == 0 else k[..., cells[:, None], cells[None, :]]

        return state.replace(k12=pick(state.k12), k11=pick(state.k11), k22=pick(state.k22), t12=pick(state.t12),
                             t11=pick(state.t11), t22=pick(state.t22), positions=tuple(out), gaussian=False,
                             pre_activation=None)
    if with_ntk and g.t12.dim() == 0:
        raise ArchitectureError(f"{layer.describe()} pools features without a trainable layer below it")
    own = _same_windows(None, index.shape[0], g.k12.device)
    k11, t11, _ = _pool_pairs(g.k11, g.k11, g.k11, g.t11 if with_ntk else None, index, valid, psi, layer,
                              with_ntk, own)
    # K(X, X): the second side's self blocks are the first side's (laid out (1, n) instead of (n, 1)); reuse them
    # rather than estimate the same expectations again, and estimate only the pairs i <= j of the cross block
    swap = (lambda k: k.transpose(-3, -4)) if g.entry_ndim == 4 else (lambda k: k)
    same_sides = swap(g.k11).shape == g.k22.shape and torch.equal(swap(g.k11), g.k22) and (
        not with_ntk or torch.equal(swap(g.t11), g.t22))
    scale = g.k11.diagonal(dim1=-2, dim2=-1).abs().amax()
    if same_sides and g.entry_ndim == 4 and _symmetric_pairs(g.k12, scale) and (
            not with_ntk or _symmetric_pairs(g.t12, g.t11.diagonal(dim1=-2, dim2=-1).abs().amax())):
        k12, t12, e12 = _pool_upper_pairs(g.k11[..., :, 0, :, :], g.k12, g.t12, g.identical, index, valid, psi,
                                          layer, with_ntk)
    else:
        k12, t12, e12 = _pool_pairs(g.k11, g.k22, g.k12, g.t12 if with_ntk else None, index, valid, psi, layer,
                                    with_ntk, _same_windows(g.identical, index.shape[0], g.k12.device)
                                    if g.identical is not None else None)
    if same_sides:
        k22, t22 = swap(k11), (swap(t11) if with_ntk else None)
    else:
        k22, t22, _ = _pool_pairs(g.k22, g.k22, g.k22, g.t22 if with_ntk else None, index, valid, psi, layer,
                                  with_ntk, own)
    if bool((e12 > 0).any()):
        scale = k11.diagonal(dim1=-2, dim2=-1).abs().amax().clamp_min(torch.finfo(k11.dtype).tiny)
        worst = float((e12 / scale).detach().max())
        if worst > layer.tolerance:
            warnings.warn(f"{layer.describe()}: quasi-Monte Carlo standard error {worst:.1e} (relative to the largest "
                          f"variance) exceeds tolerance={layer.tolerance:g}; raise samples=", stacklevel=2)
    return state.replace(k12=k12, k11=k11, k22=k22, t12=t12, t11=t11, t22=t22, positions=tuple(out),
                         full_positions=True, gaussian=False, pre_activation=None)

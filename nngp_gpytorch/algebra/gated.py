"""What the gated recurrent layers (GRU, LSTM) share: the per-gate parameters, the pair moments of gates with
nonzero means, the pair/self QMC table driver, its chunking, and the readout of the hidden-state kernel with
the PSD projection of a Gram.

Per-gate parameters travel as three tensors ``(*batch, G)`` (σu², σb², σw² of each gate, in the order of
``layer.gate_names``) and the bias means as a tuple of ``G`` floats (fixed in the description).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..arch.recurrent import GatedLayer, RecurrentLayer
from ..numerics import sobol_normals
from .orthant import project_psd, qmc_entry_error_bound
from .recurrent import SequencePair, bp, recurrent_variances
from .registry import RuleContext
from .state import CovState


def gate_parameters(layer: GatedLayer, wu: torch.Tensor, b: torch.Tensor, ww: torch.Tensor):
    """Per-gate ``(σu², σb², σw²)`` tensors ``(*batch, G)`` from the slot values ``(*batch)`` and the layer's
    overrides (:meth:`~nngp_gpytorch.arch.recurrent.GatedLayer.gate_values`), and the bias means (floats)."""
    rows = layer.gate_values(wu, b, ww)

    def col(v, like):
        return like if isinstance(v, torch.Tensor) else torch.full_like(like, float(v))

    WU = torch.stack([col(u, wu) for u, _, _, _ in rows], -1)
    WW = torch.stack([col(w, ww) for _, w, _, _ in rows], -1)
    B = torch.stack([col(bb, b) for _, _, bb, _ in rows], -1)
    return WU, B, WW, tuple(float(m) for *_, m in rows)


def gate_columns(p: torch.Tensor, gates: int) -> torch.Tensor:
    """A table function's hyperparameter as ``(P, G)``: per-gate columns as given, or one shared ``(P,)`` value
    repeated (the signature of the shared-variance rule)."""
    return p.unsqueeze(-1).expand(*p.shape, gates) if p.dim() == 1 else p


@lru_cache(maxsize=8)
def _legendre(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(nodes)
    return x, w


#: Gauss–Legendre nodes of the bivariate normal CDF in the angle θ (:func:`bivariate_normal_cdf`). The integrand
#: is smooth in θ; 48 nodes reach ~1e-14 against scipy for correlations up to 0.95 (tests/test_gated_means.py).
CDF_NODES = 48


def bivariate_normal_cdf(a: torch.Tensor, b: torch.Tensor, rho: torch.Tensor, nodes: int = CDF_NODES) -> torch.Tensor:
    """``Φ₂(a, b; ρ) = P(X ≤ a, Y ≤ b)`` for standard normals of correlation ``ρ`` (|ρ| < 1), differentiable.

    Plackett's identity ``∂Φ₂/∂ρ = φ₂(a, b; ρ)`` with ``ρ = sin θ`` (Drezner & Wesolowsky 1990)::

        Φ₂(a, b; ρ) = Φ(a)Φ(b) + (1/2π)·∫₀^{arcsin ρ} exp(−(a² + b² − 2ab·sin θ)/(2cos²θ)) dθ,

    whose integrand is smooth on ``[0, arcsin ρ]`` (it has no ``1/√(1−ρ²)`` singularity), integrated by
    Gauss–Legendre with ``nodes`` nodes. Shapes broadcast.
    """
    x, w = _legendre(nodes)
    x = torch.as_tensor(x, dtype=rho.dtype, device=rho.device)
    w = torch.as_tensor(w, dtype=rho.dtype, device=rho.device)
    half = torch.asin(rho.clamp(-1.0, 1.0)).unsqueeze(-1) / 2  # θ = half·(1 + x)
    theta = half * (1 + x)
    a_, b_ = a.unsqueeze(-1), b.unsqueeze(-1)
    sin, cos2 = torch.sin(theta), torch.cos(theta) ** 2
    f = torch.exp(-(a_ * a_ + b_ * b_ - 2 * a_ * b_ * sin) / (2 * cos2))
    ndtr = torch.special.ndtr
    return ndtr(a) * ndtr(b) + (half * f * w).sum(-1) / (2 * math.pi)


def gate_pair_moment(k11, k22, k12, m1: float, m2: float) -> torch.Tensor:
    """``E[ς(u)ς(v)]``, ``ς = (1 + erf)/2``, for ``(u, v)`` Gaussian with means ``(m1, m2)`` and covariance
    ``[[k11, k12], [k12, k22]]``: ``ς(u) = P(ξ/√2 ≤ u)``, so the moment is the orthant probability
    ``Φ₂(m1/s1, m2/s2; k12/(s1·s2))`` with ``s = √(k + ½)`` (kernels.md "GRU", identity with ``+½I``)."""
    s1, s2 = torch.sqrt(k11 + 0.5), torch.sqrt(k22 + 0.5)
    return bivariate_normal_cdf(m1 / s1, m2 / s2, k12 / (s1 * s2))


def gate_mean(k, m: float) -> torch.Tensor:
    """``E[ς(u)] = Φ(m/√(k + ½))`` for ``u ~ N(m, k)``."""
    return torch.special.ndtr(m / torch.sqrt(k + 0.5))


def erf_pair_moment(k11, k22, k12, m1: float, m2: float) -> torch.Tensor:
    """``E[erf(u)·erf(v)]`` with means ``(m1, m2)``: ``erf = 2ς − 1`` gives
    ``4·E[ς(u)ς(v)] − 2·E[ς(u)] − 2·E[ς(v)] + 1`` (:func:`gate_pair_moment`, :func:`gate_mean`)."""
    return 4 * gate_pair_moment(k11, k22, k12, m1, m2) - 2 * gate_mean(k11, m1) - 2 * gate_mean(k22, m2) + 1


def _flat(x: torch.Tensor, batch: torch.Size, lead: int) -> torch.Tensor:
    """Expand ``x`` to ``(*batch, *x.shape[-lead:])``'s broadcast and flatten the batch into one axis P."""
    x = x.expand(*batch, *x.shape[x.dim() - lead:])
    return x.reshape(-1, *x.shape[len(batch):])


def _gp(p: torch.Tensor, nd: int) -> torch.Tensor:
    """View a per-gate hyperparameter ``(*batch, G)`` with ``nd`` singleton axes before the gate axis."""
    return p.reshape(*p.shape[:-1], *([1] * nd), p.shape[-1])


def gated_tables(layer, seq: SequencePair, wu, b, ww, table_fn, block: int, symmetric: bool = False,
                 mu: tuple[float, ...] | None = None):
    """Run a gated recursion (GRU or LSTM) on the self pairs and the cross pairs, flattened to ``P``.

    ``table_fn(c, c11, c22, k11, k22, wu, b, ww, normals, mu=mu)`` with per-gate hyperparameters ``(P, G)``
    (``wu``, ``b``, ``ww`` given here as ``(*batch, G)``, :func:`gate_parameters`; ``mu`` the bias means).
    Pairs whose sequences are identical take the self result; ``symmetric`` (the two input sets are equal)
    computes only the pairs ``i < j``. Returns the pair table and both self tables in their natural layouts.
    """
    dims_self = table_fn.qmc_dims(seq.T, True)
    dims_cross = table_fn.qmc_dims(seq.T, False)
    dtype, device = seq.c12.dtype, seq.c12.device
    n_self = sobol_normals(dims_self, layer.samples, layer.qmc_seed, dtype, device)
    n_cross = sobol_normals(dims_cross, layer.samples, layer.qmc_seed + 1, dtype, device)

    def run_self(cc):
        batch = torch.broadcast_shapes(cc.shape[:-2], wu.shape[:-1] + (1,))
        cf = _flat(cc, batch, 2)
        pf = [_flat(_gp(p, 1), batch, 1) for p in (wu, b, ww)]
        out = torch.cat([table_fn(cf[i:i + block], None, None, None, None, *(p[i:i + block] for p in pf), n_self,
                                  mu=mu)
                         for i in range(0, cf.shape[0], block)])
        return out.reshape(*batch, seq.T, seq.T)

    k11, k22 = run_self(seq.c11), run_self(seq.c22)
    if seq.diag and bool(seq.identical.all()):
        return k11, k11, k22
    if symmetric and not seq.diag and seq.c12.dim() == 4 and wu.dim() == 1:
        # one Gram K(X, X): compute the pairs i < j only and mirror them (K12[j, i] = K12[i, j]ᵀ)
        n = seq.c12.shape[0]
        iu = torch.triu_indices(n, n, 1, device=seq.c12.device)
        k12 = k11.unsqueeze(1).expand(n, n, seq.T, seq.T)
        if iu.shape[1]:
            parts = [table_fn(seq.c12[iu[0, i:i + block], iu[1, i:i + block]], seq.c11[iu[0, i:i + block]],
                              seq.c11[iu[1, i:i + block]], k11[iu[0, i:i + block]], k11[iu[1, i:i + block]],
                              *(p.expand(min(block, iu.shape[1] - i), p.shape[-1]) for p in (wu, b, ww)), n_cross,
                              mu=mu)
                     for i in range(0, iu.shape[1], block)]
            upper = torch.cat(parts)
            k12 = k12.index_put((iu[0], iu[1]), upper).index_put((iu[1], iu[0]), upper.transpose(-1, -2))
        return k12, k11, k22
    s1, s2 = seq.side(k11, 1), seq.side(k22, 2)
    c1, c2 = seq.side(seq.c11, 1), seq.side(seq.c22, 2)
    nd = 2 if seq.diag else 3
    batch = torch.broadcast_shapes(seq.c12.shape[:-2], s1.shape[:-2], s2.shape[:-2], _gp(wu, nd - 1).shape[:-1])
    cf, c1f, c2f, k1f, k2f = (_flat(x, batch, 2) for x in (seq.c12, c1, c2, s1, s2))
    pf = [_flat(_gp(p, nd - 1), batch, 1) for p in (wu, b, ww)]
    parts = [table_fn(cf[i:i + block], c1f[i:i + block], c2f[i:i + block], k1f[i:i + block], k2f[i:i + block],
                      *(p[i:i + block] for p in pf), n_cross, mu=mu) for i in range(0, cf.shape[0], block)]
    k12 = torch.cat(parts).reshape(*batch, seq.T, seq.T)
    same = seq.identical
    if same is not None and bool(same.any()):
        selfk = seq.side(k11, 1).expand_as(k12)
        k12 = torch.where(same.reshape(*same.shape, 1, 1), selfk, k12)
    return k12, k11, k22


def same_inputs(state: CovState) -> bool:
    """Whether both input sets of the state are the same points (a Gram ``K(X, X)``)."""
    x1, x2 = state.inputs
    return x1.shape == x2.shape and bool(torch.equal(x1, x2))


def pair_block(samples: int, T: int, budget: int = 2**24) -> int:
    """Pairs per chunk so that the per-point tensors in flight (``~8T`` rows of ``samples`` floats per pair:
    gates, weights and recursions of both sequences) fit ``budget`` floats."""
    return max(1, budget // max(1, 8 * T * samples))


def gated_output(layer: RecurrentLayer, state: CovState, seq: SequencePair, k12, k11, k22, wv, bv,
                 symmetric: bool) -> CovState:
    """Readout ``σv²·read(K) + σvb²`` of a gated (GRU/LSTM) hidden kernel. For a Gram ``K(X, X)``
    (``symmetric``, full layout) the output is made positive semi-definite with
    :func:`~.orthant.project_psd`: each pair is a separate QMC estimate, so the raw Gram is PSD only up
    to the estimation error; the projection keeps the diagonal and warns if the negative part exceeds
    ``n·`` :func:`~.orthant.qmc_entry_error_bound`."""
    nd = 1 if seq.diag else 2
    out12 = bp(wv, nd) * seq.read(k12) + bp(bv, nd)
    out11 = bp(wv, 1) * seq.read_self(k11, seq.w1) + bp(bv, 1)
    out22 = bp(wv, 1) * seq.read_self(k22, seq.w2) + bp(bv, 1)
    if symmetric and not seq.diag:
        scale = out12.detach().diagonal(dim1=-2, dim2=-1).abs().amax(-1)
        out12 = project_psd(out12, qmc_entry_error_bound(layer.samples, scale), f"{layer.describe()} Gram")
    return seq.output_state(state, out12, out11, out22)


def gated_rule(layer: RecurrentLayer, state: CovState, ctx: RuleContext, table_fn) -> CovState:
    """The NNGP rule of a gated layer: its hidden-state tables by ``table_fn`` (:func:`gated_tables`), then
    the readout (:func:`gated_output`). The NTK of gated layers is their tensor program's, not this algebra's."""
    if state.has_ntk:
        kind = type(layer).__name__
        raise NotImplementedError(f"{layer.describe()}: this covariance algebra carries the {kind} NNGP only; "
                                  f"the {kind} NTK is {kind}NTKKernel (its tensor program's NTK; "
                                  "NTKKernel(description) builds it, masks and per-gate values included)")
    seq = SequencePair.from_state(layer, state)
    (wu, b), (ww, _), (wv, bv) = recurrent_variances(layer, ctx)
    WU, B, WW, mu = gate_parameters(layer, wu, b, ww)
    symmetric = same_inputs(state)
    k12, k11, k22 = gated_tables(layer, seq, WU, B, WW, table_fn, pair_block(layer.samples, seq.T), symmetric, mu)
    return gated_output(layer, state, seq, k12, k11, k22, wv, bv, symmetric)


@dataclass
class QMCErrorBar:
    """Error bar of a gated (GRU/LSTM) NNGP kernel's quasi-Monte Carlo estimate (:func:`qmc_error_bar`).

    Attributes:
        kernel: the kernel's own value (its ``qmc_seed``), ``(..., n1, n2)`` or ``(..., n)``.
        error: per-entry bound on ``|kernel − exact|`` at confidence ``1 − alpha`` (Student-t quantile × the
            spread of the scramblings, plus a rounding floor ``1e-6·max|K|`` for the float32 per-point
            arithmetic).
        sd: the per-entry standard deviation over the independent scramblings.
        replicates: number of scramblings (the kernel's own included).
    """

    kernel: torch.Tensor
    error: torch.Tensor
    sd: torch.Tensor
    replicates: int


def qmc_error_bar(kernel, x1: torch.Tensor, x2: torch.Tensor | None = None, replicates: int = 8,
                  alpha: float = 0.01, diag: bool = False) -> QMCErrorBar:
    """The QMC error of a GRU/LSTM NNGP kernel (``NNGPKernel(A.gru(...))``/``A.lstm``) at ``x1, x2``, measured.

    Scrambled Sobol rules with different seeds are independent unbiased estimates of the same integrals (Owen
    1997), so the spread of ``replicates`` scramblings (seeds ``qmc_seed + 2r``, the kernel's own first; each
    rule uses two seeds, self and cross tables) estimates the standard deviation ``sd`` of one estimate; the error
    bar is ``t_{R−1, 1−α/2}·sd + 1e-6·max|K|``. Cost: ``replicates`` evaluations. Sets ``kernel.last_error``
    (and returns the :class:`QMCErrorBar`). Measured against nested quadrature (tests/test_gated_error_bars.py:
    per-gate GRU, lengths 1–2, and LSTM, length 1; 2⁸, 2¹⁰, 2¹² points, 4 seeds each, 216 entries): every entry
    covered, the largest bar 1.1–6× the largest actual error. With 4 replicates one entry in ~100 was not
    covered (the spread of 4 draws is itself too noisy), hence 8 by default."""
    from scipy.stats import t as student_t

    from . import evaluate

    layer = kernel.architecture
    if not isinstance(layer, GatedLayer):
        raise ValueError(f"qmc_error_bar needs a GRU or LSTM description, got {layer.describe()}")
    if replicates < 2:
        raise ValueError(f"qmc_error_bar needs replicates >= 2, got {replicates}")
    x2 = x1 if x2 is None else x2
    hyper = kernel.hyperparameters_for_algebra()
    values = []
    with torch.no_grad():
        for r in range(replicates):
            rep = dataclasses.replace(layer, qmc_seed=layer.qmc_seed + 2 * r)
            k, _ = evaluate(rep, x1, x2, hyper, diag=diag, quadrature_degree=kernel.quadrature_degree,
                            input_shape=kernel.input_shape)
            values.append(k)
    stack = torch.stack(values)
    sd = stack.std(0)
    quantile = float(student_t.ppf(1 - alpha / 2, replicates - 1))
    error = quantile * sd + 1e-6 * stack[0].abs().amax()
    kernel.last_error = error
    return QMCErrorBar(stack[0], error, sd, replicates)

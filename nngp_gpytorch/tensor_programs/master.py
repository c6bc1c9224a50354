"""The master theorem (Yang 2019, Tensor Programs I, Thm. 5.4): the kernel of a NETSOR program.

In the limit ``n → ∞`` the coordinates of all G-vars, over all inputs, are jointly Gaussian (centred),
with covariances defined instruction by instruction:

* input projections: ``Cov(U x_t, U x'_s) = σ_U²·x_t·x'_s/d`` for the same input matrix, else 0;
* biases: ``Cov(b, b) = σ_b²`` (every input pair), else 0;
* ``MatMul``: ``Cov(W h, W' h') = σ_W²·E[Z^h Z^{h'}]`` if ``W`` and ``W'`` are the same matrix, else 0;
* ``LinComb`` is linear (coefficients that are NETSOR+ scalars are deterministic per input);

and the readout kernel is ``K(x, x') = σ_v²·E[Z^{h(x)} Z^{h(x')}] + σ_b²``.

Every ``E[φ(Z…)·ψ(Z…)]`` is dispatched (:meth:`PairContext.expect`): a plain covariance when both sides
are G-vars; a closed-form dual (:func:`nngp_gpytorch.duals.dual_for`) when both sides are the same named
univariate activation of one G-var; otherwise a Gaussian expectation over the joint vector of the G-vars
involved (:func:`~nngp_gpytorch.tensor_programs.expectations.gaussian_expectation`: Gauss–Hermite product
rule in low dimension, randomized QMC beyond).

Layout (as :class:`nngp_gpytorch.algebra.CovState`): every tensor carries a leading replicate axis
(1, or ``R`` once a QMC estimate has entered), then the batch shape ``B``, then the entries:
``(n1, n2)`` for the cross block, ``(n,)`` for per-point (diagonal) blocks. Each side's per-point
covariances live in a "same" context (input set paired with itself, diagonal); the cross context reads
them broadcast as ``(..., n1, 1)`` and ``(..., 1, n2)``. Identical inputs get correlation exactly 1.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..algebra.state import identical_rows
from ..duals import IdentityDual, QuadratureDual, dual_for
from .elementwise import product
from .error_control import with_error_estimate
from .expectations import Accuracy, gaussian_expectation
from .program import Program, ProgramError, Scalar, Token, Var


@dataclass
class ProgramKernelResult:
    """Output of :func:`evaluate_program`.

    Attributes:
        kernel: ``(*B, n1, n2)`` (or ``(*B, n)`` for ``diag``): the mean over QMC replicates.
        stderr: same shape: end-to-end QMC standard error ``std_r/√R`` over the ``R`` replicate runs of the
            whole program (zeros when no QMC estimate was needed).
        methods: how many expectations each rule computed (``closed-form``, ``covariance``,
            ``gauss-hermite``, ``qmc``), and ``max_dim``: the largest Gaussian dimension met.
        quadrature_error: same shape: the Gauss–Hermite error estimate ``|K_n − K_{n/2}|``
            (:mod:`.error_control`; zeros without product rules or with ``Accuracy(target=None)``).
        error: ``quadrature_error + 2·stderr``, the error bar of ``kernel``.
    """

    kernel: torch.Tensor
    stderr: torch.Tensor
    methods: dict[str, int] = field(default_factory=dict)
    quadrature_error: torch.Tensor | None = None
    error: torch.Tensor | None = None


class Evaluator:
    def __init__(self, program: Program, params: dict[str, torch.Tensor], accuracy: Accuracy):
        self.program = program
        self.params = params
        self.accuracy = accuracy
        self.methods: Counter = Counter()
        self.max_dim = 0

    def seed_for(self, *keys) -> int:
        text = ",".join(str(k) for k in (self.accuracy.seed, *keys))
        return zlib.crc32(text.encode()) % (2**31 - 1)


class PairContext:
    """Covariances ``Cov(a(x_i), b(x'_j))`` of G-vars ``a`` at the inputs ``xa`` and ``b`` at ``xb``."""

    def __init__(self, ev: Evaluator, xa: torch.Tensor, xb: torch.Tensor, diag: bool,
                 side_a: PairContext | None = None, side_b: PairContext | None = None):
        self.ev = ev
        self.xa, self.xb, self.diag = xa, xb, diag
        self.same = side_a is None
        self.side_a = self if self.same else side_a
        self.side_b = self if self.same else side_b
        if self.same:
            self.identical = torch.ones(xa.shape[:-1], dtype=torch.bool, device=xa.device)
        elif diag:
            self.identical = (xa == xb).all(-1)
        else:
            self.identical = identical_rows(xa[0], xb[0]).unsqueeze(0)
        self.entry_ndim = 1 if diag else 2
        self._cov: dict[tuple[int, int], torch.Tensor] = {}
        self._exp: dict[tuple[int, int], torch.Tensor] = {}
        self._scalar: dict[int, torch.Tensor] = {}
        self._zero = xa.new_zeros((1,) * (xa.dim() - 2) + (1,) * self.entry_ndim)

    # ------------------------------------------------------------------ layout helpers
    def expand_a(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.diag else t.unsqueeze(-1)

    def expand_b(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.diag else t.unsqueeze(-2)

    def param(self, name: str) -> torch.Tensor:
        v = self.ev.params[name]  # (1, *B)
        return v.reshape(*v.shape, *([1] * self.entry_ndim))

    def coefficient(self, coef, side: str):
        if isinstance(coef, Scalar):
            ctx = self.side_a if side == "a" else self.side_b
            value = ctx.scalar(coef)
            return self.expand_a(value) if side == "a" else self.expand_b(value)
        return coef

    # ------------------------------------------------------------------ covariances of G-vars
    def cov(self, a: Var, b: Var) -> torch.Tensor:
        key = (a.index, b.index)
        if key not in self._cov:
            if self.same and (b.index, a.index) in self._cov:
                self._cov[key] = self._cov[(b.index, a.index)]
            else:
                self._cov[key] = self._compute_cov(a, b)
        return self._cov[key]

    def _compute_cov(self, a: Var, b: Var) -> torch.Tensor:
        if a.op == "lincomb":
            return sum(self.coefficient(c, "a") * self.cov(t, b) for c, t in a.terms)
        if b.op == "lincomb":
            return sum(self.coefficient(c, "b") * self.cov(a, t) for c, t in b.terms)
        if a.op != b.op or a.op != "bias" and a.matrix is not b.matrix:
            return self._zero
        if a.op == "bias":
            return self.param(a.var) if a is b else self._zero
        if a.op == "input":
            return self.param(a.matrix.var) * self._token_dot(a.source, b.source)
        return self.param(a.matrix.var) * self.expect(a.source, b.source)  # matmul, same matrix

    def _token_dot(self, ta: Token, tb: Token) -> torch.Tensor:
        xa = self.xa[..., ta.offset:ta.offset + ta.dim]
        xb = self.xb[..., tb.offset:tb.offset + tb.dim]
        if self.diag:
            return (xa * xb).sum(-1) / ta.dim
        return xa @ xb.transpose(-1, -2) / ta.dim

    # ------------------------------------------------------------------ expectations E[h(x) h'(x')]
    def expect(self, h: Var, k: Var) -> torch.Tensor:
        key = (h.index, k.index)
        if key not in self._exp:
            if self.same and (k.index, h.index) in self._exp:
                self._exp[key] = self._exp[(k.index, h.index)]
            else:
                self._exp[key] = self._compute_expect(h, k)
        return self._exp[key]

    def _compute_expect(self, h: Var, k: Var) -> torch.Tensor:
        ev = self.ev
        if h.is_g and k.is_g:
            ev.methods["covariance"] += 1
            return self.cov(h, k)
        dual = _shared_dual(h, k, ev.accuracy)
        if dual is not None:
            g, gg = h.base[0], k.base[0]
            k11 = self.expand_a(self.side_a.cov(g, g))
            k22 = self.expand_b(self.side_b.cov(gg, gg))
            k12 = self.cov(g, gg)
            ev.methods["closed-form"] += 1
            return dual.nngp(k11, k22, k12, self.identical if g is gg else None)
        # joint Gaussian of the G-vars on both sides; in a "same" context shared G-vars are one variable
        if self.same:
            union = list(h.base) + [g for g in k.base if g not in h.base]
            pos_a, pos_b = list(range(len(h.base))), [union.index(g) for g in k.base]
            sigma = self._block(union, union, self.cov)
        else:
            union = list(h.base) + list(k.base)
            pos_a, pos_b = list(range(len(h.base))), list(range(len(h.base), len(union)))
            sigma = self._cross_sigma(list(h.base), list(k.base))
        fh, fk = h.flat_fn, k.flat_fn

        def integrand(z: torch.Tensor) -> torch.Tensor:
            return fh(*(z[..., i] for i in pos_a)) * fk(*(z[..., i] for i in pos_b))

        value = self._gaussian(integrand, sigma, ("E", h.index, k.index), h, k)
        if not self.same and bool(self.identical.any()):
            # identical inputs: the same random variables on both sides; take the exact same-input value
            # (lower dimension, and consistent with the diagonal blocks of later covariances)
            value = torch.where(self.identical, self.expand_a(self.side_a.expect(h, k)), value)
        return value

    def _gaussian(self, integrand, sigma, key, *named) -> torch.Tensor:
        ev = self.ev
        m = sigma.shape[-1]
        ev.max_dim = max(ev.max_dim, m)
        value, method = gaussian_expectation(_checked(integrand, named), sigma, ev.accuracy, ev.seed_for(*key))
        ev.methods[method] += 1
        return value

    def _block(self, rows, cols, cov) -> torch.Tensor:
        entries = [[cov(r, c) for c in cols] for r in rows]
        flat = torch.broadcast_tensors(*[e for row in entries for e in row])
        return torch.stack(flat, -1).reshape(*flat[0].shape, len(rows), len(cols))

    def _cross_sigma(self, base_a: list[Var], base_b: list[Var]) -> torch.Tensor:
        aa = self._block(base_a, base_a, lambda r, c: self.expand_a(self.side_a.cov(r, c)))
        bb = self._block(base_b, base_b, lambda r, c: self.expand_b(self.side_b.cov(r, c)))
        ab = self._block(base_a, base_b, self.cov)
        shape = torch.broadcast_shapes(aa.shape[:-2], bb.shape[:-2], ab.shape[:-2])
        aa, bb, ab = (t.expand(*shape, *t.shape[-2:]) for t in (aa, bb, ab))
        top = torch.cat([aa, ab], -1)
        bottom = torch.cat([ab.transpose(-1, -2), bb], -1)
        return torch.cat([top, bottom], -2)

    # ------------------------------------------------------------------ NETSOR+ scalars (same contexts)
    def scalar(self, s: Scalar) -> torch.Tensor:
        if not self.same:
            raise RuntimeError("scalars are per input: evaluate them in a same-input context")
        if s.index not in self._scalar:
            if s.op == "scalar":
                args = [self.scalar(a) for a in s.args]
                args = torch.broadcast_tensors(*args)
                value = s.fn(*args)
                _check_value(value, args[0].shape, s.instruction)
            elif len(s.args) == 2 and s.args[0].is_g and s.args[1].is_g and s.fn is product:
                # ⟨g, h⟩/n of two G-vars (``moment(None, g, h)``) → E[z_g z_h] = Σ(g, h): no quadrature
                value = self.cov(s.args[0], s.args[1])
                self.ev.methods["covariance"] += 1
            else:
                base = list(s.base)
                sigma = self._block(base, base, self.cov)
                value = self._gaussian(lambda z: s.flat_fn(*(z[..., i] for i in range(len(base)))), sigma,
                                       ("M", s.index), s)
            self._scalar[s.index] = value
        return self._scalar[s.index]

    # ------------------------------------------------------------------ readout
    def readout(self) -> torch.Tensor:
        out = self.ev.program.output
        total = sum(ca * cb * self.expect(ha, hb) for ca, ha in out.terms for cb, hb in out.terms)
        total = self.param(out.var) * total
        if out.bias is not None:
            total = total + self.param(out.bias)
        return total


def _shared_dual(h: Var, k: Var, accuracy: Accuracy):
    """A closed-form dual when both sides are the same named univariate activation (or identity)."""
    ah = h.activation if not h.is_g else None
    ak = k.activation if not k.is_g else None
    if h.is_g != k.is_g or ah is None or ak is None or ah != ak:
        return None
    dual = dual_for(ah, accuracy.quadrature_degree)
    if isinstance(dual, QuadratureDual):
        return None  # the product rule below is the same computation
    return None if isinstance(dual, IdentityDual) else dual


def _check_value(value, shape, where: str) -> None:
    if not isinstance(value, torch.Tensor) or value.shape != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ProgramError(f"{where}: fn returned shape {got}, expected {tuple(shape)}")
    if not torch.isfinite(value).all():
        raise ProgramError(f"{where}: fn returned non-finite values")


def _checked(integrand, named):
    def wrapped(z: torch.Tensor) -> torch.Tensor:
        value = integrand(z)
        shape = z.shape[:-1]
        if not isinstance(value, torch.Tensor) or value.shape != shape or not torch.isfinite(value).all():
            where = " / ".join(v.instruction for v in named)
            _check_value(value, shape, where)
        return value

    return wrapped


def prepare_inputs(program: Program, x1: torch.Tensor, x2: torch.Tensor | None, variances: torch.Tensor,
                   diag: bool):
    """Validate the inputs of a program evaluation and broadcast them (shared by the NNGP and NTK evaluators).

    Returns ``(x1, x2, params, batch, same_inputs)``: inputs ``(1, *B, n, D)`` (a leading replicate axis),
    ``params`` ``{name: (1, *B)}``, ``B`` the broadcast batch shape, and whether ``x2`` is ``x1``.
    """
    program.check_complete()
    same_inputs = x2 is None or x2 is x1
    x2 = x1 if x2 is None else x2
    if x1.shape[-1] != program.input_dim or x2.shape[-1] != program.input_dim:
        raise ValueError(f"{program.name}: inputs have {x1.shape[-1]}/{x2.shape[-1]} features, the program "
                         f"declares {program.input_dim} ({', '.join(f'{t.name}: {t.dim}' for t in program.tokens)})")
    if variances.shape[-1] != len(program.parameters):
        raise ValueError(f"{program.name}: expected {len(program.parameters)} variances "
                         f"{list(program.parameters)}, got {variances.shape[-1]}")
    if diag and x1.shape[-2] != x2.shape[-2]:
        raise ValueError(f"diag=True needs as many points in x1 as in x2, got {x1.shape[-2]} and {x2.shape[-2]}")
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2], variances.shape[:-1])
    x1 = x1.expand(*batch, *x1.shape[-2:]).unsqueeze(0)
    x2 = x1 if same_inputs else x2.expand(*batch, *x2.shape[-2:]).unsqueeze(0)
    params = {name: variances[..., i].expand(batch).unsqueeze(0) for i, name in enumerate(program.parameters)}
    return x1, x2, params, batch, same_inputs


def evaluate_program(
    program: Program,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    variances: torch.Tensor,
    diag: bool = False,
    accuracy: Accuracy | None = None,
) -> ProgramKernelResult:
    """The master-theorem kernel of ``program`` between ``x1`` ``(..., n1, D)`` and ``x2`` ``(..., n2, D)``.

    Args:
        variances: ``(*batch_shape, P)``, one value per ``program.parameter_names``.
        diag: only the pairs ``(x1[i], x2[i])``.
        accuracy: quadrature / QMC knobs and the target accuracy (:class:`Accuracy`).

    Returns:
        :class:`ProgramKernelResult` with ``kernel``, ``stderr``, ``quadrature_error`` and ``error`` of shape
        ``(*B, n1, n2)`` or ``(*B, n)``, ``B`` the broadcast of the input batch shapes and ``batch_shape``.
    """
    accuracy = accuracy or Accuracy()
    result, (quad,) = with_error_estimate(
        lambda acc: _evaluate_once(program, x1, x2, variances, diag, acc), accuracy, lambda r: [r.kernel],
        lambda r: [r.stderr], f"TensorProgramKernel({program.name})")
    result.quadrature_error, result.error = quad, quad + 2 * result.stderr.detach()
    return result


def _evaluate_once(
    program: Program,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    variances: torch.Tensor,
    diag: bool = False,
    accuracy: Accuracy | None = None,
) -> ProgramKernelResult:
    """One evaluation of :func:`evaluate_program` at ``accuracy`` (no error estimate)."""
    accuracy = accuracy or Accuracy()
    x1, x2, params, batch, same_inputs = prepare_inputs(program, x1, x2, variances, diag)
    ev = Evaluator(program, params, accuracy)
    c11 = PairContext(ev, x1, x1, diag=True)
    if diag and same_inputs:
        target = c11
    else:
        c22 = c11 if same_inputs else PairContext(ev, x2, x2, diag=True)
        target = PairContext(ev, x1, x2, diag, side_a=c11, side_b=c22)
    k = target.readout()
    shape = (*batch, *((x1.shape[-2],) if diag else (x1.shape[-2], x2.shape[-2])))
    k = k.expand(k.shape[0], *shape)
    if same_inputs and not diag:
        k = (k + k.transpose(-1, -2)) / 2  # a Gram matrix: exactly symmetric (QMC estimates of (i,j), (j,i) differ)
    if k.shape[0] > 1:
        mean, stderr = k.mean(0), k.std(0) / math.sqrt(k.shape[0])
    else:
        mean, stderr = k[0], torch.zeros_like(k[0])
    methods = dict(ev.methods)
    methods["max_dim"] = ev.max_dim
    return ProgramKernelResult(mean, stderr, methods)

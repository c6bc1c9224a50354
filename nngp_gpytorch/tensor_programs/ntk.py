"""The neural tangent kernel of a NETSOR program (Yang 2020, *Tensor Programs II: Neural Tangent Kernel for
Any Architecture*, §3–4 and Thm. 4.3/Cor. 4.4), next to its NNGP kernel.

**Parameterization** (NTK, Jacot et al. 2018): every matrix is ``W = σ_W·ω/√fan_in`` with ``ω ~ N(0, 1)``,
every bias ``b = σ_b·β`` with ``β ~ N(0, 1)``, the readout ``f = σ_v·v·h/√n + σ_ob·β_o``; gradients are
taken with respect to ``ω``, ``β``, ``v`` and ``β_o``. The limit does not depend on the width.

**Backward program** (TP2 §3, under the *gradient-independence assumption*, GIA). Write ``dz = √n·∂f/∂z``
for every vector ``z``. The readout gives ``dh_out = σ_v·v``: a Gaussian vector, ``Cov = σ_v²`` for every
input pair (like a bias). Walking the instructions in reverse:

* ``g = W h`` (MatMul): ``dh += Wᵀ dg``, where ``Wᵀ`` is replaced by a *new* matrix, independent of
  everything forward, with the same variance: ``Cov(Wᵀ a, Wᵀ b) = σ_W²·E[Z^a Z^b]``, zero against every
  forward G-var and against other matrices' transposes (one transposed copy per matrix, shared by all of
  its uses, so recurrence and weight sharing give cross-time / cross-use covariances);
* ``h = φ(g¹ … gᵏ)`` (Nonlin, with composed H-var arguments flattened into one function of the base
  G-vars): ``dgⁱ += ∂ᵢφ(g)·dh`` (elementwise; ``∂ᵢφ`` by torch autograd of the user callable);
* ``g = Σ aᵢ gᵢ`` (LinComb): ``dgᵢ += aᵢ·dg``.

GIA is justified by TP2's "simple GIA check" (TP2 Thm. 4.3/Def. 4.2): the readout vector ``v`` is sampled
independently of everything else and used nowhere else, and the NETSOR part has no transposes.

So every backward vector is ``dg = Σ_u Ψ_{g,u}(Z^fwd)·du`` where ``u`` runs over the vectors read by a
matrix or by the readout, ``du`` are *backward G-vars* (LinCombs of ``Wᵀ dg'`` and ``v``), and ``Ψ_{g,u}``
are derivatives of Nonlins (functions of forward G-vars). Backward G-vars are independent of forward ones,
hence (TP2 eq. 12–13)::

    E[dg(ξ) dg'(ξ')]   = Σ_{u,u'} E[Ψ_{g,u}(ξ) Ψ_{g',u'}(ξ')] · Cov(du(ξ), du'(ξ'))
    Cov(du, du')       = σ_v²·c_u c_{u'} + Σ_{g = W u, g' = W u'} σ_W²·E[dg(ξ) dg'(ξ')]

(``c_u``: readout coefficient of ``u``), and the NTK is (TP2 Cor. 4.4; ``⟨dg hᵀ, dg' h'ᵀ⟩_F = (dg·dg')(h·h')``
is exact at finite width, so only the limits of the two factors are needed)::

    Θ(ξ,ξ') = σ_v²·E[h h'] + σ_ob²                                    (readout: the NNGP kernel K)
            + Σ_{hidden W} σ_W²·Σ_{uses i,j} E[dgᵢ dg'ⱼ]·E[hᵢ h'ⱼ]
            + Σ_{input U}  σ_U²·Σ_{uses i,j} E[dgᵢ dg'ⱼ]·xᵢ·x'ⱼ/d
            + Σ_{biases b} σ_b²·E[db db']                              (db sums the bias's uses)

The forward expectations are those of :mod:`.master` (covariances, closed-form duals — ``E[φ'φ']`` is the
derivative dual ``Dual.ntk`` when both sides differentiate the same named activation, so an MLP program is
exact —, Gauss–Hermite, randomized QMC carried through the whole program for a standard error).

**NETSOR+ scalars** (``LinComb`` coefficients such as attention weights or layer-norm scales) are treated as
deterministic per input: the gradient *through* a scalar is dropped. In the limit it vanishes: ``∂f/∂θ`` for a
moment ``θ = (1/n)Σ_α ψ(g)_α`` is ``O(1)`` (its mean is 0 by the ``v ↦ −v`` symmetry, which flips every
backward vector and no forward one), and ``∂θ/∂g_α = ψ'(g_α)/n`` is ``O(1/n)``, so the path adds ``O(1/√n)`` to
each ``dg_α``. This is the dedicated kernels' rule (attention weights and layer-norm scales act on Θ as on K)
and is tested against finite networks whose gradients include that path.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch

from ..duals import IdentityDual, QuadratureDual, dual_for
from .error_control import with_error_estimate
from .expectations import Accuracy, gaussian_expectation
from .master import Evaluator, PairContext, prepare_inputs
from .program import Program, ProgramError, Scalar, Var


@dataclass
class ProgramNTKResult:
    """Output of :func:`evaluate_program_ntk`.

    Attributes:
        kernel: NNGP ``K``, ``(*B, n1, n2)`` (``(*B, n)`` for ``diag``): mean over QMC replicates.
        ntk: NTK ``Θ``, same shape.
        kernel_stderr, ntk_stderr: end-to-end QMC standard errors ``std_r/√R`` (zeros when no QMC estimate was
            needed).
        methods: how many expectations each rule computed (as :class:`~.master.ProgramKernelResult`).
        kernel_quadrature_error, ntk_quadrature_error: Gauss–Hermite error estimates (:mod:`.error_control`).
        kernel_error, ntk_error: ``quadrature error + 2·stderr``, the error bars of ``kernel`` and ``ntk``.
    """

    kernel: torch.Tensor
    ntk: torch.Tensor
    kernel_stderr: torch.Tensor
    ntk_stderr: torch.Tensor
    methods: dict[str, int] = field(default_factory=dict)
    kernel_quadrature_error: torch.Tensor | None = None
    ntk_quadrature_error: torch.Tensor | None = None
    kernel_error: torch.Tensor | None = None
    ntk_error: torch.Tensor | None = None

    @property
    def stderr(self) -> torch.Tensor:
        """The NTK's QMC standard error (the kernel this result's object returns is Θ)."""
        return self.ntk_stderr

    @property
    def error(self) -> torch.Tensor | None:
        return self.ntk_error


class _Gradient:
    """``∇fn(values) = (∂₁fn, …, ∂ₘfn)`` stacked on a last axis ``(..., m)``, for an elementwise ``fn`` of ``m``
    tensors: one reverse-mode pass of ``Σ fn`` (elementwise, so its gradient is the vector of partials), with
    ``create_graph`` when the values carry gradients (the NTK stays differentiable in the variances)."""

    def __init__(self, fn, arity: int, where: str):
        self.fn, self.arity, self.where = fn, arity, where

    def __call__(self, *values: torch.Tensor) -> torch.Tensor:
        outer = torch.is_grad_enabled() and any(v.requires_grad for v in values)
        with torch.enable_grad():
            ins = [v if v.requires_grad else v.detach().requires_grad_() for v in values]
            try:
                out = self.fn(*ins)
                grads = torch.autograd.grad(out.sum(), ins, create_graph=outer, allow_unused=True)
            except Exception as err:  # noqa: BLE001 - re-raised with the instruction named
                raise ProgramError(f"{self.where}: cannot differentiate the Nonlin with torch autograd "
                                   f"({type(err).__name__}: {err}); the NTK needs its partial derivatives") from err
        return torch.stack([torch.zeros_like(v) if g is None else g for g, v in zip(grads, values, strict=True)], -1)


class _Ones:
    """``∇g = 1`` of a G-var read directly by a matrix or by the readout."""

    def __call__(self, *values: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(values[0]).unsqueeze(-1)


def _check_gradient(fn, gradient: _Gradient, arity: int, where: str) -> None:
    """Autograd ``∂ᵢfn`` vs central differences (step 1e-4, float64) on 61 probe points: a callable hiding its
    computation from autograd (``.detach()``, NumPy) must give an error, not a silently wrong NTK. At least 90% of
    the points must agree to 1e-2 relative (kinks and jumps may spoil a few)."""
    gen = torch.Generator().manual_seed(1)
    probes = [torch.linspace(-3.9, 3.9, 61, dtype=torch.float64).roll(7 * j) + 0.0123
              + 0.01 * torch.randn(61, generator=gen, dtype=torch.float64) for j in range(arity)]
    ad = gradient(*probes).detach()
    h = 1e-4
    for i in range(arity):
        with torch.no_grad():
            fd = (fn(*[p + h if j == i else p for j, p in enumerate(probes)])
                  - fn(*[p - h if j == i else p for j, p in enumerate(probes)])) / (2 * h)
        close = (ad[:, i] - fd).abs() <= 1e-2 * (1 + fd.abs())
        if float(close.double().mean()) < 0.9:
            worst = int((ad[:, i] - fd).abs().argmax())
            raise ProgramError(f"{where}: torch autograd cannot give the derivative of the Nonlin in its base G-var "
                               f"{i}: autograd gives {float(ad[worst, i]):.4g}, finite differences "
                               f"{float(fd[worst]):.4g} (is part of the computation detached or done outside "
                               "torch?). The NTK needs the derivatives")


class _Backward:
    """The backward program's structure (input-independent): used vectors, their gradients, LinComb paths."""

    def __init__(self, program: Program):
        self.program = program
        vars_ = program.vars
        # vectors read by a hidden matrix or by the readout, and their uses
        self.matmuls: dict[int, list[Var]] = {}  # u.index -> [g = W u]
        self.readout_coef: dict[int, float] = {}
        for v in vars_:
            if v.op == "matmul":
                self.matmuls.setdefault(v.source.index, []).append(v)
        for c, h in program.output.terms:
            self.readout_coef[h.index] = self.readout_coef.get(h.index, 0.0) + c
        self.used = [vars_[i] for i in sorted(set(self.matmuls) | set(self.readout_coef))]
        # expansion of every G-var into the G-vars it is a LinComb of: b = Σ_g (Σ Π coefficients)·g
        self.expansion: dict[int, dict[int, list[tuple]]] = {}
        for v in vars_:
            if not v.is_g:
                continue
            exp: dict[int, list[tuple]] = {v.index: [()]}
            if v.op == "lincomb":
                for coef, t in v.terms:
                    for g, monomials in self.expansion[t.index].items():
                        exp.setdefault(g, []).extend((coef, *m) for m in monomials)
            self.expansion[v.index] = exp
        # ∇flat_u per used vector, and per G-var g its contributions (u, i, monomials of c(g, u.base[i]))
        self.gradient: dict[int, object] = {}
        self.contributions: dict[int, list[tuple[Var, int, list[tuple]]]] = {}
        for u in self.used:
            if u.is_g:
                self.gradient[u.index] = _Ones()
            else:
                grad = _Gradient(u.flat_fn, len(u.base), u.instruction)
                _check_gradient(u.flat_fn, grad, len(u.base), u.instruction)
                self.gradient[u.index] = grad
            for i, b in enumerate(u.base):
                for g, monomials in self.expansion[b.index].items():
                    self.contributions.setdefault(g, []).append((u, i, monomials))


class _NTKContext(PairContext):
    """:class:`PairContext` with the expectations of gradients of used vectors (closed-form derivative duals,
    vector-valued Gauss–Hermite / QMC) and the backward covariances ``E[dg dg']``, ``Cov(du, du')``."""

    def __init__(self, *args, backward: _Backward, **kwargs):
        super().__init__(*args, **kwargs)
        self.bw = backward
        self._gg: dict[tuple[int, int], torch.Tensor] = {}
        self._dd: dict[tuple[int, int], torch.Tensor] = {}
        self._du: dict[tuple[int, int], torch.Tensor] = {}

    def grad_expect(self, u: Var, uu: Var) -> torch.Tensor:
        """``E[∇flat_u(ξ) ∇flat_uu(ξ')ᵀ]``: ``(R, *B, entries, m_u, m_uu)``."""
        key = (u.index, uu.index)
        if key not in self._gg:
            if self.same and (uu.index, u.index) in self._gg:
                self._gg[key] = self._gg[(uu.index, u.index)].transpose(-1, -2)
            else:
                self._gg[key] = self._compute_grad_expect(u, uu)
        return self._gg[key]

    def _compute_grad_expect(self, u: Var, uu: Var) -> torch.Tensor:
        ev = self.ev
        if u.is_g and uu.is_g:
            ev.methods["closed-form"] += 1
            return (self._zero + 1.0)[..., None, None]
        if not u.is_g and not uu.is_g and u.activation is not None and u.activation == uu.activation:
            dual = dual_for(u.activation, ev.accuracy.quadrature_degree)
            if not isinstance(dual, QuadratureDual | IdentityDual):
                g, gg = u.base[0], uu.base[0]
                k11 = self.expand_a(self.side_a.cov(g, g))
                k22 = self.expand_b(self.side_b.cov(gg, gg))
                ev.methods["closed-form"] += 1
                return dual.ntk(k11, k22, self.cov(g, gg), self.identical if g is gg else None)[..., None, None]
        if self.same:
            union = list(u.base) + [g for g in uu.base if g not in u.base]
            pos_a, pos_b = list(range(len(u.base))), [union.index(g) for g in uu.base]
            sigma = self._block(union, union, self.cov)
        else:
            pos_a = list(range(len(u.base)))
            pos_b = list(range(len(u.base), len(u.base) + len(uu.base)))
            sigma = self._cross_sigma(list(u.base), list(uu.base))
        fa, fb = self.bw.gradient[u.index], self.bw.gradient[uu.index]
        shape = (len(u.base), len(uu.base))

        def integrand(z: torch.Tensor) -> torch.Tensor:
            value = fa(*(z[..., i] for i in pos_a)).unsqueeze(-1) * fb(*(z[..., i] for i in pos_b)).unsqueeze(-2)
            if not torch.isfinite(value).all():
                raise ProgramError(f"{u.instruction} / {uu.instruction}: the Nonlins' derivatives are not finite "
                                   "on the Gaussian nodes")
            return value

        ev.max_dim = max(ev.max_dim, sigma.shape[-1])
        value, method = gaussian_expectation(integrand, sigma, ev.accuracy, ev.seed_for("dE", u.index, uu.index),
                                             value_shape=shape, nested_autograd=True)
        ev.methods[method] += 1
        if not self.same and bool(self.identical.any()):
            same_value = self.side_a.grad_expect(u, uu)
            same_value = same_value if self.diag else same_value.unsqueeze(-3)
            value = torch.where(self.identical[..., None, None], same_value, value)
        return value

    def _monomial_sum(self, monomials: list[tuple], side: str):
        total = 0.0
        for m in monomials:
            term = 1.0
            for coef in m:
                term = term * (self.coefficient(coef, side) if isinstance(coef, Scalar) else coef)
            total = total + term
        return total

    def grad_cov(self, g: Var, gg: Var) -> torch.Tensor:
        """``E[dg(ξ) dg'(ξ')]`` for G-vars ``g`` (side a) and ``gg`` (side b)."""
        key = (g.index, gg.index)
        if key not in self._dd:
            total = self._zero
            for u, i, mono in self.bw.contributions.get(g.index, []):
                ca = self._monomial_sum(mono, "a")
                for uu, j, mono2 in self.bw.contributions.get(gg.index, []):
                    back = self.back_cov(u, uu)
                    if back is self._zero:
                        continue
                    fwd = self.grad_expect(u, uu)[..., i, j]
                    total = total + ca * self._monomial_sum(mono2, "b") * fwd * back
            self._dd[key] = total
        return self._dd[key]

    def back_cov(self, u: Var, uu: Var) -> torch.Tensor:
        """``Cov(du(ξ), du'(ξ'))`` of the backward G-vars of two used vectors."""
        key = (u.index, uu.index)
        if key not in self._du:
            total = self._zero
            cu, cuu = self.bw.readout_coef.get(u.index, 0.0), self.bw.readout_coef.get(uu.index, 0.0)
            if cu and cuu:
                total = total + self.param(self.ev.program.output.var) * (cu * cuu)
            for g in self.bw.matmuls.get(u.index, []):
                for gg in self.bw.matmuls.get(uu.index, []):
                    if g.matrix is gg.matrix:
                        total = total + self.param(g.matrix.var) * self.grad_cov(g, gg)
            self._du[key] = total
        return self._du[key]

    def ntk(self) -> torch.Tensor:
        """``Θ = K + Σ_W σ_W² Σ_ij E[dgᵢdg'ⱼ]E[hᵢh'ⱼ] + Σ_U σ_U² Σ_ij E[dgᵢdg'ⱼ]xᵢ·x'ⱼ/d + Σ_b σ_b² E[db db']``."""
        theta = self.readout()
        program = self.ev.program
        for mat in program.matrices:
            uses = [v for v in program.vars if v.op in ("matmul", "input") and v.matrix is mat]
            total = self._zero
            for gi in uses:
                for gj in uses:
                    dd = self.grad_cov(gi, gj)
                    if dd is self._zero:
                        continue
                    fwd = self._token_dot(gi.source, gj.source) if mat.kind == "input" else \
                        self.expect(gi.source, gj.source)
                    total = total + dd * fwd
            theta = theta + self.param(mat.var) * total
        for b in program.vars:
            if b.op == "bias":
                theta = theta + self.param(b.var) * self.grad_cov(b, b)
        return theta


def evaluate_program_ntk(
    program: Program,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    variances: torch.Tensor,
    diag: bool = False,
    accuracy: Accuracy | None = None,
) -> ProgramNTKResult:
    """NNGP ``K`` and NTK ``Θ`` of ``program`` between ``x1`` ``(..., n1, D)`` and ``x2`` ``(..., n2, D)``
    (Yang 2020, Tensor Programs II; construction in the module docstring), with error estimates.

    Args:
        variances: ``(*batch_shape, P)``, one value per ``program.parameter_names``.
        diag: only the pairs ``(x1[i], x2[i])``.
        accuracy: quadrature / QMC knobs and target (:class:`Accuracy`); the QMC replicates run through forward
            and backward expectations alike, so ``ntk_stderr`` is the end-to-end standard error of ``Θ``.

    Returns:
        :class:`ProgramNTKResult`: ``kernel``, ``ntk``, their standard errors and error estimates, each
        ``(*B, n1, n2)`` or ``(*B, n)``. ``kernel`` equals :func:`~.master.evaluate_program`'s.

    Raises:
        ProgramError: a Nonlin that torch autograd cannot differentiate (named).
    """
    accuracy = accuracy or Accuracy()
    result, (qk, qt) = with_error_estimate(
        lambda acc: _evaluate_ntk_once(program, x1, x2, variances, diag, acc), accuracy,
        lambda r: [r.kernel, r.ntk], lambda r: [r.kernel_stderr, r.ntk_stderr],
        f"TensorProgramNTKKernel({program.name})")
    result.kernel_quadrature_error, result.ntk_quadrature_error = qk, qt
    result.kernel_error = qk + 2 * result.kernel_stderr.detach()
    result.ntk_error = qt + 2 * result.ntk_stderr.detach()
    return result


def _evaluate_ntk_once(
    program: Program,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    variances: torch.Tensor,
    diag: bool = False,
    accuracy: Accuracy | None = None,
) -> ProgramNTKResult:
    """One evaluation of :func:`evaluate_program_ntk` at ``accuracy`` (no error estimate)."""
    accuracy = accuracy or Accuracy()
    x1, x2, params, batch, same_inputs = prepare_inputs(program, x1, x2, variances, diag)
    backward = _backward_for(program)
    ev = Evaluator(program, params, accuracy)
    c11 = _NTKContext(ev, x1, x1, diag=True, backward=backward)
    if diag and same_inputs:
        target = c11
    else:
        c22 = c11 if same_inputs else _NTKContext(ev, x2, x2, diag=True, backward=backward)
        target = _NTKContext(ev, x1, x2, diag, side_a=c11, side_b=c22, backward=backward)
    k, theta = target.readout(), target.ntk()
    shape = (*batch, *((x1.shape[-2],) if diag else (x1.shape[-2], x2.shape[-2])))
    reps = max(k.shape[0], theta.shape[0])
    out = []
    for t in (k, theta):
        t = t.expand(reps, *shape)
        if same_inputs and not diag:
            t = (t + t.transpose(-1, -2)) / 2  # a Gram matrix: exactly symmetric
        mean, stderr = (t.mean(0), t.std(0) / math.sqrt(reps)) if reps > 1 else (t[0], torch.zeros_like(t[0]))
        if same_inputs and not diag and reps > 1:  # the mean reduction may round (i, j) and (j, i) differently
            mean, stderr = (mean + mean.transpose(-1, -2)) / 2, (stderr + stderr.transpose(-1, -2)) / 2
        out.append((mean, stderr))
    methods = dict(ev.methods)
    methods["max_dim"] = ev.max_dim
    return ProgramNTKResult(out[0][0], out[1][0], out[0][1], out[1][1], methods)


_BACKWARD_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _backward_for(program: Program) -> _Backward:
    """The backward structure, cached per program (rebuilt if the program changed)."""
    key = (len(program.vars), len(program.matrices), id(program.output))
    cached = _BACKWARD_CACHE.get(program)
    if cached is None or cached[0] != key:
        cached = (key, _Backward(program))
        _BACKWARD_CACHE[program] = cached
    return cached[1]


__all__ = ["ProgramNTKResult", "evaluate_program_ntk"]

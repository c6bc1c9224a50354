"""Gauss–Hermite quadrature duals for activations without a closed form (tanh, sigmoid, SiLU, any
user callable), and the autograd derivative used by the NTK.

With Gauss–Hermite nodes/weights ``(x_i, w_i)`` (``scipy.special.roots_hermite``, stable for any degree), writing
``u = sqrt(2 k11)·x_i`` and ``v = sqrt(2 k22)·(c·x_i + sqrt(1 − c²)·x_j)``,

    E[f(u) g(v)] ≈ (1/π)·Σ_ij w_i w_j f(u_i) g(v_ij)            (2-D product rule)
    E[f(u)²]     ≈ (1/√π)·Σ_i w_i f(sqrt(2k)·x_i)²               (diagonal, 1-D rule)

which is exact for polynomials of degree < 2·deg in each variable. Entire activations (erf, GELU,
SiLU-like) converge geometrically in ``deg``; tanh and sigmoid (poles at ±iπ/2) more slowly; kinked
activations (ReLU, abs) slowly: use their closed forms.

Large variances make the integrand steep on the Gaussian's scale (``φ`` varies on a scale of ~1 while
the nodes spread over ``sqrt(k)``), so the degree actually used grows with the largest variance:
``deg_eff = ceil(deg · max(1, k_max)^{3/4})``, capped at ``max_degree`` (256, with a warning when the
cap binds). Measured on erf against its closed form (``deg = 32``): variance 1 → ≤ 1e-7 (deg_eff 32);
variance 4 → ≤ 2e-9 (deg_eff 91); variance 16 → ≤ 1e-6 at correlation 0.99 (deg_eff 256). The
diagonal uses the 1-D rule at the same degree (what the 2-D rule reduces to at c = 1, so identical
pairs and the diagonal agree exactly). Memory is bounded by evaluating
``max_chunk_elements // deg_eff²`` entries at a time, also under autograd (each chunk is recomputed in
the backward pass rather than stored).

**Error estimate.** Where the degree cap binds (by default; ``error_estimate=True``: always) the rule is
evaluated again at ``n/2`` and ``n/4`` (no autograd; +31% work for the 2-D rule) and the extrapolated error of
the degree-``n`` value is, per entry,

    d₁ = |V_n − V_{n/2}|,  d₂ = |V_{n/2} − V_{n/4}|,  ρᵢ = min(½, max(max d₁ / max d₂, d₁ᵢ/d₂ᵢ)),
    error = max(ρ·d₁, ρ²·d₂)/(1 − ρ)                          (:func:`extrapolated_error`, ``local=True``)

the tail of a geometric series with the observed contraction (exact asymptotically for algebraic convergence, an
overestimate for faster convergence, ``d₁`` for a stalled rule); the entry's own ratio guards entries that
converge more slowly than the block (an oscillating ``sin(3x)`` at variance 64 was 3e-4 off at degree 256 but
exact at 128: the block ratio alone credited it with 3e-6). The block-ratio form serves the tensor programs
(:mod:`nngp_gpytorch.tensor_programs.error_control`). It is kept in
:attr:`QuadratureDual.last_error`, and a ``RuntimeWarning`` reports it when it exceeds ``target`` (relative to
the largest value). Below the cap no estimate is made (no extra cost); measured there against degree 1024, the
relative error of the NNGP dual is ≤ 1e-10 for sigmoid and SiLU and ≤ 2e-6 for erf up to variance 16, but
3e-6 (variance 1) to 2e-5 (variance 16) for tanh, whose poles at ±iπ/2 slow Gauss–Hermite down; the
derivative duals are 10–50× worse (tanh: 4e-5 to 1e-3). Pass ``error_estimate=True`` to see it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from ..numerics import half_range_rule, hermite_rule, safe_sqrt, split_product_nodes
from .base import Dual
from .safe_math import correlation

Elementwise = Callable[[torch.Tensor], torch.Tensor]


def extrapolated_error(fine: torch.Tensor, half: torch.Tensor, quarter: torch.Tensor,
                       local: bool = False) -> torch.Tensor:
    """Estimated error of ``fine`` from three levels of a quadrature rule at degrees ``n``, ``n/2``, ``n/4`` (same
    shapes): ``max(ρ·d₁, ρ²·d₂)/(1 − ρ)`` elementwise, with ``d₁ = |fine − half|``, ``d₂ = |half − quarter|`` and one
    contraction ``ρ = min(½, max d₁ / max d₂)`` for the whole block (module docstring). With ``local``, each entry
    uses ``ρᵢ = min(½, max(ρ, d₁ᵢ/d₂ᵢ))``: an entry that converges more slowly than the block (or not yet at all,
    with errors that do not shrink from ``n/2`` to ``n``) is not credited with the block's contraction."""
    d1, d2 = (fine.detach() - half).abs(), (half - quarter).abs()
    top1, top2 = float(d1.max()) if d1.numel() else 0.0, float(d2.max()) if d2.numel() else 0.0
    rho = 0.5 if top2 == 0.0 else min(0.5, top1 / top2)
    if local:
        ratio = torch.where(d2 > 0, d1 / torch.where(d2 > 0, d2, torch.ones_like(d2)), (d1 > 0).to(d1.dtype))
        rho = ratio.clamp(min=rho, max=0.5)
    return torch.maximum(rho * d1, rho * rho * d2) / (1.0 - rho)


def autograd_derivative(fn: Elementwise, label: str = "activation") -> Elementwise:
    """``φ'`` of an elementwise torch callable, by ``torch.func.grad`` (composable with outer autograd,
    so the NTK stays differentiable in the hyperparameters).

    On first use the autograd derivative is compared with central finite differences on a fixed probe
    grid (:func:`_check_against_finite_differences`): a callable that hides its computation from
    autograd (``.detach()``, NumPy round trips) gets a clear ``ValueError`` instead of a silently wrong
    ``φ' = 0``. Piecewise-constant callables (derivative 0 almost everywhere, like ``Step``) pass.
    """
    scalar_grad = torch.func.vmap(torch.func.grad(fn))
    checked = []

    def raw(x: torch.Tensor) -> torch.Tensor:
        try:
            return scalar_grad(x.reshape(-1)).reshape(x.shape)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"cannot differentiate {label} with torch autograd ({type(err).__name__}: {err}); the NTK "
                "needs φ'. Write the activation with differentiable torch operations."
            ) from err

    def derivative(x: torch.Tensor) -> torch.Tensor:
        if not checked:
            _check_against_finite_differences(fn, raw, label)
            checked.append(True)
        return raw(x)

    return derivative


def _check_against_finite_differences(fn: Elementwise, grad: Elementwise, label: str) -> None:
    """Raise ``ValueError`` unless autograd's ``φ'`` matches central differences (step 1e-4, float64) on
    at least 90% of 61 probe points in [−3.9, 3.9] (kinks and jumps may spoil a few points)."""
    probe = torch.linspace(-3.9, 3.9, 61, dtype=torch.float64) + 0.0123
    with torch.no_grad():
        h = 1e-4
        try:
            fd = (fn(probe + h) - fn(probe - h)) / (2 * h)
        except Exception:  # noqa: BLE001 - fn does not take float64: probe in float32 with a wider step
            probe, h = probe.float(), 1e-2
            fd = (fn(probe + h) - fn(probe - h)) / (2 * h)
    ad = grad(probe.clone())
    if not (isinstance(fd, torch.Tensor) and fd.shape == probe.shape):
        return  # shape errors are reported by checked_elementwise
    close = (ad - fd).abs() <= 1e-2 * (1 + fd.abs())
    if float(close.double().mean()) < 0.9:
        worst = int((ad - fd).abs().argmax())
        raise ValueError(
            f"torch autograd cannot give the derivative of {label}: at x = {float(probe[worst]):.3g} autograd "
            f"gives φ'(x) = {float(ad[worst]):.4g} but finite differences give {float(fd[worst]):.4g} (is part of "
            "the computation detached or done outside torch?). The NTK needs φ': write the activation with "
            "differentiable torch operations."
        )


def checked_elementwise(fn: Elementwise, label: str) -> Elementwise:
    """Wrap ``fn`` so a wrong output shape or a non-finite value is a clear error, not a silent NaN."""

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        y = fn(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"{label} must be elementwise: input shape {tuple(x.shape)}, output {got}")
        if not torch.isfinite(y).all():
            raise ValueError(f"{label} returned non-finite values on finite Gaussian quadrature nodes")
        return y

    return wrapped


class Recomputed(torch.autograd.Function):
    """``rule(*inputs)`` storing only its inputs; the backward pass recomputes ``rule`` under autograd.

    Like ``torch.utils.checkpoint``, but compatible with both ``torch.autograd.grad`` (which the reentrant
    checkpoint rejects) and ``torch.func.grad`` inside ``rule`` (which the non-reentrant one rejects).
    First-order gradients only.
    """

    @staticmethod
    def forward(ctx, rule, *inputs):
        ctx.rule = rule
        ctx.save_for_backward(*inputs)
        return rule(*inputs)

    @staticmethod
    def backward(ctx, grad):
        needs = ctx.needs_input_grad[1:]
        inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs, strict=True)]
        wanted = [t for t in inputs if t.requires_grad]
        with torch.enable_grad():
            out = ctx.rule(*inputs)
        grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True) if wanted else ())
        return (None, *(next(grads) if t.requires_grad else None for t in inputs))


def _non_smooth_at_zero(f: Elementwise) -> bool:
    """Whether ``f`` has a kink or a jump at 0: its second difference ``f(−h) − 2f(0) + f(h)`` falls like ``h``
    (a kink) rather than ``h²``, or its first difference ``f(h) − f(−h)`` does not fall with ``h`` (a jump — an odd
    one, like ``sign``, has no second difference)."""
    h = torch.tensor([1e-2, 1e-4, 1e-8], dtype=torch.float64)
    with torch.no_grad():
        up, down, mid = f(h), f(-h), f(torch.zeros(1, dtype=torch.float64))
    noise = 1e-9 * (1.0 + float(mid.abs()))
    d2 = (up - 2 * mid + down).abs()
    d1 = (up - down).abs()
    kink = float(d2[1]) > noise and float(d2[1]) * 1000.0 > float(d2[0])
    jump = float(d1[2]) > noise and float(d1[2]) > 1e-3 * float(d1[0])
    return kink or jump


class QuadratureDual(Dual):
    """Dual of any elementwise callable by Gauss–Hermite quadrature of degree ``degree``.

    Args:
        fn: elementwise torch callable ``φ``.
        degree: nodes per dimension at unit variance (``degree²`` evaluations of ``φ`` per kernel entry);
            scaled up with the largest variance (module docstring).
        max_degree: cap on the variance-scaled degree.
        adaptive: scale the degree with the largest variance (the default). The kernel is then piecewise
            smooth in the hyperparameters: where the degree steps up it jumps by about the quadrature error.
            ``adaptive=False`` uses ``degree`` as is (smooth; e.g. for finite-difference gradient checks).
        derivative: ``φ'`` for the NTK; default: autograd of ``fn``.
        max_chunk_elements: bound on the number of ``φ`` evaluations held in memory at once.
        error_estimate: ``None`` (default): estimate the quadrature error where the degree cap binds;
            ``True``: always (+31% work); ``False``: never (module docstring).
        target: relative accuracy (to the largest value of the call) above which an estimated error is reported
            by a ``RuntimeWarning``.

    Attributes:
        last_error: ``None``, or the estimated absolute error (detached, the result's shape) of the most recent
            expectation for which an estimate was made; ``last_degree`` is the degree it used.
    """

    last_error: torch.Tensor | None = None
    last_degree: int | None = None

    def __init__(
        self,
        fn: Elementwise,
        degree: int = 32,
        derivative: Elementwise | None = None,
        max_chunk_elements: int = 2**22,
        label: str = "activation",
        max_degree: int = 256,
        adaptive: bool = True,
        error_estimate: bool | None = None,
        target: float = 1e-6,
    ):
        if int(degree) < 2:
            raise ValueError(f"quadrature degree must be >= 2, got {degree}")
        if not (isinstance(target, int | float) and target > 0):
            raise ValueError(f"target must be a positive number, got {target!r}")
        self.error_estimate = error_estimate
        self.target = float(target)
        self.max_degree = max(int(max_degree), int(degree))
        self.adaptive = bool(adaptive)
        self.label = label
        self.fn = checked_elementwise(fn, label)
        self.derivative = checked_elementwise(derivative or autograd_derivative(fn, label), f"{label}'")
        self.degree = int(degree)
        self.max_chunk_elements = int(max_chunk_elements)

    def nngp(self, k11, k22, k12, identical=None):
        return self._expectation(self.fn, k11, k22, k12, identical)

    def nngp_diag(self, k):
        return self._expectation_diag(self.fn, k)

    def ntk(self, k11, k22, k12, identical=None):
        return self._expectation(self.derivative, k11, k22, k12, identical)

    def ntk_diag(self, k):
        return self._expectation_diag(self.derivative, k)

    def effective_degree(self, variance_max: float) -> int:
        """Degree used when the largest variance is ``variance_max`` (see the module docstring), with a
        ``RuntimeWarning`` when the cap binds (for callers that fix the degree themselves; the dual's own
        evaluations warn with their error estimate instead)."""
        wanted = self._wanted_degree(variance_max)
        if wanted > self.max_degree:
            warnings.warn(
                f"{self.label}: variances up to {variance_max:.3g} need Gauss–Hermite degree ~{wanted} for full "
                f"accuracy; using max_degree={self.max_degree} (raise it, or rescale the inputs/weight variance)",
                RuntimeWarning, stacklevel=4,
            )
        return min(wanted, self.max_degree)

    def _wanted_degree(self, variance_max: float) -> int:
        if not self.adaptive:
            return self.degree
        return math.ceil(self.degree * max(1.0, float(variance_max)) ** 0.75)

    def _estimated(self, rule: Callable[[int], torch.Tensor], variance_max: float) -> torch.Tensor:
        """``rule(degree)`` at the effective degree; with an error estimate (levels ``n/2``, ``n/4``, no autograd)
        where the cap binds or ``error_estimate=True``, kept in :attr:`last_error` and reported by a warning."""
        wanted = self._wanted_degree(variance_max)
        degree = min(wanted, self.max_degree)
        value = rule(degree)
        capped = wanted > self.max_degree
        estimate = self.error_estimate if self.error_estimate is not None else capped
        error = None
        if estimate:
            with torch.no_grad():
                half, quarter = rule(max(2, degree // 2)), rule(max(2, degree // 4))
            error = extrapolated_error(value, half, quarter, local=True)
            self.last_error, self.last_degree = error, degree
        scale = float(value.detach().abs().max()) if value.numel() else 0.0
        worst = float(error.max()) if error is not None and error.numel() else 0.0
        if capped or worst > self.target * scale:
            cap = (f"variances up to {variance_max:.3g} need Gauss–Hermite degree ~{wanted} for full accuracy; using "
                   f"max_degree={self.max_degree}") if capped else f"degree {degree}"
            if error is None:
                detail = "raise it, or rescale the inputs/weight variance"
            elif worst <= self.target * scale:
                return value  # the cap binds but the estimate meets the target
            else:
                detail = (f"estimated quadrature error {worst:.1e} ({worst / max(scale, 1e-300):.1e} relative, target "
                          f"{self.target:g}; QuadratureDual.last_error); raise max_degree or rescale the inputs")
            warnings.warn(f"{self.label}: {cap} ({detail})", RuntimeWarning, stacklevel=4)
        return value

    @staticmethod
    def _max_variance(*variances: torch.Tensor) -> float:
        return max(float(v.detach().max()) if v.numel() else 0.0 for v in variances)

    def kinked(self, f: Elementwise) -> bool:
        """Whether ``f`` (``fn`` or its derivative) has a kink or a jump at 0 — ReLU, abs, step inside a composite or
        a user callable — found once by probing (:func:`_non_smooth_at_zero`). Such an
        ``f`` is integrated by rules split at the kink (:func:`~nngp_gpytorch.numerics.split_product_nodes`):
        geometric convergence where Gauss–Hermite across the kink converges algebraically (``erf∘relu``: 2e-3 off
        at the default degree before)."""
        cache = self.__dict__.setdefault("_kinked", {})
        if id(f) not in cache:
            cache[id(f)] = _non_smooth_at_zero(f)
        return cache[id(f)]

    def _expectation_diag(self, f: Elementwise, k: torch.Tensor) -> torch.Tensor:
        # The same degree as the 2-D rule, which at c = 1 reduces to this 1-D rule: K(x, x) from the cross term
        # equals the diagonal, and the kernel stays continuous as a pair becomes identical.
        kinked = self.kinked(f)

        def rule(degree: int) -> torch.Tensor:
            if kinked:  # both half-lines of u = √k·s by the half-range rule of φ (Σw = 1/2 per side)
                s, w = (torch.as_tensor(a, dtype=k.dtype, device=k.device)
                        for a in half_range_rule(max(1, -(-degree // 2))))
                r = safe_sqrt(k).unsqueeze(-1) * s
                return ((f(r) ** 2 + f(-r) ** 2) * w).sum(-1)
            x, w = hermite_rule(degree, k)
            values = f(safe_sqrt(2 * k).unsqueeze(-1) * x)
            return (values * values * w).sum(-1) / math.sqrt(math.pi)

        return self._estimated(rule, self._max_variance(k))

    def _expectation(self, f, k11, k22, k12, identical):
        c, _ = correlation(k11, k22, k12, identical)
        shape = torch.broadcast_shapes(k11.shape, k22.shape, c.shape)
        # The product rule is not symmetric in (u, v) at finite degree: put the larger variance on u so
        # that V(k11, k22, c) and V(k22, k11, c) run the identical computation (exactly symmetric K).
        k11, k22 = k11.expand(shape), k22.expand(shape)
        swap = k11 < k22
        k11, k22 = torch.where(swap, k22, k11), torch.where(swap, k11, k22)
        su = safe_sqrt(2 * k11).reshape(-1)
        sv = safe_sqrt(2 * k22).reshape(-1)
        c = c.expand(shape).reshape(-1)
        sc = safe_sqrt(1 - c * c)

        def rule(degree: int) -> torch.Tensor:
            return self._product_rule(f, su, sv, c, sc, degree).reshape(shape)

        return self._estimated(rule, self._max_variance(k11))

    def _product_rule(self, f: Elementwise, su, sv, c, sc, degree: int) -> torch.Tensor:
        """``(1/π)·Σ_ij w_i w_j f(su·x_i) f(sv·(c·x_i + sc·x_j))`` ``(E,)`` for flat ``(E,)`` scales and
        correlations, in chunks of ``max_chunk_elements // degree²`` entries."""
        x, w = hermite_rule(degree, c)
        chunk = max(1, self.max_chunk_elements // (degree * degree))

        def product_rule(su_, sv_, c_, sc_):
            fu = f(su_[:, None] * x) * w  # (E, i)
            v = sv_[:, None, None] * (c_[:, None, None] * x[:, None] + sc_[:, None, None] * x)  # (E, i, j)
            return torch.einsum("ei,eij,j->e", fu, f(v), w)

        if self.kinked(f):
            def product_rule(su_, sv_, c_, sc_):  # noqa: F811  (the kinked variant)
                # standard-normal coordinates u = ξ₁, v = c·ξ₁ + √(1 − c²)·ξ₂, both split at their kinks
                chol = torch.zeros(c_.shape[0], 2, 2, dtype=c_.dtype, device=c_.device)
                chol[:, 0, 0], chol[:, 1, 0], chol[:, 1, 1] = 1.0, c_, sc_
                xi, wt = split_product_nodes(chol, 2, degree)  # (E, P, 2), (E, P)
                u = (su_ / math.sqrt(2.0))[:, None] * xi[..., 0]
                v = (sv_ / math.sqrt(2.0))[:, None] * (c_[:, None] * xi[..., 0] + sc_[:, None] * xi[..., 1])
                return (wt * f(u) * f(v)).sum(-1) * math.pi  # the caller divides by π

        # Under autograd every chunk's (E, deg, deg) intermediates would be kept for the backward pass, so
        # memory would grow with entries·deg² after all: each chunk is recomputed in the backward pass instead.
        recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (su, sv, c, sc))
        parts = []
        for start in range(0, c.numel(), chunk):
            args = tuple(t[start:start + chunk] for t in (su, sv, c, sc))
            parts.append(Recomputed.apply(product_rule, *args) if recompute else product_rule(*args))
        return (torch.cat(parts) if parts else c.new_zeros(0)) / math.pi

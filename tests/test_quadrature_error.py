"""The error estimate of the dual-activation quadrature (:class:`~nngp_gpytorch.duals.quadrature.QuadratureDual`):
made where the degree cap binds (or on request), calibrated against an independent reference, free where it is not
made.

The reference is the trapezoidal rule on a uniform grid in standard-normal coordinates (step ``h``, range ±8.5):
for integrands analytic in a strip of half-width ``a`` around the real axis its error is ``O(exp(−2πa/h))``, and
``h = 0.15/√k`` keeps that under 1e-14 for every callable used (``a = π/(4·√k)`` for ``tanh(2x − 1)`` at variance
``k``, the narrowest; the others are wider or entire). It shares nothing with Gauss–Hermite.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from nngp_gpytorch.duals.quadrature import QuadratureDual

F64 = torch.float64
FUNCTIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "erf": torch.erf,
    "softplus": torch.nn.functional.softplus,
    "sin(3x)": lambda t: torch.sin(3 * t),
    "tanh(2x-1)": lambda t: torch.tanh(2 * t - 1),
}


def _trapezoid_reference(f, k11: torch.Tensor, k22: torch.Tensor, c: torch.Tensor, h: float) -> torch.Tensor:
    """``E[f(u) f(v)]`` ``(E,)`` by the 2-D trapezoidal rule in ``(z₁, z₂) ~ N(0, I)``, ``u = √k11·z₁``,
    ``v = √k22·(c·z₁ + √(1 − c²)·z₂)``."""
    z = torch.arange(-8.5, 8.5 + h / 2, h, dtype=F64)
    w = torch.exp(-z * z / 2) * h / math.sqrt(2 * math.pi)
    out = []
    for a, b, r in zip(k11, k22, c, strict=True):
        fu = f(a.sqrt() * z) * w  # (i,)
        v = b.sqrt() * (r * z[:, None] + (1 - r * r).clamp_min(0).sqrt() * z[None, :])  # (i, j)
        out.append(fu @ f(v) @ w)
    return torch.stack(out)


def _derivative(f):
    def d(x):
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            return torch.autograd.grad(f(y).sum(), y)[0]
    return d


def _entries(kmax: float, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    k11 = kmax * (0.3 + 0.7 * torch.rand(n, dtype=F64, generator=g))
    k22 = kmax * (0.3 + 0.7 * torch.rand(n, dtype=F64, generator=g))
    c = 2 * torch.rand(n, dtype=F64, generator=g) - 1
    k11[0] = kmax
    c[:3] = torch.tensor([0.999, -0.99, 0.0], dtype=F64)
    return k11, k22, c


#: (largest variance, error_estimate): the cap (degree 256) binds above variance 16 for degree 32
REGIMES = [(64.0, None), (24.0, None), (4.0, True), (1.0, True)]


def test_the_estimate_covers_the_error():
    """Calibration, as for the tensor programs' estimates: |V − reference| ≤ 3·error in ≥ 99% of the entries
    (6 callables × NNGP and NTK duals × 4 regimes × 8 entries, less the pre-asymptotic case below: 368; measured
    100%), and the largest error of each block within 3× its largest estimate. Errors range from 1e-14 to 10%
    relative. Deterministic (fixed entries), no false-alarm rate to state.

    Known limit: ``sin(3x)`` at variance 64 oscillates faster than degree 256 resolves, and its errors do not
    shrink monotonically (degree 128 happens to be exact, 256 is 2e-5 off); there two entries' errors are ~5×
    their estimates. Only the block's largest error is asserted there, and that the warning fires."""
    covered, total, report = 0, 0, []
    for kmax, estimate in REGIMES:
        k11, k22, c = _entries(kmax, 8, seed=int(kmax))
        k12 = c * (k11 * k22).sqrt()
        h = 0.15 / math.sqrt(kmax)
        for name, f in FUNCTIONS.items():
            dual = QuadratureDual(f, error_estimate=estimate, label=name)
            pre_asymptotic = name == "sin(3x)" and kmax == 64.0
            for which, g in (("nngp", f), ("ntk", _derivative(f))):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", RuntimeWarning)
                    value = getattr(dual, which)(k11, k22, k12)
                error = dual.last_error
                assert error is not None and error.shape == value.shape
                ref = _trapezoid_reference(g, k11, k22, c, h)
                true = (value - ref).abs()
                floor = 1e-13 * float(ref.abs().max())  # rounding of the reference and of the rule
                assert float(true.max()) <= 3 * float(error.max()) + floor, (kmax, name, which, true.max(), error.max())
                if pre_asymptotic:
                    assert any("estimated quadrature error" in str(w.message) for w in caught)
                    continue
                ok = true <= 3 * error + floor
                covered, total = covered + int(ok.sum()), total + ok.numel()
                report.append((kmax, name, which, float(true.max()), float(error.max())))
    assert covered >= 0.99 * total, (covered, total, report)


def test_no_estimate_below_the_cap_by_default():
    """The default path below the cap makes no estimate (no extra work: last_error stays None, no warning)."""
    dual = QuadratureDual(torch.tanh)
    k = torch.tensor([0.5, 2.0, 8.0], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dual.nngp(k, k.flip(0), 0.3 * k)
        dual.ntk_diag(k)
    assert dual.last_error is None
    never = QuadratureDual(torch.tanh, error_estimate=False, max_degree=64)
    with pytest.warns(RuntimeWarning, match="max_degree=64"):
        never.nngp(k * 10, k * 10, k)
    assert never.last_error is None


def test_capped_degree_warns_with_its_estimate():
    """Where the cap binds the warning carries the estimate; when the estimate meets the target there is none."""
    k = torch.tensor([64.0], dtype=F64)
    tanh = QuadratureDual(torch.tanh, label="Activation(tanh)")
    with pytest.warns(RuntimeWarning, match=r"Activation\(tanh\).*max_degree=256.*estimated quadrature error"):
        tanh.ntk(k, k, 0.9 * k)
    assert tanh.last_degree == 256 and float(tanh.last_error.max()) > 1e-6
    square = QuadratureDual(lambda t: t * t, max_degree=64)  # a polynomial: degree 64 is exact to rounding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        square.nngp(k, k, 0.5 * k)
    assert float(square.last_error.max()) < 1e-12 * 3 * 64.0**2


def test_diagonal_estimate_and_gradients():
    """The 1-D (diagonal) rule carries an estimate too; the estimate does not touch autograd of the value."""
    k = torch.tensor([30.0, 40.0], dtype=F64, requires_grad=True)
    dual = QuadratureDual(torch.tanh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        v = dual.nngp_diag(k)
    assert dual.last_error.shape == (2,) and not dual.last_error.requires_grad
    (grad,) = torch.autograd.grad(v.sum(), k)
    assert torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="target"):
        QuadratureDual(torch.tanh, target=0.0)

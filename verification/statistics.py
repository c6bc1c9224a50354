"""Statistical tests of Monte Carlo kernel estimates against the analytic kernel.

Notation (reference/verification.md): ``C_m`` (``(M, k, k)``, float64) are i.i.d. per-network
covariance estimates with ``E[C_m] = K_width = K_∞ + b/width + O(1/width²)``; ``K`` is the analytic
(infinite-width) kernel. We test ``H0: E[C_m] = K`` on the ``p = k(k+1)/2`` upper-triangle entries:

* **Primary statistic** — per-entry one-sample t-tests ``t = (C̄ − K)/(s/√M)`` (Student t, ``M − 1``
  d.o.f.) combined by Holm–Bonferroni. The family-wise p-value is ``min(1, p·min_e p_e)``; entry ``e`` is
  rejected when its Holm-adjusted p-value is ``≤ α``.
* **Second statistic** — Hotelling's ``T² = M·d̄ᵀ S⁻¹ d̄`` on the vectorized upper triangle with the
  exact F reference ``(M − r)/(r(M − 1))·T² ~ F(r, M − r)`` (``r`` = rank of ``S``, needs ``M > r``).
  A χ² reference with an estimated covariance is badly anti-conservative unless ``M ≫ p``.
* **Zero-variance entries** (e.g. the diagonal of a sign network, ``φ² = 1``, or a zero-norm input
  without biases) carry no noise: they are compared to ``K`` exactly, to a float32 rounding tolerance
  ``rtol·√(K_ii K_jj)``, instead of forming ``0/0``.
* **Finite-width bias** is handled by the budget (wide networks, few of them: the estimated bias
  ``B/width·√(K_ii K_jj)`` with ``|B| ≤ 1.15`` for depth ≤ 4 stays well below the standard error) and
  reported as ``bias_to_noise``; or explicitly by :func:`extrapolation_test` (weighted least squares of
  ``C̄_w = K_∞ + b/w`` over several widths, testing the intercept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from scipy import stats

#: Relative bound of the O(1/width) bias, |b| ≤ BIAS_CONSTANT·√(K_ii K_jj)/width for depth ≤ 4
#: (measured, reference/verification.md "Finite-width bias").
BIAS_CONSTANT = 1.15
#: Rounding tolerance (relative to √(K_ii K_jj)) for entries without sampling noise: float32 features,
#: float64 accumulation.
DETERMINISTIC_RTOL = 1e-5


@dataclass
class MeanTestResult:
    """Outcome of a test of ``H0: E[C_m] = K``.

    Attributes:
        p_value: family-wise p-value of the primary statistic (Holm over the per-entry t-tests, with
            zero-variance entries counted as p = 0 or 1).
        passed: ``p_value > alpha`` (the kernel is not rejected at ``alpha``).
        alpha: the false-alarm rate the test was run at.
        max_abs_t: largest |t| over the noisy entries (0 if none).
        hotelling_p: p-value of Hotelling's T² with the F reference (``None`` when ``M ≤ rank``).
        relative_error: ``‖C̄ − K‖_F / ‖K‖_F``.
        bias_estimate: estimated finite-width bias scale ``BIAS_CONSTANT/width·max √(K_ii K_jj)`` (or the
            fitted slope term for an extrapolation test).
        bias_to_noise: largest ratio of estimated bias to standard error over entries.
        bias_handling: how finite-width bias was handled, in words.
        networks, width: the budget.
        seconds: wall time (sampling + analytic kernel + test) when filled by :func:`verification.verify`.
        architecture: description of the architecture tested (filled by :func:`verification.verify`).
        mean, analytic, stderr: ``(k, k)`` empirical mean, analytic kernel, standard errors.
        t: ``(k, k)`` t-statistics (0 on zero-variance entries).
        rejected: ``(k, k)`` bool, entries rejected by Holm at ``alpha``.
        deterministic: ``(k, k)`` bool, zero-variance entries.
    """

    p_value: float
    passed: bool
    alpha: float
    max_abs_t: float
    hotelling_p: float | None
    relative_error: float
    bias_estimate: float
    bias_to_noise: float
    bias_handling: str
    networks: int
    width: int | None
    seconds: float = 0.0
    architecture: str = ""
    mean: torch.Tensor = field(default=None, repr=False)
    analytic: torch.Tensor = field(default=None, repr=False)
    stderr: torch.Tensor = field(default=None, repr=False)
    t: torch.Tensor = field(default=None, repr=False)
    rejected: torch.Tensor = field(default=None, repr=False)
    deterministic: torch.Tensor = field(default=None, repr=False)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "REJECT"
        hp = "n/a" if self.hotelling_p is None else f"{self.hotelling_p:.3g}"
        return (f"{verdict} p={self.p_value:.3g} (alpha={self.alpha:g}) max|t|={self.max_abs_t:.2f} "
                f"Hotelling p={hp} rel.err={self.relative_error:.2e} bias/se={self.bias_to_noise:.2f} "
                f"M={self.networks} width={self.width}")


def holm(p_values: torch.Tensor) -> torch.Tensor:
    """Holm–Bonferroni adjusted p-values (same shape as ``p_values``, 1-D).

    ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j))`` for the sorted p-values; rejecting ``p̃ ≤ α``
    controls the family-wise error rate at ``α`` under any dependence (Holm 1979).
    """
    p = p_values.to(torch.float64).flatten()
    m = p.numel()
    if m == 0:
        return p
    order = torch.argsort(p)
    factors = torch.arange(m, 0, -1, dtype=torch.float64)
    adjusted_sorted = torch.cummax((p[order] * factors).clamp(max=1.0), dim=0).values
    adjusted = torch.empty_like(p)
    adjusted[order] = adjusted_sorted
    return adjusted


def hotelling_p_value(deviations: torch.Tensor, rel_eig_tol: float = 1e-10) -> float | None:
    """Hotelling's one-sample T² test of ``E[d] = 0`` with the exact F reference.

    Args:
        deviations: ``(M, p)`` i.i.d. rows ``d_m = vec(C_m − K)``.

    The sample covariance is eigendecomposed; directions with eigenvalue below ``rel_eig_tol·λ_max``
    (duplicate inputs make entries identical) are dropped, leaving rank ``r``. Then
    ``F = (M − r)/(r(M − 1))·T² ~ F(r, M − r)`` under H0 for Gaussian rows. ``None`` when ``r ≥ M − 1``
    (the rank is then limited by the sample size, not by the structure of the entries).
    """
    d = deviations.to(torch.float64)
    m, p = d.shape
    if p == 0:
        return None
    mean = d.mean(0)
    centered = d - mean
    cov = centered.T @ centered / (m - 1)
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > rel_eig_tol * evals.max().clamp_min(torch.finfo(torch.float64).tiny)
    r = int(keep.sum())
    if r == 0 or r >= m - 1:  # a sample covariance has rank ≤ M − 1: r = M − 1 means M too small, not structure
        return None
    proj = evecs[:, keep].T @ mean
    t2 = m * float((proj**2 / evals[keep]).sum())
    f = (m - r) / (r * (m - 1)) * t2
    return float(stats.f.sf(f, r, m - r))


def _scale(analytic: torch.Tensor) -> torch.Tensor:
    """``√(|K_ii|·|K_jj|)`` floored so that all-zero rows still get a rounding tolerance."""
    d = analytic.diagonal().abs()
    floor = torch.clamp(d.max(), min=1e-300) * 1e-12
    d = d.clamp_min(floor)
    return (d[:, None] * d[None, :]).sqrt()


def mean_test(
    covariances: torch.Tensor,
    analytic: torch.Tensor,
    alpha: float = 1e-4,
    width: int | None = None,
    bias_constant: float = BIAS_CONSTANT,
    rtol: float = DETERMINISTIC_RTOL,
) -> MeanTestResult:
    """Test ``H0: E[C_m] = K`` from i.i.d. per-network estimates (see module docstring).

    Args:
        covariances: ``(M, k, k)`` per-network covariances ``C_m`` (symmetric).
        analytic: ``(k, k)`` analytic kernel ``K``.
        alpha: false-alarm rate of the whole test (the family of ``k(k+1)/2`` entries).
        width: hidden width of the networks, used to estimate the finite-width bias
            ``bias_constant/width·√(K_ii K_jj)`` and report its ratio to the standard error.
        rtol: rounding tolerance for zero-variance entries, relative to ``√(K_ii K_jj)``.
    """
    c = covariances.to(torch.float64).cpu()  # (M, k, k) is small: the statistics run on the host (scipy)
    K = analytic.to(torch.float64).cpu()
    if c.dim() != 3 or c.shape[-1] != c.shape[-2] or K.shape != c.shape[-2:]:
        raise ValueError(f"need covariances (M, k, k) and analytic (k, k), got {tuple(c.shape)}, {tuple(K.shape)}")
    if not torch.isfinite(K).all():
        raise ValueError("the analytic kernel contains NaN or Inf")
    M, k = c.shape[0], c.shape[-1]
    if M < 2:
        raise ValueError("need at least 2 networks")
    iu = torch.triu_indices(k, k)
    samples = c[:, iu[0], iu[1]]  # (M, p)
    target = K[iu[0], iu[1]]
    scale = _scale(K)[iu[0], iu[1]]
    mean = samples.mean(0)
    sd = samples.std(0, unbiased=True)
    deterministic = sd <= rtol * scale
    se = sd / math.sqrt(M)
    diff = mean - target
    t = torch.where(deterministic, torch.zeros_like(diff), diff / torch.where(deterministic, torch.ones_like(se), se))
    p_entries = torch.as_tensor(2.0 * stats.t.sf(t.abs().numpy(), M - 1), dtype=torch.float64)
    exact_ok = diff.abs() <= rtol * scale
    p_entries = torch.where(deterministic, exact_ok.to(torch.float64), p_entries)
    adjusted = holm(p_entries)
    p_value = float(adjusted.min()) if adjusted.numel() else 1.0
    noisy = ~deterministic
    max_abs_t = float(t[noisy].abs().max()) if noisy.any() else 0.0
    hotelling = hotelling_p_value(samples[:, noisy] - target[noisy]) if noisy.any() else None

    if width:
        bias = bias_constant / width * scale
        bias_estimate = float(bias.max())
        ratio = float((bias[noisy] / se[noisy]).max()) if noisy.any() else 0.0
        handling = (f"width chosen large: estimated bias {bias_constant:g}/width·sqrt(KiiKjj) is "
                    f"{ratio:.2f}× the standard error (not corrected)")
    else:
        bias_estimate, ratio, handling = float("nan"), float("nan"), "width unknown: bias not estimated"

    def square(v: torch.Tensor, fill=0.0) -> torch.Tensor:
        out = torch.full((k, k), fill, dtype=v.dtype)
        out[iu[0], iu[1]] = v
        out[iu[1], iu[0]] = v
        return out

    mean_full = c.mean(0)
    rel = float(torch.linalg.norm(mean_full - K) / torch.linalg.norm(K).clamp_min(1e-300))
    return MeanTestResult(
        p_value=p_value, passed=p_value > alpha, alpha=alpha, max_abs_t=max_abs_t, hotelling_p=hotelling,
        relative_error=rel, bias_estimate=bias_estimate, bias_to_noise=ratio, bias_handling=handling,
        networks=M, width=width, mean=mean_full, analytic=K, stderr=square(se), t=square(t),
        rejected=square(adjusted <= alpha, False), deterministic=square(deterministic, False),
    )


def extrapolation_test(
    covariances_by_width: dict[int, torch.Tensor],
    analytic: torch.Tensor,
    alpha: float = 1e-4,
    rtol: float = DETERMINISTIC_RTOL,
) -> MeanTestResult:
    """Test the 1/width-extrapolated kernel: fit ``C̄_w = K_∞ + b/w`` per entry and test ``K_∞ = K``.

    Args:
        covariances_by_width: ``{width: (M_w, k, k)}`` independent ensembles at ≥ 2 widths.

    Weighted least squares with weights ``1/se_w²`` (the per-width standard errors); the intercept's
    standard error comes from the WLS normal equations and is referred to a normal distribution
    (each ``M_w`` is large). Note (reference/verification.md): at a fixed total budget this has ~3× the
    intercept variance of one wide ensemble; use it when bias is not negligible.
    """
    if len(covariances_by_width) < 2:
        raise ValueError("extrapolation needs ensembles at two or more widths")
    K = analytic.to(torch.float64).cpu()
    k = K.shape[-1]
    iu = torch.triu_indices(k, k)
    widths = sorted(covariances_by_width)
    x = torch.tensor([1.0 / w for w in widths], dtype=torch.float64)  # (W,)
    means, variances, total = [], [], 0
    for w in widths:
        c = covariances_by_width[w].to(torch.float64).cpu()[:, iu[0], iu[1]]
        total += c.shape[0]
        means.append(c.mean(0))
        variances.append(c.var(0, unbiased=True) / c.shape[0])
    y = torch.stack(means)  # (W, p)
    v = torch.stack(variances)  # (W, p)
    target = K[iu[0], iu[1]]
    scale = _scale(K)[iu[0], iu[1]]
    deterministic = (v.max(0).values.sqrt() <= rtol * scale)
    wts = 1.0 / v.clamp_min(1e-300)
    s0, s1, s2 = wts.sum(0), (wts * x[:, None]).sum(0), (wts * x[:, None] ** 2).sum(0)
    sy, sxy = (wts * y).sum(0), (wts * x[:, None] * y).sum(0)
    det = s0 * s2 - s1**2
    intercept = (s2 * sy - s1 * sxy) / det
    slope = (s0 * sxy - s1 * sy) / det
    se = (s2 / det).sqrt()
    diff = intercept - target
    z = torch.where(deterministic, torch.zeros_like(diff), diff / torch.where(deterministic, torch.ones_like(se), se))
    p_entries = torch.as_tensor(2.0 * stats.norm.sf(z.abs().numpy()), dtype=torch.float64)
    det_diff = y[-1] - target
    p_entries = torch.where(deterministic, (det_diff.abs() <= rtol * scale).to(torch.float64), p_entries)
    adjusted = holm(p_entries)
    p_value = float(adjusted.min())
    noisy = ~deterministic

    def square(vv: torch.Tensor, fill=0.0) -> torch.Tensor:
        out = torch.full((k, k), fill, dtype=vv.dtype)
        out[iu[0], iu[1]] = vv
        out[iu[1], iu[0]] = vv
        return out

    intercept_full = square(torch.where(deterministic, y[-1], intercept))
    rel = float(torch.linalg.norm(intercept_full - K) / torch.linalg.norm(K).clamp_min(1e-300))
    slope_abs = slope.abs()[noisy]
    return MeanTestResult(
        p_value=p_value, passed=p_value > alpha, alpha=alpha,
        max_abs_t=float(z[noisy].abs().max()) if noisy.any() else 0.0, hotelling_p=None,
        relative_error=rel, bias_estimate=float(slope_abs.max() / widths[0]) if noisy.any() else 0.0,
        bias_to_noise=float((slope.abs() / widths[-1] / se)[noisy].max()) if noisy.any() else 0.0,
        bias_handling=f"1/width extrapolation over widths {widths} (WLS intercept tested; slope b fitted)",
        networks=total, width=None, mean=intercept_full, analytic=K, stderr=square(se), t=square(z),
        rejected=square(adjusted <= alpha, False), deterministic=square(deterministic, False),
    )


@dataclass
class ConvergenceResult:
    """Width convergence of single-network kernel estimates.

    ``errors[i]``: mean over networks of the relative squared Frobenius error
    ``‖C_m − K‖²_F/‖K‖²_F`` at ``widths[i]``; ``slope``/``intercept``: least-squares fit of
    ``log error = intercept + slope·log width`` (expected slope −1: the error is O(1/width)).
    """

    widths: list[int]
    errors: list[float]
    stderrs: list[float]
    slope: float
    intercept: float


def relative_frobenius_errors(covariances: torch.Tensor, analytic: torch.Tensor) -> torch.Tensor:
    """``(M,)`` relative squared Frobenius errors ``‖C_m − K‖²_F/‖K‖²_F`` of per-network estimates."""
    K = analytic.to(torch.float64).cpu()
    diff = covariances.to(torch.float64).cpu() - K
    return (diff**2).sum((-1, -2)) / (K**2).sum().clamp_min(1e-300)


def fit_loglog(widths: Sequence[float], errors: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``log error`` on ``log width``."""
    lx = torch.log(torch.tensor(list(widths), dtype=torch.float64))
    ly = torch.log(torch.tensor(list(errors), dtype=torch.float64))
    A = torch.stack([lx, torch.ones_like(lx)], -1)
    sol = torch.linalg.lstsq(A, ly[:, None]).solution.squeeze(-1)
    return float(sol[0]), float(sol[1])


def width_convergence(covariances_by_width: dict[int, torch.Tensor], analytic: torch.Tensor) -> ConvergenceResult:
    """Relative squared Frobenius error of single-network Grams ``C_m`` (e.g. ``σw²ΦΦᵀ/n + σb²``) vs width,
    with the log-log slope fit (reference: slope −1 on log-log axes)."""
    widths = sorted(covariances_by_width)
    errors, ses = [], []
    for w in widths:
        e = relative_frobenius_errors(covariances_by_width[w], analytic)
        errors.append(float(e.mean()))
        ses.append(float(e.std() / math.sqrt(e.numel())) if e.numel() > 1 else float("nan"))
    slope, intercept = fit_loglog(widths, errors)
    return ConvergenceResult(widths, errors, ses, slope, intercept)

"""Unit tests of verification.statistics on synthetic data with a known mean (fast, seeded)."""

import math

import pytest
import torch
from scipy import stats

from verification.statistics import (
    extrapolation_test,
    fit_loglog,
    holm,
    hotelling_p_value,
    mean_test,
    width_convergence,
)

torch.set_num_threads(1)


def synthetic(M=256, k=4, shift=0.0, seed=0, noise=0.1):
    """i.i.d. symmetric C_m = K + noise·(Z + Zᵀ)/2 (+ shift on entry (0, 1))."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, k, generator=g, dtype=torch.float64)
    K = a @ a.T / k + torch.eye(k, dtype=torch.float64)
    z = torch.randn(M, k, k, generator=g, dtype=torch.float64)
    C = K + noise * (z + z.transpose(-1, -2)) / 2
    C[:, 0, 1] += shift
    C[:, 1, 0] += shift
    return C, K


def test_holm_matches_definition():
    p = torch.tensor([0.01, 0.04, 0.03, 0.005], dtype=torch.float64)
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, 1·0.04 -> cummax 0.02, 0.03, 0.06, 0.06
    expected = torch.tensor([0.03, 0.06, 0.06, 0.02], dtype=torch.float64)
    torch.testing.assert_close(holm(p), expected)


def test_correct_mean_passes_and_shift_is_rejected():
    C, K = synthetic()
    r = mean_test(C, K, alpha=1e-4, width=1024)
    assert r.passed and r.p_value > 1e-4 and r.hotelling_p is not None
    assert r.mean.shape == (4, 4) and not r.deterministic.any()
    C, K = synthetic(shift=0.05)  # 0.05 / (0.1/sqrt(2)/16) ≈ 11 standard errors
    r = mean_test(C, K, alpha=1e-4)
    assert not r.passed and r.rejected[0, 1] and r.rejected.sum() == 2 and r.max_abs_t > 8


def test_synthetic_calibration():
    """False-alarm rate ≤ α + 3 binomial standard deviations over 400 seeds (α = 0.05, Gaussian data)."""
    alpha, seeds = 0.05, 400
    rejections = sum(not mean_test(*synthetic(M=64, seed=s), alpha=alpha).passed for s in range(seeds))
    slack = 3 * math.sqrt(alpha * (1 - alpha) / seeds)
    assert rejections / seeds <= alpha + slack


def test_zero_variance_entries_compared_exactly():
    C, K = synthetic()
    C[:, 2, 2] = K[2, 2]  # a deterministic diagonal entry (e.g. sign² = 1)
    r = mean_test(C, K)
    assert r.passed and r.deterministic[2, 2] and r.t[2, 2] == 0
    r = mean_test(C, K + 1e-9 * torch.eye(4, dtype=torch.float64))  # rounding: tolerated
    assert r.passed
    K2 = K.clone()
    K2[2, 2] += 1e-3  # a real discrepancy on a noiseless entry: rejected, no 0/0
    r = mean_test(C, K2)
    assert not r.passed and r.rejected[2, 2] and math.isfinite(r.max_abs_t)


def test_all_zero_rows_and_duplicate_entries():
    C, K = synthetic(k=3)
    C[:, 2, :] = 0
    C[:, :, 2] = 0
    K[2, :] = 0
    K[:, 2] = 0
    r = mean_test(C, K)
    assert r.passed and r.deterministic[2].all()


def test_hotelling_rank_deficient_and_small_M():
    g = torch.Generator().manual_seed(3)
    d = torch.randn(100, 3, generator=g, dtype=torch.float64)
    d = torch.cat([d, d[:, :1]], 1)  # a duplicated column: rank 3
    p = hotelling_p_value(d)
    assert p is not None and 0 < p <= 1
    assert hotelling_p_value(d[:3]) is None  # M ≤ rank
    assert hotelling_p_value(d + 1.0) < 1e-10


def test_hotelling_f_reference_is_calibrated():
    """Under H0 Hotelling's p-values are uniform: KS against U(0, 1) at M = 40, p = 10."""
    g = torch.Generator().manual_seed(5)
    ps = [hotelling_p_value(torch.randn(40, 10, generator=g, dtype=torch.float64)) for _ in range(300)]
    assert stats.kstest(ps, "uniform").pvalue > 1e-3


def test_extrapolation_recovers_intercept():
    g = torch.Generator().manual_seed(7)
    k = 3
    K = torch.eye(k, dtype=torch.float64) + 0.5
    b = torch.full((k, k), 40.0, dtype=torch.float64)
    data = {w: K + b / w + 0.01 * torch.randn(2000, k, k, generator=g, dtype=torch.float64) for w in (64, 128, 256)}
    data = {w: (c + c.transpose(-1, -2)) / 2 for w, c in data.items()}
    r = extrapolation_test(data, K, alpha=1e-4)
    assert r.passed, r.summary()
    assert not mean_test(data[256], K, alpha=1e-4).passed  # the bias 40/256 is visible at one width
    assert not extrapolation_test(data, K + 0.05, alpha=1e-4).passed


def test_width_convergence_slope():
    K = torch.eye(2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    data = {w: K + torch.randn(400, 2, 2, generator=g, dtype=torch.float64) / math.sqrt(w) for w in (16, 64, 256)}
    r = width_convergence(data, K)
    assert r.slope == pytest.approx(-1.0, abs=0.1)
    slope, _ = fit_loglog([1, 10, 100], [1.0, 0.1, 0.01])
    assert slope == pytest.approx(-1.0)


def test_bad_shapes_and_nonfinite_kernel():
    C, K = synthetic()
    with pytest.raises(ValueError, match="covariances"):
        mean_test(C[0], K)
    with pytest.raises(ValueError, match="NaN"):
        mean_test(C, K * float("nan"))


def test_verify_extrapolated_on_a_deep_relu_network():
    """Depth-4 ReLU at width 32 with M = 8192 (M/n = 256) is visibly biased for a one-width test; the
    1/width extrapolation over widths 32, 64, 128 removes the bias (seeded, α = 1e-4)."""
    from nngp_gpytorch import arch as A
    from verification.verify import verify, verify_extrapolated

    arch = A.mlp(4, A.ReLU())
    r = verify_extrapolated(arch, widths=(32, 64, 128), networks=8192, weight_var=2.0, bias_var=0.1, alpha=1e-4)
    assert r.passed, r.summary()
    assert "extrapolation" in r.bias_handling
    biased = verify(arch, networks=8192, width=32, weight_var=2.0, bias_var=0.1, alpha=1e-4)
    assert not biased.passed, biased.summary()

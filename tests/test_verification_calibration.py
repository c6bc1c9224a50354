"""Calibration (slow): correct kernels are rejected at rate ≤ α + binomial slack over ≥ 200 seeds.

α = 0.01 per architecture (so that the rate is measurable with 200 seeds); slack = 3 binomial standard
deviations, sqrt(α(1−α)/seeds)·3 ≈ 0.021. The Hotelling F statistic is reported beside it.
"""

import math

import pytest
import torch

from verification import ARCHITECTURES
from verification.ensembles import sample_ensemble
from verification.statistics import mean_test
from verification.verify import analytic_kernel

torch.set_num_threads(1)
SEEDS = 200
ALPHA = 0.01
CALIBRATED = ["relu_mlp3", "erf_mlp2", "sign_mlp2", "mixed_mlp3_per_layer"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CALIBRATED)
def test_calibration(name, capsys):
    entry = ARCHITECTURES[name]
    x, hyper = entry.make_inputs(), entry.hyper
    K = analytic_kernel(entry.architecture, x, hyper)
    holm_rejections = hotelling_rejections = strict_rejections = 0
    for seed in range(SEEDS):
        sample = sample_ensemble(entry.architecture, x, networks=256, width=4096, seed=20_000 + seed,
                                 weight_var=hyper)
        r = mean_test(sample.covariances, K, alpha=ALPHA, width=4096)
        holm_rejections += not r.passed
        strict_rejections += r.p_value <= 1e-4
        hotelling_rejections += r.hotelling_p is not None and r.hotelling_p <= ALPHA
    slack = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SEEDS)
    with capsys.disabled():
        print(f"\ncalibration {name}: Holm rejects {holm_rejections}/{SEEDS} at alpha={ALPHA} "
              f"({strict_rejections} at 1e-4), Hotelling F rejects {hotelling_rejections}/{SEEDS} at {ALPHA}")
    assert holm_rejections / SEEDS <= ALPHA + slack

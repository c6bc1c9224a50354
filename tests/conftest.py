"""Shared test settings: one torch thread pool size, a derandomized hypothesis profile, and a fixed
torch seed before every test (tests that draw unseeded inputs must not depend on test order)."""

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed_torch():
    # Not 0 or another small seed: tests draw their own data from seeded generators, and unseeded draws must
    # not coincide with those (with seed 0 a "random" point equalled a declared batch-norm point).
    torch.manual_seed(987654321)


@pytest.fixture
def check_rejection_rates(capsys):
    """``check(label, false_alarms, seeds, detections, power_seeds, alpha)``: prints the counts of a calibration and
    power sweep (:func:`verification.verify.rejection_counts`) and asserts calibration — the correct kernel rejected in
    at most ``α`` + 3 binomial standard deviations of the seeds — and power — the wrong kernel in ≥ 95% of them."""

    def check(label: str, false_alarms: int, seeds: int, detections: int, power_seeds: int, alpha: float) -> None:
        slack = 3 * math.sqrt(alpha * (1 - alpha) / seeds)
        with capsys.disabled():
            print(f"\n{label}: calibration {false_alarms}/{seeds} rejections at alpha={alpha}; power "
                  f"{detections}/{power_seeds}")
        assert false_alarms / seeds <= alpha + slack
        assert detections / power_seeds >= 0.95

    return check


@pytest.fixture
def paired_inputs():
    """``make(d)``: ``(x1, x2)`` of shapes ``(6, d)`` and ``(4, d)`` in float64, seeded by ``d``, with ``x2[1] = x1[2]``
    (a duplicated input: correlation exactly 1 at equal positions)."""

    def make(d: int):
        g = torch.Generator().manual_seed(d)
        x1 = torch.randn(6, d, dtype=torch.float64, generator=g)
        x2 = torch.randn(4, d, dtype=torch.float64, generator=g)
        x2[1] = x1[2]
        return x1, x2

    return make

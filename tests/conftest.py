"""Shared test settings: one torch thread pool size, a derandomized hypothesis profile, and a fixed
torch seed before every test (tests that draw unseeded inputs must not depend on test order)."""

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
    torch.manual_seed(0)

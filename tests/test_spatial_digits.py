"""Slow: on scikit-learn's 8×8 digits, a GP with CNNKernel (global average pooling) beats the MLP kernel's
test accuracy at the same training size (hyperparameters by exact marginal likelihood)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from nngp_gpytorch import CNNKernel, MLPKernel

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "digits_cnn_vs_mlp.py"


@pytest.mark.slow
def test_cnn_gap_kernel_beats_mlp_on_digits():
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("digits_cnn_vs_mlp", SCRIPT)
    digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits)
    x_tr, y_tr, x_te, y_te = digits.split(50, 100, seed=0)
    mlp = MLPKernel(depth=3, weight_var=1.0, bias_var=0.0).double()
    cnn = CNNKernel((1, 8, 8), depth=2, readout="gap", weight_var=1.0, bias_var=0.0).double()
    a_mlp = digits.evaluate("MLPKernel", mlp, 4, x_tr, y_tr, x_te, y_te)
    a_cnn = digits.evaluate("CNNKernel", cnn, 3, x_tr, y_tr, x_te, y_te)
    assert a_cnn > a_mlp, (a_cnn, a_mlp)

"""Smoke test of the long-run experiment script (experiments/mnist1d_kernels.py) at a tiny size: it produces a row
per kernel with an accuracy above chance, a chosen noise from the grid, and its timing and memory."""

from __future__ import annotations

import importlib.util
import queue
from pathlib import Path

import pytest

pytest.importorskip("mnist1d")
SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "mnist1d_kernels.py"


def _module():
    spec = importlib.util.spec_from_file_location("mnist1d_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kernel", ["mlp", "cnn_gap"])
def test_mnist1d_kernels_row(kernel):
    module = _module()
    out = queue.Queue()
    module.run_one(kernel, 120, 100, out)
    row = out.get_nowait()
    assert row["kernel"] == kernel and row["n_train"] == 120 and row["n_test"] == 100
    assert row["noise"] in module.NOISES
    assert row["test_accuracy"] > 0.2  # chance is 0.1 (ten balanced classes)
    assert row["gram_seconds"] > 0 and row["peak_rss_mib"] > 0

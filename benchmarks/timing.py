"""Shared timing helpers for the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _synchronize() -> None:
    """Wait for queued GPU work, so that a host clock measures it (a no-op without an initialized CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn`` after one warm-up call (first-call overheads: caches,
    quadrature nodes, allocator), each bracketed by device synchronizations."""
    fn()
    times = []
    for _ in range(max(1, int(repeats))):
        _synchronize()
        start = time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
    return times


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after a warm-up; the minimum is the least noisy statistic
    on a shared machine."""
    return min(_times(fn, repeats))


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after a warm-up (for a dedicated accelerator)."""
    return statistics.median(_times(fn, repeats))

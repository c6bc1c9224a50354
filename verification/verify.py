"""One call: sample an ensemble of finite networks and test it against the analytic kernel.

The same :class:`~nngp_gpytorch.algebra.Hyperparameters` object drives the finite twins
(:func:`~verification.ensembles.sample_ensemble`) and the covariance algebra
(:func:`nngp_gpytorch.algebra.evaluate`), so both readings of the architecture use the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.arch import Layer

from .ensembles import as_hyperparameters, default_inputs, sample_ensemble
from .statistics import MeanTestResult, mean_test

#: The budget that works (reference/verification.md): width 4096, 256 networks, analytic readout.
DEFAULT_NETWORKS = 256
DEFAULT_WIDTH = 4096
#: Per-architecture false-alarm rate of the suite.
DEFAULT_ALPHA = 1e-4

Analytic = Callable[[Layer, torch.Tensor, Hyperparameters], torch.Tensor]


def analytic_kernel(architecture: Layer, inputs: torch.Tensor, hyper: Hyperparameters,
                    input_shape: tuple[int, ...] | None = None,
                    quadrature_degree: int | None = None) -> torch.Tensor:
    """``(k, k)`` float64 NNGP kernel of ``architecture`` on ``inputs`` ``(k, d)``; raises naming the
    architecture if it is not finite."""
    x = inputs.to(torch.float64)
    K, _ = evaluate(architecture, x, x, hyper, input_shape=input_shape, quadrature_degree=quadrature_degree)
    if not torch.isfinite(K).all():
        raise FloatingPointError(f"the analytic kernel of {architecture.describe()} is not finite")
    return K


def verify(
    architecture: Layer,
    inputs: torch.Tensor | None = None,
    networks: int = DEFAULT_NETWORKS,
    width: int = DEFAULT_WIDTH,
    seed: int = 0,
    weight_var: float | Hyperparameters = 1.0,
    bias_var: float = 0.0,
    alpha: float = DEFAULT_ALPHA,
    sampler: str = "gram",
    analytic: torch.Tensor | Analytic | None = None,
    input_shape: tuple[int, ...] | None = None,
    quadrature_degree: int | None = None,
    progress: Callable[[int], object] | None = None,
    chunk_size: int | None = None,
) -> MeanTestResult:
    """Test ``H0: E[C_m] = K`` for ``networks`` random finite networks of ``architecture``.

    Args:
        inputs: ``(k, d)`` points (default :func:`~verification.ensembles.default_inputs`: 8 points in 4-D,
            two nearly parallel).
        weight_var, bias_var: shared variances, or a :class:`Hyperparameters` (e.g. per layer).
        alpha: false-alarm rate of the test (the suite uses 1e-4 per architecture).
        analytic: the kernel to test against; default :func:`analytic_kernel`. A ``(k, k)`` tensor or a
            callable ``(architecture, inputs, hyper) -> K`` (how :mod:`verification.mutants` plants bugs).
        progress: callable receiving the number of networks done after each chunk (a tqdm ``update``).

    Returns:
        :class:`~verification.statistics.MeanTestResult` with ``seconds`` = sampling + kernel + test.

    Raises:
        verification.NoFiniteTwinError: a layer has no finite twin (the message names it).
        FloatingPointError: a finite twin or the analytic kernel produced NaN/Inf (naming the layer).
    """
    start = time.perf_counter()
    hyper = as_hyperparameters(weight_var, bias_var)
    x = default_inputs() if inputs is None else inputs
    sample = sample_ensemble(architecture, x, networks=networks, width=width, seed=seed, weight_var=hyper,
                             sampler=sampler, progress=progress, chunk_size=chunk_size, input_shape=input_shape)
    if analytic is None:
        K = analytic_kernel(architecture, x, hyper, input_shape, quadrature_degree)
    elif callable(analytic):
        K = analytic(architecture, x.to(torch.float64), hyper)
    else:
        K = analytic
    result = mean_test(sample.covariances, K, alpha=alpha, width=width)
    result.seconds = time.perf_counter() - start
    result.architecture = architecture.describe()
    return result


def verify_extrapolated(
    architecture: Layer,
    inputs: torch.Tensor | None = None,
    widths: tuple[int, ...] = (256, 512, 1024),
    networks: int = 1024,
    seed: int = 0,
    weight_var: float | Hyperparameters = 1.0,
    bias_var: float = 0.0,
    alpha: float = DEFAULT_ALPHA,
    sampler: str = "gram",
    analytic: torch.Tensor | Analytic | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> MeanTestResult:
    """Like :func:`verify`, but with finite-width bias removed by a fit ``C̄_n = K_∞ + b/n`` over ``widths``
    (``networks`` per width, independent seeds) and the intercept tested
    (:func:`~verification.statistics.extrapolation_test`). Use when bias is not negligible at the width
    you can afford (e.g. deep networks, expensive twins)."""
    from .statistics import extrapolation_test

    start = time.perf_counter()
    hyper = as_hyperparameters(weight_var, bias_var)
    x = default_inputs() if inputs is None else inputs
    by_width = {
        w: sample_ensemble(architecture, x, networks=networks, width=w, seed=seed * 7919 + i, weight_var=hyper,
                           sampler=sampler, input_shape=input_shape).covariances
        for i, w in enumerate(widths)
    }
    if analytic is None:
        K = analytic_kernel(architecture, x, hyper, input_shape)
    elif callable(analytic):
        K = analytic(architecture, x.to(torch.float64), hyper)
    else:
        K = analytic
    result = extrapolation_test(by_width, K, alpha=alpha)
    result.seconds = time.perf_counter() - start
    result.architecture = architecture.describe()
    return result


def rejection_counts(architecture: Layer, inputs: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor, *,
                     seeds: int, power_seeds: int, alpha: float, networks: int, width: int, first_seed: int,
                     **sample_options) -> tuple[int, int]:
    """Calibration and power over seeds: ``(false_alarms, detections)``, the number of the ``seeds`` ensembles
    (seeds ``first_seed, first_seed + 1, …``) whose :func:`~.statistics.mean_test` at ``alpha`` rejects the correct
    kernel ``right``, and of the first ``power_seeds`` that reject the mutant ``wrong`` (both ``(n, n)``, for
    ``inputs``). ``sample_options`` go to :func:`~.ensembles.sample_ensemble` (``weight_var``, ``input_shape``, …)."""
    false_alarms = detections = 0
    for seed in range(seeds):
        sample = sample_ensemble(architecture, inputs, networks=networks, width=width, seed=first_seed + seed,
                                 **sample_options)
        false_alarms += not mean_test(sample.covariances, right, alpha=alpha, width=width).passed
        if seed < power_seeds:
            detections += not mean_test(sample.covariances, wrong, alpha=alpha, width=width).passed
    return false_alarms, detections

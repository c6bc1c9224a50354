"""Kernel regression on a stored Gram: the noise, the solve (dense Cholesky or streamed CG), the posterior.

With a Gram ``K = k(X, X)`` of ``n`` training inputs, targets ``Y`` ``(n, c)`` (one column per output, e.g.
one-hot classes) and a noise (or jitter) ``σ²``, the posterior of the GP ``f ~ GP(0, k)`` at test inputs
``X*`` is (Rasmussen & Williams 2006, eqs. 2.25–2.26)

    mean = K*ᵀ (K + σ²I)⁻¹ Y,        var_i = k(x*_i, x*_i) − k*_iᵀ (K + σ²I)⁻¹ k*_i,

with ``K* = k(X, X*)`` read from a test×train store. All ``c`` columns and the variance columns are one
multi-right-hand-side solve. At this scale σw² and σb² stay fixed (each value would be another Gram of
``n²`` entries); only ``σ²`` is chosen, on a leading subset whose block fits in memory
(:func:`select_noise`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .operator import KernelRows, StoredGram, stream_matmul
from .store import GramStore

#: a float64 Gram up to this many bytes is solved densely by Cholesky (method="auto")
DENSE_LIMIT_BYTES = 2 * 1024**3


@dataclass
class Solve:
    """``weights = (K + σ²I)⁻¹ rhs`` ``(n, c)`` and how it was obtained: ``method`` ("cholesky" or "cg"),
    ``iterations`` (passes over the store: CG's matmuls, 0 for Cholesky), the true ``relative_residual``
    ``max_c ‖rhs_c − (K + σ²I) w_c‖ / ‖rhs_c‖`` (one more pass), and wall ``seconds``."""

    weights: torch.Tensor
    noise: float
    method: str
    iterations: int
    relative_residual: float
    seconds: float


@dataclass
class NoiseChoice:
    """The ``noise`` chosen among ``candidates`` by ``criterion`` on the first ``subset`` points;
    ``scores[k]`` is the criterion at ``candidates[k]`` (higher is better)."""

    noise: float
    candidates: list[float]
    scores: list[float]
    criterion: str
    subset: int


@dataclass
class Prediction:
    """Posterior ``mean`` ``(n_test, c)`` (``None`` without a test store), ``variance`` at the requested
    test indices ``(s,)`` (``None`` if none were asked for), and the :class:`Solve` behind them."""

    mean: torch.Tensor | None
    variance: torch.Tensor | None
    solve: Solve
    seconds: dict[str, float] = field(default_factory=dict)


def _as_matrix(targets: torch.Tensor, n: int) -> torch.Tensor:
    y = targets.unsqueeze(-1) if targets.dim() == 1 else targets
    if y.dim() != 2 or y.shape[0] != n:
        raise ValueError(f"targets must be (n,) or (n, c) with n = {n}, got {tuple(targets.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError("targets contain NaN or infinity")
    return y.to(torch.float64)


def solve(store: GramStore, rhs: torch.Tensor, noise: float, *, method: str = "auto", tolerance: float = 1e-4,
          max_iterations: int = 1000, preconditioner_rank: int = 100, rows: KernelRows | None = None,
          dense_limit_bytes: int = DENSE_LIMIT_BYTES, compute_dtype: torch.dtype | None = None,
          progress: bool = False) -> Solve:
    """``(K + σ²I)⁻¹ rhs`` for the symmetric Gram ``K`` in ``store`` and ``rhs`` ``(n,)`` or ``(n, c)``.

    ``method="cholesky"`` reads the Gram into memory in float64 and factors it; ``"cg"`` runs
    linear_operator's preconditioned CG on :class:`~nngp_gpytorch.scale.operator.StoredGram` ``+ σ²I``
    (each iteration is one streamed pass over the store; the preconditioner is linear_operator's pivoted
    Cholesky of rank ``preconditioner_rank``, whose rows come from ``rows`` — the kernel — when given, else
    from the store); ``"auto"``: Cholesky when the float64 Gram takes at most ``dense_limit_bytes``.
    ``compute_dtype``: the dtype of CG's tile products (default float64;
    :func:`~nngp_gpytorch.scale.operator.stream_matmul` says what float32 products cost in accuracy).
    ``tolerance`` is CG's stopping rule, the mean relative residual over the columns; it is set as GPyTorch's
    ``eval_cg_tolerance`` (the tolerance of prediction solves) and as linear_operator's ``cg_tolerance``.
    """
    import gpytorch
    import linear_operator

    start = time.perf_counter()
    n = store.shape[0]
    y = _as_matrix(rhs, n)
    if not noise >= 0:
        raise ValueError(f"noise must be a non-negative number, got {noise}")
    if method == "auto":
        method = "cholesky" if n * n * 8 <= dense_limit_bytes else "cg"
    if method == "cholesky":
        gram = torch.from_numpy(store.to_numpy()).to(torch.float64)
        gram.diagonal().add_(noise)
        factor, info = torch.linalg.cholesky_ex(gram)
        if info.item() != 0:
            raise torch.linalg.LinAlgError(f"K + σ²I is not positive definite at σ² = {noise:g} (leading minor "
                                           f"{info.item()} fails); use a larger noise")
        weights = torch.cholesky_solve(y, factor)
        residual = (y - gram @ weights).norm(dim=0) / y.norm(dim=0).clamp_min(1e-300)
        del gram, factor
        return Solve(weights, float(noise), "cholesky", 0, float(residual.max()), time.perf_counter() - start)
    if method != "cg":
        raise ValueError(f"method must be 'auto', 'cholesky' or 'cg', got {method!r}")
    operator = StoredGram(store, rows=rows, compute_dtype=compute_dtype)
    system = operator.add_diagonal(torch.tensor(float(noise), dtype=torch.float64))
    bars: dict = {}
    if progress:  # the preconditioner's rows come first (linear_operator builds it before CG's first pass)
        from tqdm.auto import tqdm

        bars["rows"] = tqdm(total=min(preconditioner_rank, n), unit="row", desc="preconditioner rows")
        operator.on_rows = bars["rows"].update

        def on_matmul(count: int) -> None:
            if "cg" not in bars:
                bars["rows"].close()
                bars["cg"] = tqdm(total=max_iterations, unit="pass", desc="CG passes over the Gram")
            bars["cg"].update(1)

        operator.on_matmul = on_matmul
    with (gpytorch.settings.eval_cg_tolerance(tolerance),
          linear_operator.settings.cg_tolerance(gpytorch.settings.eval_cg_tolerance.value()),
          linear_operator.settings.max_cholesky_size(0),
          linear_operator.settings.fast_computations(solves=True),  # a caller's Cholesky default must not win
          linear_operator.settings.max_cg_iterations(max_iterations),
          linear_operator.settings.max_preconditioner_size(preconditioner_rank),
          linear_operator.settings.min_preconditioning_size(0),
          linear_operator.settings.terminate_cg_by_size(False),
          warnings.catch_warnings()):
        warnings.simplefilter("ignore", linear_operator.utils.warnings.NumericalWarning)  # residual reported below
        weights = system.solve(y)
    iterations = operator.matmuls
    residual = y - stream_matmul(store, weights, compute_dtype=torch.float64) - noise * weights
    for bar in bars.values():
        bar.close()
    relative = residual.norm(dim=0) / y.norm(dim=0).clamp_min(1e-300)
    return Solve(weights, float(noise), "cg", iterations, float(relative.max()), time.perf_counter() - start)


def noise_candidates(store: GramStore, count: int = 13, low: float = 1e-6, high: float = 1.0) -> list[float]:
    """``count`` noises log-spaced from ``low`` to ``high`` times the mean diagonal of the stored Gram."""
    scale = float(store.diagonal().astype(np.float64).mean())
    return [scale * float(r) for r in np.logspace(np.log10(low), np.log10(high), count)]


def select_noise(store: GramStore, targets: torch.Tensor, *, candidates: list[float] | None = None,
                 criterion: str = "mll", subset: int = 3000, validation_fraction: float = 0.2) -> NoiseChoice:
    """Choose ``σ²`` on the leading ``subset`` training points (their block is read into memory and
    eigendecomposed once, ``K_m = U Λ Uᵀ``, so every candidate costs ``O(m c)``).

    ``criterion="mll"``: the exact log marginal likelihood of the ``c`` target columns as independent GPs
    with this kernel, ``Σ_c −½ y_cᵀ(K_m + σ²I)⁻¹y_c − (c/2) log|K_m + σ²I|`` (constants dropped; R&W eq. 2.30).
    ``"validation"``: fit on the first ``1 − validation_fraction`` of the subset, score the rest by minus the
    mean squared error, or by accuracy (argmax over columns) when the targets have several columns.
    Among candidates whose score is within 1 nat (``"mll"``) or tied (``"validation"``) of the best, the
    largest noise is chosen: the fit is the same and the full-scale solve is better conditioned. The
    subset should be a random sample (shuffle the training set before computing its Gram)."""
    n = store.shape[0]
    y = _as_matrix(targets, n).numpy()
    m = min(int(subset), n)
    gram = store.leading_block(m).astype(np.float64)
    gram = 0.5 * (gram + gram.T)
    candidates = noise_candidates(store) if candidates is None else [float(c) for c in candidates]
    if criterion == "mll":
        lam, u = np.linalg.eigh(gram)
        lam = np.clip(lam, 0.0, None)  # float32 storage may leave tiny negative eigenvalues
        z2 = (u.T @ y[:m]) ** 2
        scores = [float(-0.5 * (z2 / (lam + s)[:, None]).sum() - 0.5 * y.shape[1] * np.log(lam + s).sum())
                  for s in candidates]
    elif criterion == "validation":
        fit = int(round(m * (1 - validation_fraction)))
        if not 0 < fit < m:
            raise ValueError(f"validation_fraction {validation_fraction} leaves no fit or no validation points")
        lam, u = np.linalg.eigh(gram[:fit, :fit])
        lam = np.clip(lam, 0.0, None)
        projected, z = gram[fit:, :fit] @ u, u.T @ y[:fit]
        scores = []
        for s in candidates:
            predicted = projected @ (z / (lam + s)[:, None])
            if y.shape[1] > 1:
                scores.append(float((predicted.argmax(1) == y[fit:m].argmax(1)).mean()))
            else:
                scores.append(float(-((predicted - y[fit:m]) ** 2).mean()))
    else:
        raise ValueError(f"criterion must be 'mll' or 'validation', got {criterion!r}")
    # among (near-)ties the largest noise: the same fit, a better-conditioned solve at full scale
    slack = 1.0 if criterion == "mll" else 1e-12
    top = max(scores)
    best = max((c for c, score in zip(candidates, scores, strict=True) if score >= top - slack))
    return NoiseChoice(best, candidates, scores, criterion, m)


def kernel_regression(train: GramStore, targets: torch.Tensor, noise: float, test: GramStore | None = None, *,
                      test_diagonal: torch.Tensor | None = None, variance_index: torch.Tensor | None = None,
                      **solve_options) -> Prediction:
    """Posterior mean at every test input and variance at ``variance_index`` (module docstring).

    Args:
        train: the complete symmetric store of ``K = k(X, X)``, ``(n, n)``.
        targets: ``(n,)`` or ``(n, c)``.
        noise: ``σ²`` (e.g. :func:`select_noise`'s choice).
        test: the complete store of ``K*ᵀ = k(X*, X)``, ``(n_test, n)``.
        test_diagonal: ``k(x*, x*)`` at the ``variance_index`` test points ``(s,)`` (the kernel with ``diag=True``).
        variance_index: test indices ``(s,)`` whose variance to compute (``s`` more solve columns).
        solve_options: passed to :func:`solve`.
    """
    n = train.shape[0]
    y = _as_matrix(targets, n)
    if test is not None and test.shape[1] != n:
        raise ValueError(f"the test store has {test.shape[1]} columns, the training Gram {n} rows")
    rhs, cross = y, None
    if variance_index is not None:
        if test is None or test_diagonal is None:
            raise ValueError("variances need the test store and test_diagonal (k(x*, x*) at variance_index)")
        cross = torch.from_numpy(test.rows(variance_index.cpu().numpy())).to(torch.float64)  # (s, n)
        rhs = torch.cat([y, cross.mT], dim=1)
    result = solve(train, rhs, noise, **solve_options)
    c = y.shape[1]
    weights, variance_weights = result.weights[:, :c], result.weights[:, c:]
    result.weights = weights
    start = time.perf_counter()
    mean = None if test is None else stream_matmul(test, weights)
    variance = None
    if cross is not None:
        variance = (test_diagonal.to(torch.float64) - (cross.mT * variance_weights).sum(0)).clamp_min(0.0)
    return Prediction(mean, variance, result, {"solve": result.seconds, "predict": time.perf_counter() - start})

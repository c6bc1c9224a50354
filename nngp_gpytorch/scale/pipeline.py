"""End to end: the training Gram and the test×train Gram into Zarr on one Dask cluster, then the noise,
the solve and the posterior (:mod:`nngp_gpytorch.scale.regression`)."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .operator import KernelRows, StoreRows
from .regression import NoiseChoice, Prediction, kernel_regression, select_noise
from .saved_rows import SavedRows
from .store import GramStore
from .tiles import compute_gram, connect


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class FitPrediction:
    """What :func:`fit_predict` returns: the :class:`~nngp_gpytorch.scale.regression.Prediction`, the noise
    and how it was chosen (``None`` when it was given), the two stores, wall ``seconds`` per phase
    (``train_gram``, ``test_gram``, ``noise``, ``solve``, ``predict``) and peak RSS in bytes of this process
    and of each Dask worker (``peak_rss``, keyed ``"driver"`` and by worker address)."""

    prediction: Prediction
    noise: float
    noise_choice: NoiseChoice | None
    train: GramStore
    test: GramStore
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)


def fit_predict(kernel: torch.nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, *,
                store: str, noise: float | str = "mll", tile: int = 2048, dtype: str = "float32",
                client: Any = None, n_workers: int | None = None, progress: bool = True,
                variance_index: torch.Tensor | None = None, noise_subset: int = 3000, method: str = "auto",
                tolerance: float = 1e-4, max_iterations: int = 1000, preconditioner_rank: int = 100,
                kernel_rows: bool = True, compute_dtype: torch.dtype | None = None) -> FitPrediction:
    """Kernel regression with ``kernel`` at any ``N`` that fits on disk.

    The Grams go to ``{store}/train.zarr`` (``(n, n)``, upper tiles only) and ``{store}/test.zarr``
    (``(n_test, n)``) through :func:`~nngp_gpytorch.scale.tiles.compute_gram` on one Dask client (embedded
    ``LocalCluster`` unless ``client`` is given); rerunning with the same ``store`` resumes both. ``noise``:
    a number (``σ²``), or ``"mll"`` / ``"validation"`` to choose it with
    :func:`~nngp_gpytorch.scale.regression.select_noise` on the first ``noise_subset`` training points.
    ``kernel_rows``: the CG preconditioner takes its rows from the kernel (``rank × n`` kernel values; the
    faster for cheap kernels) rather than from strips of tiles read from the store (``False``: the faster for
    kernels whose rows cost more than a strip, e.g. a GAP CNN-GP at large ``n``; docs/scale.md). Either way each row is
    saved as it is fetched, in ``{store}/rows-kernel.zarr`` or ``{store}/rows-store.zarr``
    (:class:`~nngp_gpytorch.scale.saved_rows.SavedRows`), so a rerun — after an interruption, or with another
    noise or tolerance — reads it back. ``compute_dtype``: CG's tile products
    (:func:`~nngp_gpytorch.scale.regression.solve`). The kernel's hyperparameters are used as they are.
    """
    seconds: dict[str, float] = {}
    inline = client == "inline"
    dask_client, release = (client, lambda: None) if inline else connect(client, n_workers)
    root = str(store).rstrip("/")
    options = dict(tile=tile, dtype=dtype, client=dask_client, progress=progress)
    peak: dict[str, int] = {}
    try:
        start = time.perf_counter()
        train = compute_gram(kernel, x_train, store=f"{root}/train.zarr", **options)
        seconds["train_gram"] = time.perf_counter() - start
        start = time.perf_counter()
        test = compute_gram(kernel, x_test, x_train, store=f"{root}/test.zarr", **options)
        seconds["test_gram"] = time.perf_counter() - start
        if not inline:
            peak.update(dask_client.run(peak_rss_bytes))
    finally:
        release()
    start = time.perf_counter()
    choice = None
    if isinstance(noise, str):
        choice = select_noise(train, y_train, criterion=noise, subset=noise_subset)
        noise = choice.noise
    seconds["noise"] = time.perf_counter() - start
    test_diagonal = None
    if variance_index is not None:
        with torch.no_grad():
            test_diagonal = kernel(x_test[variance_index], diag=True).to(torch.float64)
    source = KernelRows(kernel, x_train) if kernel_rows else StoreRows(train)
    rows = SavedRows(source, f"{root}/rows-{'kernel' if kernel_rows else 'store'}.zarr")
    prediction = kernel_regression(train, y_train, float(noise), test, test_diagonal=test_diagonal,
                                   variance_index=variance_index, method=method, tolerance=tolerance,
                                   max_iterations=max_iterations, preconditioner_rank=preconditioner_rank,
                                   rows=rows, compute_dtype=compute_dtype, progress=progress)
    seconds.update(prediction.seconds)
    peak["driver"] = peak_rss_bytes()
    return FitPrediction(prediction, float(noise), choice, train, test, seconds, peak)

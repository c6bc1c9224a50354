"""Grams past memory and past one machine: tiles computed on Dask, stored in Zarr, solved by streamed CG.

Needs the ``scale`` extra (``pip install "nngp-gpytorch[scale]"``: dask[distributed], zarr, tqdm). See
``docs/scale.md``.

- :func:`compute_gram`: ``kernel(x1, x2)`` tile by tile into a resumable, fingerprinted Zarr store;
- :class:`GramStore`: the store (tiles, checksums, fingerprint);
- :class:`StoredGram`: the stored Gram as a ``LinearOperator`` whose matmul streams tiles;
- :class:`KernelRows`, :class:`StoreRows`: the preconditioner's rows, from the kernel or from the store;
  :class:`SavedRows`: either, saved as they are fetched;
- :func:`solve`, :func:`select_noise`, :func:`kernel_regression`: the regression on a stored Gram;
- :func:`fit_predict`: all of it end to end; ``python -m nngp_gpytorch.scale mnist1d ...`` from the shell.
"""

try:
    import distributed as _distributed  # noqa: F401
    import zarr as _zarr  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"nngp_gpytorch.scale needs dask[distributed] and zarr ({error.name} is missing): "
                      'pip install "nngp-gpytorch[scale]"') from error

from .fingerprint import fingerprint, rows_fingerprint
from .operator import KernelRows, StoredGram, StoreRows, stream_matmul
from .pipeline import FitPrediction, fit_predict, peak_rss_bytes
from .regression import NoiseChoice, Prediction, Solve, kernel_regression, noise_candidates, select_noise, solve
from .saved_rows import SavedRows
from .store import GramStore, StoreMismatchError
from .tiles import TileRun, compute_gram, connect

__all__ = [
    "FitPrediction", "GramStore", "KernelRows", "NoiseChoice", "Prediction", "Solve", "StoreMismatchError",
    "SavedRows", "StoreRows", "StoredGram", "TileRun", "compute_gram", "connect", "fingerprint", "fit_predict",
    "kernel_regression", "noise_candidates", "peak_rss_bytes", "rows_fingerprint", "select_noise", "solve",
    "stream_matmul",
]

"""Tiles of a Gram computed as Dask tasks and written into a :class:`~nngp_gpytorch.scale.store.GramStore`.

Each task is one tile ``(i, j)``: ``kernel(x1[rows_i], x2[cols_j]).to_dense()`` under ``torch.no_grad()``,
written as one Zarr chunk by the worker, which returns the chunk's CRC-32; the driver records it. The
scheduler is dask.distributed's: an embedded ``LocalCluster`` (one process per worker, one thread each, torch
pinned to the worker's threads so that workers do not oversubscribe the cores) unless a ``Client`` or a
scheduler address is given. Fault handling is Dask's and the store's:

- a worker that dies mid-run: the scheduler resubmits its tasks to the remaining (or restarted) workers; a
  tile written twice is written with the same bytes. If the scattered kernel and inputs died with it (their
  tasks are cancelled), they are scattered again and the tiles not yet recorded resubmitted;
- a run interrupted (``KeyboardInterrupt``, the driver killed): the checksums recorded so far are flushed
  (in a ``finally``; at worst the tiles of the last second are lost) and a rerun computes only the tiles
  without a checksum;
- a torn or corrupted chunk: ``verify=True`` re-reads recorded tiles on reopening and recomputes mismatches.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .fingerprint import fingerprint
from .store import GramStore, tile_bounds, write_tile

#: seconds between persisting the checksum record while tiles stream in
FLUSH_EVERY_S = 1.0
#: rounds of scattering the inputs and submitting the unrecorded tiles before giving up (see ``_run_on_dask``)
SCATTER_ATTEMPTS = 3


@dataclass
class TileRun:
    """What one :func:`compute_gram` call did: tiles ``computed`` now, ``skipped`` (already recorded),
    ``torn`` (recorded but failing their checksum, hence recomputed), and wall ``seconds``."""

    computed: int
    skipped: int
    torn: int
    seconds: float

    @property
    def tiles_per_s(self) -> float:
        """Tiles computed per second of wall time (all workers together)."""
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


def evaluate_tile(kernel: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, bounds: tuple[int, int, int, int],
                  diagonal: bool = False) -> np.ndarray:
    """The dense block ``kernel(x1[r0:r1], x2[c0:c1])`` as a NumPy array. ``diagonal``: a tile on the
    diagonal of a symmetric Gram, symmetrized as ``(B + Bᵀ)/2`` so that the stored matrix is exactly
    symmetric."""
    r0, r1, c0, c1 = bounds
    with torch.no_grad():
        block = kernel(x1[r0:r1], x2[c0:c1]).to_dense()
        if diagonal:
            block = 0.5 * (block + block.mT)
    if not torch.isfinite(block).all():
        raise FloatingPointError(f"the kernel returned non-finite values in the tile at rows {r0}:{r1}, "
                                 f"columns {c0}:{c1}")
    return block.cpu().numpy()


def compute_tile(kernel: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, url: str, i: int, j: int,
                 tile: int, torch_threads: int | None = None,
                 storage_options: dict[str, Any] | None = None) -> tuple[int, int, int]:
    """Task body: evaluate tile ``(i, j)`` and write it to the store at ``url``. ``x2 = None``: the symmetric
    Gram of ``x1``. Returns ``(i, j, crc)``."""
    if torch_threads is not None and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    other = x1 if x2 is None else x2
    bounds = tile_bounds(i, j, tile, x1.shape[0], other.shape[0])
    block = evaluate_tile(kernel, x1, other, bounds, diagonal=x2 is None and i == j)
    return i, j, write_tile(url, i, j, block, storage_options)


def connect(client: Any, n_workers: int | None) -> tuple[Any, Callable[[], None]]:
    """A ``distributed.Client`` for ``client`` and the function that releases what was created here.

    ``client``: ``None`` starts an embedded ``LocalCluster`` of ``n_workers`` processes (default: one per
    core) with one thread each; a string is a scheduler address (``"tcp://host:8786"``); a ``Client`` is used
    as it is (and not closed)."""
    from distributed import Client, LocalCluster

    if isinstance(client, Client):
        return client, lambda: None
    if isinstance(client, str):
        own = Client(client)
        return own, own.close
    if client is not None:
        raise TypeError(f"client must be a distributed.Client, a scheduler address, 'inline' or None, got {client!r}")
    workers = n_workers or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    own = Client(cluster)

    def close() -> None:
        own.close()
        cluster.close()

    return own, close


def compute_gram(kernel: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *, store: str,
                 tile: int = 2048, dtype: str = "float32", client: Any = None, n_workers: int | None = None,
                 progress: bool = True, verify: bool = True, overwrite: bool = False, retries: int = 2,
                 on_tile: Callable[[int, int], None] | None = None,
                 storage_options: dict[str, Any] | None = None) -> GramStore:
    """Compute ``kernel(x1, x2)`` tile by tile into the Zarr store at ``store`` and return it.

    ``x1``: ``(n1, d)``; ``x2``: ``(n2, d)`` or ``None`` for the symmetric ``(n1, n1)`` Gram of ``x1``, of
    which only the tiles ``i ≤ j`` are computed. The store is resumable: tiles with a recorded checksum are
    skipped (after ``verify`` re-reads them), and a store with another fingerprint (kernel, hyperparameters,
    inputs, ``dtype``, ``tile``) raises :class:`~nngp_gpytorch.scale.store.StoreMismatchError` unless
    ``overwrite``.

    Args:
        kernel: any kernel module of this package (or GPyTorch ``Kernel``); it must pickle to the workers.
        store: a local directory or fsspec URL that every worker can write.
        tile: tile edge (one Zarr chunk); a tile costs ``tile²`` stored values and the kernel's working memory.
        dtype: stored dtype (``"float32"``: half the disk and bandwidth; ``"float64"``).
        client: ``None`` (an embedded ``LocalCluster`` of ``n_workers`` processes, default one per core), a
            ``distributed.Client``, a scheduler address (``"tcp://host:8786"``), or ``"inline"`` (this
            process, no Dask).
        progress: a tqdm bar (tiles done, tiles/s, ETA).
        retries: Dask retries per task for errors raised inside it (a dead worker's tasks are resubmitted
            by the scheduler regardless, up to ``distributed.scheduler.allowed-failures``).
        on_tile: called as ``on_tile(done, total)`` after each tile is recorded (progress hooks, tests).

    The returned store's ``last_run`` is a :class:`TileRun`.
    """
    from tqdm.auto import tqdm

    if x1.dim() != 2 or (x2 is not None and (x2.dim() != 2 or x2.shape[1] != x1.shape[1])):
        raise ValueError(f"inputs must be (n, d) with the same d, got {tuple(x1.shape)} and "
                         f"{None if x2 is None else tuple(x2.shape)}")
    if not torch.isfinite(x1).all() or (x2 is not None and not torch.isfinite(x2).all()):
        raise ValueError("inputs contain NaN or infinity")
    start = time.perf_counter()
    x1, x2 = x1.detach().cpu().contiguous(), None if x2 is None else x2.detach().cpu().contiguous()
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    gram = GramStore(store, fingerprint(kernel, x1, x2, dtype, tile), (x1.shape[0], n2), tile, dtype,
                     symmetric=x2 is None, overwrite=overwrite, storage_options=storage_options)
    torn = gram.verify() if verify else []
    pending = gram.pending()
    total = len(gram.tiles())
    skipped = total - len(pending)
    bar = tqdm(total=total, initial=skipped, unit="tile", desc="Gram tiles", disable=not progress, smoothing=0.1)
    done, last_flush = skipped, time.perf_counter()

    def finished(i: int, j: int, crc: int) -> None:
        nonlocal done, last_flush
        gram.record(i, j, crc)
        done += 1
        bar.update(1)
        if time.perf_counter() - last_flush > FLUSH_EVERY_S:
            gram.flush()
            last_flush = time.perf_counter()
        if on_tile is not None:
            on_tile(done, total)

    try:
        if client == "inline":
            for i, j in pending:
                finished(*compute_tile(kernel, x1, x2, gram.url, i, j, tile, None, storage_options))
        elif pending:
            _run_on_dask(client, n_workers, kernel, x1, x2, gram, pending, retries, storage_options, finished)
    finally:
        gram.flush()
        bar.close()
    gram.last_run = TileRun(len(pending), skipped, len(torn), time.perf_counter() - start)
    return gram


def _run_on_dask(client: Any, n_workers: int | None, kernel: torch.nn.Module, x1: torch.Tensor,
                 x2: torch.Tensor | None, gram: GramStore, pending: list[tuple[int, int]], retries: int,
                 storage_options: dict[str, Any] | None, finished: Callable[[int, int, int], None]) -> None:
    """Submit one task per pending tile and record each as it completes.

    The kernel and inputs are scattered to the workers once. Dask cannot recompute scattered data, and a worker's
    death can take it with it: the tasks that need it are then cancelled ("already forgotten";
    dask/distributed#3149). That is recovered here: the inputs are scattered again and only the tiles not yet
    recorded are resubmitted, up to ``SCATTER_ATTEMPTS`` times."""
    from distributed.client import FutureCancelledError

    dask_client, release = connect(client, n_workers)
    remaining = dict.fromkeys(pending)

    def record(i: int, j: int, crc: int) -> None:
        finished(i, j, crc)
        remaining.pop((i, j), None)

    try:
        for attempt in range(1, SCATTER_ATTEMPTS + 1):
            try:
                _submit_and_record(dask_client, kernel, x1, x2, gram, list(remaining), retries, storage_options,
                                   record)
                return
            except FutureCancelledError as error:
                if attempt == SCATTER_ATTEMPTS:
                    raise RuntimeError(f"tile tasks were cancelled {attempt} times (the scattered kernel and inputs "
                                       "were lost with dead workers); finished tiles are recorded, rerun to "
                                       "resume") from error
                warnings.warn(f"{len(remaining)} tile tasks were cancelled ({error}); scattering the kernel and "
                              "inputs again and resubmitting them", RuntimeWarning, stacklevel=3)
    finally:
        release()


def _submit_and_record(dask_client: Any, kernel: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None,
                       gram: GramStore, tiles: list[tuple[int, int]], retries: int,
                       storage_options: dict[str, Any] | None, record: Callable[[int, int, int], None]) -> None:
    """One round: scatter the kernel and inputs, submit a task per tile, record each as it completes."""
    from distributed import as_completed

    futures = []
    try:
        threads = dask_client.nthreads()
        per_worker = max(min(threads.values()), 1) if threads else 1
        kernel_f, x1_f = dask_client.scatter([kernel, x1], broadcast=True, hash=False)
        x2_f = None if x2 is None else dask_client.scatter(x2, broadcast=True, hash=False)
        futures = [
            dask_client.submit(compute_tile, kernel_f, x1_f, x2_f, gram.url, i, j, gram.tile, per_worker,
                               storage_options, key=f"gram-tile-{i}-{j}-{os.urandom(4).hex()}", retries=retries,
                               pure=False)
            for i, j in tiles
        ]
        for future in as_completed(futures):
            record(*future.result())
    finally:
        for future in futures:
            future.cancel()

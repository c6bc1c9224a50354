"""Preconditioner rows kept on disk as they are fetched, so an interrupted or repeated solve does not fetch them again.

A pivoted-Cholesky preconditioner of rank ``k`` asks for ``k`` full rows ``K[i, :]`` one at a time
(linear_operator's ``pivoted_cholesky``), each ``n`` kernel values evaluated by the kernel or a strip of tiles
read from the Gram store. For an expensive kernel at large ``n`` these are many minutes that a killed process
would lose (docs/scale.md has the measurements). :class:`SavedRows` wraps either row source and appends every
row it fetches to a Zarr group; a rerun with the same kernel and inputs reads them back. The pivots depend only
on the Gram's diagonal and on these rows, so a rerun asks for the same rows in the same order.

Layout (a Zarr v3 group at a local path or any fsspec URL):

- ``rows``: ``(m, n)`` float64, one chunk per row, in the order computed;
- ``index``: ``(m,)`` int64, the row's position in ``K``; one chunk per entry, written only after its row is on
  the store, so a process killed mid-write leaves at most an unrecorded row, overwritten by the next append;
- attributes: the fingerprint (the source's: :func:`~nngp_gpytorch.scale.fingerprint.rows_fingerprint` for the
  kernel's rows, the Gram store's for rows read from it).

One process writes a row store at a time. Rows are only a preconditioner's input: a wrong row would slow CG,
never change its answer (the solve reports the true residual), and a non-finite row read back is recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import zarr

from .store import StoreMismatchError, open_recorded_group

ROWS, INDEX = "rows", "index"


class SavedRows:
    """A row source ``rows(index)`` → ``(len(index), n)`` float64 CPU tensor that saves each row it fetches.

    Args:
        source: computes rows not saved yet (:class:`~nngp_gpytorch.scale.operator.KernelRows`,
            :class:`~nngp_gpytorch.scale.operator.StoreRows`, or any callable with ``fingerprint`` and ``n`` given).
        url: a local directory or an fsspec URL.
        fingerprint: what the rows are of (default: ``source.fingerprint()``); a store recorded with another
            raises :class:`~nngp_gpytorch.scale.store.StoreMismatchError`.
        n: the row length, the number of inputs (default: ``source.n``).
        overwrite: discard a store with another fingerprint instead of raising.
        storage_options: passed to fsspec for remote URLs.

    ``computed`` and ``read`` count the rows evaluated by ``source`` and read back from the store.
    """

    def __init__(self, source: Callable[[torch.Tensor], torch.Tensor], url: str, *,
                 fingerprint: dict[str, Any] | None = None, n: int | None = None, overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.source, self.url = source, str(url)
        fingerprint = source.fingerprint() if fingerprint is None else fingerprint
        self.n = int(source.n if n is None else n)
        group, created = open_recorded_group(self.url, fingerprint, (ROWS, INDEX), overwrite=overwrite,
                                             storage_options=storage_options, holds="preconditioner rows")
        if created:
            group.create_array(ROWS, shape=(0, self.n), chunks=(1, self.n), dtype="float64", compressors=None,
                               fill_value=np.nan)
            group.create_array(INDEX, shape=(0,), chunks=(1,), dtype="int64", compressors=None, fill_value=-1)
            group.attrs["fingerprint"] = fingerprint
        self.rows_array: zarr.Array = group[ROWS]
        self.index_array: zarr.Array = group[INDEX]
        if self.rows_array.shape[1] != self.n:
            raise StoreMismatchError(f"the row store at {self.url!r} has rows of length "
                                     f"{self.rows_array.shape[1]}, not {self.n}")
        recorded_index = np.asarray(self.index_array[...], dtype=np.int64)
        #: row of K → position in the store
        self.position: dict[int, int] = {int(row): p for p, row in enumerate(recorded_index)}
        self.computed = self.read = 0

    def __len__(self) -> int:
        """The number of rows saved."""
        return len(self.position)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        wanted = [int(i) for i in index.reshape(-1).tolist()]
        if any(not 0 <= i < self.n for i in wanted):
            raise IndexError(f"row indices must lie in [0, {self.n}), got {sorted(set(wanted))[:5]}…")
        out = torch.empty(len(wanted), self.n, dtype=torch.float64)
        known = sorted({i for i in wanted if i in self.position})
        fresh: dict[int, torch.Tensor] = {}
        if known:
            values = self.rows_array.get_orthogonal_selection((np.array([self.position[i] for i in known]),
                                                               slice(None)))
            for i, row in zip(known, torch.from_numpy(np.asarray(values)), strict=True):
                if torch.isfinite(row).all():
                    fresh[i] = row
            self.read += len(fresh)
        missing = sorted({i for i in wanted if i not in fresh})
        if missing:
            values = self.source(torch.tensor(missing)).detach().to(device="cpu", dtype=torch.float64)
            if values.shape != (len(missing), self.n):
                raise ValueError(f"the row source returned {tuple(values.shape)} for {len(missing)} rows of "
                                 f"length {self.n}")
            if not torch.isfinite(values).all():
                raise FloatingPointError("the row source returned non-finite kernel values; nothing was saved")
            self._append(missing, values.numpy())
            self.computed += len(missing)
            fresh.update(zip(missing, values, strict=True))
        for k, i in enumerate(wanted):
            out[k] = fresh[i]
        return out

    def _append(self, rows: list[int], values: np.ndarray) -> None:
        """Write ``values`` as the rows ``rows``, then record their indices (a row recomputed after a non-finite
        read gets a new position; its old one is left unused)."""
        start = self.index_array.shape[0]
        stop = start + len(rows)
        self.rows_array.resize((stop, self.n))
        self.rows_array[start:stop] = values
        self.index_array.resize((stop,))
        self.index_array[start:stop] = np.asarray(rows, dtype=np.int64)
        for offset, row in enumerate(rows):
            self.position[row] = start + offset

    def __repr__(self) -> str:
        return f"SavedRows({self.url!r}, n={self.n}, saved {len(self)})"

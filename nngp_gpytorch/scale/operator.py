"""The stored Gram as a ``LinearOperator``: matmuls stream tiles from the store, rows come from the kernel.

:class:`StoredGram` is what linear_operator's CG needs and nothing more: ``_matmul`` reads every stored tile
once per call (a background thread reads ahead while the current tile multiplies), using each off-diagonal
tile of a symmetric store twice (``K_ij v_j`` and ``K_ijᵀ v_i``), so a matmul costs one pass over the
``n(n + tile)/2`` stored values; ``_diagonal`` reads the diagonal tiles once; ``_get_indices`` (the rows a
pivoted-Cholesky preconditioner asks for) evaluates the kernel for those rows when a :class:`KernelRows` is
given, and otherwise reads the tile strips that hold them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from linear_operator.operators import LinearOperator

from .fingerprint import rows_fingerprint
from .store import GramStore


class KernelRows:
    """Rows of ``kernel(x, x)`` on demand: ``rows(index)`` → ``(len(index), n)``, evaluated under no_grad.

    For preconditioners: a pivoted Cholesky of rank ``k`` needs ``k`` rows, i.e. ``k·n`` kernel values,
    instead of ``k`` strips of tiles from the store (:class:`StoreRows`). Which is faster depends on the kernel:
    a strip costs the same for every kernel, a kernel row from milliseconds (an MLP) to seconds (a GAP CNN at
    ``n = 50,000``; ``benchmarks/bench_saved_rows.py``)."""

    def __init__(self, kernel: torch.nn.Module, x: torch.Tensor) -> None:
        self.kernel, self.x = kernel, x
        self.n = x.shape[0]

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.kernel(self.x[index], self.x).to_dense()

    def fingerprint(self) -> dict:
        """What these rows are of (:func:`~nngp_gpytorch.scale.fingerprint.rows_fingerprint`)."""
        return rows_fingerprint(self.kernel, self.x)


class StoreRows:
    """Rows of the symmetric Gram in ``store``: ``rows(index)`` → ``(len(index), n)`` in the store's dtype, read one
    strip of tiles per tile row that holds any of them (:meth:`GramStore.rows`)."""

    def __init__(self, store: GramStore) -> None:
        self.store = store
        self.n = store.shape[1]

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.store.rows(index.cpu().numpy()))

    def fingerprint(self) -> dict:
        """What these rows are of: the stored Gram's fingerprint, read as rows."""
        return {"gram": self.store.group.attrs["fingerprint"], "layout": "rows"}


def stream_tiles(store: GramStore, readahead: int = 2, dtype: torch.dtype | None = None
                 ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(i, j, tile)`` for every stored tile as a tensor (cast to ``dtype`` if given), reading and
    casting up to ``readahead`` tiles ahead in threads while the caller multiplies the current one."""
    tiles = store.tiles()

    def read(i: int, j: int) -> torch.Tensor:
        tile = torch.from_numpy(store.read_tile(i, j))
        return tile if dtype is None else tile.to(dtype)

    with ThreadPoolExecutor(max_workers=max(readahead, 1)) as pool:
        queue: deque = deque()
        position = 0
        while position < len(tiles) or queue:
            while position < len(tiles) and len(queue) <= readahead:
                i, j = tiles[position]
                queue.append((i, j, pool.submit(read, i, j)))
                position += 1
            i, j, future = queue.popleft()
            yield i, j, future.result()


def stream_matmul(store: GramStore, rhs: torch.Tensor, readahead: int = 2,
                  compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``G @ rhs`` for the ``(n1, n2)`` matrix ``G`` in ``store`` and ``rhs`` of shape ``(n2, k)``, streamed
    tile by tile, returned in ``rhs``'s dtype ``(n1, k)``.

    ``compute_dtype`` (default: ``rhs``'s dtype): the dtype of the products. Tiles are cast to it as they are
    read. float64 products of a float32 store multiply the stored values exactly (the solve is then of the
    stored matrix to CG's tolerance); float32 products are faster but accumulate in float32, which puts a
    floor of about ``2⁻²⁴·κ`` under the attainable relative residual."""
    if not store.complete:
        raise RuntimeError(f"the store at {store.url!r} has {len(store.pending())} unfinished tiles")
    if rhs.shape[0] != store.shape[1]:
        raise ValueError(f"rhs has {rhs.shape[0]} rows, the stored matrix {store.shape[1]} columns")
    work = compute_dtype or (rhs.dtype if rhs.dtype.is_floating_point else torch.float64)
    v = rhs.detach().to(device="cpu", dtype=work)
    out = torch.zeros(store.shape[0], rhs.shape[1], dtype=work)
    vt = v.mT.contiguous()  # (k, n): the transposed products as row-vector times tile, a fast GEMM layout
    for i, j, tile in stream_tiles(store, readahead, work):
        r0, r1, c0, c1 = store.bounds(i, j)
        out[r0:r1] += tile @ v[c0:c1]
        if store.symmetric and i != j:
            out[c0:c1] += (vt[:, r0:r1] @ tile).mT
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"non-finite values in the product with the store at {store.url!r}")
    return out.to(device=rhs.device, dtype=rhs.dtype)


class StoredGram(LinearOperator):
    """The symmetric ``(n, n)`` Gram held by a complete symmetric :class:`GramStore`, as a LinearOperator.

    Args:
        store: a complete store with ``symmetric=True``.
        rows: optional row source (:class:`KernelRows`) for element access (preconditioners); without it,
            rows are read from the store.
        dtype: the dtype the operator reports (CG vectors are kept in it; tiles multiply in the store's dtype).
        readahead: tiles read ahead of the one being multiplied.
        compute_dtype: dtype of the tile products (:func:`stream_matmul`; default: that of the vectors).

    ``matmuls`` counts calls of ``_matmul`` (each is one pass over the store): a CG solve's iteration count is
    the difference across the solve, less the one matmul of the initial residual.
    """

    def __init__(self, store: GramStore, rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 dtype: torch.dtype = torch.float64, readahead: int = 2,
                 compute_dtype: torch.dtype | None = None) -> None:
        if not store.symmetric:
            raise ValueError("StoredGram needs a symmetric store (the Gram of one input set); multiply a "
                             "cross-Gram with stream_matmul")
        if not store.complete:
            raise RuntimeError(f"the store at {store.url!r} has {len(store.pending())} unfinished tiles")
        # the one tensor argument only carries dtype and device; the store is held, never rebuilt
        super().__init__(torch.zeros(0, dtype=dtype))
        self.store, self._dtype, self.readahead = store, dtype, readahead
        self.rows = rows if rows is not None else StoreRows(store)
        self.compute_dtype = compute_dtype
        self.matmuls = 0
        #: called as ``on_matmul(count)`` before each pass over the store (progress bars)
        self.on_matmul: Callable[[int], None] | None = None
        #: called as ``on_rows(k)`` after ``k`` more full rows were fetched (the preconditioner's; progress bars)
        self.on_rows: Callable[[int], None] | None = None
        self._diag: torch.Tensor | None = None

    def representation_tree(self) -> Callable[..., StoredGram]:
        """linear_operator rebuilds operators from their tensors inside autograd functions; this one is
        rebuilt as itself (same store, same ``matmuls`` counter, same cached diagonal)."""
        return _Itself(self)

    def detach(self) -> StoredGram:
        """No autograd graph runs through a stored Gram: the operator is its own detached copy."""
        return self

    def _size(self) -> torch.Size:
        return torch.Size(self.store.shape)

    def _transpose_nonbatch(self) -> StoredGram:
        return self

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        vector = rhs.dim() == 1
        if rhs.dim() > 2:
            raise ValueError(f"StoredGram multiplies (n,) or (n, k) right-hand sides, got {tuple(rhs.shape)}")
        self.matmuls += 1
        if self.on_matmul is not None:
            self.on_matmul(self.matmuls)
        out = stream_matmul(self.store, rhs.unsqueeze(-1) if vector else rhs, self.readahead, self.compute_dtype)
        return out.squeeze(-1) if vector else out

    def _diagonal(self) -> torch.Tensor:
        if self._diag is None:
            self._diag = torch.from_numpy(self.store.diagonal()).to(self._dtype)
        return self._diag

    def _approx_diagonal(self) -> torch.Tensor:
        return self._diagonal()

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        """Full rows ``K[index, :]`` as a ``(len(index), n)`` tensor."""
        rows = self.rows(index).to(self._dtype)
        if self.on_rows is not None:
            self.on_rows(len(index))
        return rows

    def _get_indices(self, row_index: torch.Tensor, col_index: torch.Tensor, *batch_indices: torch.Tensor
                     ) -> torch.Tensor:
        if batch_indices:
            raise ValueError("StoredGram has no batch dimensions")
        row_index, col_index = torch.broadcast_tensors(row_index, col_index)
        unique, inverse = torch.unique(row_index, return_inverse=True)
        return self._rows(unique)[inverse, col_index]

    def to_dense(self) -> torch.Tensor:
        """The whole Gram in memory (``n²`` values: small stores only)."""
        return torch.from_numpy(self.store.to_numpy()).to(self._dtype)

    def __repr__(self) -> str:
        return f"StoredGram({self.store!r})"


class _Itself:
    """A representation tree that returns the operator it was made from."""

    def __init__(self, operator: StoredGram) -> None:
        self.operator = operator

    def __call__(self, *representation: torch.Tensor) -> StoredGram:
        return self.operator

"""A Gram matrix on disk: one Zarr array, one chunk per tile, a checksum per finished tile, a fingerprint.

Layout of a store (a Zarr v3 group at a local path or any fsspec URL):

- ``gram``: the ``(n1, n2)`` array, chunks ``(tile, tile)``, uncompressed, fill value NaN. A symmetric Gram
  (``x2 = None``) stores only the tiles ``(i, j)`` with ``i ≤ j``; the lower triangle is read by transposing.
- ``checksums``: ``(ceil(n1/tile), ceil(n2/tile))`` int64, one CRC-32 per tile, ``-1`` while a tile is not
  finished. A tile's checksum is recorded only after its chunk was written (the worker returns the CRC of the
  bytes it wrote; the driver records it), so a chunk whose checksum is missing — the process died while or
  after writing it — is simply recomputed, and a chunk whose bytes no longer match (a torn or truncated
  write, a corrupted disk) is found by :meth:`GramStore.verify` and recomputed.
- attributes: the fingerprint (:func:`~nngp_gpytorch.scale.fingerprint.fingerprint`), ``symmetric``.

Reopening a store with another fingerprint raises :class:`StoreMismatchError`; nothing is mixed silently.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import numpy as np
import zarr

#: name of the Gram array and of the per-tile checksum array inside a store
GRAM, CHECKSUMS = "gram", "checksums"


class StoreMismatchError(ValueError):
    """A store exists at the path but was written for other inputs, hyperparameters, dtype or tiling."""


def checksum(block: np.ndarray) -> int:
    """CRC-32 of a tile's bytes as stored (C order, the store's dtype)."""
    return zlib.crc32(np.ascontiguousarray(block).tobytes())


def tile_bounds(i: int, j: int, tile: int, n1: int, n2: int) -> tuple[int, int, int, int]:
    """Row and column ranges ``(r0, r1, c0, c1)`` of tile ``(i, j)`` in an ``(n1, n2)`` Gram."""
    return i * tile, min((i + 1) * tile, n1), j * tile, min((j + 1) * tile, n2)


def open_gram_array(url: str, storage_options: dict[str, Any] | None = None, mode: str = "r+") -> zarr.Array:
    """The ``gram`` array of the store at ``url`` (used by workers to write their tile)."""
    group = zarr.open_group(store=url, mode=mode, storage_options=storage_options)
    return group[GRAM]


def write_tile(url: str, i: int, j: int, block: np.ndarray, storage_options: dict[str, Any] | None = None) -> int:
    """Write ``block`` as tile ``(i, j)`` of the store at ``url`` and return its :func:`checksum`.

    The checksum is of the bytes handed to Zarr; the caller records it (:meth:`GramStore.record`) only after
    this returns, i.e. after the chunk is on the store."""
    array = open_gram_array(url, storage_options)
    tile = array.chunks[0]
    r0, r1, c0, c1 = tile_bounds(i, j, tile, *array.shape)
    if block.shape != (r1 - r0, c1 - c0):
        raise ValueError(f"tile ({i}, {j}) has shape {(r1 - r0, c1 - c0)}, got a block of shape {block.shape}")
    block = np.ascontiguousarray(block, dtype=array.dtype)
    array[r0:r1, c0:c1] = block
    return checksum(block)


def open_recorded_group(url: str, fingerprint: dict[str, Any], arrays: tuple[str, ...], *, overwrite: bool,
                        storage_options: dict[str, Any] | None, holds: str) -> tuple[zarr.Group, bool]:
    """The Zarr group at ``url`` and whether it was created empty here.

    A group that records ``fingerprint`` and holds ``arrays`` is reopened. A group with nothing recorded is
    created again (``mode="w"``): the caller creates the arrays and then records the fingerprint, last, so a group
    cut off while being created is created anew. A group recording another fingerprint, or missing an array,
    raises :class:`StoreMismatchError` naming what differs (``holds`` says what the store holds, e.g. "a Gram"),
    unless ``overwrite`` (then it is created again)."""
    from .fingerprint import differences

    wanted = json.loads(json.dumps(fingerprint))  # what the attributes will read back as
    group = zarr.open_group(store=str(url), mode="a", storage_options=storage_options)
    recorded = group.attrs.get("fingerprint")
    if recorded is not None and recorded == wanted and all(name in group for name in arrays):
        return group, False
    if recorded is not None and not overwrite:
        raise StoreMismatchError(
            f"the store at {str(url)!r} holds {holds} of other "
            f"{', '.join(differences(recorded, wanted)) or 'contents'} than the one asked for; "
            "use another store path, or overwrite=True to discard it")
    return zarr.open_group(store=str(url), mode="w", storage_options=storage_options), True


class GramStore:
    """Open (or create) the Gram store at ``url`` for a computation described by ``fingerprint``.

    Args:
        url: a local directory or an fsspec URL (``s3://...``, ``gs://...``; the filesystem package must be
            installed), readable by every worker.
        fingerprint: what the Gram is of (:func:`~nngp_gpytorch.scale.fingerprint.fingerprint`).
        shape: ``(n1, n2)``.
        tile: the tile (= chunk) edge.
        dtype: the stored dtype (``"float32"`` or ``"float64"``).
        symmetric: store only the upper triangle of tiles (``n1 == n2``, a Gram of one input set).
        overwrite: replace a store with another fingerprint instead of raising :class:`StoreMismatchError`.
        storage_options: passed to fsspec for remote URLs.
    """

    def __init__(self, url: str, fingerprint: dict[str, Any], shape: tuple[int, int], tile: int,
                 dtype: str = "float32", symmetric: bool = False, overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None) -> None:
        if tile < 1:
            raise ValueError(f"tile must be a positive integer, got {tile}")
        if symmetric and shape[0] != shape[1]:
            raise ValueError(f"a symmetric Gram is square, got shape {shape}")
        self.url, self.tile, self.shape, self.symmetric = str(url), int(tile), tuple(shape), bool(symmetric)
        self.storage_options = storage_options
        self.grid = (math.ceil(shape[0] / tile), math.ceil(shape[1] / tile))
        group, created = open_recorded_group(self.url, fingerprint, (GRAM, CHECKSUMS), overwrite=overwrite,
                                             storage_options=storage_options, holds="a Gram")
        if created:
            group.create_array(GRAM, shape=self.shape, chunks=(tile, tile), dtype=dtype, compressors=None,
                               fill_value=np.nan)
            group.create_array(CHECKSUMS, shape=self.grid, chunks=self.grid, dtype="int64", compressors=None,
                               fill_value=-1)
            group.attrs.update({"fingerprint": fingerprint, "symmetric": self.symmetric})
        self.group = group
        self.array: zarr.Array = group[GRAM]
        self.dtype = np.dtype(self.array.dtype)
        self.checksums: np.ndarray = np.asarray(group[CHECKSUMS][...], dtype=np.int64)
        self._dirty = False
        #: what the last :func:`~nngp_gpytorch.scale.tiles.compute_gram` call on this store did (a ``TileRun``)
        self.last_run: Any = None

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> GramStore:
        """Reopen an existing store from what it records (no fingerprint to compare against)."""
        group = zarr.open_group(store=str(url), mode="r+", storage_options=storage_options)
        recorded = group.attrs.get("fingerprint")
        if recorded is None or GRAM not in group:
            raise FileNotFoundError(f"no Gram store at {url!r}")
        array = group[GRAM]
        return cls(url, recorded, tuple(array.shape), array.chunks[0], str(array.dtype),
                   bool(group.attrs.get("symmetric", False)), storage_options=storage_options)

    # --- tiles --------------------------------------------------------------------------------------------
    def tiles(self) -> list[tuple[int, int]]:
        """Every tile the store holds when complete, row-major (``i ≤ j`` only for a symmetric Gram)."""
        return [(i, j) for i in range(self.grid[0]) for j in range(self.grid[1]) if not self.symmetric or i <= j]

    def bounds(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(r0, r1, c0, c1)`` of tile ``(i, j)``."""
        return tile_bounds(i, j, self.tile, *self.shape)

    def is_done(self, i: int, j: int) -> bool:
        """Whether tile ``(i, j)`` has a recorded checksum."""
        return bool(self.checksums[i, j] >= 0)

    def pending(self) -> list[tuple[int, int]]:
        """The tiles without a recorded checksum."""
        return [t for t in self.tiles() if not self.is_done(*t)]

    @property
    def complete(self) -> bool:
        """Whether every tile is recorded."""
        return not self.pending()

    @property
    def stored_bytes(self) -> int:
        """Bytes of Gram values the store holds when complete (the upper tiles only, if symmetric)."""
        sizes = ((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in (self.bounds(i, j) for i, j in self.tiles()))
        return sum(sizes) * self.dtype.itemsize

    # --- records ------------------------------------------------------------------------------------------
    def record(self, i: int, j: int, crc: int) -> None:
        """Note that tile ``(i, j)`` is on the store with checksum ``crc`` (persisted by :meth:`flush`)."""
        self.checksums[i, j] = int(crc)
        self._dirty = True

    def flush(self) -> None:
        """Write the checksum record to the store."""
        if self._dirty:
            self.group[CHECKSUMS][...] = self.checksums
            self._dirty = False

    def verify(self, tiles: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        """Re-read recorded tiles, compare their bytes with the recorded checksums, and forget (mark
        unfinished) every tile that does not match or cannot be read. Returns the tiles forgotten.

        Reads every recorded tile once (the whole store by default)."""
        torn = []
        for i, j in tiles if tiles is not None else self.tiles():
            if not self.is_done(i, j):
                continue
            try:
                ok = checksum(self.read_tile(i, j)) == self.checksums[i, j]
            except Exception:  # a truncated chunk does not decode: zarr's error type depends on the codec
                ok = False
            if not ok:
                self.checksums[i, j] = -1
                self._dirty = True
                torn.append((i, j))
        self.flush()
        return torn

    # --- reads --------------------------------------------------------------------------------------------
    def read_tile(self, i: int, j: int) -> np.ndarray:
        """Tile ``(i, j)`` as stored: ``(r1 - r0, c1 - c0)`` in the store's dtype."""
        r0, r1, c0, c1 = self.bounds(i, j)
        return self.array[r0:r1, c0:c1]

    def block(self, i: int, j: int) -> np.ndarray:
        """Tile ``(i, j)`` of the full matrix (a lower-triangle tile of a symmetric Gram is a transposed read)."""
        if self.symmetric and i > j:
            return self.read_tile(j, i).T
        return self.read_tile(i, j)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Full rows ``G[index, :]`` as a ``(len(index), n2)`` array, read one strip of tiles per tile row
        that holds any of them."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.shape[1]), dtype=self.dtype)
        for ti in np.unique(index // self.tile):
            mask = (index // self.tile) == ti
            local = index[mask] - ti * self.tile
            out[mask] = np.concatenate([self.block(int(ti), j)[local] for j in range(self.grid[1])], axis=1)
        return out

    def diagonal(self) -> np.ndarray:
        """The diagonal ``G[i, i]`` ``(min(n1, n2),)``, read from the diagonal tiles only."""
        out = np.empty(min(self.shape), dtype=self.dtype)
        for i in range(min(self.grid)):
            r0, r1, c0, c1 = self.bounds(i, i)
            out[r0:min(r1, c1)] = np.diagonal(self.read_tile(i, i))
        return out

    def leading_block(self, m: int) -> np.ndarray:
        """The ``(m, m)`` leading principal block ``G[:m, :m]`` (or ``G[:m, :m]`` of a cross-Gram)."""
        out = np.empty((m, m), dtype=self.dtype)
        last = -(-m // self.tile)
        for i in range(last):
            for j in range(last):
                r0, r1, c0, c1 = self.bounds(i, j)
                r1, c1 = min(r1, m), min(c1, m)
                out[r0:r1, c0:c1] = self.block(i, j)[: r1 - r0, : c1 - c0]
        return out

    def to_numpy(self) -> np.ndarray:
        """The whole ``(n1, n2)`` matrix in memory (small stores only); raises if a tile is unfinished."""
        if not self.complete:
            raise RuntimeError(f"the store at {self.url!r} has {len(self.pending())} unfinished tiles")
        out = np.empty(self.shape, dtype=self.dtype)
        for i in range(self.grid[0]):
            for j in range(self.grid[1]):
                r0, r1, c0, c1 = self.bounds(i, j)
                out[r0:r1, c0:c1] = self.block(i, j)
        return out

    def __repr__(self) -> str:
        done = len(self.tiles()) - len(self.pending())
        return (f"GramStore({self.url!r}, shape={self.shape}, tile={self.tile}, dtype={self.dtype}, "
                f"symmetric={self.symmetric}, tiles {done}/{len(self.tiles())})")

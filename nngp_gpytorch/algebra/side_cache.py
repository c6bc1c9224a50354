"""A content-keyed, size-bounded cache of per-input-set work shared by the compiled engines.

A kernel evaluation splits into work on each input set alone (the RNN's diagonal chains and ``K(x, x)``; a conv run's
same-position chains, variance roots and ``K(x, x)``) and work on pairs. Two call patterns repeat the same input set:
the kernel base's tiles (the row and column blocks come back for every tile) and the rows a pivoted-Cholesky
preconditioner asks for, ``kernel(x[i:i+1], X)`` for ``k`` pivots (:class:`nngp_gpytorch.scale.operator.KernelRows`),
where the per-set work on ``X`` costs as much as the row's pairs. The cache keeps that work between calls.

Keys are built by :func:`content_key` from the inputs' *values* (a SHA-256 of dtype, shape and bytes) and
everything else the work depends on (variances, geometry, activation, switches), so a hit is exact: a changed input,
new variances or another layer make another key. Limits (module settings, read at each insertion):
:data:`MAX_ENTRIES` entries and :data:`MAX_BYTES` bytes over all entries' arrays, least recently used first out; 0
entries turns caching off. Entries may grow after insertion (work done lazily on first use, e.g. ``K(x, x)``); sizes
are measured again at each insertion, so the bound holds from then on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..hashing import hash_tensor

#: entries kept per cache (0: no caching)
MAX_ENTRIES = 32
#: bytes kept per cache over all entries (a 50,000 × 40 float64 input set's side: ~93 MB RNN, ~214 MB 1-D conv)
MAX_BYTES = 512 << 20


def content_key(x: torch.Tensor, *extra: Any) -> tuple:
    """A hashable key equal for equal-valued inputs: ``(SHA-256 of x's shape, dtype and bytes, *extra)`` (``extra``
    hashable; :func:`nngp_gpytorch.hashing.hash_tensor`, the Gram stores' fingerprint hash). A key is small whatever
    the inputs' size; hashing reads the bytes once (~1 GB/s here). ``x`` must be on the CPU (no silent copies
    from an accelerator)."""
    if x.device.type != "cpu":
        raise ValueError(f"content_key hashes CPU tensors only, got one on {x.device}")
    return (hash_tensor(x), *extra)


def footprint(value: Any, seen: set[int] | None = None) -> int:
    """Bytes held by the tensors and arrays in ``value`` (walking tuples, lists, dicts and objects' attributes;
    each array counted once)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, (tuple, list)):
        return sum(footprint(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(footprint(v, seen) for v in value.values())
    if hasattr(value, "__dict__"):
        return footprint(vars(value), seen)
    return 0


class SideCache:
    """An LRU map from :func:`content_key` keys to per-input-set work, bounded by :data:`MAX_ENTRIES` and
    :data:`MAX_BYTES`; safe to use from several threads."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def fetch(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """The value cached under ``key``, or ``compute()`` (cached if it fits the limits)."""
        if MAX_ENTRIES <= 0:
            return compute()
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                return value
        value = compute()
        with self._lock:
            self._entries[key] = value
            self._evict()
        return value

    def _evict(self) -> None:
        sizes = {key: footprint(value) + footprint(key) for key, value in self._entries.items()}
        total = sum(sizes.values())
        while self._entries and (len(self._entries) > MAX_ENTRIES or total > MAX_BYTES):
            key, _ = self._entries.popitem(last=False)
            total -= sizes[key]

    def nbytes(self) -> int:
        """Bytes the entries hold now (:func:`footprint` of keys and values)."""
        with self._lock:
            return footprint(list(self._entries.items()))

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["MAX_BYTES", "MAX_ENTRIES", "SideCache", "content_key", "footprint"]

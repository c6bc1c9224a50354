"""Content hashes of tensors, written once: Gram stores' fingerprints (:mod:`nngp_gpytorch.scale.fingerprint`) and
the engines' per-input-set cache keys (:mod:`nngp_gpytorch.algebra.side_cache`) both identify inputs by value."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def hash_tensor(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and bytes (C order, on the CPU): ``(n, d)`` → 64 hex digits. The bytes are
    hashed in place (no copy beyond making them contiguous on the host); ~1 GB/s here."""
    array = np.ascontiguousarray(x.detach().cpu().numpy())
    digest = hashlib.sha256()
    digest.update(repr((tuple(array.shape), str(array.dtype))).encode())
    digest.update(memoryview(array).cast("B") if array.size else b"")
    return digest.hexdigest()


__all__ = ["hash_tensor"]

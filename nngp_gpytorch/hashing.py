"""Content hashes of tensors, written once: Gram stores' fingerprints (:mod:`nngp_gpytorch.scale.fingerprint`) and
the engines' per-input-set cache keys (:mod:`nngp_gpytorch.algebra.side_cache`) both identify inputs by value."""

from __future__ import annotations

import hashlib

import torch


def hash_tensor(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and bytes (C order, on the CPU): ``(n, d)`` → 64 hex digits. The bytes are
    hashed in place (no copy beyond making them contiguous on the host; ~1 GB/s here), read as raw bytes, so any
    dtype hashes (bfloat16 too, which numpy lacks); the dtype enters by its name (numpy's, where numpy has it)."""
    t = x.detach().cpu().resolve_conj().resolve_neg().contiguous()
    digest = hashlib.sha256()
    digest.update(repr((tuple(t.shape), str(t.dtype).removeprefix("torch."))).encode())
    if t.numel():
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


__all__ = ["hash_tensor"]

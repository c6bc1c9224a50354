"""The sequence input convention of the recurrent kernels — defined here, once.

* A batch of ``n`` sequences of ``T`` tokens of dimension ``D`` is flattened by the user to ``(n, T·D)``
  (token-major: features ``[t·D, (t+1)·D)`` are token ``t``) and the kernel is told
  ``input_shape=(T, D)``. The input covariance of two tokens is ``C(t, s) = x_t·x'_s/d``.
* **Variable lengths** use a *mask channel*: with ``masked=True`` on the layer, the LAST feature of every
  token is its mask (1.0 = token present, 0.0 = padding) and ``d = D − 1`` features remain. Each mask
  must be a prefix ``1…1 0…0`` with at least one 1; the values of padded tokens are ignored (zeros are
  recommended). A sequence of length ``L`` is read at its own step ``L`` (``readout="last"``) or
  averaged over its own ``L`` steps (``"mean"``). Without ``masked`` every sequence has length ``T``.
* :func:`pack_sequences` builds such inputs from a list of ``(L_i, d)`` tensors; :func:`split_sequences`
  is what the kernel rules and the finite twins both use to read them back (so the two readings cannot
  disagree on the convention).

Errors: a sequence of length 0, a sequence longer than ``T``, a mask that is not a prefix or not 0/1
each raise ``ValueError`` naming the offending sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack_sequences(sequences: Sequence[torch.Tensor], max_length: int | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Flatten variable-length sequences ``[(L_i, d), ...]`` to ``(n, T·(d+1))`` with the mask channel last.

    ``max_length`` is ``T`` (default: the longest sequence). Use with ``input_shape=(T, d + 1)`` and a
    layer with ``masked=True``.
    """
    if len(sequences) == 0:
        raise ValueError("pack_sequences needs at least one sequence")
    seqs = [torch.as_tensor(s) for s in sequences]
    for i, s in enumerate(seqs):
        if s.dim() != 2:
            raise ValueError(f"sequence {i} has shape {tuple(s.shape)}; each sequence must be (L, d)")
        if s.shape[0] == 0:
            raise ValueError(f"sequence {i} has length 0; every sequence needs at least one token")
    d = seqs[0].shape[1]
    if any(s.shape[1] != d for s in seqs):
        raise ValueError(f"all sequences need the same token dimension, got {[s.shape[1] for s in seqs]}")
    longest = max(s.shape[0] for s in seqs)
    T = longest if max_length is None else int(max_length)
    for i, s in enumerate(seqs):
        if s.shape[0] > T:
            raise ValueError(f"sequence {i} has length {s.shape[0]} > T = {T} (max_length)")
    dtype = dtype or (seqs[0].dtype if seqs[0].is_floating_point() else torch.get_default_dtype())
    out = torch.zeros(len(seqs), T, d + 1, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0], :d] = s.to(dtype)
        out[i, : s.shape[0], d] = 1.0
    return out.reshape(len(seqs), T * (d + 1))


def mask_from_lengths(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """Prefix masks ``(..., T)`` (float 0/1) from lengths ``(...)``; errors for 0 or ``> T``."""
    lengths = torch.as_tensor(lengths)
    if (lengths < 1).any():
        raise ValueError(f"sequence lengths must be >= 1, got {lengths.min().item()}")
    if (lengths > max_length).any():
        raise ValueError(f"sequence length {lengths.max().item()} exceeds T = {max_length}")
    steps = torch.arange(max_length, device=lengths.device)
    return (steps < lengths.unsqueeze(-1)).to(torch.get_default_dtype())


def split_sequences(x: torch.Tensor, masked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Read structured sequences back: ``x`` ``(..., n, T, D)`` → tokens ``(..., n, T, d)`` and lengths ``(..., n)``.

    Without ``masked`` the tokens are ``x`` itself and every length is ``T``. With ``masked`` the last
    channel is checked (0/1, prefix, at least one token) and removed; padded tokens are zeroed.
    """
    T = x.shape[-2]
    if not masked:
        return x, torch.full(x.shape[:-2], T, dtype=torch.long, device=x.device)
    mask = x[..., -1].detach()
    tokens = x[..., :-1]
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise ValueError(f"mask channel must be 0 or 1; sequence at index {idx[:-1]} has {mask[tuple(idx)].item()} "
                         f"at step {idx[-1]}")
    lengths = mask.sum(-1).round().long()
    if (lengths == 0).any():
        idx = (lengths == 0).nonzero()[0].tolist()
        raise ValueError(f"sequence at index {idx} has length 0 (its mask is all zeros)")
    prefix = torch.arange(T, device=x.device) < lengths.unsqueeze(-1)
    not_prefix = (prefix != (mask == 1)).any(-1)
    if not_prefix.any():
        idx = not_prefix.nonzero()[0].tolist()
        raise ValueError(f"the mask of sequence at index {idx} is {mask[tuple(idx)].tolist()}, not a prefix 1…1 0…0 "
                         "(pad at the end; tokens must be contiguous from step 0)")
    tokens = tokens * prefix.unsqueeze(-1).to(tokens.dtype)
    return tokens, lengths


def readout_weights(lengths: torch.Tensor, T: int, readout: str, dtype: torch.dtype) -> torch.Tensor:
    """Per-step readout weights ``(..., n, T)``: one-hot at step ``L−1`` (``last``), ``1/L`` on ``t < L`` (``mean``)."""
    steps = torch.arange(T, device=lengths.device)
    if readout == "last":
        return (steps == (lengths - 1).unsqueeze(-1)).to(dtype)
    if readout == "mean":
        return (steps < lengths.unsqueeze(-1)).to(dtype) / lengths.unsqueeze(-1).to(dtype)
    raise ValueError(f"unknown readout {readout!r}")

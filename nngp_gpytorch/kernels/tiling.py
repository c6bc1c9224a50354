"""Memory-bounded evaluation of any kernel: the ``n1 × n2`` matrix in tiles of input pairs sized from ``max_memory``.

A kernel's intermediates grow with the number of input pairs times the entries each pair carries at its widest
layer (:func:`entries_per_pair`: 1 for flat networks and for conv stacks evaluated by the fast positional engine,
``P`` for same-position conv states, ``P²`` for full spatial covariances). The tiles are ``b1 × b2`` pairs with
``LIVE_TENSORS · b1 · b2 · entries · itemsize ≤ max_memory``; each entry depends only on its own pair, so the
values are those of one untiled evaluation (quadrature duals with the default *adaptive* degree choose it per
tile from the tile's largest variance: differences at the quadrature's error level; an explicit
``quadrature_degree`` makes them tile-independent). For ``K(X, X)`` only the tiles on and above the diagonal
are computed; the others are their transposes. Peak memory of an evaluation without gradients is then about
``max_memory`` plus the result; under autograd each tile's graph is kept for the backward pass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import torch

from ..algebra import recurrent, recurrent_jit
from ..algebra.conv_stack import (
    ConvStack,
    band_minimum_bytes,
    compiled_loops_apply,
    fuse_conv_stacks,
    stack_pair_bytes,
)
from ..algebra.positional import wants_full_positions
from ..algebra.recurrent_compiled import CODES as COMPILED_ACTIVATIONS
from ..arch import RNN, Layer, RecurrentLayer, Serial

#: float tensors of one tile's size alive at the peak of a layer (K, Θ, correlation, duals, temporaries)
LIVE_TENSORS = 16
#: default tile budget ("auto"): on a CPU 64 MiB, which bounds memory and is 2–4× faster than one big tile
#: (cache-friendly; bench_conv.py); on an accelerator 2 GiB (small tiles are many small kernel launches: on an
#: H100, 64 MiB tiles took 4.2 s for a 256×256 GAP Gram, 1 GiB 0.86 s, 2 GiB 0.18 s; bench_gpu.py conv).
DEFAULT_MAX_MEMORY = "auto"
CPU_MAX_MEMORY = 64 * 2**20
GPU_MAX_MEMORY = 2 * 2**30

Block = tuple[torch.Tensor, torch.Tensor | None]


def validate_memory(max_memory) -> int | str | None:
    """``max_memory`` as stored: a positive number of bytes, ``"auto"`` or None (one tile)."""
    if isinstance(max_memory, str) and max_memory != "auto":
        raise ValueError(f"max_memory must be a number of bytes, 'auto' or None, got {max_memory!r}")
    if max_memory is None or max_memory == "auto":
        return max_memory
    if isinstance(max_memory, bool) or not max_memory > 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
    return int(max_memory)


def budget_bytes(max_memory: int | str, device: torch.device) -> int:
    """Bytes per tile: ``max_memory``, or for ``"auto"`` :data:`CPU_MAX_MEMORY` / :data:`GPU_MAX_MEMORY`."""
    if max_memory != "auto":
        return int(max_memory)
    return CPU_MAX_MEMORY if torch.device(device).type == "cpu" else GPU_MAX_MEMORY


def entries_per_pair(architecture: Layer, input_shape: Sequence[int] | None, compiled_rnn: bool = False) -> int:
    """Covariance entries one input pair carries at the widest layer.

    1 for flat inputs and when every positional layer is inside a conv stack that starts at the input (the
    engine of :mod:`nngp_gpytorch.algebra.conv_stack` bounds its own chunks); else ``P²`` (full spatial
    covariance) or ``P`` (same-position), with ``P`` the larger of the two readings of ``input_shape``
    (channels first ``(C, H, W)`` or last ``(T, d)``), an upper bound either way. An Elman RNN: ``T²`` (its
    torch path's time-pair tables), or 1 when ``compiled_rnn`` says its compiled loops will run (``O(T)`` scratch per
    pair; :func:`rnn_runs_compiled`).
    """
    if not input_shape or len(input_shape) < 2:
        return 1
    rnns = [layer for layer in architecture.walk() if isinstance(layer, RNN)]
    if rnns:
        if compiled_rnn and all(type(layer.activation) in COMPILED_ACTIVATIONS for layer in rnns):
            return 1
        return int(input_shape[0]) ** 2  # the time-pair tables K(t, s) of one pair of sequences
    fused = fuse_conv_stacks(architecture)
    first = fused.layers[0] if type(fused) is Serial else fused
    if isinstance(first, ConvStack):
        return 1
    p = max(math.prod(input_shape[1:]), math.prod(input_shape[:-1]))
    return p * p if wants_full_positions(architecture) else p


def conv_runs_compiled(device: torch.device, needs_grad: bool, dtype: torch.dtype = torch.float64) -> bool:
    """Whether the conv engine's compiled loops (:mod:`nngp_gpytorch.algebra.conv_stack_jit`) can run for inputs on
    ``device`` (:func:`~nngp_gpytorch.algebra.conv_stack.compiled_loops_apply`; activations: checked by the engine)."""
    return compiled_loops_apply(device, dtype, needs_grad)


def rnn_runs_compiled(device: torch.device, needs_grad: bool) -> bool:
    """Whether an Elman RNN's rule will take its compiled loops (:mod:`nngp_gpytorch.algebra.recurrent_compiled`)
    for inputs on ``device``: switched on, numba installed, a CPU, no gradient needed (the activation is checked by
    :func:`entries_per_pair`)."""
    on_cpu = torch.device(device).type == "cpu"
    return bool(recurrent.COMPILED and recurrent_jit.AVAILABLE and on_cpu and not needs_grad)


def engine_minimum_bytes(architecture: Layer, input_shape: Sequence[int] | None, dtype: torch.dtype,
                         with_ntk: bool, compiled: bool | None = None) -> int:
    """Bytes one input pair needs inside the fast positional engine (:func:`~..algebra.conv_stack.stack_pair_bytes`:
    its ``P²`` (GAP) or ``P`` (Flatten) entries at the input positions), 0 when the description does not start with
    an engine run. A kernel hands its ``max_memory`` to the engine as the chunk budget, so a budget below this is
    refused like one below a tile's minimum. Where the compiled loops take the full layout in bands of rows (a CPU
    without autograd, ``compiled`` (:func:`conv_runs_compiled`; None: taken as grad mode off); 2-D runs of ReLU/erf),
    the minimum is one band of one row with its halos (:func:`~..algebra.conv_stack.band_minimum_bytes`); the engine
    itself refuses a budget below one pair when its torch path runs instead."""
    if not input_shape or len(input_shape) < 2:
        return 0
    fused = fuse_conv_stacks(architecture)
    first = fused.layers[0] if type(fused) is Serial else fused
    if not isinstance(first, ConvStack):
        return 0
    if compiled is None:
        compiled = not torch.is_grad_enabled()
    banded = band_minimum_bytes(first, tuple(input_shape), dtype) if compiled else None
    return stack_pair_bytes(first, tuple(input_shape), with_ntk, dtype) if banded is None else banded


def self_bounded(architecture: Layer) -> bool:
    """Descriptions whose rules chunk their own work (the gated cells, GRU and LSTM, through their chunking
    driver): evaluated in one call. The Elman RNN forms ``(n1, n2, T, T)`` tables and is tiled like the rest."""
    return any(isinstance(layer, RecurrentLayer) and not isinstance(layer, RNN) for layer in architecture.walk())


def tile_sizes(n1: int, n2: int, budget: int, entries: int, dtype: torch.dtype,
               engine_bytes: int = 0) -> tuple[int, int]:
    """``(b1, b2)``: rows and columns per tile within ``budget`` bytes. A budget below one pair's
    ``LIVE_TENSORS · entries · itemsize`` bytes, or below ``engine_bytes`` (:func:`engine_minimum_bytes`), is
    refused, naming that minimum."""
    itemsize = torch.finfo(dtype).bits // 8
    per_pair = LIVE_TENSORS * itemsize * entries
    if budget < max(per_pair, engine_bytes):
        what = (f"one input pair: {LIVE_TENSORS} tensors of {entries} covariance entries in {dtype}"
                if per_pair >= engine_bytes else f"the conv engine's least unit of work in {dtype}: one input pair, or "
                f"one band of rows of it where its compiled loops go in bands")
        minimum = max(per_pair, engine_bytes)
        raise ValueError(f"max_memory={budget} bytes is below one tile's minimum of {minimum} bytes ({what}); raise "
                         f"max_memory to at least {minimum}")
    pairs = int(budget // per_pair)
    b1 = max(1, min(n1, math.isqrt(pairs)))
    b2 = max(1, min(n2, pairs // b1))
    return b1, b2


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: ``MemAvailable`` of ``/proc/meminfo`` on a CPU (the free
    physical pages where that file does not exist), the free memory of an accelerator; None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class GramTooLargeError(MemoryError):
    """The requested kernel matrix cannot be held in memory at all, whatever the tiles: compute it out of core."""


def check_result_fits(shape: Sequence[int], dtype: torch.dtype, with_ntk: bool, device: torch.device) -> None:
    """Refuse, before any work, a result that cannot fit: the ``shape`` block (``K``, and ``Θ`` with the NTK) larger
    than the memory ``device`` has available (:func:`available_memory`). Tiles bound the work, not the result; an
    out-of-core Gram is :mod:`nngp_gpytorch.scale`'s job (Dask tiles in a Zarr store, streamed CG)."""
    need = math.prod(shape) * (torch.finfo(dtype).bits // 8) * (2 if with_ntk else 1)
    have = available_memory(device)
    if have is not None and need > have:
        raise GramTooLargeError(
            f"the kernel matrix of shape {tuple(shape)} ({'K and Θ, ' if with_ntk else ''}{dtype}) needs "
            f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB available on {device}: compute it out of "
            f"core with nngp_gpytorch.scale (compute_gram / fit_predict: tiles on Dask, stored in Zarr, solved by "
            f"streamed CG; docs/scale.md)")


def evaluate_in_tiles(run: Callable[[torch.Tensor, torch.Tensor, bool], Block], x1: torch.Tensor, x2: torch.Tensor,
                      diag: bool, with_ntk: bool, b1: int, b2: int) -> Block:
    """``run(a, b, diag)`` over tiles of ``b1`` rows × ``b2`` columns (``diag``: chunks of ``b1·b2`` pairs),
    concatenated. ``x1 is x2``: tiles above the diagonal are computed, those below are their transposes (diagonal
    tiles get the same tensor on both sides, so their own symmetric handling applies)."""
    n1, n2 = x1.shape[-2], x2.shape[-2]
    if diag:
        b = max(1, b1 * b2)
        if b >= n1:
            return run(x1, x2, True)
        parts = [run(x1[..., i:i + b, :], x2[..., i:i + b, :], True) for i in range(0, n1, b)]
        return torch.cat([p[0] for p in parts], -1), (torch.cat([p[1] for p in parts], -1) if with_ntk else None)
    if b1 >= n1 and b2 >= n2:
        return run(x1, x2, False)
    symmetric = x1 is x2
    if symmetric:
        b1 = b2 = max(1, math.isqrt(b1 * b2))
    rows = [(i, min(n1, i + b1)) for i in range(0, n1, b1)]
    cols = rows if symmetric else [(j, min(n2, j + b2)) for j in range(0, n2, b2)]
    # Each tile is written into one preallocated result and dropped: tiles kept as thousands of small tensors
    # between the rules' large temporaries fragment glibc's heap, so RSS grew with N² although live memory did not
    # (Elman RNN, T = 40, N = 400: 918 MiB instead of ~320).
    out: list[torch.Tensor | None] = [None, None]

    def put(which: int, block: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
        if out[which] is None:
            out[which] = block.new_empty(*block.shape[:-2], n1, n2)
        out[which][..., i0:i1, j0:j1] = block

    for a, (i0, i1) in enumerate(rows):
        for c, (j0, j1) in enumerate(cols):
            if symmetric and c < a:
                continue
            xa = x1[..., i0:i1, :]
            xb = xa if symmetric and a == c else x2[..., j0:j1, :]
            k, t = run(xa, xb, False)
            put(0, k, i0, i1, j0, j1)
            if with_ntk:
                put(1, t, i0, i1, j0, j1)
            if symmetric and c > a:  # the tile below the diagonal is this one's transpose
                put(0, k.mT, j0, j1, i0, i1)
                if with_ntk:
                    put(1, t.mT, j0, j1, i0, i1)
    return out[0], (out[1] if with_ntk else None)


__all__ = ["CPU_MAX_MEMORY", "DEFAULT_MAX_MEMORY", "GPU_MAX_MEMORY", "LIVE_TENSORS", "GramTooLargeError",
           "available_memory", "budget_bytes", "check_result_fits", "engine_minimum_bytes", "entries_per_pair",
           "conv_runs_compiled", "evaluate_in_tiles", "rnn_runs_compiled",
           "self_bounded", "tile_sizes", "validate_memory"]

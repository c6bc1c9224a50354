"""A Gram estimated from the architecture's own random finite networks, where the analytic kernel is out of reach.

The NNGP is the limit of the finite networks' output covariance (Neal 1995; Lee et al. 2018; Yang 2019):
``K(x, x') = lim_{n→∞} E[C_m(x, x')]``, with ``C_m`` the covariance of network ``m`` of hidden width ``n``
(:func:`~verification.ensembles.sample_ensemble`; the readout is averaged exactly, ``C_m = σv²·Φ_mΦ_mᵀ/n + σvb²``
from the features ``Φ_m`` that enter it, a recurrent layer's built-in readout included). The average of ``M`` i.i.d.
networks,

    ``K̂ = (1/M)·Σ_m C_m``,    standard error ``se(K̂) = sd_m(C_m)/√M`` entrywise,

estimates ``K_width = E[C_m]``, which differs from ``K`` by ``O(1/n)`` (Yaida 2020); for one hidden layer it is
``K`` exactly. ``K̂`` is positive semi-definite (an average of feature Grams plus a constant), so a GP on it never
needs projection. This is how neural-tangents estimates kernels without closed forms (Novak et al. 2020,
``monte_carlo_kernel_fn``).

Why it exists: the gated recurrent kernels integrate over the gates of *both* sequences at every pair of steps,
a quasi-Monte Carlo integral of dimension ``2T`` per pair of inputs (``nngp_gpytorch.algebra.gru``). One finite
network samples the gates of *all* ``k`` inputs jointly, so ``M`` networks cost ``O(M·k·T·n²)`` instead of
``O(k²·T³·points)``: for mnist1d's 40-step sequences ~1,000× less at equal error (docs/experiments.md).

Long runs survive interruption: with ``checkpoint`` the running sums are written (atomically) at most every
``checkpoint_seconds`` and at the end, keyed by everything that determines the networks; a rerun with the same
arguments continues where the last write left off and returns exactly what an uninterrupted run returns; a rerun
with more networks adds to it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nngp_gpytorch.arch import Layer
from nngp_gpytorch.hashing import hash_tensor

from .ensembles import sample_ensemble


@dataclass
class MonteCarloGram:
    """A Monte Carlo Gram.

    Attributes:
        mean: ``(k, k)`` float64, ``K̂ = (1/M)·Σ_m C_m``.
        standard_error: ``(k, k)`` float64, ``sd_m(C_m)/√M`` (sample standard deviation over networks).
        networks, width: ``M`` and the hidden width ``n``.
        seconds: wall time spent sampling, over all runs that contributed (resumed runs included).
    """

    mean: torch.Tensor
    standard_error: torch.Tensor
    networks: int
    width: int
    seconds: float


def _chunk_seed(seed: int, chunk: int) -> int:
    """Independent generator seed of chunk ``chunk`` (numpy's SeedSequence: no two chunks share a stream)."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _key(architecture: Layer, inputs: torch.Tensor, **settings) -> str:
    return repr((repr(architecture), hash_tensor(inputs), sorted(settings.items())))


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted write leaves the previous checkpoint intact


def monte_carlo_gram(
    architecture: Layer,
    inputs: torch.Tensor,
    networks: int,
    width: int,
    *,
    seed: int = 0,
    weight_var: float = 1.0,
    bias_var: float = 0.0,
    input_shape: tuple[int, ...] | None = None,
    networks_per_chunk: int = 2,
    dtype: torch.dtype = torch.float32,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
) -> MonteCarloGram:
    """Estimate the NNGP Gram of ``inputs`` by ``networks`` random finite networks of ``architecture``.

    Args:
        inputs: ``(k, d)``, e.g. training and test points stacked (one call: networks are drawn per call, so
            ``K(X*, X)`` must come from the same call as ``K(X, X)``); on a GPU the networks and sums run there.
        networks: ``M`` (≥ 2, a multiple of ``networks_per_chunk``); width: hidden width ``n``.
        seed: chunk ``c`` draws its networks from a generator seeded by ``(seed, c)``.
        weight_var, bias_var, input_shape, dtype: as for :func:`~verification.ensembles.sample_ensemble`.
        networks_per_chunk: networks per :func:`sample_ensemble` call. Memory is ``O(k²)``: the two running sums
            and the chunk's covariances with their reordered copy in :func:`sample_ensemble`, about
            ``(2 + 2·networks_per_chunk)·k²·8`` bytes plus the networks' activations (11.5 GB peak RSS measured at
            ``k = 11,000`` before the sums were updated in place and the copies cut from three to one).
        checkpoint: file for the running sums (``torch.save``); resumed when its key matches, refused otherwise.
        checkpoint_seconds: least time between two checkpoint writes (longer where a write takes over 1/20 of it).
        progress: a tqdm bar over networks.

    Returns:
        :class:`MonteCarloGram` with ``(k, k)`` ``mean`` and ``standard_error``.
    """
    if networks_per_chunk < 2:
        raise ValueError(f"networks_per_chunk must be >= 2 (a per-chunk sample), got {networks_per_chunk}")
    if networks < 2 or networks % networks_per_chunk:
        raise ValueError(f"networks ({networks}) must be >= 2 and a multiple of networks_per_chunk "
                         f"({networks_per_chunk})")
    key = _key(architecture, inputs, width=width, seed=seed, weight_var=float(weight_var), bias_var=float(bias_var),
               input_shape=input_shape, per_chunk=networks_per_chunk, dtype=str(dtype), readout="exact")
    path = Path(checkpoint) if checkpoint is not None else None
    k = inputs.shape[0]
    state = dict(key=key, chunks=0, sum=torch.zeros(k, k, dtype=torch.float64, device=inputs.device),
                 sumsq=torch.zeros(k, k, dtype=torch.float64, device=inputs.device), seconds=0.0)
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True, map_location=inputs.device)
        if saved["key"] != key:
            raise ValueError(f"checkpoint {path} belongs to another architecture, input set or setting; "
                             "remove it or choose another path")
        state = saved
    chunks = networks // networks_per_chunk
    if state["chunks"] > chunks:
        raise ValueError(f"checkpoint {path} already holds {state['chunks'] * networks_per_chunk} networks, more "
                         f"than the {networks} asked for")
    bar = tqdm(total=networks, initial=state["chunks"] * networks_per_chunk, unit="net", disable=not progress,
               desc="Monte Carlo Gram")
    last_save = time.monotonic()
    interval = checkpoint_seconds
    for c in range(state["chunks"], chunks):
        sample = sample_ensemble(architecture, inputs, networks_per_chunk, width, seed=_chunk_seed(seed, c),
                                 weight_var=weight_var, bias_var=bias_var, dtype=dtype, input_shape=input_shape,
                                 exact_builtin_readout=True)
        for cov in sample.covariances:  # in place, network by network: no k × k temporaries
            state["sum"].add_(cov)
            state["sumsq"].addcmul_(cov, cov)
        state["chunks"] = c + 1
        state["seconds"] += sample.seconds
        bar.update(networks_per_chunk)
        if path is not None and (time.monotonic() - last_save >= interval or c + 1 == chunks):
            began = time.monotonic()
            _save(path, state)
            last_save = time.monotonic()
            # large Grams (2·k² float64 per write) are written at most 1/20 of the time
            interval = max(checkpoint_seconds, 20 * (last_save - began))
    bar.close()
    mean = state["sum"] / networks
    variance = (state["sumsq"] - networks * mean * mean).clamp_min(0.0) / (networks - 1)
    return MonteCarloGram(mean, (variance / networks).sqrt(), networks, width, float(state["seconds"]))


def relative_error(estimate: MonteCarloGram) -> float:
    """Largest standard error relative to the mean prior variance ``mean(diag K̂)``: the estimate's resolution."""
    return float(estimate.standard_error.max() / estimate.mean.diagonal().mean())


__all__ = ["MonteCarloGram", "monte_carlo_gram", "relative_error"]

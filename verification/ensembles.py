"""Ensembles of random finite networks read from an architecture description.

:func:`sample_ensemble` draws ``networks`` independent finite networks of a given width (vectorized: a
leading dimension of M networks, batched matmuls), runs them on ``k`` inputs, and returns one
covariance estimate per network, ``C_m`` of shape ``(k, k)`` in float64.

With ``analytic_readout=True`` (default) the final :class:`~nngp_gpytorch.arch.Dense` readout is
averaged exactly (Rao–Blackwell): ``C_m = E[f fᵀ | network m] = σw²·Φ_m Φ_mᵀ/n + σb²`` from the
penultimate features ``Φ_m``. Otherwise ``readout_units`` output units are sampled and
``C_m = (1/n_out)·Σ_units f fᵀ``. Either way ``E[C_m] = K_width`` (the finite-width kernel), and the
``C_m`` are i.i.d. across networks.

Memory: networks are processed in chunks of ``chunk_size`` (by default chosen so that the largest
tensor of a chunk — a weight matrix of ``fan_in × width`` float32 entries per network for the literal
sampler, ``k × width`` features for the Gram sampler — stays within ``max_bytes``, 48 MiB by default:
48 networks of width 4096 on 8 inputs).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from nngp_gpytorch.algebra import Hyperparameters
from nngp_gpytorch.arch import Dense, Layer, Serial
from nngp_gpytorch.arch.base import capabilities
from nngp_gpytorch.arch.recurrent import RecurrentLayer

from .twins import TwinContext, run_twin

#: Memory bound per chunk. Small enough that chunk tensors stay below glibc's mmap threshold (32 MiB) and
#: are reused from the heap: larger chunks spent ~2/3 of their time in page faults (measured).
DEFAULT_MAX_BYTES = 48 * 2**20


@dataclass
class EnsembleSample:
    """Per-network covariance estimates of one ensemble.

    Attributes:
        covariances: ``(M, k, k)`` float64, i.i.d. across networks, ``E = K_width``.
        networks, width: the ensemble's size and hidden width.
        sampler: ``"literal"`` or ``"gram"``.
        seconds: wall time spent sampling.
    """

    covariances: torch.Tensor
    networks: int
    width: int
    sampler: str
    seconds: float

    def mean(self) -> torch.Tensor:
        return self.covariances.mean(0)


def split_readout(architecture: Layer) -> tuple[Layer | None, Dense | None]:
    """``(body, readout)`` when the network ends in a plain :class:`Dense`, else ``(architecture, None)``."""
    if isinstance(architecture, Dense):
        return None, architecture
    if isinstance(architecture, Serial) and isinstance(architecture.layers[-1], Dense):
        body = architecture.layers[:-1]
        return (Serial(*body) if body else None), architecture.layers[-1]
    return architecture, None


def with_readout_units(architecture: Layer, units: int) -> Layer:
    """The architecture with its final open-width ``Dense`` set to ``units`` output units."""
    if units < 1:
        raise ValueError(f"readout_units must be >= 1, got {units}")
    if isinstance(architecture, Dense) and architecture.width is None:
        return dataclasses.replace(architecture, width=units)
    if isinstance(architecture, Serial) and isinstance(architecture.layers[-1], Dense) \
            and architecture.layers[-1].width is None:
        return Serial(*architecture.layers[:-1], dataclasses.replace(architecture.layers[-1], width=units))
    return architecture


def _builtin_readout_layer(body: Layer | None) -> Layer | None:
    """The final layer of ``body`` when it holds its own readout (a recurrent layer), else ``None``."""
    last = body.layers[-1] if isinstance(body, Serial) and body.layers else body
    return last if isinstance(last, RecurrentLayer) else None


def as_hyperparameters(weight_var: float | Hyperparameters = 1.0, bias_var: float = 0.0) -> Hyperparameters:
    if isinstance(weight_var, Hyperparameters):
        return weight_var
    return Hyperparameters.constant(weight_var, bias_var)


def _chunk_size(networks: int, k: int, d: int, width: int, sampler: str, max_bytes: int) -> int:
    per_network = 4 * (k * width * 8 + (0 if sampler == "gram" else max(d, width) * width))
    return int(max(1, min(networks, max_bytes // max(per_network, 1))))


def sample_ensemble(
    architecture: Layer,
    inputs: torch.Tensor,
    networks: int,
    width: int,
    seed: int = 0,
    weight_var: float | Hyperparameters = 1.0,
    bias_var: float = 0.0,
    sampler: str = "gram",
    analytic_readout: bool = True,
    readout_units: int = 1,
    chunk_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    dtype: torch.dtype = torch.float32,
    progress=None,
    input_shape: tuple[int, ...] | None = None,
    exact_builtin_readout: bool = False,
) -> EnsembleSample:
    """Sample ``networks`` finite networks of ``architecture`` and their per-network covariances.

    Args:
        inputs: ``(k, d)`` input points (any float dtype; cast to ``dtype`` for sampling).
        weight_var, bias_var: variances (or a :class:`Hyperparameters`, e.g. per layer) — the same
            numbers the analytic kernel is evaluated with.
        sampler: ``"gram"`` (exact Gram-conditional draws for dense layers, ~40× faster) or
            ``"literal"`` (explicit weight matrices: the reference).
        analytic_readout: average a final ``Dense`` readout exactly (Rao–Blackwell); otherwise sample
            ``readout_units`` output units per network.
        progress: optional callable ``progress(done_networks)`` (e.g. a tqdm ``update``).
        input_shape: per-example shape of structured inputs, handed to the twins as ``ctx.input_shape``
            (inputs stay flat ``(M, k, d)``).
        exact_builtin_readout: where the network ends in a layer that holds its own readout (RNN, GRU, LSTM),
            average that readout exactly too (with ``analytic_readout``), instead of sampling its units: lower
            variance, and no ``k × k`` eigendecomposition per network. Off by default, so that the recurrent
            verification's calibrated ensembles stay as they were.

    Returns:
        :class:`EnsembleSample` with ``covariances`` ``(networks, k, k)`` float64.
    """
    architecture.validate(input_shape)
    if inputs.dim() != 2:
        raise ValueError(f"inputs must be (k, d), got shape {tuple(inputs.shape)}")
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or Inf")
    if networks < 2 or width < 1:
        raise ValueError(f"need networks >= 2 and width >= 1, got networks={networks}, width={width}")
    hyper = as_hyperparameters(weight_var, bias_var)
    if analytic_readout:
        body, readout = split_readout(architecture)
    else:
        body, readout = with_readout_units(architecture, readout_units), None
    # Duplicate inputs are run once and their covariances copied, so that duplicates agree exactly (as
    # in the analytic kernel) whatever the sampler's rounding. Not where the inputs are a set whose order and
    # multiplicity matter: the nodes of a graph (GraphConv: row i is node i, and torch.unique sorts rows) or a
    # batch (BatchNorm statistics count every member).
    caps = capabilities(architecture)
    if caps.transductive or caps.set_semantics:
        unique, inverse = inputs, torch.arange(inputs.shape[0], device=inputs.device)
    else:
        unique, inverse = torch.unique(inputs, dim=0, return_inverse=True)
    k, d = unique.shape
    x = unique.to(dtype)
    chunk = chunk_size or _chunk_size(networks, k, d, width, sampler, max_bytes)
    builtin = _builtin_readout_layer(body) if (analytic_readout and readout is None and exact_builtin_readout) \
        else None
    generator = torch.Generator(device=inputs.device).manual_seed(int(seed))
    start = time.perf_counter()
    parts = []
    for first in range(0, networks, chunk):
        m = min(chunk, networks - first)
        ctx = TwinContext(generator=generator, width=width, hyper=hyper, sampler=sampler, dtype=dtype,
                          input_shape=tuple(input_shape) if input_shape is not None else None,
                          exact_readout_of=builtin)
        h = x.expand(m, k, d)
        if body is not None:
            with torch.no_grad():
                h = run_twin(body, h, ctx)
        hd = h.to(torch.float64)
        if readout is not None or ctx.readout_variances is not None:
            w, b = (ctx.variances(readout, readout.weight_var, readout.bias_var) if readout is not None
                    else ctx.readout_variances)
            cov = w * hd @ hd.transpose(-1, -2) / hd.shape[-1] + b
        else:
            cov = hd @ hd.transpose(-1, -2) / hd.shape[-1]  # (1/n_out)·Σ_units f fᵀ
        parts.append(cov)
        if progress is not None:
            progress(m)
    # one gather for rows and columns (two chained indexings copied the (M, k, k) block twice); no cat of one part
    stacked = parts[0] if len(parts) == 1 else torch.cat(parts)
    covariances = stacked[:, inverse[:, None], inverse]
    if not torch.isfinite(covariances).all():
        raise FloatingPointError(f"non-finite network outputs for {architecture.describe()}")
    return EnsembleSample(covariances, networks, width, sampler, time.perf_counter() - start)


def default_inputs(k: int = 8, d: int = 4, seed: int = 1234, dtype=torch.float64) -> torch.Tensor:
    """``k`` inputs on the sphere of radius sqrt(d) (so ``x·x/d = 1``), two of them nearly parallel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, d, generator=g, dtype=dtype)
    if k >= 2:
        x[1] = x[0] + 0.05 * torch.randn(d, generator=g, dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True) * math.sqrt(d)

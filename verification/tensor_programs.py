"""Finite twin of a tensor program: the program executed literally with random matrices at width ``n``.

Independent of the master-theorem kernel: every instruction is run as written on actual vectors,
vectorized over ``M`` networks (leading axis) and ``k`` inputs:

* hidden matrices ``W`` ``(M, n, n)`` with entries ``N(0, σ²/n)``, drawn once per network and reused by
  every ``MatMul`` that names them (weight sharing, recurrence are literal; a matrix used once may be
  replaced by its exact Gram-conditional draw, below);
* input matrices ``(M, d, n)`` with ``N(0, σ²/d)``, biases ``(M, 1, n)`` with ``N(0, σ²)``;
* ``Nonlin`` applies the user's callable to the argument vectors; NETSOR+ moments are actual averages
  over the ``n`` coordinates.

The readout is averaged analytically (Rao–Blackwell, reference/verification.md): for readout vector
``H_m`` ``(k, n)`` of network ``m``, ``C_m = E[f fᵀ | network m] = σ_v²·H_m H_mᵀ/n + σ_b²``, i.i.d.
across networks with ``E[C_m] = K_width`` — the input of :func:`verification.statistics.mean_test`.

Cost per network: one ``n²`` draw per reused hidden matrix (RNG-bound: ~200 M normals/s in float32) plus
``k·n²`` multiply-adds per ``MatMul``; matrices used once, and input matrices, are drawn exactly and
cheaply from their Gram-conditional distribution (``sampler="gram"``, cost linear in ``n``).
Networks are processed in chunks bounded by ``max_bytes``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import torch

from nngp_gpytorch.tensor_programs import Program, ProgramError

from .ensembles import DEFAULT_MAX_BYTES, EnsembleSample


def program_variances(program: Program, variances: Mapping[str, float] | None = None) -> dict[str, float]:
    """The program's variances (its ``init`` values), overridden by ``variances`` (names checked)."""
    values = dict(program.parameters)
    for name, value in (variances or {}).items():
        if name not in values:
            raise ValueError(f"unknown variance '{name}'; the program's parameters are {list(values)}")
        values[name] = float(value)
    return values


def _gram_root(gram: torch.Tensor) -> torch.Tensor:
    """``R`` with ``R Rᵀ = gram`` (eigendecomposition in float64: singular Grams are fine)."""
    evals, evecs = torch.linalg.eigh(gram.to(torch.float64))
    return evecs * evals.clamp_min(0.0).sqrt().unsqueeze(-2)


def execute_instructions(program: Program, leaf: Callable, shape: tuple[int, int, int]
                         ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Run ``program``'s instructions in order on actual vectors of ``shape`` ``(M, k, n)``.

    ``leaf(v, values)`` gives the value of each bias, input projection and ``MatMul`` (how the random matrices
    are drawn or held is the caller's business); ``LinComb``, ``Nonlin`` and NETSOR+ scalars (moments are
    actual averages over the ``n`` coordinates, computed lazily when a ``LinComb`` first needs them) are
    computed here. Returns ``(values, h)``: every variable's value by index, and the readout vector
    ``h = Σ_t c_t h_t`` ``(M, k, n)``.
    """
    values: dict[int, torch.Tensor] = {}
    scalars: dict[int, torch.Tensor] = {}

    def scalar(s):
        if s.index not in scalars:
            if s.op == "moment":
                scalars[s.index] = s.fn(*(values[a.index] for a in s.args)).mean(-1, keepdim=True)
            else:
                scalars[s.index] = s.fn(*(scalar(a) for a in s.args))
        return scalars[s.index]

    for v in program.vars:
        if v.op in ("bias", "input", "matmul"):
            out = leaf(v, values)
        elif v.op == "lincomb":
            out = 0
            for coef, term in v.terms:
                out = out + (coef if isinstance(coef, float) else scalar(coef)) * values[term.index]
        else:  # nonlin
            out = v.fn(*(values[a.index] for a in v.args))
            if not isinstance(out, torch.Tensor) or out.shape != shape:
                raise ProgramError(f"{v.instruction}: fn returned shape "
                                   f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}, "
                                   f"expected {shape}")
        values[v.index] = out
    h = sum(c * values[v.index] for c, v in program.output.terms)
    return values, h


def run_program(program: Program, inputs: torch.Tensor, width: int, variances: Mapping[str, float],
                networks: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                sampler: str = "gram") -> torch.Tensor:
    """Execute ``program`` on ``inputs`` ``(k, D)`` for ``networks`` random networks; returns the readout
    vectors ``(M, k, n)`` (``Σ_t c_t h_t`` of the readout terms).

    ``sampler="literal"`` draws every matrix. ``sampler="gram"`` (default) draws exactly the same
    distribution faster where a matrix's inputs are known when it is used: an input matrix ``U`` is
    applied only to input tokens, so all its products ``U x_t`` are drawn jointly as ``n`` i.i.d. rows
    ``N(0, σ²·X Xᵀ/d)`` over every (token, point); a hidden matrix used by a single ``MatMul`` gives rows
    ``N(0, σ²·h hᵀ/n)`` given ``h`` (reference/verification.md, Gram-conditional sampling). Hidden matrices
    used more than once (weight sharing, recurrence) are always drawn literally.
    """
    if sampler not in ("gram", "literal"):
        raise ValueError(f"sampler must be 'gram' or 'literal', got {sampler!r}")
    m, (k, _) = networks, inputs.shape
    x = inputs.to(dtype)
    mats: dict[int, torch.Tensor] = {}
    uses: dict[int, list] = {}
    for v in program.vars:
        if v.op in ("input", "matmul"):
            uses.setdefault(id(v.matrix), []).append(v)
    joint: dict[int, torch.Tensor] = {}  # gram sampler: input projections, by var index

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype, device=inputs.device)

    def matrix(mat):
        if id(mat) not in mats:
            var = variances[mat.var]
            if mat.kind == "hidden":
                mats[id(mat)] = randn(m, width, width) * math.sqrt(var / width)
            else:
                mats[id(mat)] = randn(m, mat.fan_in, width) * math.sqrt(var / mat.fan_in)
        return mats[id(mat)]

    def input_projection(v):
        if sampler == "literal":
            tok = v.source
            return x[:, tok.offset:tok.offset + tok.dim] @ matrix(v.matrix)  # (M, k, n)
        if v.index not in joint:
            group = uses[id(v.matrix)]
            rows = torch.cat([inputs[:, u.source.offset:u.source.offset + u.source.dim] for u in group])
            gram = variances[v.matrix.var] * rows @ rows.T / v.matrix.fan_in  # (G·k, G·k)
            out = _gram_root(gram).to(dtype) @ randn(m, rows.shape[0], width)
            for j, u in enumerate(group):
                joint[u.index] = out[:, j * k:(j + 1) * k]
        return joint.pop(v.index)

    def hidden_product(v, values):
        h = values[v.source.index]
        if sampler == "literal" or len(uses[id(v.matrix)]) > 1:
            return h @ matrix(v.matrix).transpose(-1, -2)  # rows: W h
        hd = h.to(torch.float64)
        gram = variances[v.matrix.var] * hd @ hd.transpose(-1, -2) / width
        return _gram_root(gram).to(dtype) @ randn(m, k, width)

    def leaf(v, values):
        if v.op == "bias":
            return randn(m, 1, width).expand(m, k, width) * math.sqrt(variances[v.var])
        if v.op == "input":
            return input_projection(v)
        return hidden_product(v, values)

    return execute_instructions(program, leaf, (m, k, width))[1]


def sample_program(
    program: Program,
    inputs: torch.Tensor,
    networks: int,
    width: int,
    seed: int = 0,
    variances: Mapping[str, float] | None = None,
    chunk_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    dtype: torch.dtype = torch.float32,
    sampler: str = "gram",
    progress=None,
) -> EnsembleSample:
    """Per-network covariance estimates ``C_m`` ``(M, k, k)`` float64 of ``program``'s readout.

    Args:
        inputs: ``(k, D)`` with ``D = program.input_dim``.
        variances: by name; default the program's ``init`` values (e.g. ``kernel.variance_dict()``).
        sampler: ``"gram"`` (default; exact conditional draws where a matrix's inputs are known, see
            :func:`run_program`) or ``"literal"`` (every matrix drawn: the reference).
        progress: optional callable ``progress(done_networks)``.
    """
    program.check_complete()
    if inputs.dim() != 2 or inputs.shape[-1] != program.input_dim:
        raise ValueError(f"{program.name}: inputs must be (k, {program.input_dim}), got {tuple(inputs.shape)}")
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or Inf")
    if networks < 2 or width < 1:
        raise ValueError(f"need networks >= 2 and width >= 1, got networks={networks}, width={width}")
    values = program_variances(program, variances)
    k = inputs.shape[0]
    counts = {}
    for v in program.vars:
        if v.op == "matmul":
            counts[id(v.matrix)] = counts.get(id(v.matrix), 0) + 1
    hidden = sum(1 for mat in program.matrices if mat.kind == "hidden" and (sampler == "literal" or
                                                                         counts.get(id(mat), 0) > 1))
    per_network = 4 * (hidden * width * width + (len(program.vars) + 4) * k * width
                       + sum(mat.fan_in or 0 for mat in program.matrices) * width)
    chunk = chunk_size or int(max(1, min(networks, max_bytes // max(per_network, 1))))
    generator = torch.Generator(device=inputs.device).manual_seed(int(seed))
    start = time.perf_counter()
    parts = []
    r = program.output
    for first in range(0, networks, chunk):
        m = min(chunk, networks - first)
        with torch.no_grad():
            h = run_program(program, inputs, width, values, m, generator, dtype, sampler)
        hd = h.to(torch.float64)
        cov = values[r.var] * hd @ hd.transpose(-1, -2) / width
        if r.bias is not None:
            cov = cov + values[r.bias]
        parts.append(cov)
        if progress is not None:
            progress(m)
    covariances = torch.cat(parts)
    if not torch.isfinite(covariances).all():
        raise FloatingPointError(f"non-finite network outputs for {program.name}")
    return EnsembleSample(covariances, networks, width, f"{sampler}-program", time.perf_counter() - start)


__all__ = ["program_variances", "run_program", "sample_program"]

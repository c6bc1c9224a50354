"""Empirical NTK of a tensor program's finite twin: ``J(x)·J(x')ᵀ`` of the literal random network.

The program is executed as written (as :func:`verification.tensor_programs.run_program` with
``sampler="literal"``: every matrix drawn once per network and reused by every ``MatMul`` naming it), in the
NTK parameterization of :mod:`nngp_gpytorch.tensor_programs.ntk`: ``W = σ_W·ω/√fan_in``, ``b = σ_b·β``,
``f = σ_v·v·h/√n + σ_ob·β_o`` with ``ω, β, v, β_o ~ N(0, 1)``; ``J`` is the gradient of ``f`` with respect
to all of them. NETSOR+ moments are actual averages over the ``n`` coordinates and autograd goes through
them (so the twin includes the gradient through attention weights / layer-norm scales that the limit drops).

**δ-trick** (as :mod:`verification.ntk`): with ``δᵢ = ∂f/∂gᵢ`` for every ``MatMul``/input projection
``gᵢ = W sᵢ`` and every bias, from ONE backward pass of ``Σ_p f(x_p)`` (inputs do not interact),

    Θ̂ = σ_v²·h hᵀ/n + σ_ob²                                          (readout, exact)
       + Σ_W σ_W²/fan_in · Σ_{uses i,j} (δᵢ δⱼᵀ) ∘ (sᵢ sⱼᵀ)              (``sᵢ`` the vectors ``W`` multiplied)
       + Σ_b σ_b² · δ_b δ_bᵀ                                          (``δ_b`` sums the bias's uses)

The body term depends on the readout vector ``v``; ``readout_units`` independent ``v`` are averaged per
network (each an unbiased draw). The per-network ``Θ̂_m`` are i.i.d. with ``E[Θ̂_m] → Θ`` (fluctuation
``O(1/√width)``, bias ``O(1/width)``), the input of :func:`verification.statistics.mean_test`.
:func:`brute_force_program_ntk` forms ``J`` explicitly (one autograd pass per output) for a check at tiny width.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch

from nngp_gpytorch.tensor_programs import Program

from .ensembles import DEFAULT_MAX_BYTES
from .ntk import NTKSample
from .tensor_programs import execute_instructions, program_variances


def draw_parameters(program: Program, width: int, networks: int, generator: torch.Generator,
                    dtype: torch.dtype = torch.float32, readout_units: int = 1,
                    device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Standard-normal parameters of ``networks`` networks: ``"W:<name>"`` ``(M, n, n)`` (hidden) or
    ``(M, d, n)`` (input), ``"b:<name>"`` ``(M, 1, n)``, ``"v"`` ``(M, units, n)``, ``"vb"`` ``(M, 1, units)``."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype, device=device)

    params = {}
    for mat in program.matrices:
        if mat.kind == "hidden":
            params[f"W:{mat.name}"] = randn(networks, width, width)
        elif mat.fan_in is not None:  # an input matrix never applied has no fan-in and no effect
            params[f"W:{mat.name}"] = randn(networks, mat.fan_in, width)
    for v in program.vars:
        if v.op == "bias":
            params[f"b:{v.name}"] = randn(networks, 1, width)
    params["v"] = randn(networks, readout_units, width)
    params["vb"] = randn(networks, 1, readout_units)
    return params


def execute(program: Program, inputs: torch.Tensor, params: Mapping[str, torch.Tensor],
            variances: Mapping[str, float]) -> tuple[dict[int, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Run ``program`` literally on ``inputs`` ``(k, D)`` with the given standard-normal parameters.

    Returns ``(values, h, f)``: every variable's value ``(M, k, n)`` by index, the readout vector
    ``h = Σ_t c_t h_t`` ``(M, k, n)`` and the outputs ``f = σ_v·h vᵀ/√n + σ_ob·β_o`` ``(M, k, units)``.
    """
    x = inputs.to(params["v"].dtype)
    m, width = params["v"].shape[0], params["v"].shape[-1]
    k = x.shape[0]

    def leaf(v, values):
        if v.op == "bias":
            return params[f"b:{v.name}"].expand(m, k, width) * math.sqrt(variances[v.var])
        if v.op == "input":
            tok, mat = v.source, v.matrix
            return x[:, tok.offset:tok.offset + tok.dim] @ params[f"W:{mat.name}"] * math.sqrt(
                variances[mat.var] / mat.fan_in)
        w = params[f"W:{v.matrix.name}"] * math.sqrt(variances[v.matrix.var] / width)
        return values[v.source.index] @ w.transpose(-1, -2)  # rows: W s

    values, h = execute_instructions(program, leaf, (m, k, width))
    r = program.output
    f = math.sqrt(variances[r.var]) * h @ params["v"].transpose(-1, -2) / math.sqrt(width)
    if r.bias is not None:
        f = f + math.sqrt(variances[r.bias]) * params["vb"]
    return values, h, f


def _ntk_chunk(program: Program, x: torch.Tensor, params, variances, units: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-network ``Θ̂`` ``(M, k, k)`` float64 by the δ-trick (module docstring), and the readout's own term
    ``σ_v² h hᵀ/n + σ_ob²`` ``(M, k, k)`` (the per-network NNGP estimate) from the same forward pass."""
    width = params["v"].shape[-1]
    gvars = [v for v in program.vars if v.op in ("bias", "input", "matmul")]
    with torch.enable_grad():
        values, h, f = execute(program, x, params, variances)
        if not any(values[g.index].requires_grad for g in gvars):
            raise RuntimeError("parameters must require gradients")
        hd = h.detach().to(torch.float64)
        r = program.output
        theta = variances[r.var] * hd @ hd.transpose(-1, -2) / width
        if r.bias is not None:
            theta = theta + variances[r.bias]
        body = 0.0
        for unit in range(units):
            deltas = torch.autograd.grad(f[..., unit].sum(), [values[g.index] for g in gvars],
                                         retain_graph=unit + 1 < units, allow_unused=True)
            delta = {g.index: (torch.zeros_like(values[g.index]) if d is None else d).to(torch.float64)
                     for g, d in zip(gvars, deltas, strict=True)}
            for mat in program.matrices:
                uses = [g for g in gvars if g.op in ("input", "matmul") and g.matrix is mat]
                if not uses:
                    continue
                dd = torch.stack([delta[g.index] for g in uses], 1)  # (M, U, k, n)
                if mat.kind == "input":
                    src = torch.stack([x[:, g.source.offset:g.source.offset + g.source.dim] for g in uses])
                    ss = torch.einsum("uad,vbd->uavb", src.to(torch.float64), src.to(torch.float64))[None]
                    fan_in = mat.fan_in
                else:
                    src = torch.stack([values[g.source.index].detach().to(torch.float64) for g in uses], 1)
                    ss = torch.einsum("muan,mvbn->muavb", src, src)
                    fan_in = width
                ddg = torch.einsum("muan,mvbn->muavb", dd, dd)
                body = body + variances[mat.var] / fan_in * (ddg * ss).sum((1, 3))
            for g in gvars:
                if g.op == "bias":
                    db = delta[g.index]
                    body = body + variances[g.var] * db @ db.transpose(-1, -2)
    return theta + body / units, theta


def empirical_program_ntk(
    program: Program,
    inputs: torch.Tensor,
    networks: int,
    width: int,
    seed: int = 0,
    variances: Mapping[str, float] | None = None,
    readout_units: int = 1,
    chunk_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    dtype: torch.dtype = torch.float32,
) -> NTKSample:
    """Empirical NTKs ``J(x)·J(x')ᵀ`` of ``networks`` literal finite twins of ``program`` (vectorized over networks).

    Args:
        inputs: ``(k, D)`` with ``D = program.input_dim``.
        variances: by name; default the program's ``init`` values (e.g. ``kernel.variance_dict()``).
        readout_units: readout vectors ``v`` averaged per network (the readout's own term is exact).
        dtype: sampling dtype (float32); the Grams are accumulated in float64.

    Returns:
        :class:`verification.ntk.NTKSample`: ``ntks`` ``(M, k, k)`` and the per-network NNGP estimates
        ``covariances`` (readout term ``σ_v² h hᵀ/n + σ_ob²``).
    """
    program.check_complete()
    if inputs.dim() != 2 or inputs.shape[-1] != program.input_dim:
        raise ValueError(f"{program.name}: inputs must be (k, {program.input_dim}), got {tuple(inputs.shape)}")
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or Inf")
    if networks < 2 or width < 1 or readout_units < 1:
        raise ValueError(f"need networks >= 2, width >= 1, readout_units >= 1; got networks={networks}, "
                         f"width={width}, readout_units={readout_units}")
    values = program_variances(program, variances)
    k = inputs.shape[0]
    hidden = sum(1 for mat in program.matrices if mat.kind == "hidden")
    per_network = 4 * (hidden * width * width + 6 * (len(program.vars) + 4) * k * width)
    chunk = chunk_size or int(max(1, min(networks, max_bytes // max(per_network, 1))))
    generator = torch.Generator(device=inputs.device).manual_seed(int(seed))
    start = time.perf_counter()
    ntks, covs = [], []
    for first in range(0, networks, chunk):
        m = min(chunk, networks - first)
        params = draw_parameters(program, width, m, generator, dtype, readout_units, inputs.device)
        for p in params.values():
            p.requires_grad_(True)
        ntk, cov = _ntk_chunk(program, inputs, params, values, readout_units)
        ntks.append(ntk)
        covs.append(cov)
    ntk = torch.cat(ntks)
    if not torch.isfinite(ntk).all():
        raise FloatingPointError(f"non-finite empirical NTK for {program.name}")
    return NTKSample(ntk, torch.cat(covs), networks, width, readout_units, time.perf_counter() - start)


def brute_force_program_ntk(program: Program, inputs: torch.Tensor, width: int, seed: int = 0,
                            variances: Mapping[str, float] | None = None,
                            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``J Jᵀ`` ``(k, k)`` of ONE network with one readout unit, ``J`` the explicit Jacobian of ``f(x_1..k)`` with
    respect to every ``ω``, ``β``, ``v``, ``β_o`` (``k`` autograd passes) — the reference for the δ-trick."""
    values = program_variances(program, variances)
    generator = torch.Generator().manual_seed(int(seed))
    params = draw_parameters(program, width, 1, generator, dtype, 1)
    if program.output.bias is None:
        params.pop("vb")
    leaves = list(params.values())
    for p in leaves:
        p.requires_grad_(True)
    if "vb" not in params:
        params["vb"] = torch.zeros(1, 1, 1, dtype=dtype)
    _, _, f = execute(program, inputs, params, values)
    rows = []
    for p in range(inputs.shape[0]):
        grads = torch.autograd.grad(f[0, p, 0], leaves, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(t) if g is None else g).reshape(-1)
                               for g, t in zip(grads, leaves, strict=True)]))
    jac = torch.stack(rows)
    return jac @ jac.T


__all__ = ["brute_force_program_ntk", "draw_parameters", "empirical_program_ntk", "execute"]

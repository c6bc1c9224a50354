"""Empirical neural tangent kernels of random finite networks, and their test against the analytic Θ.

For one finite network in the NTK parameterization (Jacot et al. 2018; reference/kernels.md, "NTK") —
every affine map ``z = σw/√fan_in · a·ω + σb·β`` with ``ω, β ~ N(0, 1)`` — the empirical NTK of one
output unit ``f`` is ``Θ̂(x_i, x_j) = Σ_θ ∂f(x_i)/∂θ · ∂f(x_j)/∂θ`` over all ``ω`` and ``β``.

**δ-trick.** With ``δ_ip = ∂f(x_i)/∂z_ip`` (the gradient of the output with respect to the pre-activations
the affine map produced at position ``p``), ``∂f(x_i)/∂ω_cu = σw/√fan_in·Σ_p a_ipc·δ_ipu`` and
``∂f(x_i)/∂β_u = σb·Σ_p δ_ipu``, so each affine record contributes

    σw²/fan_in · Σ_{p,q} (a_ip·a_jq)(δ_ip·δ_jq) + σb² · (Σ_p δ_ip)·(Σ_q δ_jq).

The double sum is formed either directly (``k²P²`` products, cheap when few positions share the weight,
e.g. ``P = 1`` for a dense layer) or as the Gram of the per-input weight gradients
``G_i = Σ_p a_ip ⊗ δ_ip`` (``⟨G_i, G_j⟩``, cheaper for many positions). All δ's come from ONE backward
pass of ``Σ_i f(x_i)``: inputs do not interact in the networks verified here, so ``f(x_i)`` depends only
on row ``i`` and the gradient of the sum holds every row's own gradient.

**Readout.** When the architecture ends in a plain ``Dense`` readout ``f = σw/√n·Φ·v + σb·β`` its own term
``σw²·Φ_iΦ_j/n + σb²`` does not depend on ``v`` and is added exactly; the body's δ's are linear in ``v``,
and ``readout_units`` independent ``v``'s (one vectorized backward pass, ``is_grads_batched``) are
averaged. Each is an unbiased draw of ``Θ̂`` for one output unit; averaging over units of one network
only lowers the variance. The per-network values ``Θ̂_m`` are i.i.d. over networks with
``E[Θ̂_m] → Θ`` as width → ∞ (fluctuation O(1/√width), bias O(1/width)).

**Recurrent layers** (weights shared over time): the time steps are the positions. Each step's
pre-activation is its own autograd node, so the twin records ``outputs`` as a list of ``T`` tensors and
:func:`_deltas` stacks their δ's on a positions axis; the double sum then holds the cross-time terms
``Σ_{t≠s}(a_t·a'_s)(δ_t·δ'_s)`` of the shared ``U``, ``W``, ``b``. A recurrent layer holds its own readout: the
twin marks that record ``readout=True`` and, when it produces the network's output, its term is added
exactly, as for a final ``Dense``.

The weights must be literal (the Gram-conditional sampler never forms them, so it cannot be
back-propagated through); twins skip it automatically when ``ctx.record_affine`` is set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from nngp_gpytorch.algebra import Hyperparameters, RuleContext, evaluate, input_state, propagate
from nngp_gpytorch.arch import Layer
from nngp_gpytorch.arch.recurrent import GRU, RNN, RecurrentLayer
from nngp_gpytorch.duals import Dual

from .ensembles import as_hyperparameters, split_readout, with_readout_units
from .twins import TwinContext, run_twin
from .twins.registry import AffineRecord

DEFAULT_MAX_BYTES = 256 * 2**20


@dataclass
class NTKSample:
    """Per-network empirical NTKs of one ensemble.

    Attributes:
        ntks: ``(M, k, k)`` float64, i.i.d. over networks, ``E → Θ`` as width → ∞.
        covariances: ``(M, k, k)`` float64 per-network NNGP estimates from the same networks (readout
            term ``σw²·ΦΦᵀ/n + σb²`` when the readout is analytic, else ``(1/units)·Σ f fᵀ``).
        networks, width, readout_units: the budget.
        seconds: wall time.
    """

    ntks: torch.Tensor
    covariances: torch.Tensor
    networks: int
    width: int
    readout_units: int
    seconds: float

    def mean(self) -> torch.Tensor:
        return self.ntks.mean(0)


def record_contribution(record: AffineRecord, delta: torch.Tensor) -> torch.Tensor:
    """NTK contribution ``(R, M, k, k)`` of one affine record, float64.

    Args:
        record: ``inputs`` ``(M, k, *positions, fan_in)``; the weight is shared over the positions.
        delta: ``(R, M, k, *positions, width)``: ``∂f/∂outputs`` for ``R`` readout units.
    """
    a = record.inputs.detach().to(torch.float64)
    d = delta.to(torch.float64)
    m, k, fan_in = a.shape[0], a.shape[1], a.shape[-1]
    r, width = d.shape[0], d.shape[-1]
    a = a.reshape(m, k, -1, fan_in)  # (M, k, P, fan_in)
    d = d.reshape(r, m, k, -1, width)  # (R, M, k, P, width)
    positions = a.shape[2]
    bias_part = d.sum(3)  # (R, M, k, width)
    out = record.bias_var * bias_part @ bias_part.transpose(-1, -2)
    if positions == 1:
        aa = a[:, :, 0] @ a[:, :, 0].transpose(-1, -2)  # (M, k, k)
        dd = d[..., 0, :] @ d[..., 0, :].transpose(-1, -2)  # (R, M, k, k)
        weight_part = aa * dd
    elif positions * positions * (fan_in + width) <= 2 * fan_in * width:
        af = a.reshape(m, k * positions, fan_in)
        aa = (af @ af.transpose(-1, -2)).reshape(m, k, positions, k, positions)
        df = d.reshape(r, m, k * positions, width)
        dd = (df @ df.transpose(-1, -2)).reshape(r, m, k, positions, k, positions)
        weight_part = (aa * dd).sum((-1, -3))
    else:
        g = torch.einsum("mkpc,rmkpu->rmkcu", a, d).reshape(r, m, k, fan_in * width)  # weight gradients
        weight_part = g @ g.transpose(-1, -2)
    return out + record.weight_var / record.fan_in * weight_part


def _footprint(architecture: Layer, input_shape: tuple[int, ...] | None) -> tuple[int, int]:
    """``(weight matrices, activation tensors)`` per network, for the chunk size: one each per layer; a
    recurrent layer with ``g`` gates holds ``2g + 1`` (``U`` and ``W`` per gate, ``U`` counted as a full
    matrix for simplicity, and its readout) and keeps ``~4g`` activations per step for ``T`` steps (the
    autograd graph and the per-step δ's)."""
    matrices = activations = 0
    for layer in architecture.walk():
        if isinstance(layer, RecurrentLayer):
            gates = 1 if isinstance(layer, RNN) else 3 if isinstance(layer, GRU) else 4
            steps = input_shape[0] if input_shape else 1
            matrices += 2 * gates + 1
            activations += 4 * gates * steps
        else:
            matrices += 1
            activations += 1
    return max(1, matrices), max(1, activations)


def _chunk_size(networks: int, footprint: tuple[int, int], width: int, d: int, k: int, max_bytes: int) -> int:
    matrices, activations = footprint
    per_network = 4 * matrices * max(width, d) * width + 8 * 4 * k * width * activations
    return int(max(1, min(networks, max_bytes // max(per_network, 1))))


def empirical_ntk(
    architecture: Layer,
    inputs: torch.Tensor,
    networks: int,
    width: int,
    seed: int = 0,
    weight_var: float | Hyperparameters = 1.0,
    bias_var: float = 0.0,
    readout_units: int = 4,
    chunk_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    dtype: torch.dtype = torch.float32,
    input_shape: tuple[int, ...] | None = None,
    interacting: bool | None = None,
) -> NTKSample:
    """Empirical NTKs ``J(x)·J(x')ᵀ`` of ``networks`` random finite networks (vectorized over networks).

    Args:
        inputs: ``(k, d)``.
        weight_var, bias_var: the same variances (or :class:`Hyperparameters`) the analytic kernel uses.
        readout_units: output units averaged per network (one batched backward pass); with a final
            ``Dense`` the readout's own term is exact and only the body's term is averaged.
        dtype: sampling dtype (float32); contributions are accumulated in float64.
        interacting: the k inputs interact (graph convolutions: the inputs are the nodes of one graph).
            Then one backward pass per output row is batched (``δ^{(i)} = ∂f(x_i)/∂z`` at every row ``r``) and
            each record contributes ``σw²/fan_in·Σ_{r,s}(a_r·a_s)(δ^{(i)}_r·δ^{(j)}_s) + σb²·(Σ_r δ^{(i)}_r)·(Σ_s
            δ^{(j)}_s)`` (rows act as positions sharing the weight). ``None``: true when a layer class declares
            ``transductive = True``.

    Returns:
        :class:`NTKSample` with ``ntks`` ``(networks, k, k)``.
    """
    architecture.validate(input_shape)
    if inputs.dim() != 2:
        raise ValueError(f"inputs must be (k, d), got shape {tuple(inputs.shape)}")
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or Inf")
    if networks < 2 or width < 1 or readout_units < 1:
        raise ValueError(f"need networks >= 2, width >= 1, readout_units >= 1; got {networks}, {width}, "
                         f"{readout_units}")
    hyper = as_hyperparameters(weight_var, bias_var)
    if interacting is None:
        interacting = any(getattr(type(layer), "transductive", False) for layer in architecture.walk())
    body, readout = split_readout(architecture)
    if readout is None:
        architecture = with_readout_units(architecture, readout_units)
    k, d = inputs.shape
    x = inputs.to(dtype)
    chunk = chunk_size or _chunk_size(networks, _footprint(architecture, input_shape), width, d, k, max_bytes)
    generator = torch.Generator(device=inputs.device).manual_seed(int(seed))
    start = time.perf_counter()
    ntk_parts, cov_parts = [], []
    for first in range(0, networks, chunk):
        m = min(chunk, networks - first)
        ctx = TwinContext(generator=generator, width=width, hyper=hyper, sampler="literal", dtype=dtype,
                          record_affine=True, input_shape=tuple(input_shape) if input_shape is not None else None)
        ntk, cov = _one_chunk(body, readout, architecture, x.expand(m, k, d), ctx, readout_units, interacting)
        ntk_parts.append(ntk)
        cov_parts.append(cov)
    ntks, covs = torch.cat(ntk_parts), torch.cat(cov_parts)
    if not torch.isfinite(ntks).all():
        raise FloatingPointError(f"non-finite empirical NTK for {architecture.describe()}")
    return NTKSample(ntks, covs, networks, width, readout_units, time.perf_counter() - start)


def _one_chunk(body, readout, architecture, x, ctx: TwinContext, units: int, interacting: bool = False):
    m, k = x.shape[:2]
    with torch.enable_grad():
        if readout is not None:
            h = run_twin(body, x, ctx) if body is not None else x
            if h.dim() != 3:
                raise ValueError(f"the readout {readout.describe()} of {architecture.describe()} receives "
                                 f"structured features {tuple(h.shape[2:])}; flatten or pool them first")
            w, b = ctx.variances(readout, readout.weight_var, readout.bias_var)
            return _exact_readout(h, w, b, ctx.records, ctx, units, interacting)
        out = run_twin(architecture, x, ctx)  # (M, k, units) — every affine map recorded, readout included
        last = ctx.records[-1] if ctx.records else None
        if last is not None and last.readout and last.outputs is out:
            # the network ends in a layer holding its own readout (recurrent layers): its term is exact
            return _exact_readout(last.inputs, last.weight_var, last.bias_var, ctx.records[:-1], ctx, units,
                                  interacting)
        if out.dim() != 3:
            raise ValueError(f"{architecture.describe()} has structured outputs {tuple(out.shape[2:])}; the "
                             "empirical NTK is defined here for one scalar output unit (end in pooling + Dense)")
        out = out[..., :units]
        r = out.shape[-1]
        if interacting:  # one-hot over (unit, output row)
            g_out = torch.einsum("uv,ij->uijv", torch.eye(r, dtype=out.dtype), torch.eye(k, dtype=out.dtype))
            g_out = g_out.reshape(r * k, 1, k, r).expand(r * k, m, k, r)
            grads = _deltas(out, g_out, ctx.records)
            total = sum(_interacting_contribution(rec, g, r, k) for rec, g in zip(ctx.records, grads, strict=True))
        else:
            eye = torch.eye(r, dtype=out.dtype).reshape(r, 1, 1, r).expand(r, m, k, r)
            grads = _deltas(out, eye, ctx.records)
            total = sum(record_contribution(rec, g) for rec, g in zip(ctx.records, grads, strict=True))
        od = out.detach().to(torch.float64)
        return total.mean(0), od @ od.transpose(-1, -2) / r


def _exact_readout(h: torch.Tensor, w: float, b: float, records: list[AffineRecord], ctx: TwinContext, units: int,
                   interacting: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-network ``(Θ̂, C)`` for ``f = σw/√n·Φ·v + σb·β`` on features ``h = Φ`` ``(M, k, n)``.

    The readout's own term ``σw²·ΦΦᵀ/n + σb²`` (independent of ``v``) is exact; the body ``records`` get
    their δ's from ``units`` random ``v`` in one batched backward pass (``∂f/∂Φ = σw/√n·v``), averaged.
    """
    m, k, n = h.shape
    hd = h.detach().to(torch.float64)
    readout_term = w * hd @ hd.transpose(-1, -2) / n + b  # (M, k, k), exact: independent of v
    total = readout_term.expand(units, m, k, k).clone()
    if records:
        v = ctx.randn(units, m, 1, n) * math.sqrt(w / n)  # ∂f/∂Φ for each readout unit
        if interacting:  # one backward pass per (unit, output row i): grad_outputs = v at row i only
            eye = torch.eye(k, dtype=h.dtype).reshape(1, k, 1, k, 1)
            g_out = (v.unsqueeze(1) * eye).reshape(units * k, m, k, n)
            grads = _deltas(h, g_out, records)
            for record, delta in zip(records, grads, strict=True):
                total = total + _interacting_contribution(record, delta, units, k)
        else:
            grads = _deltas(h, v.expand(units, *h.shape), records)
            for record, delta in zip(records, grads, strict=True):
                total = total + record_contribution(record, delta)
    return total.mean(0), readout_term


def _interacting_contribution(record: AffineRecord, delta: torch.Tensor, units: int, k: int) -> torch.Tensor:
    """Contribution ``(R, M, k, k)`` when inputs interact: ``delta`` ``(R·k, M, k_rows, *positions, width)``
    holds ``∂f(x_i)/∂z`` for output ``i`` at every row; rows × positions are the positions sharing the weight."""
    a = record.inputs.detach()
    m, fan_in, width = a.shape[0], a.shape[-1], delta.shape[-1]
    a_all = a.reshape(m, 1, -1, fan_in).expand(m, k, -1, fan_in)  # (M, k_out, rows·P, fan_in)
    d_all = delta.reshape(units, k, m, -1, width).transpose(1, 2)  # (R, M, k_out, rows·P, width)
    return record_contribution(AffineRecord(a_all, record.outputs, record.weight_var, record.bias_var,
                                            record.fan_in), d_all)


def _deltas(output: torch.Tensor, grad_outputs: torch.Tensor, records: list[AffineRecord]) -> tuple:
    """``∂⟨grad_outputs[r], output⟩/∂record.outputs`` for every record, batched over ``r`` (leading axis).

    A record whose ``outputs`` is a list of ``P`` per-position tensors gets its δ's stacked on axis ``-2``:
    ``(R, M, k, P, width)``. Outputs shared by several records are differentiated once.
    """
    targets: list[torch.Tensor] = []
    index: dict[int, int] = {}
    slots = []
    for rec in records:
        listed = isinstance(rec.outputs, list | tuple)
        ids = []
        for t in (rec.outputs if listed else [rec.outputs]):
            if id(t) not in index:
                index[id(t)] = len(targets)
                targets.append(t)
            ids.append(index[id(t)])
        slots.append((ids, listed))
    g_out = grad_outputs.to(output.dtype)
    try:
        grads = torch.autograd.grad(output, targets, grad_outputs=g_out, is_grads_batched=True,
                                    allow_unused=True, retain_graph=True)
    except RuntimeError:  # an op without a batching rule: one backward pass per readout unit
        per_unit = [torch.autograd.grad(output, targets, grad_outputs=g, allow_unused=True, retain_graph=True)
                    for g in g_out]
        grads = tuple(None if all(u[i] is None for u in per_unit) else
                      torch.stack([torch.zeros_like(t) if u[i] is None else u[i] for u in per_unit])
                      for i, t in enumerate(targets))
    grads = [torch.zeros((grad_outputs.shape[0], *t.shape), dtype=t.dtype, device=t.device) if g is None else g
             for g, t in zip(grads, targets, strict=True)]
    return tuple(torch.stack([grads[i] for i in ids], -2) if listed else grads[ids[0]] for ids, listed in slots)


class _MutantDual(Dual):
    """A planted bug in an activation's derivative dual (for measuring power): ``V_φ′ ← scale·V_φ′``,
    or ``V_φ′ ← 1`` (the derivative term dropped: Θ passes the activation unchanged)."""

    def __init__(self, dual: Dual, kind: str, scale: float = 1.0):
        self.dual, self.kind, self.scale = dual, kind, scale

    def nngp(self, k11, k22, k12, identical=None):
        return self.dual.nngp(k11, k22, k12, identical)

    def nngp_diag(self, k):
        return self.dual.nngp_diag(k)

    def _mutate(self, v):
        return torch.ones_like(v) if self.kind == "dropped_derivative" else self.scale * v

    def ntk(self, k11, k22, k12, identical=None):
        return self._mutate(self.dual.ntk(k11, k22, k12, identical))

    def ntk_diag(self, k):
        return self._mutate(self.dual.ntk_diag(k))


class _MutantContext(RuleContext):
    def __init__(self, hyper, kind: str, scale: float):
        super().__init__(hyper=hyper, with_ntk=True)
        self.kind, self.scale = kind, scale

    def dual(self, activation) -> Dual:
        return _MutantDual(super().dual(activation), self.kind, self.scale)


#: Planted NTK bugs for power measurements: the derivative dual dropped (``V_φ′ ≡ 1``) or scaled.
MUTANTS = ("dropped_derivative", "derivative_scaled")


def analytic_ntk(architecture: Layer, inputs: torch.Tensor, weight_var: float | Hyperparameters = 1.0,
                 bias_var: float = 0.0, input_shape: tuple[int, ...] | None = None,
                 mutant: str | None = None, mutant_scale: float = 1.05) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, Θ)`` of ``architecture`` on ``inputs`` ``(k, d)`` (float64), for comparison with the ensemble.

    ``mutant`` (one of :data:`MUTANTS`) plants a bug in every activation's derivative dual:
    ``"dropped_derivative"`` (``Θ ← Θ`` through activations) or ``"derivative_scaled"``
    (``Θ ← mutant_scale·V_φ′(K)⊙Θ``).
    """
    hyper = as_hyperparameters(weight_var, bias_var)
    x = inputs.to(torch.float64)
    hyper = Hyperparameters(hyper.weight_var.to(torch.float64), hyper.bias_var.to(torch.float64))
    if mutant is None:
        return evaluate(architecture, x, x, hyper, with_ntk=True, input_shape=input_shape)
    if mutant not in MUTANTS:
        raise ValueError(f"mutant must be one of {MUTANTS}, got {mutant!r}")
    ctx = _MutantContext(hyper, mutant, mutant_scale)
    state = propagate(architecture, input_state(x, x, False, True, input_shape), ctx)
    return state.k12, state.t12


def verify_ntk(
    architecture: Layer,
    inputs: torch.Tensor | None = None,
    networks: int = 128,
    width: int = 1024,
    seed: int = 0,
    weight_var: float | Hyperparameters = 1.0,
    bias_var: float = 0.0,
    alpha: float = 1e-4,
    readout_units: int = 4,
    analytic: torch.Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
    interacting: bool | None = None,
):
    """Test ``H0: E[Θ̂_m] = Θ`` (mean empirical NTK over random networks vs the analytic NTK).

    Per-entry t-tests over the ``k(k+1)/2`` upper-triangle entries, Holm–Bonferroni, family-wise
    false-alarm rate ``alpha`` (:func:`verification.statistics.mean_test`). ``analytic`` overrides the
    kernel's Θ (used to measure power on mutants). Returns a ``MeanTestResult`` (``.passed``,
    ``.p_value``, ``.relative_error``, …) with ``seconds`` and ``architecture`` filled.
    """
    from .ensembles import default_inputs
    from .statistics import mean_test

    x = default_inputs() if inputs is None else inputs
    start = time.perf_counter()
    sample = empirical_ntk(architecture, x, networks, width, seed=seed, weight_var=weight_var, bias_var=bias_var,
                           readout_units=readout_units, input_shape=input_shape, interacting=interacting)
    theta = analytic if analytic is not None else analytic_ntk(architecture, x, weight_var, bias_var,
                                                               input_shape=input_shape)[1]
    result = mean_test(sample.ntks, theta, alpha=alpha, width=width)
    result.bias_handling = ("NTK: finite-width bias O(1/width) not corrected; budget chosen with "
                            "networks/width <= 1/4 (see docs/ntk.md)")
    result.seconds = time.perf_counter() - start
    result.architecture = architecture.describe()
    return result


__all__ = ["MUTANTS", "NTKSample", "analytic_ntk", "empirical_ntk", "record_contribution",
           "verify_ntk"]

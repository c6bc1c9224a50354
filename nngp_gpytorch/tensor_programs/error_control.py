r"""Error estimates for the master-theorem kernels, and the escalation that meets ``Accuracy.target``.

The kernel of a program is a composition of Gaussian expectations. Randomized QMC expectations carry their own
end-to-end standard error (the replicate axis). Gauss–Hermite product rules do not: their error is
deterministic, geometric in the degree for entire integrands, sub-geometric (``exp(−c√n)``) for functions
analytic in a strip only (``tanh``, ``sigmoid``), algebraic for kinked ones (a ReLU inside a several-argument
Nonlin). The estimate here is an embedded rule applied end to end: the whole program is evaluated again with
every product rule at 1/2 and 1/4 of its degree (same QMC points, so the QMC parts cancel). With
``d₁ = |K_n − K_{n/2}|``, ``d₂ = |K_{n/2} − K_{n/4}|`` and the observed contraction ``ρ = min(½, max d₁ / max d₂)``
(one ratio for the whole block), the extrapolated error of ``K_n`` (a geometric tail ``Σ_k ρ^k``) is

    quadrature_error = max(ρ·d₁, ρ²·d₂)/(1 − ρ),        error = quadrature_error + 2·stderr.

For algebraic convergence ``n^{−p}`` (``ρ = 2^{−p}``) this is the asymptotic error itself; for faster convergence
it overestimates; a stalled rule (``ρ ≥ ½``) reports ``d₁``. Tested for calibration against stored brute-force
references. While ``max(quadrature_error) > target·max|K|`` the degrees are doubled (``Accuracy.refined``; the two
previous levels are reused), at most ``Accuracy.max_escalations`` times. If the error bar (quadrature error plus
two QMC standard errors) still exceeds the target, a ``RuntimeWarning`` says so and which part dominates (the
numbers are in the result). Entries whose quadrature error is below twice
their QMC standard error do not count: the QMC part dominates their error bar there, and more nodes cannot
help. Programs without product rules cost nothing extra;
the coarse evaluations run without autograd.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

from ..duals.quadrature import extrapolated_error
from .expectations import Accuracy

R = TypeVar("R")


def _relative(errors: list[torch.Tensor], values: list[torch.Tensor]) -> float:
    scale = max(float(v.detach().abs().max()) if v.numel() else 0.0 for v in values)
    worst = max(float(e.max()) if e.numel() else 0.0 for e in errors)
    return worst / scale if scale > 0 else worst


def _grows(old: Accuracy, new: Accuracy) -> bool:
    return any(new.gh_degree(m) > old.gh_degree(m) for m in range(1, old.gh_max_dim + 1))


def with_error_estimate(run: Callable[[Accuracy], R], accuracy: Accuracy,
                        values: Callable[[R], list[torch.Tensor]], stderrs: Callable[[R], list[torch.Tensor]],
                        where: str) -> tuple[R, list[torch.Tensor]]:
    """``(result, quadrature_errors)``: ``run(accuracy)`` (escalated while the estimate exceeds the target) and
    the extrapolated Gauss–Hermite error of each of ``values(result)`` (zeros when the program used no product
    rule or ``accuracy.target`` is None)."""
    fine = run(accuracy)
    if accuracy.target is None:
        return fine, [torch.zeros_like(v.detach()) for v in values(fine)]
    if not fine.methods.get("gauss-hermite", 0):
        errors = [torch.zeros_like(v.detach()) for v in values(fine)]
        _warn_if_missed(where, accuracy.target, errors, values(fine), stderrs(fine), 0)
        return fine, errors
    with torch.no_grad():
        half = [v.detach() for v in values(run(accuracy.coarse()))]
        quarter = [v.detach() for v in values(run(accuracy.coarse().coarse()))]
    acc, escalations = accuracy, 0
    while True:
        current = values(fine)
        errors = [extrapolated_error(f, h, q) for f, h, q in zip(current, half, quarter, strict=True)]
        # only where the product rules dominate the QMC noise: escalating them cannot help elsewhere
        dominant = [torch.where(e > 2 * se.detach(), e, torch.zeros_like(e))
                    for e, se in zip(errors, stderrs(fine), strict=True)]
        worst = _relative(dominant, current)
        nxt = acc.refined()
        if worst <= accuracy.target or escalations >= accuracy.max_escalations or not _grows(acc, nxt):
            break
        quarter, half = half, [v.detach() for v in current]
        acc, escalations = nxt, escalations + 1
        fine = run(acc)
    _warn_if_missed(where, accuracy.target, errors, values(fine), stderrs(fine), escalations)
    return fine, errors


def _warn_if_missed(where: str, target: float, errors: list[torch.Tensor], current: list[torch.Tensor],
                    stderrs: list[torch.Tensor], escalations: int) -> None:
    """A ``RuntimeWarning`` when the error bar ``quadrature error + 2·stderr`` exceeds ``target·max|K|``, naming
    the part that dominates (the text carries no numbers, so Python shows it once per program)."""
    totals = [e + 2 * se.detach() for e, se in zip(errors, stderrs, strict=True)]
    if _relative(totals, current) <= target:
        return
    if _relative(errors, current) > _relative([2 * se.detach() for se in stderrs], current):
        detail = (f"the Gauss–Hermite error estimate dominates (after {escalations} escalation(s)); non-smooth "
                  "Nonlins away from 0 or on oblique hyperplanes (relu(a − c)) converge slowly under product rules: "
                  "raise quadrature_degree / gh_max_nodes / max_escalations, or lower gh_max_dim so that QMC is used")
    else:
        detail = "the QMC standard error dominates: raise qmc_points or qmc_replicates"
    warnings.warn(f"{where}: the kernel's error bar exceeds Accuracy.target={target:g} (relative to max|K|; see "
                  f"result.error): {detail}", RuntimeWarning, stacklevel=4)


__all__ = ["extrapolated_error", "with_error_estimate"]

r"""Signal propagation in deep random networks: fixed points, χ₁, depth scales and the order-to-chaos boundary.

For a depth-``L`` MLP with activation ``φ`` in this library's convention (``K¹ = σw²·x·x'/d + σb²``,
``K^{l+1} = σw²·V_φ(K^l) + σb²``; Poole et al. 2016; Schoenholz et al. 2017, *Deep Information Propagation*):

* **length map** ``q ↦ σw²·E[φ(√q z)²] + σb²`` with its fixed point ``q*`` (iterated from ``q₀``);
* **correlation map** ``c ↦ (σw²·E[φ(u)φ(v)] + σb²)/q*`` with ``(u, v) ~ N(0, q*·[[1, c], [c, 1]])`` and its stable
  fixed point ``c*`` (``c* = 1`` in the ordered phase);
* ``χ₁ = σw²·E[φ'(√q* z)²]``: the slope of the correlation map at ``c = 1``. ``χ₁ < 1`` ordered, ``> 1`` chaotic;
  ``χ₁ = 1`` is the critical line;
* depth scales ``ξ_q = −1/ln(dq_{l+1}/dq_l |_{q*})`` and ``ξ_c = −1/ln χ_c`` with
  ``χ_c = σw²·E[φ'(u)φ'(v)] |_{c*}`` (the slope of the correlation map at its fixed point; Price's theorem):
  signals from two inputs stay distinguishable for ``~ξ_c`` layers, and networks deeper than ``~6ξ_c`` do not
  train (Schoenholz et al. 2017, Fig. 6). ``ξ_c`` diverges on the critical line.
* the NTK's depth scale: ``Θ^{l+1} = K^{l+1} + σw²·V_φ'(K^l)·Θ^l``. At the fixed point the diagonal of Θ evolves
  with slope ``χ₁`` and the off-diagonal with ``χ_c``: in the chaotic phase (``c* < 1``) the diagonal grows like
  ``χ₁^l`` and the normalized NTK ``Θ(x, x')/Θ(x, x)`` decays like ``(χ_c/χ₁)^l``, so ``ξ_Θ = −1/ln(χ_c/χ₁)``; in
  the ordered phase (``c* = 1``, ``χ_c = χ₁``) Θ converges to a constant kernel at the rate ``χ₁``, ``ξ_Θ = ξ_c``
  (Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2020).

Every quantity is vectorized over grids of ``(σw², σb²)`` and exact where the activation's dual has a closed form
(ReLU, erf, ...), Gauss–Hermite otherwise (:func:`nngp_gpytorch.duals.dual_for`). :func:`critical_weight_var`
finds the ``χ₁ = 1`` line by bisection; :func:`plot_phase_diagram` draws ``ξ_c`` with that line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .arch import Activation
from .duals import dual_for


@dataclass
class SignalPropagation:
    """Fixed points and depth scales on a grid; every field has the broadcast shape of ``(σw², σb²)``.

    ``q_star`` is ``inf`` where the length map diverges (e.g. ReLU with σw² > 2), and the other fields ``nan``
    there; ``phase`` is ``"ordered"`` / ``"chaotic"`` / ``"critical"`` (``|χ₁ − 1| ≤ 1e-9``) per entry."""

    weight_var: torch.Tensor
    bias_var: torch.Tensor
    q_star: torch.Tensor
    c_star: torch.Tensor
    chi_1: torch.Tensor
    chi_c: torch.Tensor
    xi_q: torch.Tensor
    xi_c: torch.Tensor
    xi_ntk: torch.Tensor

    @property
    def phase(self) -> list[str]:
        flat = self.chi_1.reshape(-1).tolist()
        return ["critical" if abs(x - 1) <= 1e-9 else ("ordered" if x < 1 else "chaotic") for x in flat]


def _grid(weight_var, bias_var) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.as_tensor(weight_var, dtype=torch.float64)
    b = torch.as_tensor(bias_var, dtype=torch.float64)
    if bool((w <= 0).any()) or bool((b < 0).any()):
        raise ValueError("weight variances must be positive and bias variances non-negative")
    return torch.broadcast_tensors(w, b)


def length_map(activation: Activation, weight_var, bias_var, q, quadrature_degree: int = 64) -> torch.Tensor:
    """``σw²·E[φ(√q z)²] + σb²`` (one layer of the per-input variance)."""
    dual = dual_for(activation, quadrature_degree)
    return weight_var * dual.nngp_diag(q) + bias_var


def correlation_map(activation: Activation, weight_var, bias_var, q, c, quadrature_degree: int = 64) -> torch.Tensor:
    """``(σw²·E[φ(u)φ(v)] + σb²)/q'`` for ``(u, v) ~ N(0, q·[[1, c], [c, 1]])``, ``q'`` the next length."""
    dual = dual_for(activation, quadrature_degree)
    q_next = weight_var * dual.nngp_diag(q) + bias_var
    return (weight_var * dual.nngp(q, q, c * q) + bias_var) / q_next


def _fixed_q(dual, w, b, q0: float, iterations: int, diverged: float) -> torch.Tensor:
    q = torch.full_like(w, float(q0))
    for _ in range(iterations):
        q_new = w * dual.nngp_diag(q) + b
        done = (q_new - q).abs() <= 1e-14 * q_new.abs().clamp_min(1e-300)
        q = torch.where(q_new > diverged, torch.full_like(q, math.inf), q_new)
        if bool((done | torch.isinf(q)).all()):
            break
    return q


def signal_propagation(activation: Activation, weight_var, bias_var, q0: float = 1.0, iterations: int = 2000,
                       quadrature_degree: int = 64) -> SignalPropagation:
    """:class:`SignalPropagation` of ``activation`` over the broadcast grid of ``weight_var`` × ``bias_var``.

    ``q*`` by iterating the length map from ``q0`` (at most ``iterations`` times; ``inf`` once above ``1e12``; on
    the critical line itself the iteration converges only algebraically, so values there are approximate);
    ``c*`` by iterating the correlation map from ``c = 0``; slopes from the derivative dual (Price's theorem) and,
    for ``ξ_q``, by differentiating the length map with autograd."""
    w, b = _grid(weight_var, bias_var)
    dual = dual_for(activation, quadrature_degree)
    q = _fixed_q(dual, w, b, q0, iterations, 1e12)
    finite = torch.isfinite(q)
    # q* = 0 (σb² = 0 in the ordered phase of an odd φ): the maps are taken at a vanishing length instead of 0/0
    qf = torch.where(finite, q.clamp_min(1e-30), torch.ones_like(q))
    c = torch.zeros_like(qf)
    for _ in range(iterations):
        c_new = ((w * dual.nngp(qf, qf, c * qf) + b) / qf).clamp(-1.0, 1.0)
        if bool(((c_new - c).abs() <= 1e-13).all()):
            c = c_new
            break
        c = c_new
    # the ordered fixed point c* = 1 is approached slowly where χ₁ ≈ 1; within 1e-6 of it, it is taken as 1
    c = torch.where(c > 1 - 1e-6, torch.ones_like(c), c)
    chi_1 = w * dual.ntk_diag(qf)
    chi_c = w * dual.ntk(qf, qf, c * qf)
    qg = qf.clone().requires_grad_(True)
    (slope,) = torch.autograd.grad((w * dual.nngp_diag(qg) + b).sum(), qg)
    with torch.no_grad():
        xi_q = -1.0 / torch.log(slope.abs())
        xi_c = -1.0 / torch.log(chi_c)
        ratio = chi_c / chi_1
        xi_ntk = torch.where(c < 1 - 1e-9, -1.0 / torch.log(ratio), xi_c)
    nan = torch.full_like(qf, math.nan)

    def keep(x):
        return torch.where(finite, x.detach(), nan)

    return SignalPropagation(w, b, q, keep(c), keep(chi_1), keep(chi_c), keep(xi_q), keep(xi_c), keep(xi_ntk))


def critical_weight_var(activation: Activation, bias_var, low: float = 1e-3, high: float = 20.0, steps: int = 40,
                        q0: float = 1e-6, quadrature_degree: int = 64) -> torch.Tensor:
    """``σw²`` with ``χ₁(σw², σb²) = 1`` for each ``bias_var`` (bisection on ``[low, high]``; ``χ₁`` increases with
    σw² for the usual activations; a diverging length map counts as chaotic). ``nan`` where the bracket holds no
    crossing. The length map starts at ``q0`` (small: near the line it converges slowly, ``q_l − q* ~ 1/l`` at
    σb² → 0, and a start near ``q*`` avoids that)."""
    b = torch.as_tensor(bias_var, dtype=torch.float64)
    lo, hi = torch.full_like(b, low), torch.full_like(b, high)

    dual = dual_for(activation, quadrature_degree)

    def chi(w):
        q = _fixed_q(dual, w, b, q0, 2000, 1e12)
        x = w * dual.ntk_diag(torch.where(torch.isfinite(q), q.clamp_min(1e-30), torch.ones_like(q)))
        return torch.where(torch.isfinite(q), x, torch.full_like(x, math.inf))

    bracket = (chi(lo) - 1) * (chi(hi) - 1) <= 0
    for _ in range(steps):
        mid = (lo + hi) / 2
        above = chi(mid) > 1
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return torch.where(bracket, (lo + hi) / 2, torch.full_like(b, math.nan))


def plot_phase_diagram(activation: Activation, weight_vars, bias_vars, ax=None, max_depth: float = 100.0):
    """``6·ξ_c`` (the trainable depth) over the grid as an image, with the critical line ``χ₁ = 1``; returns the
    matplotlib axes."""
    import matplotlib.pyplot as plt

    w = torch.as_tensor(weight_vars, dtype=torch.float64)
    b = torch.as_tensor(bias_vars, dtype=torch.float64)
    sp = signal_propagation(activation, w[None, :], b[:, None])
    ax = ax or plt.gca()
    depth = (6 * sp.xi_c).clamp(max=max_depth).numpy()
    image = ax.pcolormesh(w.numpy(), b.numpy(), depth, shading="auto", cmap="viridis")
    ax.figure.colorbar(image, ax=ax, label="6·ξ_c (trainable depth)")
    ax.plot(critical_weight_var(activation, b).numpy(), b.numpy(), "w--", label="χ₁ = 1")
    ax.set_xlabel("σw²")
    ax.set_ylabel("σb²")
    ax.set_title(f"{activation.describe()}: order (left) / chaos (right)")
    ax.legend(loc="upper left")
    return ax


__all__ = ["SignalPropagation", "correlation_map", "critical_weight_var", "length_map", "plot_phase_diagram",
           "signal_propagation"]

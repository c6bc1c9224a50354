"""Infinite-width training dynamics: the NTK gradient-descent ensemble beside the NNGP posterior.

Setting (Jacot et al. 2018; Lee et al. 2019, "Wide neural networks of any depth evolve as linear models
under gradient descent", eqs. 14–16). Networks in the NTK parameterization are trained on ``(X, Y)``
(``N`` points) by gradient flow on the MSE loss ``L = ½·Σ_i ‖f(x_i) − y_i‖²`` with learning rate ``η``:
``θ̇ = −η·∇_θ L``, so ``ḟ(X) = −η·Θ·(f(X) − Y)``. (For the mean loss ``(1/2N)·Σ`` pass ``η/N``; discrete
full-batch gradient descent with step ``η`` for ``s`` steps: ``discrete=True`` replaces ``e^{−ηλt}`` by
``(1 − ηλ)^s``, exact for the linearized network; it is close to ``t = s`` when ``η·λ_max ≪ 1``.)
At infinite width, over random initializations ``f_0 ~ GP(0, K)``, the output at time ``t`` is Gaussian:

* mean        ``μ_t(x) = Θ(x, X)·Θ⁻¹·(I − e^{−ηΘt})·Y``
* covariance  ``Σ_t(x, x') = K(x, x') + A_t(x)·K·A_t(x')ᵀ − A_t(x)·K(X, x') − K(x, X)·A_t(x')ᵀ``
  with ``A_t(x) = Θ(x, X)·Θ⁻¹·(I − e^{−ηΘt})`` (``Θ, K`` without arguments: the train–train blocks).

``t = ∞`` gives ``A_∞(x) = Θ(x, X)·Θ⁻¹``. Everything is computed from one eigendecomposition
``Θ = V·diag(λ)·Vᵀ``: ``Θ⁻¹(I − e^{−ηΘt}) = V·diag(g(λ))·Vᵀ`` with ``g(λ) = −expm1(−ηλt)/λ`` (→ ``ηt`` as
``λ → 0``; directions with ``λ ≤ rcond·λ_max`` get ``g = 0`` at ``t = ∞``, i.e. a pseudo-inverse: the
data do not move the function along them). Any number of times reuses the same eigendecomposition.

The NNGP posterior (exact Bayesian inference with the same architecture's NNGP, Lee et al. 2018) comes
from the same kernel evaluation: ``m(x) = K(x, X)(K + σ²I)⁻¹Y``, ``C = K(x, x') − K(x, X)(K + σ²I)⁻¹K(X, x')``.
If ``Θ = K`` the NTK dynamics at ``t = ∞`` coincide with the noise-free NNGP posterior.

Shapes: ``x_train`` ``(N, d)``, ``y_train`` ``(N,)`` or ``(N, O)`` (outputs are i.i.d. units, so the
covariance is shared by all outputs), ``x_test`` ``(N*, d)``; kernel batch dimensions broadcast in front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["GradientDescentDynamics", "Posterior", "Predictions", "nngp_posterior", "predict"]


@dataclass
class Posterior:
    """A Gaussian prediction at the test points.

    Attributes:
        mean: ``(..., N*)`` or ``(..., N*, O)`` (same trailing layout as ``y_train``).
        covariance: ``(..., N*, N*)``, or the variances ``(..., N*)`` when computed with ``diag=True``;
            shared by every output unit.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    diag: bool = False

    @property
    def variance(self) -> torch.Tensor:
        """Test variances ``(..., N*)``."""
        return self.covariance if self.diag else self.covariance.diagonal(dim1=-2, dim2=-1)


@dataclass
class Predictions:
    """NNGP posterior and NTK gradient-descent ensemble from one kernel evaluation.

    ``ntk`` is one :class:`Posterior` for a scalar ``t``, or a list (one per time) for a sequence of times.
    ``dynamics`` keeps the eigendecomposition for further times (:meth:`GradientDescentDynamics.predict`).
    """

    nngp: Posterior
    ntk: Posterior | list[Posterior]
    dynamics: GradientDescentDynamics


def _eigh_solve_factors(a: torch.Tensor, rcond: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigendecomposition of a symmetric PSD matrix ``a`` with a relative floor mask."""
    evals, evecs = torch.linalg.eigh(a)
    floor = rcond * evals.amax(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return evals, evecs, evals > floor


def _as_2d_targets(y: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (y.unsqueeze(-1), True) if y.dim() == 1 else (y, False)


def nngp_posterior(k_train: torch.Tensor, k_test_train: torch.Tensor, k_test: torch.Tensor, y_train: torch.Tensor,
                   noise: float = 0.0, rcond: float = 1e-12) -> Posterior:
    """Exact GP posterior with the NNGP ``K`` and Gaussian observation noise ``noise`` (variance).

    Args:
        k_train: ``(..., N, N)``; k_test_train: ``(..., N*, N)``; k_test: ``(..., N*, N*)`` or the diagonal
            ``(..., N*)`` (then only variances are returned); y_train: ``(N,)`` or ``(N, O)``.
        rcond: eigenvalues below ``rcond·λ_max`` of ``K + noise·I`` are treated as zero (pseudo-inverse).
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    y, squeeze = _as_2d_targets(y_train.to(k_train.dtype))
    n = k_train.shape[-1]
    a = k_train + noise * torch.eye(n, dtype=k_train.dtype, device=k_train.device)
    evals, evecs, keep = _eigh_solve_factors(a, rcond)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    b = k_test_train @ evecs  # (..., N*, N)
    mean = (b * inv.unsqueeze(-2)) @ (evecs.transpose(-1, -2) @ y)
    if k_test.shape[-1] == k_test_train.shape[-2] and k_test.dim() == k_test_train.dim():
        cov = k_test - (b * inv.unsqueeze(-2)) @ b.transpose(-1, -2)
    else:
        cov = k_test - (b * b * inv.unsqueeze(-2)).sum(-1)
    full = k_test.shape[-1] == k_test_train.shape[-2] and k_test.dim() == k_test_train.dim()
    return Posterior(mean.squeeze(-1) if squeeze else mean, cov, diag=not full)


class GradientDescentDynamics:
    """The infinite-width ensemble trained by gradient flow on the MSE loss (Lee et al. 2019, eq. 16).

    Args:
        k_train, theta_train: NNGP and NTK on the training inputs, ``(..., N, N)``.
        k_test_train, theta_test_train: test–train blocks, ``(..., N*, N)``.
        k_test: NNGP on the test inputs, ``(..., N*, N*)``, or its diagonal ``(..., N*)`` (variances only).
        y_train: ``(N,)`` or ``(N, O)``.
        learning_rate: ``η`` (for ``L = ½·Σ‖f − y‖²``; see the module docstring).
        rcond: eigenvalues of Θ below ``rcond·λ_max`` are treated as zero.
        discrete: ``t`` counts full-batch gradient-descent steps of size ``η`` (``e^{−ηλt} → (1 − ηλ)^t``)
            instead of gradient-flow time.

    One eigendecomposition of Θ serves every time ``t`` (a float, ``math.inf`` included).
    """

    def __init__(self, k_train: torch.Tensor, theta_train: torch.Tensor, k_test_train: torch.Tensor,
                 theta_test_train: torch.Tensor, k_test: torch.Tensor, y_train: torch.Tensor,
                 learning_rate: float = 1.0, rcond: float = 1e-12, discrete: bool = False):
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        n = k_train.shape[-1]
        if theta_train.shape[-2:] != (n, n) or k_test_train.shape[-1] != n or theta_test_train.shape[-1] != n:
            raise ValueError("kernel blocks do not match: need (N, N) train blocks and (N*, N) test-train blocks")
        y, self._squeeze = _as_2d_targets(y_train.to(k_train.dtype))
        if y.shape[-2] != n:
            raise ValueError(f"y_train has {y.shape[-2]} rows but there are {n} training inputs")
        self.k_train, self.k_test_train, self.k_test = k_train, k_test_train, k_test
        self.learning_rate = float(learning_rate)
        self.discrete = bool(discrete)
        self.evals, self.evecs, self.keep = _eigh_solve_factors(theta_train, rcond)
        self.y_eig = self.evecs.transpose(-1, -2) @ y  # Vᵀ Y
        self.b = theta_test_train @ self.evecs  # Θ(x*, X)·V
        self.k_eig = self.evecs.transpose(-1, -2) @ k_train @ self.evecs  # Vᵀ K V
        self.kx_eig = k_test_train @ self.evecs  # K(x*, X)·V
        self.full = k_test.dim() == k_test_train.dim() and k_test.shape[-1] == k_test_train.shape[-2]

    def spectral_factor(self, t: float) -> torch.Tensor:
        """``g(λ) = (1 − e^{−ηλt})/λ`` (discrete: ``(1 − (1 − ηλ)^t)/λ``) per eigenvalue, ``(..., N)``.

        ``Θ⁻¹(I − e^{−ηΘt}) = V diag(g) Vᵀ``.
        """
        lam = self.evals
        safe = torch.where(self.keep, lam, torch.ones_like(lam))
        if math.isinf(t):
            return torch.where(self.keep, 1.0 / safe, torch.zeros_like(lam))
        if t < 0:
            raise ValueError(f"training time must be >= 0, got {t}")
        et = self.learning_rate * float(t)
        if self.discrete:  # (1 − (1 − ηλ)^s)/λ, → ηs as λ → 0
            if float(t) != int(t):
                raise ValueError(f"discrete dynamics count whole gradient-descent steps, got t={t}")
            decay = torch.pow(1.0 - self.learning_rate * safe, int(t))
            return torch.where(self.keep, (1.0 - decay) / safe, torch.full_like(lam, et))
        return torch.where(self.keep, -torch.expm1(-et * safe) / safe, torch.full_like(lam, et))

    def mean(self, t: float) -> torch.Tensor:
        """``μ_t(x*) = Θ(x*, X)Θ⁻¹(I − e^{−ηΘt})Y`` — ``(..., N*)`` or ``(..., N*, O)``."""
        g = self.spectral_factor(t)
        m = self.b @ (g.unsqueeze(-1) * self.y_eig)
        return m.squeeze(-1) if self._squeeze else m

    def covariance(self, t: float) -> torch.Tensor:
        """``Σ_t`` of Lee et al. 2019 eq. 16 — ``(..., N*, N*)``, or ``(..., N*)`` variances."""
        g = self.spectral_factor(t)
        a = self.b * g.unsqueeze(-2)  # A_t·V = Θ(x*,X)·V·diag(g)   (..., N*, N)
        ak = a @ self.k_eig  # A_t K V   in eigen-coordinates
        if self.full:
            cross = a @ self.kx_eig.transpose(-1, -2)
            return self.k_test + ak @ a.transpose(-1, -2) - cross - cross.transpose(-1, -2)
        return self.k_test + (ak * a).sum(-1) - 2 * (a * self.kx_eig).sum(-1)

    def predict(self, t: float) -> Posterior:
        """Mean and covariance at time ``t``."""
        return Posterior(self.mean(t), self.covariance(t), diag=not self.full)

    def linearized(self, t: float, f0_train: torch.Tensor, f0_test: torch.Tensor) -> torch.Tensor:
        """Prediction of ONE network with initial outputs ``f0`` trained in the linear (infinite-width)
        regime: ``f_t(x*) = f0(x*) + Θ(x*, X)Θ⁻¹(I − e^{−ηΘt})(Y − f0(X))``. Its mean over ``f0 ~ GP(0, K)``
        is :meth:`mean` and its covariance :meth:`covariance`. Shapes follow ``y_train``."""
        g = self.spectral_factor(t)
        f0x, _ = _as_2d_targets(f0_train.to(self.evecs.dtype))
        f0s, _ = _as_2d_targets(f0_test.to(self.evecs.dtype))
        out = f0s + self.b @ (g.unsqueeze(-1) * (self.y_eig - self.evecs.transpose(-1, -2) @ f0x))
        return out.squeeze(-1) if self._squeeze else out


def predict(kernel, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
            t: float | Sequence[float] = math.inf, learning_rate: float = 1.0, noise: float = 0.0,
            diag: bool = False, rcond: float = 1e-12) -> Predictions:
    """NNGP posterior and NTK gradient-descent prediction at time(s) ``t`` from ONE kernel evaluation.

    Args:
        kernel: an :class:`~nngp_gpytorch.kernels.NNGPKernel` or ``NTKKernel`` (anything with
            ``nngp_and_ntk(x1, x2, diag)``); both K and Θ come from the same pass.
        x_train: ``(N, d)``; y_train: ``(N,)`` or ``(N, O)``; x_test: ``(N*, d)``.
        t: training time (``math.inf`` = trained to convergence) or a sequence of times.
        learning_rate: ``η`` for ``L = ½·Σ‖f − y‖²``.
        noise: observation-noise variance of the NNGP posterior (the NTK dynamics have none).
        diag: return only test variances (the test–test block is then evaluated on its diagonal).

    Returns:
        :class:`Predictions` (``.nngp``, ``.ntk``, ``.dynamics``).
    """
    n = x_train.shape[-2]
    if diag:
        k_all, t_all = kernel.nngp_and_ntk(torch.cat([x_train, x_test], dim=-2), x_train)
        k_test, _ = kernel.nngp_and_ntk(x_test, x_test, diag=True)
    else:
        k_full, t_full = kernel.nngp_and_ntk(torch.cat([x_train, x_test], dim=-2))
        k_all, t_all = k_full[..., :, :n], t_full[..., :, :n]
        k_test = k_full[..., n:, n:]
    k_all, t_all = _dense(k_all), _dense(t_all)
    k_test = _dense(k_test)
    k_train, k_test_train = k_all[..., :n, :], k_all[..., n:, :]
    theta_train, theta_test_train = t_all[..., :n, :], t_all[..., n:, :]
    dyn = GradientDescentDynamics(k_train, theta_train, k_test_train, theta_test_train, k_test, y_train,
                                  learning_rate=learning_rate, rcond=rcond)
    nngp = nngp_posterior(k_train, k_test_train, k_test, y_train, noise=noise, rcond=rcond)
    ntk = [dyn.predict(float(s)) for s in t] if isinstance(t, Sequence) else dyn.predict(float(t))
    return Predictions(nngp=nngp, ntk=ntk, dynamics=dyn)


def _dense(x):
    return x.to_dense() if hasattr(x, "to_dense") else x

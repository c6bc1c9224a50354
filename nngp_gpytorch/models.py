"""Small conveniences: an exact GP regression model with an infinite-width kernel, and hyperparameter fitting.

GPyTorch leaves the training loop to the user; :func:`fit` is that loop (Adam or L-BFGS on the exact
marginal likelihood, priors included when registered), so that

>>> import torch
>>> from nngp_gpytorch import NNGPKernel, arch as A
>>> from nngp_gpytorch.models import NNGPRegressionModel, fit
>>> x, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
>>> model = NNGPRegressionModel(x, y, NNGPKernel(A.mlp(2)))
>>> result = fit(model, optimizer="lbfgs", steps=20)
>>> mean, variance = model.predict(x[:5])

learns σw², σb² and the noise variance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import gpytorch
import torch
from gpytorch.kernels import Kernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.means import ConstantMean, Mean

from .arch import mlp
from .kernels import NNGPKernel


class NNGPRegressionModel(gpytorch.models.ExactGP):
    r"""Exact GP regression ``y = f(x) + ε``, ``f ~ GP(m, k)``, ``ε ~ N(0, σ²_noise)``.

    ``k`` is any kernel (by default ``NNGPKernel(arch.mlp(2))``, a ReLU MLP NNGP); ``m`` a constant mean by
    default. Inputs ``train_x`` ``(n, d)``, targets ``train_y`` ``(n,)``. The model's dtype follows
    ``train_x`` (the kernel, mean and likelihood are converted).

    Args:
        train_x, train_y: training data.
        kernel: covariance module (e.g. :class:`~nngp_gpytorch.NNGPKernel`, or a ``ScaleKernel`` around one).
        likelihood: default :class:`~gpytorch.likelihoods.GaussianLikelihood`.
        mean: default :class:`~gpytorch.means.ConstantMean`.
    """

    def __init__(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        kernel: Kernel | None = None,
        likelihood: GaussianLikelihood | None = None,
        mean: Mean | None = None,
    ):
        if train_x.dim() != 2:
            raise ValueError(f"train_x must be (n, d), got shape {tuple(train_x.shape)}")
        if train_y.shape != train_x.shape[:1]:
            raise ValueError(f"train_y must be (n,) = ({train_x.shape[0]},), got shape {tuple(train_y.shape)}")
        likelihood = likelihood if likelihood is not None else GaussianLikelihood()
        super().__init__(train_x, train_y, likelihood)
        self.mean_module = mean if mean is not None else ConstantMean()
        self.covar_module = kernel if kernel is not None else NNGPKernel(mlp(2))
        self.to(train_x.dtype)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, include_noise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior predictive mean and variance at ``x`` ``(m, d)``, each ``(m,)`` (switches to eval mode)."""
        self.eval()
        self.likelihood.eval()
        posterior = self(x)
        if include_noise:
            posterior = self.likelihood(posterior)
        return posterior.mean, posterior.variance


@dataclass
class FitResult:
    """Outcome of :func:`fit`: the loss (negative MLL per data point, priors included) after each step."""

    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def fit(
    model: gpytorch.models.ExactGP,
    optimizer: Literal["adam", "lbfgs"] = "adam",
    steps: int | None = None,
    lr: float | None = None,
    callback=None,
) -> FitResult:
    r"""Type-II maximum likelihood (or MAP when priors are registered) for an exact GP.

    Maximizes ``log p(y | X, θ)/n + Σ log p(θ)/n`` (GPyTorch's ``ExactMarginalLogLikelihood``) over all
    trainable parameters of ``model`` and its likelihood — for an NNGP model σw², σb², the noise and the
    mean — then leaves the model in eval mode.

    Args:
        model: an ``ExactGP`` with ``model.likelihood`` a Gaussian likelihood, holding its training data.
        optimizer: ``"adam"`` (default 200 steps, lr 0.05) or ``"lbfgs"`` (strong-Wolfe line search, default
            50 steps, lr 1).
        callback: called as ``callback(step, loss)`` after every step.

    Returns:
        :class:`FitResult` with the loss after each step. A loss that becomes NaN raises ``RuntimeError``.
    """
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if model.train_inputs is None:
        raise ValueError("the model holds no training data")
    x, y = model.train_inputs[0], model.train_targets
    likelihood = model.likelihood
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    likelihood.train()
    result = FitResult()

    def objective():
        return -mll(model(x), y)

    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr or 0.05)
        for step in range(steps or 200):
            opt.zero_grad()
            loss = objective()
            loss.backward()
            opt.step()
            _record(result, loss, step, callback)
    else:
        opt = torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        for step in range(steps or 50):
            loss = opt.step(closure)
            _record(result, loss, step, callback)
            if step > 0 and abs(result.losses[-2] - result.losses[-1]) < 1e-9:
                break
    model.eval()
    likelihood.eval()
    return result


def _record(result: FitResult, loss: torch.Tensor, step: int, callback) -> None:
    value = float(loss.detach())
    if value != value:
        raise RuntimeError(f"the marginal likelihood became NaN at step {step}; try a smaller learning rate")
    result.losses.append(value)
    if callback is not None:
        callback(step, value)


__all__ = ["FitResult", "NNGPRegressionModel", "fit"]

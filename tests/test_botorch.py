"""BoTorch: an NNGP kernel inside SingleTaskGP, fitted with fit_gpytorch_mll, driving Bayesian optimization."""

from __future__ import annotations

import pytest
import torch

botorch = pytest.importorskip("botorch")

from botorch.acquisition import LogExpectedImprovement  # noqa: E402
from botorch.fit import fit_gpytorch_mll  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.transforms import Normalize, Standardize  # noqa: E402
from botorch.optim import optimize_acqf  # noqa: E402
from botorch.test_functions import Branin  # noqa: E402
from gpytorch.kernels import ScaleKernel  # noqa: E402
from gpytorch.mlls import ExactMarginalLogLikelihood  # noqa: E402

from nngp_gpytorch import NNGPKernel  # noqa: E402
from nngp_gpytorch import arch as A  # noqa: E402

torch.set_num_threads(1)


def _model(x, y, kernel):
    return SingleTaskGP(x, y, covar_module=ScaleKernel(kernel), input_transform=Normalize(d=x.shape[-1]),
                        outcome_transform=Standardize(m=1))


def test_fit_gpytorch_mll_learns_weight_and_bias_variances():
    torch.manual_seed(0)
    problem = Branin(negate=True)
    x = problem.bounds[0] + (problem.bounds[1] - problem.bounds[0]) * torch.rand(20, 2, dtype=torch.float64)
    y = problem(x).unsqueeze(-1)
    kernel = NNGPKernel(A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.ReLU(), A.Dense()))
    model = _model(x, y, kernel)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    model.train()
    before = -mll(model(*model.train_inputs), model.train_targets).item()
    fit_gpytorch_mll(mll)
    model.train()
    after = -mll(model(*model.train_inputs), model.train_targets).item()
    assert after < before
    assert kernel.weight_var.item() != pytest.approx(1.0)
    posterior = model.posterior(x[:3])
    assert posterior.mean.shape == (3, 1) and (posterior.variance > 0).all()


def test_bayesian_optimization_steps_on_branin():
    """Five BO steps with LogEI on Branin (negated, max 0 at -0.3979) improve on the best of 8 Sobol points."""
    torch.manual_seed(1)
    problem = Branin(negate=True)
    bounds = problem.bounds.to(torch.float64)
    sobol = torch.quasirandom.SobolEngine(2, scramble=True, seed=1)
    x = bounds[0] + (bounds[1] - bounds[0]) * sobol.draw(8, dtype=torch.float64)
    y = problem(x).unsqueeze(-1)
    initial_best = y.max().item()
    for _ in range(5):
        model = _model(x, y, NNGPKernel(A.mlp(2, A.Erf())))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        acquisition = LogExpectedImprovement(model, best_f=y.max())
        candidate, value = optimize_acqf(acquisition, bounds=bounds, q=1, num_restarts=2, raw_samples=64)
        assert torch.isfinite(value).all()
        assert ((candidate >= bounds[0]) & (candidate <= bounds[1])).all()
        x = torch.cat([x, candidate])
        y = torch.cat([y, problem(candidate).unsqueeze(-1)])
    assert y.max().item() > initial_best

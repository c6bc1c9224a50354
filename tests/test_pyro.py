"""Priors, NUTS over σw², σb² (Pyro), the predictive mixture, and Bayesian model comparison."""

from __future__ import annotations

import math
import pickle

import gpytorch
import pytest
import torch
from gpytorch.kernels import ScaleKernel

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.models import NNGPRegressionModel, fit
from nngp_gpytorch.priors import (
    _log_joint_fn,
    add_default_priors,
    compare_models,
    default_priors,
    laplace_log_evidence,
    posterior_predictive,
    run_nuts,
)

torch.set_num_threads(1)


def _data(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.sin(1.5 * x[:, 0]) + 0.5 * x[:, 1] + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, (y - y.mean()) / y.std()


def test_default_priors_register_and_pickle():
    x, y = _data()
    model = add_default_priors(NNGPRegressionModel(x, y, ScaleKernel(NNGPKernel(A.mlp(2)))))
    names = {name for name, *_ in model.named_priors()}
    assert names == {"covar_module.base_kernel.weight_var_prior", "covar_module.base_kernel.bias_var_prior",
                     "covar_module.outputscale_prior", "likelihood.noise_covar.noise_prior"}
    pickle.loads(pickle.dumps(model))
    # idempotent: a second call registers nothing new and keeps user priors
    add_default_priors(model)
    assert len(list(model.named_priors())) == 4
    for prior in default_priors().values():
        assert torch.isfinite(prior.log_prob(torch.tensor(0.5)))


def test_log_joint_matches_gpytorch_mll_and_priors():
    """The potential used by NUTS and Laplace = GPyTorch's exact MLL·n + Σ log priors + Jacobian of θ = exp(u)."""
    x, y = _data()
    model = add_default_priors(NNGPRegressionModel(x, y, NNGPKernel(A.mlp(2, A.Erf()))))
    parts, _, fixed, free = _log_joint_fn(model)
    assert fixed == [] and [name for name, *_ in free] == ["weight_var", "bias_var", "noise"]
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    for w, b, noise in [(0.8, 0.05, 0.3), (2.5, 0.6, 0.02)]:
        u = torch.tensor([w, b, noise], dtype=torch.float64).log()
        log_lik, log_prior, _ = parts(u)
        model.covar_module.weight_var, model.covar_module.bias_var, model.likelihood.noise = w, b, noise
        model.train()
        with torch.no_grad():
            expected = mll(model(x), y) * len(y)  # includes Σ log p(θ)
        torch.testing.assert_close(log_lik + log_prior - u.sum(), expected, rtol=1e-7, atol=1e-7)


def _grid_log_evidence(model, lo=-6.0, hi=4.0, points=121):
    """Brute-force ∫∫ exp(log joint) du_w du_b on a grid in u = log θ (noise held fixed)."""
    parts, _, _, free = _log_joint_fn(model)
    assert [name for name, *_ in free] == ["weight_var", "bias_var"]
    grid = torch.linspace(lo, hi, points, dtype=torch.float64)
    step = (hi - lo) / (points - 1)
    u = torch.cartesian_prod(grid, grid)  # (points², 2), evaluated as one batch of hyperparameters
    with torch.no_grad():
        log_lik, log_prior, _ = parts(u)
    return float(torch.logsumexp(log_lik + log_prior, 0) + 2 * math.log(step))


def test_laplace_evidence_matches_grid_integral():
    x, y = _data(15)
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    model = NNGPRegressionModel(x, y, NNGPKernel(A.mlp(1, A.Erf())), likelihood=likelihood)
    model.likelihood.noise = 0.1
    model.likelihood.raw_noise.requires_grad_(False)
    add_default_priors(model.covar_module)
    fit(model, optimizer="lbfgs")
    evidence = laplace_log_evidence(model)
    assert evidence.fixed == ["noise"]
    exact = _grid_log_evidence(model, points=121)  # converged to 2e-4 nats (121 vs 241 points)
    # Laplace is an approximation: measured 0.026 nats off here
    assert abs(evidence.log_evidence - exact) < 0.1, (evidence.log_evidence, exact)


def test_compare_models_prefers_the_generating_kernel():
    """Targets drawn from a sign-MLP NNGP (rough) vs an erf-MLP NNGP (smooth): the evidence picks the right one."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 2, generator=g, dtype=torch.float64)
    truth = NNGPKernel(A.Serial(A.Dense(), A.Sign(), A.Dense()), weight_var=1.0, bias_var=0.1).double()
    with torch.no_grad():
        cov = truth(x).to_dense() + 0.01 * torch.eye(60, dtype=torch.float64)
        y = torch.linalg.cholesky(cov) @ torch.randn(60, generator=g, dtype=torch.float64)
    models = {
        "sign": NNGPRegressionModel(x, y, NNGPKernel(A.Serial(A.Dense(), A.Sign(), A.Dense()))),
        "erf depth 2": NNGPRegressionModel(x, y, NNGPKernel(A.mlp(2, A.Erf()))),
        "linear": NNGPRegressionModel(x, y, NNGPKernel(A.mlp(0))),
    }
    rows = compare_models(models)
    assert rows[0].name == "sign", [(r.name, r.log_evidence) for r in rows]
    assert abs(sum(r.probability for r in rows) - 1) < 1e-12
    assert rows[0].log_evidence > rows[-1].log_evidence + 3


def test_nuts_matches_grid_posterior():
    """NUTS (potential route) over log σw² with σb², noise fixed: posterior mean of log σw² vs a 1-D grid."""
    x, y = _data(15, seed=2)
    model = NNGPRegressionModel(x, y, NNGPKernel(A.mlp(1), bias_var=0.1))
    model.likelihood.noise = 0.1
    for p in (model.likelihood.raw_noise, model.covar_module.raw_bias_var, model.mean_module.raw_constant):
        p.requires_grad_(False)
    model.covar_module.register_prior("weight_var_prior", default_priors()["weight_var"],
                                      lambda m: m.weight_var, lambda m, v: m._set_weight_var(v))
    parts, _, _, _ = _log_joint_fn(model)
    grid = torch.linspace(-4, 4, 801, dtype=torch.float64)
    with torch.no_grad():
        log_post = sum(parts(grid.unsqueeze(-1))[:2])
    weights = torch.softmax(log_post, 0)
    mean = float((weights * grid).sum())
    sd = float((weights * (grid - mean) ** 2).sum().sqrt())

    samples = run_nuts(model, num_samples=300, warmup_steps=150, seed=0)
    u = samples["covar_module.weight_var_prior"].log().flatten()
    assert u.shape == (300,)
    # NUTS draws are nearly independent here; allow 5 standard errors with an effective size of 100
    assert abs(float(u.mean()) - mean) < 5 * sd / math.sqrt(100), (float(u.mean()), mean, sd)
    assert 0.7 * sd < float(u.std()) < 1.3 * sd
    assert model.covar_module.batch_shape == torch.Size([300])


def test_gpytorch_sampler_route_and_predictive_mixture():
    """GPyTorch's own pattern (pyro_sample_from_prior inside the Pyro model) runs; the mixture is consistent."""
    x, y = _data(12)
    model = add_default_priors(NNGPRegressionModel(x, y, NNGPKernel(A.mlp(1))))
    fit(model, optimizer="lbfgs", steps=5)
    samples = run_nuts(model, num_samples=6, warmup_steps=4, sampler="gpytorch", max_tree_depth=3)
    assert {v.shape for v in samples.values()} == {torch.Size([6, 1])}
    assert model.covar_module.weight_var.shape == (6, 1)
    xt, _ = _data(7, seed=5)
    mix = posterior_predictive(model, xt)
    assert mix.mean.shape == mix.variance.shape == (7,)
    assert mix.component_means.shape == (6, 7)
    torch.testing.assert_close(mix.mean, mix.component_means.mean(0))
    # law of total variance: the mixture is at least as wide as the average component
    assert (mix.variance >= mix.component_variances.mean(0) - 1e-12).all()
    # each component is the GP posterior with that sample's hyperparameters
    single = NNGPRegressionModel(x, y, NNGPKernel(A.mlp(1)))
    single.mean_module.constant = model.mean_module.constant.detach()
    single.covar_module.weight_var = model.covar_module.weight_var[2].detach()
    single.covar_module.bias_var = model.covar_module.bias_var[2].detach()
    single.likelihood.noise = model.likelihood.noise[2].detach()
    mean, variance = single.predict(xt)
    torch.testing.assert_close(mix.component_means[2], mean)
    torch.testing.assert_close(mix.component_variances[2], variance)
    lower, upper = mix.interval()
    assert (lower < mix.mean).all() and (mix.mean < upper).all()


def test_errors_are_clear():
    x, y = _data(10)
    model = NNGPRegressionModel(x, y, NNGPKernel(A.mlp(1)))
    with pytest.raises(ValueError, match="no priors"):
        run_nuts(model)
    with pytest.raises(ValueError, match="no posterior samples"):
        posterior_predictive(model, x)
    with pytest.raises(TypeError, match="NNGPKernel"):
        add_default_priors(gpytorch.kernels.RBFKernel())

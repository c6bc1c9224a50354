r"""Priors over σw², σb² (and the noise), fully Bayesian inference with Pyro's NUTS, and model comparison.

* :func:`default_priors` / :func:`add_default_priors`: weakly informative priors for standardized data.
* :func:`run_nuts`: NUTS over every hyperparameter with a registered prior, through GPyTorch's
  ``pyro_sample_from_prior`` / ``pyro_load_from_samples`` (the model becomes a batch of S models).
* :func:`posterior_predictive`: the predictive distribution mixing the S sampled models.
* :func:`laplace_log_evidence` / :func:`compare_models`: Bayesian model comparison (depths, activations,
  architectures) by the marginal likelihood ``p(y | M) = ∫ p(y | θ, M) p(θ | M) dθ`` over the
  hyperparameters, by Laplace's method in log-space (MacKay 1992).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import gpytorch
import torch
from gpytorch.kernels import Kernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.priors import GammaPrior, LogNormalPrior, Prior

from .kernels.base import InfiniteWidthKernel


# --- default priors -----------------------------------------------------------------------------------------
def default_weight_var_prior() -> Prior:
    """σw² ~ LogNormal(0.5, 0.75): median 1.65, central 95% in [0.38, 7.2] (covers the ReLU critical σw² = 2)."""
    return LogNormalPrior(0.5, 0.75)


def default_bias_var_prior() -> Prior:
    """σb² ~ Gamma(1.5, 5): mean 0.3, mode 0.1, vanishing density at exactly 0."""
    return GammaPrior(1.5, 5.0)


def default_noise_prior() -> Prior:
    """Noise variance ~ LogNormal(log 0.1, 1.5), for targets standardized to unit variance."""
    return LogNormalPrior(math.log(0.1), 1.5)


def default_outputscale_prior() -> Prior:
    """Output scale of a ``ScaleKernel`` ~ LogNormal(0, 1)."""
    return LogNormalPrior(0.0, 1.0)


def default_priors() -> dict[str, Prior]:
    """Fresh default priors, keyed ``weight_var``, ``bias_var``, ``noise``, ``outputscale``."""
    return {"weight_var": default_weight_var_prior(), "bias_var": default_bias_var_prior(),
            "noise": default_noise_prior(), "outputscale": default_outputscale_prior()}


def _split_kernel(kernel: Kernel) -> tuple[ScaleKernel | None, InfiniteWidthKernel]:
    scale = kernel if isinstance(kernel, ScaleKernel) else None
    base = kernel.base_kernel if scale is not None else kernel
    if not isinstance(base, InfiniteWidthKernel):
        raise TypeError(f"expected an NNGPKernel/NTKKernel (optionally in a ScaleKernel), got {type(base).__name__}")
    return scale, base


def add_default_priors(target: gpytorch.Module) -> gpytorch.Module:
    """Register the default priors where none is registered yet; returns ``target``.

    ``target`` is an :class:`~nngp_gpytorch.kernels.base.InfiniteWidthKernel`, a ``ScaleKernel`` around one
    (the output scale gets a prior too), or an ``ExactGP`` whose ``covar_module`` is one of those (its
    Gaussian likelihood's noise gets a prior too).
    """
    priors = default_priors()
    kernel = getattr(target, "covar_module", target)
    scale, base = _split_kernel(kernel)
    names = {name for name, *_ in base.named_priors()}
    if "weight_var_prior" not in names:
        base.register_variance_prior("weight_var", priors["weight_var"])
    if "bias_var_prior" not in names:
        base.register_variance_prior("bias_var", priors["bias_var"])
    if scale is not None and getattr(scale, "outputscale_prior", None) is None:
        scale.register_prior("outputscale_prior", priors["outputscale"], scale._outputscale_param,
                             scale._outputscale_closure)
    likelihood = getattr(target, "likelihood", None)
    if isinstance(likelihood, GaussianLikelihood) and getattr(likelihood.noise_covar, "noise_prior", None) is None:
        noise_covar = likelihood.noise_covar
        noise_covar.register_prior("noise_prior", priors["noise"], noise_covar._noise_param, noise_covar._noise_closure)
    target.to(next(target.parameters()).dtype)
    return target


# --- NUTS ---------------------------------------------------------------------------------------------------
def run_nuts(
    model: gpytorch.models.ExactGP,
    num_samples: int = 100,
    warmup_steps: int = 100,
    seed: int = 0,
    max_tree_depth: int = 5,
    sampler: Literal["potential", "gpytorch"] = "potential",
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    r"""Sample ``p(θ | y) ∝ p(y | θ) p(θ)`` with NUTS over every hyperparameter that has a registered prior.

    Two equivalent routes to the same posterior:

    * ``sampler="potential"`` (default, ~4× faster): NUTS on the log joint in ``u = log θ`` (the same
      function :func:`laplace_log_evidence` uses), for σw², σb², the output scale and the noise.
    * ``sampler="gpytorch"``: GPyTorch's generic pattern — a Pyro model calling ``model.pyro_sample_from_prior()``
      (deep-copies the model at every gradient evaluation), for any prior-bearing parameter.

    Parameters without a prior (e.g. a constant mean) stay at their current values, so fit them first
    (:func:`nngp_gpytorch.models.fit`). Afterwards ``model`` holds the S samples as a batch (GPyTorch's
    ``pyro_load_from_samples``): σw² becomes ``(S, slots)``; evaluate it with :func:`posterior_predictive`.

    Returns:
        The samples keyed by prior name (``"covar_module.weight_var_prior"``, ...), each ``(S, *shape)``.
    """
    import pyro
    from pyro.infer.mcmc import MCMC, NUTS

    if not list(model.named_priors()):
        raise ValueError("the model has no priors: call add_default_priors(model) first")
    if sampler not in ("potential", "gpytorch"):
        raise ValueError(f"sampler must be 'potential' or 'gpytorch', got {sampler!r}")
    pyro.set_rng_seed(seed)
    if sampler == "potential":
        parts, u0, _, free = _log_joint_fn(model)
        prior_names = {id(prior): name for name, _, prior, *_ in model.named_priors()}
        covered = {id(prior) for _, _, prior in free}
        missing = [name for name, _, prior, *_ in model.named_priors() if id(prior) not in covered]
        if missing:
            raise ValueError(f"sampler='potential' covers σw², σb², output scale and noise; use sampler='gpytorch' "
                             f"for the priors {missing}")

        def potential(params):
            log_lik, log_prior, _ = parts(params["u"])
            return -(log_lik + log_prior)

        kernel = NUTS(potential_fn=potential, max_tree_depth=max_tree_depth)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, initial_params={"u": u0},
                    disable_progbar=not progress)
        mcmc.run()
        u = mcmc.get_samples()["u"].detach()
        samples, offset = {}, 0
        for _, value, prior in free:
            size = value.numel()
            samples[prior_names[id(prior)]] = u[:, offset:offset + size].exp().reshape(-1, *value.shape)
            offset += size
    else:
        x, y = model.train_inputs[0], model.train_targets
        model.train()
        model.likelihood.train()

        def pyro_model(x, y):
            with gpytorch.settings.fast_computations(False, False, False):
                sampled = model.pyro_sample_from_prior()
                output = sampled.likelihood(sampled(x))
                pyro.sample("obs", output, obs=y)
            return y

        mcmc = MCMC(NUTS(pyro_model, max_tree_depth=max_tree_depth), num_samples=num_samples,
                    warmup_steps=warmup_steps, disable_progbar=not progress)
        mcmc.run(x, y)
        samples = {name: value.detach() for name, value in mcmc.get_samples().items()}
    model.pyro_load_from_samples(samples)
    model.eval()
    model.likelihood.eval()
    return samples


@dataclass
class PredictiveMixture:
    r"""Posterior predictive mixing S sampled models: ``p(y*|y) ≈ (1/S) Σ_s N(μ_s, v_s)``.

    ``mean = (1/S) Σ μ_s``, ``variance = (1/S) Σ (v_s + μ_s²) − mean²`` (law of total variance), each ``(m,)``;
    the components are ``(S, m)``.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    component_means: torch.Tensor
    component_variances: torch.Tensor

    def interval(self, z: float = 1.96) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian-approximate interval ``mean ± z·sqrt(variance)``."""
        half = z * self.variance.sqrt()
        return self.mean - half, self.mean + half


@torch.no_grad()
def posterior_predictive(model: gpytorch.models.ExactGP, x: torch.Tensor, include_noise: bool = True
                         ) -> PredictiveMixture:
    """Predictive mixture at ``x`` ``(m, d)`` of a model holding S samples (after :func:`run_nuts`)."""
    model.eval()
    model.likelihood.eval()
    samples = _num_samples(model)
    posterior = model(x.unsqueeze(0).expand(samples, *x.shape))
    if include_noise:
        posterior = model.likelihood(posterior)
    means, variances = posterior.mean, posterior.variance
    mean = means.mean(0)
    variance = (variances + means**2).mean(0) - mean**2
    return PredictiveMixture(mean, variance.clamp_min(0), means, variances)


def _num_samples(model: gpytorch.models.ExactGP) -> int:
    _, base = _split_kernel(model.covar_module)
    if len(base.batch_shape) == 0:  # pyro_load_from_samples prepends the sample dimension to batch_shape
        raise ValueError("the model holds no posterior samples: run run_nuts(model) first")
    return base.batch_shape[0]


# --- model comparison ---------------------------------------------------------------------------------------
@dataclass
class Evidence:
    r"""Laplace estimate of ``log p(y | M)`` with the hyperparameters that were integrated over.

    ``log_evidence = log p(y|θ̂) + log p(θ̂) + Σ û + (k/2) log 2π − ½ log det H`` in ``u = log θ`` (the ``Σ û``
    is the Jacobian of θ = exp u); ``H`` is the negative Hessian of the log joint at its mode ``û``.
    ``fixed`` names parameters without a prior, held at their current (fitted) values.
    """

    log_evidence: float
    log_likelihood: float
    log_prior: float
    hyperparameters: dict[str, list[float]]
    fixed: list[str]
    n: int


def _hyperparameter_blocks(model: gpytorch.models.ExactGP):
    """[(name, current value (flat), prior or None)] for σw², σb², outputscale and noise."""
    scale, base = _split_kernel(model.covar_module)
    if base.batch_shape != torch.Size([]) or base.raw_weight_var.dim() != 1:
        raise ValueError("laplace_log_evidence needs a non-batch model (not one holding NUTS samples)")
    if not isinstance(model.likelihood, GaussianLikelihood):
        raise TypeError("laplace_log_evidence needs a GaussianLikelihood")
    blocks = [("weight_var", base.weight_var.detach(), getattr(base, "weight_var_prior", None)),
              ("bias_var", base.bias_var.detach(), getattr(base, "bias_var_prior", None))]
    if scale is not None:
        blocks.append(("outputscale", scale.outputscale.detach().reshape(1), getattr(scale, "outputscale_prior", None)))
    noise_covar = model.likelihood.noise_covar
    blocks.append(("noise", model.likelihood.noise.detach().reshape(-1)[:1], getattr(noise_covar, "noise_prior", None)))
    return scale, base, blocks


def _log_joint_fn(model: gpytorch.models.ExactGP):
    """``f(u)`` = log p(y | θ(u)) + log p(θ(u)) + Σ u over the prior-bearing hyperparameters, and its parts."""
    scale, base, blocks = _hyperparameter_blocks(model)
    x, y = model.train_inputs[0], model.train_targets
    if base.active_dims is not None:
        x_kernel = x.index_select(-1, base.active_dims)
    else:
        x_kernel = x
    with torch.no_grad():
        mean = model.mean_module(x).detach()
    free = [(name, value, prior) for name, value, prior in blocks if prior is not None]
    sizes = [value.numel() for _, value, _ in free]
    u0 = torch.cat([value.log() for _, value, _ in free]) if free else x.new_zeros(0)
    fixed = {name: value for name, value, prior in blocks if prior is None}

    def parts(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``u``: ``(..., k)`` (leading dims evaluate a batch of hyperparameter values at once)."""
        batch = u.shape[:-1]
        values = {name: value.expand(*batch, value.numel()) for name, value in fixed.items()}
        log_prior = u.sum(-1)  # Jacobian of θ = exp(u)
        for (name, _, prior), chunk in zip(free, u.split(sizes, dim=-1), strict=True):
            values[name] = chunk.exp()
            log_prior = log_prior + prior.log_prob(values[name]).sum(-1)
        raw = {"raw_weight_var": base.raw_weight_var_constraint.inverse_transform(values["weight_var"]),
               "raw_bias_var": base.raw_bias_var_constraint.inverse_transform(values["bias_var"])}
        with gpytorch.settings.lazily_evaluate_kernels(False):  # evaluate while the raw values are swapped in
            k = torch.func.functional_call(base, raw, (x_kernel,)).to_dense()
        if scale is not None:
            k = values["outputscale"].unsqueeze(-1) * k
        k = k + values["noise"].unsqueeze(-1) * torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
        chol = torch.linalg.cholesky(k)
        r = (y - mean).expand(*batch, len(y))
        alpha = torch.cholesky_solve(r.unsqueeze(-1), chol).squeeze(-1)
        log_lik = (-0.5 * (r * alpha).sum(-1) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
                   - 0.5 * len(y) * math.log(2 * math.pi))
        return log_lik, log_prior, values

    return parts, u0, sorted(fixed), free


def laplace_log_evidence(model: gpytorch.models.ExactGP, newton_steps: int = 50, fd_step: float = 1e-4) -> Evidence:
    r"""Laplace approximation of the log marginal likelihood ``log ∫ p(y | θ) p(θ) dθ`` of a GP regression model.

    Integrates over every one of σw², σb², the ``ScaleKernel`` output scale and the noise variance that has a
    prior (:func:`add_default_priors`), in ``u = log θ``; the rest (mean, parameters without priors) stay at
    their current values — fit the model first. The mode is refined by L-BFGS, the Hessian taken by central
    differences of the exact gradient. Use float64. Not for set-dependent kernels (batch norm).
    """
    parts, u0, fixed, _ = _log_joint_fn(model)

    def log_joint(u):
        log_lik, log_prior, _ = parts(u)
        return log_lik + log_prior

    u = u0.clone().requires_grad_(True)
    if u.numel():
        opt = torch.optim.LBFGS([u], lr=1.0, max_iter=newton_steps, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-10, tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            loss = -log_joint(u)
            loss.backward()
            return loss

        opt.step(closure)

    def grad(v):
        v = v.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(log_joint(v), v)
        return g

    k = u.numel()
    u_hat = u.detach()
    hessian = torch.zeros(k, k, dtype=u_hat.dtype)
    for j in range(k):
        step = torch.zeros_like(u_hat)
        step[j] = fd_step
        hessian[:, j] = (grad(u_hat + step) - grad(u_hat - step)) / (2 * fd_step)
    neg_h = -(hessian + hessian.T) / 2
    with torch.no_grad():
        log_lik, log_prior, values = parts(u_hat)
    if k:
        eig = torch.linalg.eigvalsh(neg_h)
        if (eig <= 0).any():
            raise RuntimeError(f"the log joint is not locally concave at its mode (Hessian eigenvalues {eig.tolist()});"
                               " the Laplace approximation does not apply")
        log_det = eig.log().sum()
    else:
        log_det = torch.zeros(())
    log_z = log_lik + log_prior + 0.5 * k * math.log(2 * math.pi) - 0.5 * log_det
    return Evidence(
        log_evidence=float(log_z), log_likelihood=float(log_lik), log_prior=float(log_prior),
        hyperparameters={name: value.detach().reshape(-1).tolist() for name, value in values.items()},
        fixed=fixed, n=len(model.train_targets),
    )


@dataclass
class ModelComparison:
    """One row of :func:`compare_models`: Laplace log evidence, its fitted type-II log likelihood, and the
    posterior model probability under a uniform prior over the compared models."""

    name: str
    log_evidence: float
    log_likelihood: float
    probability: float
    evidence: Evidence


def compare_models(models: dict[str, gpytorch.models.ExactGP], fit_kwargs: dict | None = None,
                   priors: bool = True) -> list[ModelComparison]:
    r"""Rank GP regression models (e.g. MLP NNGPs of different depths/activations) on the same data by
    ``log p(y | M)``; the posterior probability of each model under a uniform prior over them is
    ``p(M | y) = p(y | M) / Σ_M' p(y | M')``.

    Each model gets the default priors (unless ``priors=False``), is fitted to its MAP by
    :func:`nngp_gpytorch.models.fit` (``fit_kwargs``, default L-BFGS), then scored with
    :func:`laplace_log_evidence`. Returns rows sorted best first.
    """
    from .models import fit

    rows = []
    for name, model in models.items():
        if priors:
            add_default_priors(model)
        fit(model, **(fit_kwargs or {"optimizer": "lbfgs"}))
        evidence = laplace_log_evidence(model)
        rows.append((name, evidence))
    log_z = torch.tensor([e.log_evidence for _, e in rows], dtype=torch.float64)
    probs = torch.softmax(log_z, 0).tolist()
    out = [ModelComparison(name, e.log_evidence, e.log_likelihood, p, e)
           for (name, e), p in zip(rows, probs, strict=True)]
    return sorted(out, key=lambda r: -r.log_evidence)


__all__ = [
    "Evidence", "ModelComparison", "PredictiveMixture", "add_default_priors", "compare_models",
    "default_bias_var_prior", "default_noise_prior", "default_outputscale_prior", "default_priors",
    "default_weight_var_prior", "laplace_log_evidence", "posterior_predictive", "run_nuts",
]

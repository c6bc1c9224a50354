"""The main job: fit an NNGP regression model on scikit-learn's diabetes data by marginal likelihood.

Run with ``python -m nngp_gpytorch.demo``. Trains σw², σb² (shared across the layers of a depth-3 ReLU
MLP kernel) and the noise variance with Adam on the exact marginal likelihood, then compares the test
RMSE with a constant (training-mean) predictor.
"""

from __future__ import annotations

import argparse
import time

import gpytorch
import torch

from .arch import ReLU, mlp
from .kernels import NNGPKernel


class NNGPRegression(gpytorch.models.ExactGP):
    """``f ~ GP(c, K_NNGP)``, ``y = f + ε``; ``K`` is the kernel of one output unit of the network."""

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, likelihood, kernel):
        super().__init__(train_x, train_y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def load_diabetes(seed: int = 0, dtype=torch.float64):
    """Standardized diabetes regression data (442 × 10), split 75/25 with a seeded permutation."""
    from sklearn.datasets import load_diabetes as sk_load

    data = sk_load()
    x = torch.as_tensor(data.data, dtype=dtype)
    y = torch.as_tensor(data.target, dtype=dtype)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = int(0.75 * len(y))
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0)
    x = (x - mu) / sd
    y_mu, y_sd = y[:n_train].mean(), y[:n_train].std()
    y = (y - y_mu) / y_sd
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def run(depth: int = 3, iterations: int = 100, lr: float = 0.05, seed: int = 0, verbose: bool = True) -> dict:
    """Train the model and return a summary dict (losses, learned hyperparameters, RMSEs)."""
    torch.manual_seed(seed)
    train_x, train_y, test_x, test_y = load_diabetes(seed)
    kernel = NNGPKernel(mlp(depth, ReLU()), weight_var=1.0, bias_var=0.1, dtype=torch.float64)
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    model = NNGPRegression(train_x, train_y, likelihood, kernel).double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    likelihood.train()
    losses = []
    start = time.perf_counter()
    for step in range(iterations):
        optimizer.zero_grad()
        loss = -mll(model(train_x), train_y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if verbose and (step % 20 == 0 or step == iterations - 1):
            print(f"step {step:4d}  -mll/n = {loss.item():.4f}  σw² = {kernel.weight_var.item():.3f}  "
                  f"σb² = {kernel.bias_var.item():.3f}  noise = {likelihood.noise.item():.3f}")
    model.eval()
    likelihood.eval()
    with torch.no_grad():
        pred = likelihood(model(test_x))
    rmse = (pred.mean - test_y).pow(2).mean().sqrt().item()
    baseline = (train_y.mean() - test_y).pow(2).mean().sqrt().item()
    nlpd = -pred.log_prob(test_y).item() / len(test_y)
    summary = dict(losses=losses, rmse=rmse, baseline_rmse=baseline, test_nlpd=nlpd,
                   weight_var=kernel.weight_var.item(), bias_var=kernel.bias_var.item(),
                   noise=likelihood.noise.item(), seconds=time.perf_counter() - start)
    if verbose:
        print(f"\ntest RMSE (standardized): NNGP {rmse:.3f}  vs constant baseline {baseline:.3f}; "
              f"test NLPD {nlpd:.3f}; {summary['seconds']:.1f} s")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.depth, args.iterations, args.lr, args.seed)


if __name__ == "__main__":
    main()

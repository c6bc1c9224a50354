"""Finite MLPs trained by full-batch gradient descent follow the infinite-width NTK dynamics ever more
closely as width grows (Lee et al. 2019): gap ~ 1/√width."""

from __future__ import annotations

import math

import torch
from sklearn.datasets import load_diabetes

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.dynamics import GradientDescentDynamics
from verification.training import train_mlp_ensemble


def diabetes(n_train=32, n_test=16):
    x, y = load_diabetes(return_X_y=True)  # bundled with scikit-learn (no download)
    x, y = torch.tensor(x), torch.tensor(y)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    return x[:n_train], y[:n_train], x[n_train:n_train + n_test]


def test_gap_to_linearized_dynamics_shrinks_like_inverse_sqrt_width():
    torch.set_num_threads(1)
    xtr, ytr, xte = diabetes()
    arch = A.mlp(1, A.ReLU())
    n = xtr.shape[0]
    xa = torch.cat([xtr, xte])
    K, T = evaluate(arch, xa, xa, Hyperparameters.constant(1.0, 0.1), with_ntk=True)
    lr = 1.0 / float(torch.linalg.eigvalsh(T[:n, :n]).max())
    steps = 100
    dyn = GradientDescentDynamics(K[:n, :n], T[:n, :n], K[n:, :n], T[n:, :n], K[n:, n:], ytr,
                                  learning_rate=lr, discrete=True)
    widths, gaps = [64, 256, 1024], []
    for width in widths:
        ens = train_mlp_ensemble(arch, xtr, ytr, xte, width, networks=4, learning_rate=lr, steps=[steps],
                                 seed=width, bias_var=0.1)
        # the infinite-width network started from the same initial function f0
        lin = dyn.linearized(steps, ens.f0_train.T, ens.f0_test.T).T
        gaps.append(float(((ens.test[0] - lin) ** 2).mean().sqrt()))
        # training made progress: the training loss fell well below its initial value
        assert ((ens.train[0] - ytr) ** 2).mean() < 0.5 * ((ens.f0_train - ytr) ** 2).mean()
    slope = (math.log(gaps[-1]) - math.log(gaps[0])) / (math.log(widths[-1]) - math.log(widths[0]))
    assert gaps[0] > gaps[1] > gaps[2], gaps
    assert -0.8 < slope < -0.3, (slope, gaps)  # expected −1/2 (Lee et al. 2019, Theorem 2.1)

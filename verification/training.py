"""Finite MLPs in the NTK parameterization trained by full-batch gradient descent, vectorized over an
ensemble: the finite-width side of the NTK's training dynamics (Jacot et al. 2018; Lee et al. 2019).
The infinite-width prediction is :mod:`nngp_gpytorch.dynamics`; docs/ntk.md compares the two."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nngp_gpytorch.arch import Layer


@dataclass
class TrainedEnsemble:
    """Finite MLPs trained by full-batch gradient descent (see :func:`train_mlp_ensemble`).

    Attributes:
        f0_train, f0_test: outputs at initialization, ``(M, N)`` and ``(M, N*)`` float64.
        train, test: outputs after each recorded step, ``(len(steps), M, N)`` / ``(len(steps), M, N*)``.
        steps: the recorded step counts.
    """

    f0_train: torch.Tensor
    f0_test: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor
    steps: list[int]


def train_mlp_ensemble(
    architecture: Layer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    width: int,
    networks: int,
    learning_rate: float,
    steps: list[int],
    seed: int = 0,
    weight_var: float = 1.0,
    bias_var: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> TrainedEnsemble:
    """Train ``networks`` finite MLPs of hidden width ``width`` (NTK parameterization, vectorized over
    networks) by full-batch gradient descent on ``L = ½·Σ_i (f(x_i) − y_i)²`` with step ``learning_rate``.

    ``architecture`` must be a ``Serial`` of ``Dense`` and activation layers ending in ``Dense`` (one
    output unit); every affine map is ``z = σw/√fan_in·a·ω + σb·β`` with ``ω, β ~ N(0, 1)`` trained
    directly (Jacot et al. 2018). The infinite-width prediction for the same initial outputs is
    :meth:`nngp_gpytorch.dynamics.GradientDescentDynamics.linearized` with ``discrete=True``.

    Shapes: ``x_train`` ``(N, d)``, ``y_train`` ``(N,)``, ``x_test`` ``(N*, d)``.
    """
    from nngp_gpytorch.arch import Activation, Dense, Serial

    layers = architecture.layers if isinstance(architecture, Serial) else (architecture,)
    if not layers or not isinstance(layers[-1], Dense) or not all(isinstance(la, Dense | Activation) for la in layers):
        raise ValueError(f"train_mlp_ensemble needs a Serial of Dense/activation layers ending in Dense, got "
                         f"{architecture.describe()}")
    g = torch.Generator().manual_seed(int(seed))
    x = torch.cat([x_train, x_test]).to(dtype)
    n_train = x_train.shape[0]
    params, fan = [], x.shape[-1]
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense):
            out = 1 if i == len(layers) - 1 else (layer.width or width)
            w = torch.randn(networks, fan, out, generator=g, dtype=dtype).requires_grad_(True)
            b = torch.randn(networks, 1, out, generator=g, dtype=dtype).requires_grad_(True)
            wv = weight_var if layer.weight_var is None else layer.weight_var
            bv = bias_var if layer.bias_var is None else layer.bias_var
            params.append((w, b, math.sqrt(wv / fan), math.sqrt(bv)))
            fan = out

    def forward() -> torch.Tensor:
        h, j = x.expand(networks, *x.shape), 0
        for layer in layers:
            if isinstance(layer, Dense):
                w, b, sw, sb = params[j]
                h = h @ w * sw + b * sb
                j += 1
            else:
                h = layer(h)
        return h[..., 0]  # (M, N + N*)

    y = y_train.to(dtype)
    leaves = [p for w, b, _, _ in params for p in (w, b)]
    with torch.no_grad():
        f0 = forward()
    train, test, done = [], [], 0
    for target in sorted(steps):
        while done < target:
            f = forward()
            loss = 0.5 * ((f[:, :n_train] - y) ** 2).sum()
            grads = torch.autograd.grad(loss, leaves)
            with torch.no_grad():
                for p, gp in zip(leaves, grads, strict=True):
                    p -= learning_rate * gp
            done += 1
        with torch.no_grad():
            f = forward()
        train.append(f[:, :n_train])
        test.append(f[:, n_train:])
    return TrainedEnsemble(f0[:, :n_train], f0[:, n_train:], torch.stack(train), torch.stack(test), sorted(steps))


__all__ = ["TrainedEnsemble", "train_mlp_ensemble"]

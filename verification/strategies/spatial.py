"""Hypothesis strategies for spatial architectures: conv / pool / residual / layer-norm nets with their input
shapes (:func:`spatial_cases`), and flat nets with skips, parallel branches and layer norms
(:func:`residual_mlps`).

A :class:`SpatialCase` carries ``input_shape`` with the architecture, which :class:`~.dense.KernelCase` does not,
so these strategies are not registered in the global ``architectures()``. Draws shrink towards one small
filter, a smooth activation and ``Flatten``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters

from .dense import activations, hyperparameters

#: Activations whose spatial kernels the strategies draw (first = what shrinking goes to).
SMOOTH = (A.ReLU(), A.Erf(), A.Abs(), A.LeakyReLU(0.2), A.GELU(), A.Identity())


@dataclass(frozen=True)
class SpatialCase:
    architecture: A.Layer
    input_shape: tuple[int, ...]
    hyper: Hyperparameters
    inputs: torch.Tensor

    def __repr__(self) -> str:
        return (f"SpatialCase({self.architecture.describe()}, input_shape={self.input_shape}, "
                f"weight_var={self.hyper.weight_var.tolist()}, bias_var={self.hyper.bias_var.tolist()})")


@st.composite
def conv_layers(draw, ndim: int) -> A.Conv:
    return A.Conv(kernel_size=draw(st.integers(1, 3)), stride=draw(st.integers(1, 2)),
                  dilation=draw(st.integers(1, 2)), padding=draw(st.sampled_from(["same", "circular", "valid"])))


@st.composite
def spatial_cases(draw, max_blocks: int = 3) -> SpatialCase:
    """A conv net ``[Conv, φ, (AvgPool | LayerNorm | Residual)?] × blocks, (Flatten | GlobalAvgPool), Dense``
    on ``(C, *spatial)`` inputs with 1–3 spatial dimensions."""
    ndim = draw(st.integers(1, 3))
    sizes = {1: (3, 8), 2: (2, 5), 3: (2, 3)}[ndim]
    spatial = tuple(draw(st.integers(*sizes)) for _ in range(ndim))
    channels = draw(st.integers(1, 3))
    activation = draw(st.sampled_from(SMOOTH))
    layers = []
    for _ in range(draw(st.integers(1, max_blocks))):
        layers.append(draw(conv_layers(ndim)))
        extra = draw(st.sampled_from(["none", "residual", "layernorm_pre", "layernorm_post", "pool"]))
        if extra == "residual":
            layers.append(A.Residual(A.Serial(activation, A.Conv(draw(st.integers(1, 3)), padding="same"))))
        if extra == "layernorm_pre":
            layers.append(A.LayerNorm())
        layers.append(activation)
        if extra == "layernorm_post":
            layers.append(A.LayerNorm())
        if extra == "pool":
            layers.append(A.AvgPool(draw(st.integers(1, 2)), stride=draw(st.integers(1, 2)),
                                    padding=draw(st.sampled_from(["same", "valid", "circular"]))))
    layers.append(draw(st.sampled_from([A.Flatten(), A.GlobalAvgPool()])))
    layers.append(A.Dense())
    net = A.Serial(*layers)
    shape = (channels, *spatial)
    try:
        net.validate(shape)
    except A.ArchitectureError:
        net = A.Serial(A.Conv(1), activation, A.Flatten(), A.Dense())  # a filter did not fit: shrink
    hyper = draw(hyperparameters(net))
    k = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.randn(k, channels * int(torch.Size(spatial).numel()), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    if draw(st.booleans()):
        x[-1] = x[0]  # an exact duplicate
    return SpatialCase(net, shape, hyper, x)


@st.composite
def residual_mlps(draw) -> A.Serial:
    """Flat nets with skip connections, parallel branches and layer norms."""
    activation = draw(activations(include_callables=False, named=SMOOTH))
    layers = [A.Dense()]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["residual", "parallel", "layernorm"]))
        if kind == "residual":
            layers.append(A.Residual(A.Serial(activation, A.Dense())))
        elif kind == "parallel":
            layers.append(A.Parallel(A.Dense(), A.Serial(activation, A.Dense())))
        else:
            layers.append(A.LayerNorm())
    layers += [activation, A.Dense()]
    return A.Serial(*layers)

"""Hypothesis strategies drawing conv / pool / residual / layer-norm architectures (with their input shapes),
and property tests over them: finite, symmetric PSD kernels, diag == diagonal, both position layouts
agree, and (a few examples) agreement with finite networks.

The strategies (:func:`spatial_cases`, :func:`residual_mlps`) compose the building blocks of
``verification.strategies``; they carry ``input_shape`` with the architecture, which
``verification.strategies.KernelCase`` does not, so they are not registered in its global
``architectures()`` (flat residual / layer-norm nets could be, with ``register_architecture_strategy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from verification import strategies as vst
from verification.verify import verify

torch.set_num_threads(1)

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
    hyper = draw(vst.hyperparameters(net))
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
    activation = draw(vst.activations(include_callables=False, named=SMOOTH))
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


@settings(max_examples=25)
@given(spatial_cases())
def test_spatial_kernels_are_psd_and_consistent(case):
    x = case.inputs
    k, t = evaluate(case.architecture, x, x, case.hyper, with_ntk=True, input_shape=case.input_shape)
    kd, td = evaluate(case.architecture, x, x, case.hyper, diag=True, with_ntk=True, input_shape=case.input_shape)
    for m, md in ((k, kd), (t, td)):
        assert torch.isfinite(m).all()
        torch.testing.assert_close(m, m.T, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(md, m.diagonal(), rtol=1e-10, atol=1e-12)
        scale = m.diagonal().abs().max().clamp_min(1e-12)
        assert torch.linalg.eigvalsh(m).min() >= -1e-9 * scale
    forced = A.Serial(A.AvgPool(1), case.architecture)  # forces the full-spatial layout
    k_full, t_full = evaluate(forced, x, x, case.hyper, with_ntk=True, input_shape=case.input_shape)
    torch.testing.assert_close(k_full, k, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(t_full, t, rtol=1e-9, atol=1e-12)


@settings(max_examples=3)
@given(spatial_cases(max_blocks=2))
def test_drawn_conv_nets_match_finite_networks(case):
    r = verify(case.architecture, case.inputs, networks=64, width=256, seed=7, weight_var=case.hyper,
               input_shape=case.input_shape, alpha=1e-4)
    assert r.passed, r.summary()


@settings(max_examples=15)
@given(residual_mlps(), vst.input_sets(edge_cases=False))
def test_residual_mlps_psd(net, x):
    hyper = Hyperparameters.constant(1.4, 0.1)
    k, t = evaluate(net, x, x, hyper, with_ntk=True)
    assert torch.isfinite(k).all() and torch.isfinite(t).all()
    assert torch.linalg.eigvalsh(k).min() >= -1e-9 * k.diagonal().max()

"""Hypothesis strategies drawing conv / pool / residual / layer-norm architectures (with their input shapes),
and property tests over them: finite, symmetric PSD kernels, diag == diagonal, both position layouts
agree, and (a few examples) agreement with finite networks.

The strategies live in :mod:`verification.strategies.spatial`.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from verification import strategies as vst
from verification.verify import verify

torch.set_num_threads(1)

@settings(max_examples=25)
@given(vst.spatial_cases())
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
@given(vst.spatial_cases(max_blocks=2))
def test_drawn_conv_nets_match_finite_networks(case):
    r = verify(case.architecture, case.inputs, networks=64, width=256, seed=7, weight_var=case.hyper,
               input_shape=case.input_shape, alpha=1e-4)
    assert r.passed, r.summary()


@settings(max_examples=15)
@given(vst.residual_mlps(), vst.input_sets(edge_cases=False))
def test_residual_mlps_psd(net, x):
    hyper = Hyperparameters.constant(1.4, 0.1)
    k, t = evaluate(net, x, x, hyper, with_ntk=True)
    assert torch.isfinite(k).all() and torch.isfinite(t).all()
    assert torch.linalg.eigvalsh(k).min() >= -1e-9 * k.diagonal().max()

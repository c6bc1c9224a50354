"""Property test: hypothesis draws MLPs (activations incl. user callables, shared or per-layer variances,
fixed-variance layers) and input sets (near-duplicate, duplicate, zero-norm, antipodal inputs); each is
verified at a small budget (M = 128, width = 1024: M/width = 1/8, where finite-width bias stays well below
the noise) at α = 1e-4 per example."""

import torch
from hypothesis import given, settings

from verification import strategies as vst
from verification import verify

torch.set_num_threads(1)


@settings(max_examples=12)
@given(vst.kernel_cases())
def test_random_mlps_match_their_kernels(case):
    result = verify(case.architecture, case.inputs, networks=128, width=1024, seed=0, weight_var=case.hyper,
                    alpha=1e-4, input_shape=case.input_shape)
    assert result.passed, f"{case}: {result.summary()}"


@settings(max_examples=25)
@given(vst.kernel_cases())
def test_strategies_produce_valid_cases(case):
    case.architecture.validate()
    assert case.inputs.dim() == 2 and torch.isfinite(case.inputs).all()
    slots = case.hyper.slots
    assert slots == 1 or slots == case.architecture.variance_slots()

"""Hypothesis strategies: random architectures, hyperparameters, input sets and tensor programs, for testing
kernels (ours and users').

* :mod:`.dense` — activations, MLPs, hyperparameters, input sets, :class:`KernelCase` and the registries that
  :func:`architectures` / :func:`all_kernel_cases` draw from;
* :mod:`.spatial` — conv / pool / residual / layer-norm nets with their input shapes (:class:`SpatialCase`);
* :mod:`.programs` — random well-formed tensor programs.

::

    from hypothesis import given
    from verification import strategies as vst

    @given(vst.kernel_cases())
    def test_my_kernel(case):
        result = verify(case.architecture, case.inputs, weight_var=case.hyper, networks=128, width=1024)
        assert result.passed
"""

from .dense import (
    NAMED,
    USER_CALLABLES,
    KernelCase,
    activations,
    all_kernel_cases,
    architectures,
    bias_vars,
    dense_layers,
    hyperparameters,
    input_sets,
    kernel_cases,
    mlps,
    register_architecture_strategy,
    register_case_strategy,
    weight_vars,
)
from .programs import programs
from .spatial import SMOOTH, SpatialCase, conv_layers, residual_mlps, spatial_cases

__all__ = [
    "NAMED", "SMOOTH", "USER_CALLABLES", "KernelCase", "SpatialCase", "activations", "all_kernel_cases",
    "architectures", "bias_vars", "conv_layers", "dense_layers", "hyperparameters", "input_sets",
    "kernel_cases", "mlps", "programs", "register_architecture_strategy", "register_case_strategy",
    "residual_mlps", "spatial_cases", "weight_vars",
]

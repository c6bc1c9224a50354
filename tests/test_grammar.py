"""The hypothesis grammar over all families (``verification.strategies.grammar``): every drawn architecture's
kernel agrees with its finite twin.

False alarms: each case is one Holm-corrected test of the Gram at ALPHA = 1e-4; the default run draws
``sum(EXAMPLES.values()) = 46`` cases (family-wise false-alarm rate ≤ 0.46%), the slow sweep ``sum(SWEEP.values())
= 115`` (its first cases are the default ones: ≤ 115 distinct cases, ≤ 1.15%, per CI run). Draws are derandomized
(fixed seed), so a run is reproducible, and a failure shrinks to the smallest failing architecture of its family.
The number of cases drawn per family is printed.
"""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from nngp_gpytorch import NNGPKernel
from verification import verify
from verification.strategies import grammar

torch.set_num_threads(1)
ALPHA = 1e-4
EXAMPLES = {"flat": 16, "spatial": 12, "sequence": 6, "graph": 6, "batchnorm": 6}
SWEEP = {"flat": 40, "spatial": 30, "sequence": 15, "graph": 15, "batchnorm": 15}
STRATEGIES = {"flat": grammar.flat_cases, "spatial": grammar.spatial_architecture_cases,
              "sequence": grammar.sequence_cases, "graph": grammar.graph_cases, "batchnorm": grammar.batchnorm_cases}
DRAWN: collections.Counter = collections.Counter()


def _check(case, seed: int = 0) -> None:
    DRAWN[case.family] += 1
    r = verify(case.architecture, case.inputs.float(), seed=seed, alpha=ALPHA, **case.verify_kwargs())
    assert r.passed, f"{case!r}\n{r.summary()}"


def _run(family: str, examples: int) -> None:
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(STRATEGIES[family]())
    def check(case):
        _check(case)

    check()


@pytest.mark.parametrize("family", list(EXAMPLES))
def test_drawn_architectures_match_their_finite_twins(family, capsys):
    _run(family, EXAMPLES[family])
    with capsys.disabled():
        print(f"\ngrammar {family}: {DRAWN[family]} cases drawn")


@pytest.mark.slow
@pytest.mark.parametrize("family", list(EXAMPLES))
def test_drawn_architectures_sweep(family, capsys):
    _run(family, SWEEP[family])
    with capsys.disabled():
        print(f"\ngrammar sweep {family}: {SWEEP[family]} examples")


def test_the_grammar_reaches_every_construct():
    """Over 200 draws the grammar produces each construct it promises (so a layer cannot silently drop out)."""
    names = collections.Counter()

    @settings(max_examples=200, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(grammar.architecture_cases())
    def collect(case):
        for layer in case.architecture.walk():
            names[type(layer).__name__] += 1

    collect()
    expected = {"Dense", "LayerNorm", "Dropout", "Parallel", "Residual", "Conv", "MaxPool", "AvgPool", "GlobalAvgPool",
                "Flatten", "SelfAttention", "RNN", "GRU", "LSTM", "GraphConv", "BatchNorm", "ReLU", "Erf", "Tanh"}
    assert expected <= set(names), sorted(expected - set(names))


def test_a_planted_bug_is_found_and_shrunk():
    """Power of the grammar: a kernel that forgets the bias of the last Dense layer is rejected on the flat
    family, and hypothesis shrinks the failure to a small architecture."""
    failures = []

    @settings(max_examples=6, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(grammar.flat_cases())
    def check(case):
        if case.bias_var == 0.0:
            return
        kernel = NNGPKernel(case.architecture, weight_var=case.weight_var, bias_var=case.bias_var).double()
        wrong = kernel(case.inputs).to_dense().detach() - case.bias_var
        r = verify(case.architecture, case.inputs.float(), alpha=ALPHA, analytic=wrong, **case.verify_kwargs())
        if not r.passed:
            failures.append(case)
            raise AssertionError("rejected")

    with pytest.raises(AssertionError, match="rejected"):
        check()
    smallest = failures[-1]
    assert len(list(smallest.architecture.walk())) <= 6, repr(smallest)


def test_batchnorm_cases_reject_the_kernel_without_batch_statistics():
    """Power on the batch-norm family: each drawn case checked against the kernel of the same network with its
    BatchNorm(φ) layers replaced by φ alone (no batch statistics) is rejected (3 cases, α = 1e-4)."""
    from nngp_gpytorch import arch as A

    checked = []

    @settings(max_examples=3, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(grammar.batchnorm_cases())
    def check(case):
        plain = A.Serial(*(layer.activation if isinstance(layer, A.BatchNorm) else layer
                           for layer in case.architecture.layers))
        kernel = NNGPKernel(plain, weight_var=case.weight_var, bias_var=case.bias_var).double()
        wrong = kernel(case.inputs).to_dense().detach()
        kwargs = {**case.verify_kwargs(), "analytic": wrong}
        r = verify(case.architecture, case.inputs.float(), alpha=ALPHA, **kwargs)
        checked.append(case)
        assert not r.passed, f"{case!r}: the kernel without batch statistics was accepted"

    check()
    assert len(checked) == 3

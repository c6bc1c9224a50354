"""Tensor-program kernels are accurate to their reported error (tensor_programs/error_control).

Twelve non-smooth several-argument programs (kinks and jumps inside Nonlins: relu·sigmoid, |a|·tanh, max, clipped
relu, step, sign, relu of a difference, ...) are compared with brute-force references stored in
``tests/data/tp_nonsmooth_references.json``: every expectation of dimension ≥ 2 by randomized QMC with 2¹⁸ points ×
16 scramblings, 1-D ones (all smooth here) by a 256-node Gauss–Hermite rule (regenerate with
``python tests/test_tp_error_estimates.py --write-references``; about two minutes). The property tested is the
calibration asked by issue #19: ``|K − K_ref| ≤ 3·error`` (plus four reference standard errors) in at least 99% of
the entries, and either ``max(error) ≤ 1e-6·max|K|`` or a ``RuntimeWarning`` saying the target was not met.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from nngp_gpytorch.tensor_programs import Accuracy, Program, evaluate_program
from nngp_gpytorch.tensor_programs.error_control import extrapolated_error

REFERENCES = Path(__file__).parent / "data" / "tp_nonsmooth_references.json"
REFERENCE_ACCURACY = Accuracy(gh_max_dim=1, quadrature_degree=256, gh_max_nodes=256, qmc_points=2**18,
                              qmc_replicates=16, target=None, seed=11)


def _two_gvars(name: str):
    p = Program(name)
    x = p.input("x", 3)
    u, v = p.input_matrix("U", init=1.5), p.input_matrix("V", init=0.8)
    b = p.bias("b", init=0.1)
    return p, p.lincomb(p.matmul(u, x), b), p.matmul(v, x)


def _one_layer(name: str, fn):
    p, g1, g2 = _two_gvars(name)
    p.readout(p.nonlin(fn, g1, g2))
    return p


def _gated_tied():  # the program of issue #19
    p = Program("gated-tied")
    x = p.input("x", 3)
    u, w, b = p.input_matrix("U", init=1.5), p.matrix("W", init=1.2), p.bias("b", init=0.1)
    g1 = p.lincomb(p.matmul(u, x), b)
    h1 = p.nonlin(torch.tanh, g1)
    g2 = p.matmul(w, h1)
    h2 = p.nonlin(lambda a, c: torch.relu(a) * torch.sigmoid(c), g2, g1)
    g3 = p.lincomb(p.matmul(w, h2), g2)
    p.readout(p.nonlin(torch.erf, g3))
    return p


def _two_layer_kinked():
    p, g1, g2 = _two_gvars("relu-then-gate")
    w = p.matrix("W", init=1.7)
    h1 = p.nonlin(lambda a, c: torch.relu(a) + 0.5 * torch.relu(c), g1, g2)
    g3 = p.matmul(w, h1)
    p.readout(p.nonlin(lambda a, c: torch.relu(a) * torch.tanh(c), g3, g1))
    return p


PROGRAMS = {
    "gated-tied": _gated_tied,
    "relu-sigmoid": lambda: _one_layer("relu-sigmoid", lambda a, c: torch.relu(a) * torch.sigmoid(c)),
    "abs-tanh": lambda: _one_layer("abs-tanh", lambda a, c: a.abs() * torch.tanh(c)),
    "max": lambda: _one_layer("max", torch.maximum),
    "relu-relu": lambda: _one_layer("relu-relu", lambda a, c: torch.relu(a) * torch.relu(c)),
    "relu-sum": lambda: _one_layer("relu-sum", lambda a, c: torch.relu(a) + torch.relu(-c)),
    "relu-difference": lambda: _one_layer("relu-difference", lambda a, c: torch.relu(a - 0.5 * c)),
    "clipped-relu": lambda: _one_layer("clipped-relu", lambda a, c: torch.clamp(a, 0.0, 1.0) + 0.3 * c),
    "step-erf": lambda: _one_layer("step-erf", lambda a, c: (a > 0).to(a.dtype) * torch.erf(c)),
    "sign-times": lambda: _one_layer("sign-times", lambda a, c: torch.sign(a) * c),
    "leaky-tanh": lambda: _one_layer("leaky-tanh", lambda a, c: torch.nn.functional.leaky_relu(a, 0.2) * torch.tanh(c)),
    "relu-then-gate": _two_layer_kinked,
}


def _inputs() -> torch.Tensor:
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(19))
    x[1] = 1.01 * x[0]
    return x


def _variances(program: Program) -> torch.Tensor:
    return torch.tensor([float(v) for v in dict(program.parameters).values()], dtype=torch.float64)


def write_references() -> None:
    out = {}
    for name, build in PROGRAMS.items():
        program = build()
        result = evaluate_program(program, _inputs(), None, _variances(program), accuracy=REFERENCE_ACCURACY)
        out[name] = {"kernel": result.kernel.tolist(), "stderr": result.stderr.tolist()}
        print(name, f"max stderr {float(result.stderr.max()):.2e}", flush=True)
    REFERENCES.parent.mkdir(exist_ok=True)
    REFERENCES.write_text(json.dumps(out, indent=1))


@pytest.fixture(scope="module")
def references():
    return json.loads(REFERENCES.read_text())


@pytest.fixture(scope="module")
def default_results():
    out = {}
    for name, build in PROGRAMS.items():
        program = build()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate_program(program, _inputs(), None, _variances(program))
        out[name] = (result, [w for w in caught if issubclass(w.category, RuntimeWarning)])
    return out


def test_reported_error_covers_the_brute_force_reference(references, default_results):
    covered = total = 0
    for name, (result, _) in default_results.items():
        ref = torch.tensor(references[name]["kernel"], dtype=torch.float64)
        ref_se = torch.tensor(references[name]["stderr"], dtype=torch.float64)
        ok = (result.kernel - ref).abs() <= 3 * result.error + 4 * ref_se
        covered += int(ok.sum())
        total += ok.numel()
    assert covered >= 0.99 * total, f"only {covered} of {total} entries within 3 reported errors"


def test_target_met_or_a_warning_says_it_was_not(default_results):
    for name, (result, caught) in default_results.items():
        relative = float(result.error.max()) / float(result.kernel.abs().max())
        assert relative <= 1e-6 or caught, f"{name}: reported error {relative:.1e} relative, and no warning"
        assert (result.error >= result.quadrature_error).all() and (result.error >= 2 * result.stderr).all()


def test_the_old_single_rule_understated_its_error_and_the_estimate_does_not(references):
    """The issue's program: the old rule (one evaluation, no kink split) reports only the QMC stderr while it is
    off by more than ten of them; the default result is closer to the reference, within its error bar."""
    program = _gated_tied()
    ref = torch.tensor(references["gated-tied"]["kernel"], dtype=torch.float64)
    old_rule = Accuracy(target=None, split_kinks=False)  # the rule before issue #19: no estimate, no kink split
    old = evaluate_program(program, _inputs(), None, _variances(program), accuracy=old_rule)
    assert float((old.kernel - ref).abs().max()) > 10 * float(old.stderr.max())  # the understatement
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = evaluate_program(program, _inputs(), None, _variances(program))
    assert float((new.kernel - ref).abs().max()) < float((old.kernel - ref).abs().max())
    assert ((new.kernel - ref).abs() <= 3 * new.error + 1e-6).all()


def test_smooth_programs_need_no_escalation_and_cost_nothing_without_product_rules():
    p, g1, _ = _two_gvars("smooth")  # one G-var per Nonlin: every expectation is a ≤ 2-D product rule
    g2 = p.matmul(p.matrix("W", init=1.3), p.nonlin(torch.tanh, g1))
    p.readout(p.nonlin(lambda a: torch.erf(a) * torch.sigmoid(a), g2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate_program(p, _inputs(), None, _variances(p))
    assert float(result.quadrature_error.max()) <= 1e-6 * float(result.kernel.abs().max())
    q = Program("covariances only")
    x = q.input("x", 3)
    q.readout(q.matmul(q.input_matrix("U", init=1.0), x))
    linear = evaluate_program(q, _inputs(), None, _variances(q))
    assert linear.methods.get("gauss-hermite", 0) == 0 and (linear.quadrature_error == 0).all()


def test_extrapolation_is_exact_for_algebraic_convergence():
    k = torch.tensor([1.0, 2.0], dtype=torch.float64)
    c = torch.tensor([0.3, -0.7], dtype=torch.float64)  # K_n = K + c·n^{-2}: ρ = 1/4
    levels = [k + c * n ** -2.0 for n in (64, 32, 16)]
    torch.testing.assert_close(extrapolated_error(*levels), (c * 64 ** -2.0).abs(), rtol=1e-12, atol=0)


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="target"):
        Accuracy(target=0.0)
    with pytest.raises(ValueError, match="max_escalations"):
        Accuracy(max_escalations=-1)


#: programs whose matrices are each used once (sampled from their exact Gram-conditional law: cost linear in width).
#: ``gated-tied`` reuses W, so each network draws W literally: 256 × 8192² normals (~1.7e10) and as many
#: multiply-adds per use, far over this test's budget; it is checked against finite networks at width 2048 elsewhere.
WIDE_PROGRAMS = [name for name in PROGRAMS if name != "gated-tied"]
#: programs that the degree-8 mutant moves by > 1% of max|K| (measured 1.4e-2 to 1.1e-1 relative). In the others every
#: product rule is split at its kinks into pieces on which the integrand is linear, which degree 8 integrates exactly
#: (the mutant differs from the default kernel by < 1e-14 there: no mutant to reject).
MUTANT_PROGRAMS = ["abs-tanh", "clipped-relu", "step-erf", "leaky-tanh", "relu-then-gate"]


@pytest.mark.slow
def test_wide_finite_networks_accept_the_kernels_and_reject_the_degree_8_mutant():
    """Issue #19's check: 256 finite networks of width 8192 (M/width = 1/32, where the per-entry test is calibrated
    against the O(1/width) bias) accept the kernel of each program in WIDE_PROGRAMS at α = 1e-4 (Holm over the
    entries; family-wise false-alarm rate ≤ 11·1e-4 ≈ 1.1e-3), and reject the kernel computed with every quadrature
    degree forced to 8 for each of MUTANT_PROGRAMS. Fixed seeds; about 30 CPU-s.

    The kernels use ``qmc_points=2**16`` (default otherwise; the mutant: the same with ``quadrature_degree=8,
    target=None``). At the default 2**12 points the 4-D cross expectations carry QMC errors of ~1e-3 relative,
    which these networks resolve: ``relu-relu`` (exactly a product of two arc-cosine kernels) was 1.6e-3 from its
    closed form — within 3× its reported error bar of 1.3e-3, as documented — and rejected (max |t| = 5.9), while
    the networks agreed with the closed form (max |t| = 2.3). docs/tensor_programs.md: keep the kernel's error well
    below the Monte Carlo standard error."""
    from verification.statistics import mean_test
    from verification.tensor_programs import sample_program

    x = _inputs()
    accurate = Accuracy(qmc_points=2**16)
    mutant = Accuracy(qmc_points=2**16, quadrature_degree=8, target=None)
    failures, misses = [], []
    for i, name in enumerate(WIDE_PROGRAMS):
        program = PROGRAMS[name]()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the QMC bars exceed the 1e-6 target: known, reported
            kernel = evaluate_program(program, x, None, _variances(program), accuracy=accurate).kernel.detach()
        sample = sample_program(program, x, networks=256, width=8192, seed=1900 + i)  # variances: the inits
        test = mean_test(sample.covariances, kernel, alpha=1e-4, width=8192)
        if not test.passed:
            failures.append(f"{name}: {test.summary()}")
        if name in MUTANT_PROGRAMS:
            wrong = evaluate_program(program, x, None, _variances(program), accuracy=mutant).kernel.detach()
            if mean_test(sample.covariances, wrong, alpha=1e-4, width=8192).passed:
                misses.append(name)
    assert not failures, failures
    assert not misses, f"degree-8 mutant accepted for {misses}"


if __name__ == "__main__" and "--write-references" in sys.argv:
    write_references()

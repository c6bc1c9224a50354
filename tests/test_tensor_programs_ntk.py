"""NTK of tensor programs (Yang 2020, Tensor Programs II): equality with the dedicated NTKs, the δ-trick twin
against explicit Jacobians, and statistical tests against the empirical NTKs of finite literal networks.

Statistical budget: literal matrices at width 512, 128 networks (``M/width = 1/4``, where the per-entry test
is calibrated against the O(1/width) bias, reference/verification.md), k = 6 inputs, α = 1e-4 per program
(per-entry t-tests + Holm, ``verification.statistics.mean_test``), fixed seeds; the default suite's
false-alarm rate is at most (number of statistical tests)·α ≈ 1e-3. The kernel's QMC standard error is kept
≤ 0.3× the Monte Carlo one (inflates the t-statistics' sd by ≤ 4.4%: α = 1e-4 becomes ≤ 1.3e-4).
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from nngp_gpytorch import NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.arch.attention import SelfAttention, SequenceReadout, TokenDense
from nngp_gpytorch.kernels import RNNNTKKernel, TransformerNTKKernel
from nngp_gpytorch.tensor_programs import (
    Accuracy,
    Program,
    ProgramError,
    TensorProgramKernel,
    TensorProgramNTKKernel,
    evaluate_program,
    evaluate_program_ntk,
)
from nngp_gpytorch.tensor_programs.examples import (
    attention_program,
    gru_program,
    lstm_program,
    minimal_gated_unit_program,
    mlp_program,
    rnn_program,
    tied_mlp_program,
    transformer_program,
)
from nngp_gpytorch.tensor_programs.master import Evaluator
from nngp_gpytorch.tensor_programs.ntk import _backward_for, _NTKContext
from verification import default_inputs
from verification.statistics import mean_test
from verification.tensor_programs import program_variances
from verification.tensor_programs_ntk import _ntk_chunk as ntk_chunk
from verification.tensor_programs_ntk import (
    brute_force_program_ntk,
    draw_parameters,
    empirical_program_ntk,
    execute,
)

torch.set_num_threads(1)
ALPHA = 1e-4


def _variances(program: Program) -> torch.Tensor:
    return torch.tensor([program.parameters[n] for n in program.parameter_names], dtype=torch.float64)


def shared_user_program(d: int = 3) -> Program:
    """A user-written program with weight sharing: ``W`` reads a two-argument gated Nonlin, then its own output."""
    p = Program("user: shared W, gated")
    x = p.input("x", d)
    b = p.bias("b", var="bias_var", init=0.1)
    g1 = p.lincomb(p.matmul(p.input_matrix("U", var="input_var", init=1.2), x), b, name="g1")
    g2 = p.lincomb(p.matmul(p.input_matrix("V", var="input_var", init=1.2), x), name="g2")
    w = p.matrix("W", var="hidden_var", init=0.9)
    h1 = p.nonlin(lambda a, c: torch.tanh(a) * torch.sigmoid(c), g1, g2, name="h1")
    g3 = p.lincomb(p.matmul(w, h1), b, name="g3")
    h2 = p.nonlin(lambda a, c: torch.sin(a) + 0.5 * c, g3, g1, name="h2")
    g4 = p.lincomb((0.7, p.matmul(w, h2)), (0.5, g3), name="g4")
    p.readout(p.nonlin(torch.erf, g4, name="h3"), var="readout_var", init=1.1, bias="readout_bias_var",
              bias_init=0.05)
    return p


# --------------------------------------------------------------------------- equal to the dedicated NTKs
@pytest.mark.parametrize("activation", [A.ReLU(), A.Erf(), A.Tanh()], ids=["relu", "erf", "tanh"])
def test_mlp_program_ntk_equals_ntk_kernel(activation):
    """Closed-form derivative duals (ReLU, erf) and the same 64-node Gauss–Hermite rule (tanh) on both sides:
    equal to rounding (1e-12 relative; measured ≤ 2e-14). ``target=None``: one evaluation at degree 64 (the
    default would escalate tanh's product rules to degree 128, more accurate than the dedicated kernel's)."""
    program = mlp_program(3, 4, activation, weight_var=1.8, bias_var=0.1)
    x = default_inputs(8, 4)
    result = evaluate_program_ntk(program, x, None, _variances(program), accuracy=Accuracy(target=None))
    dedicated = NTKKernel(A.mlp(3, activation), quadrature_degree=64).double()
    dedicated.weight_var = torch.tensor(1.8, dtype=torch.float64)
    dedicated.bias_var = torch.tensor(0.1, dtype=torch.float64)
    k, theta = dedicated.nngp_and_ntk(x)
    torch.testing.assert_close(result.kernel, k, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result.ntk, theta, rtol=1e-12, atol=1e-12)
    assert (result.ntk_stderr == 0).all()


@pytest.mark.parametrize("activation, readout", [(A.Erf(), "last"), (A.ReLU(), "mean")])
def test_rnn_program_ntk_equals_rnn_ntk_kernel(activation, readout):
    """Weights shared over time: the program's cross-use sums reproduce ``RNNNTKKernel``'s recursion
    ``Θ(t,s) = Σ(t,s) + σw²·V_φ'(t−1,s−1)·Θ(t−1,s−1)`` (closed forms: 1e-12)."""
    T, d = 3, 2
    program = rnn_program(T, d, activation, readout=readout, input_var=1.5, hidden_var=1.3, bias_var=0.1,
                          readout_var=1.2)
    x = default_inputs(6, T * d)
    result = evaluate_program_ntk(program, x, None, _variances(program))
    dedicated = RNNNTKKernel(input_shape=(T, d), activation=activation, readout=readout).double()
    dedicated.weight_var = torch.tensor([1.5, 1.3, 1.2], dtype=torch.float64)
    dedicated.bias_var = torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)
    k, theta = dedicated.nngp_and_ntk(x)
    torch.testing.assert_close(result.kernel, k, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result.ntk, theta, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_and_transformer_program_ntk_equal_dedicated(causal):
    """NETSOR+ scalars (softmax weights, layer-norm scales) enter the backward pass as per-input constants; the
    dedicated kernels apply the same map to Θ as to K. Equal to 1e-12 (closed forms)."""
    T, d = 3, 2
    x = torch.randn(5, T * d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[3] = x[1]
    program = attention_program(T, d, temperature=0.7, causal=causal, input_var=1.3, bias_var=0.2, readout_var=1.3,
                                readout_bias_var=0.2)
    result = evaluate_program_ntk(program, x, None, _variances(program))
    dedicated = NTKKernel(A.Serial(TokenDense(), SelfAttention(temperature=0.7, causal=causal, residual=True),
                                   SequenceReadout(readout="mean"), A.Dense()), input_shape=(T, d)).double()
    dedicated.weight_var, dedicated.bias_var = 1.3, 0.2
    torch.testing.assert_close(result.ntk, dedicated.nngp_and_ntk(x)[1], rtol=1e-12, atol=1e-12)
    program = transformer_program(T, d, temperature=0.7, causal=causal, weight_var=1.3, bias_var=0.2)
    result = evaluate_program_ntk(program, x, None, _variances(program))
    dedicated = TransformerNTKKernel(1, input_shape=(T, d), temperature=0.7, causal=causal).double()
    dedicated.weight_var, dedicated.bias_var = 1.3, 0.2
    torch.testing.assert_close(result.ntk, dedicated.nngp_and_ntk(x)[1], rtol=1e-12, atol=1e-12)


def test_nngp_part_is_evaluate_program():
    """The ``kernel`` of the NTK evaluation is the NNGP of :func:`evaluate_program` (same QMC seeds and degrees:
    exact; with a target the two may escalate differently, since the NTK's own error counts too)."""
    program = gru_program(2, 2, bias_var=0.1)
    x = default_inputs(4, 4)
    one = Accuracy(target=None)
    ntk = evaluate_program_ntk(program, x, None, _variances(program), accuracy=one)
    nngp = evaluate_program(program, x, None, _variances(program), accuracy=one)
    torch.testing.assert_close(ntk.kernel, nngp.kernel, rtol=0, atol=0)
    torch.testing.assert_close(ntk.kernel_stderr, nngp.stderr, rtol=0, atol=0)


# --------------------------------------------------------------------------- properties
def test_ntk_dominates_nngp_symmetric_psd_and_finite():
    """Θ − K is a sum of nonnegative terms on the diagonal; Θ is a Gram matrix (exactly symmetric, PSD up to its
    QMC error: eigenvalues ≥ −k·4·max stderr, a 4σ bound on a k×k perturbation's spectral norm)."""
    for program in (gru_program(2, 2, bias_var=0.1), shared_user_program(), tied_mlp_program(3, 3, A.Tanh())):
        x = default_inputs(6, program.input_dim)
        r = evaluate_program_ntk(program, x, None, _variances(program))
        assert torch.isfinite(r.ntk).all() and torch.isfinite(r.ntk_stderr).all()
        assert (r.ntk.diagonal() >= r.kernel.diagonal()).all()
        assert torch.equal(r.ntk, r.ntk.T)
        bound = 6 * 4 * float(r.ntk_stderr.max()) + 1e-12
        assert float(torch.linalg.eigvalsh(r.ntk).min()) >= -bound


def test_diag_cross_and_batch_consistency():
    """``diag`` = the diagonal of the Gram; a cross block = the Gram's block (closed forms and Gauss–Hermite:
    rounding only; a QMC Gram averages the estimates of (i, j) and (j, i), so it is not used here); a batch of
    variances = each evaluated alone."""
    program = tied_mlp_program(3, 3, A.Tanh(), bias_var=0.1)
    x = default_inputs(6, program.input_dim)
    v = _variances(program)
    full = evaluate_program_ntk(program, x, None, v).ntk
    diag = evaluate_program_ntk(program, x, None, v, diag=True).ntk
    torch.testing.assert_close(diag, full.diagonal(), rtol=1e-10, atol=1e-12)
    cross = evaluate_program_ntk(program, x[:2], x[2:].clone(), v).ntk
    torch.testing.assert_close(cross, full[:2, 2:], rtol=1e-10, atol=1e-12)
    batch = torch.stack([v, v * 1.3])
    both = evaluate_program_ntk(program, x, None, batch).ntk
    torch.testing.assert_close(both[0], full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(both[1], evaluate_program_ntk(program, x, None, v * 1.3).ntk, rtol=1e-10, atol=1e-12)


def test_gpytorch_kernel_ntk_mode_and_gradients():
    """``TensorProgramNTKKernel`` returns Θ with the variances learnable: its autograd gradient matches central
    differences (Gauss–Hermite and QMC with a fixed Sobol rule without PCA, both smooth in the variances — the PCA
    rotation is held fixed by autograd but moves under finite differences, discontinuously where eigenvalues are
    close; tolerance 1e-5 relative: step 1e-5 gives O(1e-10) truncation and O(1e-11) rounding error)."""
    cases = ((shared_user_program(), Accuracy(qmc_points=2**9, qmc_pca=False), None),
             (gru_program(2, 2, bias_var=0.1), Accuracy(qmc_points=2**9, qmc_pca=False), ("input_var", "hidden_var")))
    for program, accuracy, names in cases:
        x = default_inputs(4, program.input_dim)
        kernel = TensorProgramNTKKernel(program, accuracy=accuracy).double()
        theta = kernel(x).to_dense()
        assert theta.shape == (4, 4) and kernel.last_result.ntk is not None
        k, theta2 = TensorProgramKernel(program, accuracy=accuracy).double().nngp_and_ntk(x)
        torch.testing.assert_close(theta2, theta.detach(), rtol=0, atol=0)
        torch.testing.assert_close(k, kernel.last_result.kernel.detach(), rtol=0, atol=0)
        torch.testing.assert_close(kernel(x, diag=True), theta.diagonal(), rtol=1e-10, atol=1e-12)
        theta.sum().backward()
        grad = kernel.raw_variances.grad.clone()
        raw = kernel.raw_variances.detach().clone()
        for i in range(raw.shape[-1]) if names is None else [program.parameter_names.index(n) for n in names]:
            step = torch.zeros_like(raw)
            step[i] = 1e-5
            with torch.no_grad():
                kernel.raw_variances.copy_(raw + step)
                up = kernel(x).to_dense().sum()
                kernel.raw_variances.copy_(raw - step)
                down = kernel(x).to_dense().sum()
                kernel.raw_variances.copy_(raw)
            fd = (up - down) / 2e-5
            assert abs(float(grad[i] - fd)) <= 1e-5 * (1 + abs(float(fd))), (program.name, i, grad[i], fd)
    batched = TensorProgramNTKKernel(rnn_program(3, 2), batch_shape=torch.Size([2])).double()
    assert batched(torch.randn(2, 5, 6, dtype=torch.float64)).to_dense().shape == (2, 5, 5)


def test_clear_errors():
    program = rnn_program(2, 2)
    x = default_inputs(3, 4)
    with pytest.raises(ValueError, match="features"):
        evaluate_program_ntk(program, x[:, :3], None, _variances(program))
    with pytest.raises(ValueError, match="variances"):
        evaluate_program_ntk(program, x, None, _variances(program)[:2])
    with pytest.raises(ValueError, match="diag=True"):
        evaluate_program_ntk(program, x, x[:2].clone(), _variances(program), diag=True)
    with pytest.raises(ProgramError, match="no readout"):
        p = Program("open")
        p.input("x", 2)
        evaluate_program_ntk(p, x[:, :2], None, torch.ones(0, dtype=torch.float64))
    # a Nonlin hiding its computation from autograd: the NNGP is fine, the NTK names the instruction
    p = Program("detached")
    g = p.matmul(p.input_matrix("U"), p.input("x", 2))
    p.readout(p.nonlin(lambda a: torch.tanh(a.detach()) + 0 * a, g, name="bad"), var="v")
    assert torch.isfinite(TensorProgramKernel(p).double()(x[:, :2]).to_dense()).all()
    with pytest.raises(ProgramError, match="nonlin 'bad'.*derivative"):
        TensorProgramNTKKernel(p).double()(x[:, :2]).to_dense()


# --------------------------------------------------------------------------- the finite twin
@pytest.mark.parametrize("name", ["mlp", "tied", "user", "gru", "lstm", "attention", "transformer"])
def test_delta_trick_equals_brute_force_jacobian(name):
    """The δ-trick's per-network Θ̂ = J Jᵀ with J the explicit Jacobian over every ω, β, v, β_o (width 7, float64:
    rounding only). Attention/transformer: autograd goes through the moments, so this includes the scalar path."""
    program = {"mlp": mlp_program(2, 3, A.ReLU(), bias_var=0.1), "tied": tied_mlp_program(3, 3, A.Tanh(), bias_var=0.1),
               "user": shared_user_program(), "gru": gru_program(2, 2, bias_var=0.1),
               "lstm": lstm_program(2, 2, bias_var=0.1), "attention": attention_program(3, 2, bias_var=0.2),
               "transformer": transformer_program(2, 2)}[name]
    x = default_inputs(4, program.input_dim)
    reference = brute_force_program_ntk(program, x, 7, seed=3)
    params = draw_parameters(program, 7, 1, torch.Generator().manual_seed(3), torch.float64, 1)
    for p in params.values():
        p.requires_grad_(True)
    theta = ntk_chunk(program, x, params, program_variances(program), 1)[0][0]  # (Θ̂, readout term), network 0
    torch.testing.assert_close(theta, reference, rtol=1e-12, atol=1e-12)
    # the twin's forward is the NNGP twin's literal execution
    _, h, _ = execute(program, x, params, program_variances(program))
    assert h.shape == (1, 4, 7)


def check(program, seed, width=512, networks=128, accuracy=None, k=6):
    x = default_inputs(k, program.input_dim)
    kernel = TensorProgramNTKKernel(program, accuracy=accuracy).double()
    with torch.no_grad():
        result = kernel.evaluate_with_error(x)
    sample = empirical_program_ntk(program, x, networks, width, seed=seed, variances=kernel.variance_dict())
    test = mean_test(sample.ntks, result.ntk, alpha=ALPHA, width=width)
    noisy = test.stderr > 0
    ratio = float((result.ntk_stderr[noisy] / test.stderr[noisy]).max()) if noisy.any() else 0.0
    assert ratio <= 0.3, f"QMC error {ratio:.2f}× the Monte Carlo standard error: raise Accuracy.qmc_points"
    return test, result, sample


PROGRAMS = {
    "mlp-relu": (lambda: mlp_program(3, 4, A.ReLU(), weight_var=1.8, bias_var=0.1), 1, None),
    "rnn-erf": (lambda: rnn_program(3, 2, A.Erf(), input_var=1.5, hidden_var=1.5, bias_var=0.1), 2, None),
    "rnn-relu-mean": (lambda: rnn_program(3, 2, A.ReLU(), readout="mean", hidden_var=0.8), 3, None),
    "gru": (lambda: gru_program(2, 2, bias_var=0.1), 4, None),
    "lstm": (lambda: lstm_program(2, 2, bias_var=0.1, hidden_var=1.5), 5, Accuracy(qmc_points=2**13)),
    "tied-mlp": (lambda: tied_mlp_program(3, 3, A.Tanh(), bias_var=0.1, hidden_var=1.0), 6, None),
    "user-shared": (shared_user_program, 7, None),
    "mgu": (lambda: minimal_gated_unit_program(2, 2), 8, None),
    "attention": (lambda: attention_program(3, 2, temperature=0.5), 9, None),
    "transformer": (lambda: transformer_program(3, 2, temperature=0.7, weight_var=1.3, bias_var=0.2), 10, None),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_program_ntk_against_finite_networks(name):
    """E[Θ̂_m] = Θ for literal networks of width 512 (128 networks, α = 1e-4). Attention/transformer networks
    back-propagate through their softmax weights and layer-norm scales, which the limit drops: passing tests
    the claim that this path vanishes."""
    make, seed, accuracy = PROGRAMS[name]
    test, _, _ = check(make(), seed, accuracy=accuracy)
    assert test.passed, f"{name}: {test.summary()}"


def ntk_without_cross_use_terms(program: Program, x: torch.Tensor) -> torch.Tensor:
    """A planted error: Θ minus the ``i ≠ j`` terms ``σ_W²·E[dgᵢdg'ⱼ]·E[hᵢh'ⱼ]`` of shared hidden matrices (what
    a kernel that ignored weight sharing in the gradient would give)."""
    x1 = x.unsqueeze(0)
    v = _variances(program)
    params = {n: v[..., i].reshape(1) for i, n in enumerate(program.parameter_names)}
    ev = Evaluator(program, params, Accuracy())
    bw = _backward_for(program)
    c11 = _NTKContext(ev, x1, x1, diag=True, backward=bw)
    ctx = _NTKContext(ev, x1, x1, False, side_a=c11, side_b=c11, backward=bw)
    theta = ctx.ntk()
    for mat in program.matrices:
        uses = [g for g in program.vars if g.op == "matmul" and g.matrix is mat]
        for gi in uses:
            for gj in uses:
                if gi is not gj:
                    theta = theta - ctx.param(mat.var) * ctx.grad_cov(gi, gj) * ctx.expect(gi.source, gj.source)
    theta = theta[0]
    return (theta + theta.T) / 2


def test_dropping_weight_sharing_terms_is_detected():
    """Power: tied residual networks reject Θ without the cross-use terms (0.22 of 2.1 at its largest entry;
    measured 10/10 seeds rejected already at width 256, 64 networks) and accept the full Θ."""
    program = tied_mlp_program(3, 3, A.Tanh(), bias_var=0.1, hidden_var=1.0)
    test, result, sample = check(program, seed=21)
    assert test.passed, test.summary()
    wrong = ntk_without_cross_use_terms(program, default_inputs(6, 3))
    assert float((wrong - result.ntk).abs().max()) > 0.1
    assert not mean_test(sample.ntks, wrong, alpha=ALPHA, width=512).passed


# --------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("name", ["rnn-relu-mean", "tied-mlp", "gru"])
def test_calibration_over_seeds(name):
    """Correct Θ rejected at rate ≤ α = 0.01 over 100 seeds (width 256, 64 networks): rejections within the
    99.9% quantile of Bin(100, 0.01)."""
    make, _, accuracy = PROGRAMS[name]
    program = make()
    x = default_inputs(6, program.input_dim)
    kernel = TensorProgramNTKKernel(program, accuracy=accuracy).double()
    with torch.no_grad():
        theta = kernel(x).to_dense()
    seeds, alpha = 100, 0.01
    rejections = sum(not mean_test(empirical_program_ntk(program, x, 64, 256, seed=1000 + s,
                                                         variances=kernel.variance_dict()).ntks,
                                   theta, alpha=alpha, width=256).passed for s in range(seeds))
    assert rejections <= stats.binom.ppf(0.999, seeds, alpha), rejections


@pytest.mark.slow
def test_power_without_cross_use_terms_over_seeds():
    """Power ≥ 95% at α = 1e-4, width 256, 64 networks (20 seeds, one miss allowed)."""
    program = tied_mlp_program(3, 3, A.Tanh(), bias_var=0.1, hidden_var=1.0)
    x = default_inputs(6, 3)
    wrong = ntk_without_cross_use_terms(program, x)
    rejected = sum(not mean_test(empirical_program_ntk(program, x, 64, 256, seed=2000 + s).ntks, wrong,
                                 alpha=ALPHA, width=256).passed for s in range(20))
    assert rejected >= 19, rejected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_gated_recurrent_ntk_three_steps(name):
    """GRU / LSTM NTK over 3 steps (the gated cells' NTK, which the dedicated kernels lack) against 128 literal
    networks of width 512."""
    program = gru_program(3, 2, bias_var=0.1) if name == "gru" else lstm_program(3, 2, bias_var=0.1)
    test, _, _ = check(program, seed=31, accuracy=Accuracy(qmc_points=2**13))
    assert test.passed, test.summary()

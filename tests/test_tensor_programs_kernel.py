"""Master-theorem kernel of tensor programs: agreement with dedicated kernels and closed forms, the
expectation rules (Gauss–Hermite, QMC with its standard error), and the GPyTorch contract."""

import math
import pickle

import gpytorch
import pytest
import torch

from nngp_gpytorch import MLPKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.duals import ErfDual
from nngp_gpytorch.tensor_programs import (
    Accuracy,
    Program,
    TensorProgramKernel,
    evaluate_program,
    gaussian_expectation,
    psd_cholesky,
)
from nngp_gpytorch.tensor_programs.examples import attention_program, gru_program, mlp_program, rnn_program
from verification import default_inputs

torch.set_num_threads(1)


def inputs(k=7, d=4, seed=0):
    x = default_inputs(k, d, seed=seed)
    x[2] = x[0]  # an exactly repeated input: correlation exactly 1
    return x


@pytest.mark.parametrize("activation", [A.ReLU(), A.Erf(), A.Sign(), A.Step(), A.GELU(), A.LeakyReLU(0.2)])
def test_mlp_program_equals_dedicated_kernel_closed_form(activation):
    x, y = inputs(), default_inputs(5, 4, seed=9)
    dedicated = MLPKernel(3, activation, weight_var=1.7, bias_var=0.2).double()
    program = TensorProgramKernel(mlp_program(3, 4, activation, weight_var=1.7, bias_var=0.2)).double()
    torch.testing.assert_close(program(x).to_dense(), dedicated(x).to_dense(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(program(x, y).to_dense(), dedicated(x, y).to_dense(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(program(x, diag=True), dedicated(x, diag=True), rtol=1e-12, atol=1e-12)
    assert program.last_result.methods.get("closed-form", 0) > 0
    assert program.last_result.stderr.abs().max() == 0


def test_mlp_program_tanh_by_quadrature():
    x = inputs()
    acc = Accuracy(quadrature_degree=64, gh_max_nodes=2**13)
    dedicated = MLPKernel(3, A.Tanh(), weight_var=1.5, bias_var=0.1, quadrature_degree=64).double()
    program = TensorProgramKernel(mlp_program(3, 4, A.Tanh(), 1.5, 0.1), accuracy=acc).double()
    # two degree-64 product rules in different (equivalent) coordinates: measured 1.6e-7 apart (9e-4 at 32)
    torch.testing.assert_close(program(x).to_dense(), dedicated(x).to_dense(), rtol=0, atol=1e-6)
    assert program.last_result.methods["gauss-hermite"] > 0


def test_batched_variances_and_gradients():
    x = inputs()
    program = TensorProgramKernel(mlp_program(2, 4, A.ReLU()), batch_shape=torch.Size([2])).double()
    program.set_variances(weight_var=torch.tensor([1.0, 2.0], dtype=torch.float64),
                          bias_var=torch.tensor([0.1, 0.3], dtype=torch.float64))
    k = program(x).to_dense()
    assert k.shape == (2, 7, 7)
    for i, (w, b) in enumerate([(1.0, 0.1), (2.0, 0.3)]):
        dedicated = MLPKernel(2, A.ReLU()).double()
        dedicated.weight_var, dedicated.bias_var = w, b  # set in float64 (raw parameters start float32)
        ref = dedicated(x).to_dense()
        torch.testing.assert_close(k[i], ref, rtol=1e-12, atol=1e-12)
    k.sum().backward()
    assert torch.isfinite(program.raw_variances.grad).all() and program.raw_variances.grad.abs().sum() > 0


def test_gradients_through_quadrature_and_qmc_are_finite():
    prog = gru_program(2, 2)
    x = default_inputs(4, prog.input_dim)
    x[1] = x[0]
    kernel = TensorProgramKernel(prog, variances={"bias_var": 0.1},
                                 accuracy=Accuracy(qmc_points=256, qmc_replicates=4)).double()
    kernel(x).to_dense().sum().backward()
    assert torch.isfinite(kernel.raw_variances.grad).all()


def test_attention_program_matches_reference_formula():
    T, d, temp, su2, sv2 = 3, 2, 0.7, 1.3, 0.8
    prog = attention_program(T, d, temperature=temp, input_var=su2, readout_var=sv2)
    xs = torch.randn(5, T * d, dtype=torch.float64)
    kernel = TensorProgramKernel(prog).double()
    kernel.set_variances(input_var=su2, readout_var=sv2)  # exact float64 values
    k = kernel(xs).to_dense()
    seq = xs.view(5, T, d)
    gram = torch.einsum("atd,bsd->abts", seq, seq) / d * su2  # (a, b, T, T)
    delta = torch.stack([torch.softmax(gram[a, a] / temp, -1) for a in range(5)])  # each sequence's own Δ
    eye = torch.eye(T, dtype=torch.float64)
    ref = torch.stack([torch.stack([((eye + delta[a]) @ gram[a, b] @ (eye + delta[b]).T).mean()
                                    for b in range(5)]) for a in range(5)]) * sv2
    torch.testing.assert_close(k, ref, rtol=1e-12, atol=1e-12)


def test_gru_one_step_closed_form():
    """T = 1: h = ς(z)·erf(c) with independent z, c: E[hh'] = E[ς ς']·E[erf erf'] (Williams 1997)."""
    prog = gru_program(1, 3, input_var=1.4, bias_var=0.2)
    x = inputs(6, 3)
    # 32 replicates: the standard error has 31 d.o.f., so |t| > 5 has probability ~2e-5 per entry
    kernel = TensorProgramKernel(prog, accuracy=Accuracy(quadrature_degree=64, qmc_replicates=32)).double()
    kernel.set_variances(input_var=1.4, bias_var=0.2)
    res = kernel.evaluate_with_error(x)
    c = 1.4 * x @ x.T / 3 + 0.2
    dgn = c.diagonal()
    a = 2 * c / torch.sqrt((1 + 2 * dgn[:, None]) * (1 + 2 * dgn[None, :]))
    exact = (0.25 + torch.arcsin(a) / (2 * math.pi)) * (2 / math.pi) * torch.arcsin(a)
    err = (res.kernel.detach() - exact).abs()
    assert err.diagonal().max() < 1e-9  # same-input entries: 2-D product rule of degree 64
    assert (err <= 5 * res.stderr + 1e-9).all(), (err.max(), res.stderr.max())  # 4-D cross terms: RQMC


def test_qmc_error_estimate_covers_the_truth():
    """E[erf(z1)·erf(z4)] in a 6-D correlated Gaussian (closed form) by RQMC: |error| ≤ 4 stderr."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(10, 6, 6, generator=gen, dtype=torch.float64)
    sigma = (a @ a.transpose(-1, -2) / 6).unsqueeze(0)
    acc = Accuracy(qmc_points=1024, qmc_replicates=8)
    est, method = gaussian_expectation(lambda z: torch.erf(z[..., 0]) * torch.erf(z[..., 3]), sigma, acc, seed=1)
    assert method == "qmc" and est.shape == (8, 10)
    exact = ErfDual().nngp(sigma[0, :, 0, 0], sigma[0, :, 3, 3], sigma[0, :, 0, 3])
    mean, se = est.mean(0), est.std(0) / math.sqrt(8)
    assert ((mean - exact).abs() <= 4 * se).all()
    assert se.max() < 1e-3


def test_gauss_hermite_product_rule_is_exact_for_polynomials_and_singular_sigma():
    sigma = torch.tensor([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]], dtype=torch.float64)
    sigma = torch.stack([sigma, torch.ones(3, 3, dtype=torch.float64)]).unsqueeze(0)  # second one: rank 1
    est, method = gaussian_expectation(lambda z: z[..., 0] ** 2 * z[..., 1] * z[..., 2], sigma, Accuracy(), seed=0)
    # Isserlis: E[z0² z1 z2] = Σ00 Σ12 + 2 Σ01 Σ02
    exact = sigma[0, :, 0, 0] * sigma[0, :, 1, 2] + 2 * sigma[0, :, 0, 1] * sigma[0, :, 0, 2]
    assert method == "gauss-hermite"
    torch.testing.assert_close(est[0], exact, rtol=1e-12, atol=1e-12)
    chol = psd_cholesky(sigma)
    torch.testing.assert_close(chol @ chol.transpose(-1, -2), sigma, rtol=1e-12, atol=1e-12)


def test_deterministic_for_a_seed():
    prog = gru_program(2, 2)
    x = default_inputs(3, prog.input_dim)
    v = torch.tensor([1.0, 1.0, 0.1, 1.0, 1e-12], dtype=torch.float64)
    acc = Accuracy(qmc_points=256, seed=5)
    r1 = evaluate_program(prog, x, None, v, accuracy=acc)
    r2 = evaluate_program(prog, x, None, v, accuracy=acc)
    r3 = evaluate_program(prog, x, None, v, accuracy=Accuracy(qmc_points=256, seed=6))
    assert torch.equal(r1.kernel, r2.kernel)
    assert not torch.equal(r1.kernel, r3.kernel)
    assert ((r1.kernel - r3.kernel).abs() <= 5 * (r1.stderr**2 + r3.stderr**2).sqrt() + 1e-12).all()


def test_rnn_program_matches_dedicated_rnn_kernel():
    recurrent = pytest.importorskip("nngp_gpytorch.kernels.recurrent")
    T, d = 4, 3
    x = torch.randn(6, T * d, dtype=torch.float64)
    x[3] = x[1]
    for readout in ("last", "mean"):
        prog = rnn_program(T, d, A.Erf(), readout=readout, input_var=1.3, hidden_var=1.7, bias_var=0.2,
                           readout_var=0.9, readout_bias_var=0.05)
        ours = TensorProgramKernel(prog).double()
        ours.set_variances(**prog.parameters)  # exact float64 values
        ours = ours(x).to_dense()
        dedicated = recurrent.RNNKernel((T, d), A.Erf(), readout=readout, readout_bias_var=0.05).double()
        dedicated.weight_var, dedicated.bias_var = [1.3, 1.7, 0.9], [0.2, 0.0, 0.05]
        torch.testing.assert_close(ours, dedicated(x).to_dense(), rtol=1e-10, atol=1e-10)


def test_gpytorch_integration_priors_and_pickle():
    prog = mlp_program(2, 4)
    kernel = TensorProgramKernel(prog, priors={"weight_var": gpytorch.priors.GammaPrior(2.0, 1.0)}).double()
    assert [name for name, *_ in kernel.named_priors()] == ["weight_var_prior"]
    x = inputs()
    y = torch.sin(x.sum(-1))

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
            self.mean = gpytorch.means.ZeroMean()
            self.cov = gpytorch.kernels.ScaleKernel(kernel)

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean(z), self.cov(z))

    model = GP().double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    loss = -mll(model(x), y)
    loss.backward()
    assert torch.isfinite(kernel.raw_variances.grad).all()
    kernel.set_variances(weight_var=2.5)
    assert abs(kernel.variance_dict()["weight_var"] - 2.5) < 1e-9
    clone = pickle.loads(pickle.dumps(kernel))  # the MLP program holds no lambdas
    torch.testing.assert_close(clone(x).to_dense(), kernel(x).to_dense())
    with pytest.raises(ValueError, match="unknown variance 'nope'"):
        TensorProgramKernel(prog, variances={"nope": 1.0})


def test_program_without_bias_and_zero_input():
    p = Program("no bias")
    x = p.input("x", 2)
    g = p.matmul(p.input_matrix("U"), x)
    p.readout(p.nonlin(A.Erf(), g))
    z = torch.zeros(2, 2, dtype=torch.float64)
    k = TensorProgramKernel(p).double()(z).to_dense()
    assert torch.equal(k, torch.zeros(2, 2, dtype=torch.float64))


def test_batched_inputs_diag_and_active_dims():
    """The GPyTorch contract: batched inputs, diag without the full matrix, active_dims."""
    kernel = TensorProgramKernel(mlp_program(2, 4, A.Erf(), 1.3, 0.1)).double()
    x = torch.randn(3, 2, 5, 4, dtype=torch.float64)
    k = kernel(x).to_dense()
    assert k.shape == (3, 2, 5, 5)
    torch.testing.assert_close(k[1, 0], kernel(x[1, 0]).to_dense())
    torch.testing.assert_close(kernel(x, diag=True), k.diagonal(dim1=-1, dim2=-2))
    y = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    assert kernel(x, y).to_dense().shape == (3, 2, 5, 4)
    wide = torch.randn(6, 9, dtype=torch.float64)
    sub = TensorProgramKernel(mlp_program(2, 4, A.Erf(), 1.3, 0.1), active_dims=torch.tensor([0, 2, 4, 6])).double()
    torch.testing.assert_close(sub(wide).to_dense(), kernel(wide[:, [0, 2, 4, 6]]).to_dense())


@pytest.mark.parametrize("causal", [False, True])
def test_attention_and_transformer_programs_match_dedicated_kernels(causal):
    from nngp_gpytorch import NNGPKernel, TransformerKernel
    from nngp_gpytorch.arch.attention import SelfAttention, SequenceReadout, TokenDense
    from nngp_gpytorch.tensor_programs.examples import transformer_program

    T, d = 3, 2
    x = torch.randn(5, T * d, dtype=torch.float64)
    x[3] = x[1]
    prog = attention_program(T, d, temperature=0.7, causal=causal, input_var=1.3, bias_var=0.2, readout_var=1.3,
                             readout_bias_var=0.2)
    ours = TensorProgramKernel(prog).double()
    ours.set_variances(**prog.parameters)
    dedicated = NNGPKernel(A.Serial(TokenDense(), SelfAttention(temperature=0.7, causal=causal, residual=True),
                                    SequenceReadout(readout="mean"), A.Dense()), input_shape=(T, d)).double()
    dedicated.weight_var, dedicated.bias_var = 1.3, 0.2
    torch.testing.assert_close(ours(x).to_dense(), dedicated(x).to_dense(), rtol=1e-12, atol=1e-12)
    prog = transformer_program(T, d, temperature=0.7, causal=causal, weight_var=1.3, bias_var=0.2)
    ours = TensorProgramKernel(prog).double()
    ours.set_variances(**prog.parameters)
    dedicated = TransformerKernel(1, input_shape=(T, d), temperature=0.7, causal=causal).double()
    dedicated.weight_var, dedicated.bias_var = 1.3, 0.2
    torch.testing.assert_close(ours(x).to_dense(), dedicated(x).to_dense(), rtol=1e-12, atol=1e-12)

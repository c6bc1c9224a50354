"""GPU behaviour: every kernel family on CUDA gives the CPU values, its gradients, a PSD float32 Gram, and
GPyTorch training and the verification ensembles run on the device.

Skipped without CUDA (CI has none); run on a GPU machine with ``python -m pytest -q tests/test_cuda.py``.
Tolerances: float64 on both devices differs only by summation order (reductions are ordered differently
by cuBLAS), so 1e-10 relative is ~10⁵ ulps of headroom for depth ≤ 3 kernels.
"""

from __future__ import annotations

import gpytorch
import pytest
import torch

from nngp_gpytorch import (
    CNNKernel,
    GRUKernel,
    LSTMKernel,
    MLPKernel,
    MLPNTKKernel,
    NNGPKernel,
    ResNetKernel,
    RNNKernel,
    RNNNTKKernel,
    TensorProgramKernel,
    TransformerKernel,
    TransformerNTKKernel,
)
from nngp_gpytorch import arch as A
from nngp_gpytorch.tensor_programs import Accuracy, examples

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


#: The GRU/LSTM rules evaluate their per-point gate products in float32 (sums in float64; docs/recurrent.md):
#: the devices' float32 rounding differs by ~1e-7 relative per point, so those kernels get rtol 1e-5.
GATED_RTOL = 1e-5


def _kernels():
    """(name, kernel factory, feature count) for one kernel of every family."""
    return [
        ("mlp-relu", lambda: MLPKernel(3, weight_var=1.7, bias_var=0.1), 5),
        ("mlp-ntk", lambda: MLPNTKKernel(3, weight_var=1.7, bias_var=0.1), 5),
        ("mlp-tanh-quadrature", lambda: NNGPKernel(A.mlp(2, A.Tanh())), 5),
        ("cnn-gap", lambda: CNNKernel((2, 5, 5), depth=2, readout="gap"), 50),
        ("resnet-conv", lambda: ResNetKernel(2, input_shape=(2, 4, 4)), 32),
        ("rnn", lambda: RNNKernel((5, 3)), 15),
        ("rnn-ntk", lambda: RNNNTKKernel((5, 3)), 15),
        ("gru", lambda: GRUKernel((4, 3), samples=2**10), 12),
        ("lstm", lambda: LSTMKernel((4, 3), samples=2**10), 12),
        ("transformer", lambda: TransformerKernel(1, (4, 3)), 12),
        ("transformer-ntk", lambda: TransformerNTKKernel(1, (4, 3)), 12),
        ("tensor-program-mlp", lambda: TensorProgramKernel(examples.mlp_program(2, 5, A.Tanh())), 5),
    ]


@pytest.mark.parametrize("name,factory,features", _kernels(), ids=[k[0] for k in _kernels()])
def test_cuda_matches_cpu_values_diag_and_gradients(name, factory, features):
    x = torch.randn(7, features, dtype=torch.float64)
    y = torch.randn(5, features, dtype=torch.float64)
    cpu = factory().double()
    gpu = factory().double().to(CUDA)
    k_cpu = cpu(x, y).to_dense()
    k_gpu = gpu(x.to(CUDA), y.to(CUDA)).to_dense()
    assert k_gpu.device.type == CUDA.type
    rtol = GATED_RTOL if name in ("gru", "lstm") else 1e-10
    torch.testing.assert_close(k_gpu.cpu(), k_cpu, rtol=rtol, atol=rtol * 1e-2)
    diag = gpu(x.to(CUDA), diag=True)
    torch.testing.assert_close(diag, gpu(x.to(CUDA)).to_dense().diagonal(), rtol=rtol, atol=rtol * 1e-2)
    # gradients of a scalar of the Gram with respect to every hyperparameter
    k_cpu.sum().backward()
    k_gpu.sum().backward()
    for (pname, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        assert p_gpu.grad is not None and p_gpu.grad.device.type == CUDA.type, pname
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=max(rtol, 1e-8), atol=max(rtol, 1e-8) * 1e-2,
                                   msg=pname)


def test_cuda_tensor_program_qmc_matches_cpu_within_its_standard_error():
    """A QMC expectation (gated unit, dimension > 3) on both devices uses the same Sobol points and the same
    principal-axis rotation wherever the eigenvectors are unique; inside a degenerate eigenspace the rotation
    is arbitrary and the two estimates differ by QMC error: bound 5·√2·stderr per entry (two estimates of
    comparable error; 5σ keeps the false-alarm rate below 1e-5 for the 28 entries)."""
    from nngp_gpytorch.tensor_programs import evaluate_program

    program = examples.minimal_gated_unit_program(2, 3)
    accuracy = Accuracy(qmc_points=2**8, qmc_replicates=4)
    x = torch.randn(7, 6, dtype=torch.float64)
    variances = torch.ones(len(program.parameters), dtype=torch.float64)
    cpu = evaluate_program(program, x, None, variances, accuracy=accuracy)
    gpu = evaluate_program(program, x.to(CUDA), None, variances.to(CUDA), accuracy=accuracy)
    assert gpu.methods.get("qmc", 0) > 0
    bound = 5 * 2**0.5 * torch.maximum(cpu.stderr, gpu.stderr.cpu()) + 1e-12
    assert ((gpu.kernel.cpu() - cpu.kernel).abs() <= bound).all()
    kernel = TensorProgramKernel(program, accuracy=accuracy).double().to(CUDA)
    kernel(x.to(CUDA)).to_dense().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in kernel.parameters())


def test_cuda_default_tile_budget_is_large():
    """Small tiles are many small kernel launches on a GPU (bench_gpu.py conv: 64 MiB tiles 4.2 s, 2 GiB
    0.4–0.9 s for a 256×256 GAP Gram on an H100)."""
    assert CNNKernel((1, 4, 4), depth=1).to(CUDA).tile_budget() == 2 * 2**30


def test_cuda_float32_deep_relu_gram_is_psd_with_exact_diagonal():
    """Depth 20 in float32 with near-duplicate points: the failure mode of peers' float32 kernels (NaN,
    indefinite Grams). Eigenvalues of the float32 Gram (computed in float64) must be ≥ −1e-6·trace,
    ~100 float32 ulps of the largest eigenvalue."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 16, generator=g)
    x = torch.cat([base, base[:32] + 1e-4 * torch.randn(32, 16, generator=g)]).to(CUDA)
    kernel = MLPKernel(20, weight_var=2.0, bias_var=0.0).to(CUDA)
    with torch.no_grad():
        gram = kernel(x).to_dense()
    assert torch.isfinite(gram).all()
    torch.testing.assert_close(gram.diagonal(), kernel(x, diag=True).detach())
    eig = torch.linalg.eigvalsh(gram.double())
    assert eig.min() >= -1e-6 * eig.sum()


def test_exact_gp_trains_on_cuda_cg_matches_cholesky():
    from nngp_gpytorch.models import NNGPRegressionModel, fit

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1200, 6, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.3 * x[:, 1] + 0.1 * torch.randn(1200, generator=g, dtype=torch.float64)
    x, y = x.to(CUDA), y.to(CUDA)
    model = NNGPRegressionModel(x[:1000], y[:1000], MLPKernel(2)).to(CUDA)
    result = fit(model, optimizer="adam", steps=30)
    assert result.final_loss < result.losses[0]
    mean, variance = model.predict(x[1000:])
    assert mean.device.type == CUDA.type and (variance > 0).all()
    assert ((mean - y[1000:]) ** 2).mean() < 0.5 * ((y[1000:] - y[:1000].mean()) ** 2).mean()
    # the CG/Lanczos path and Cholesky give the same marginal likelihood (relative 1e-3: CG tolerance and
    # stochastic log-det probes; GPyTorch's own tests use looser bounds)
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    with torch.no_grad():
        with gpytorch.settings.max_cholesky_size(10**6):
            exact = mll(model(x[:1000]), y[:1000])
        torch.manual_seed(0)
        with gpytorch.settings.max_cholesky_size(0), gpytorch.settings.cg_tolerance(1e-6), \
                gpytorch.settings.num_trace_samples(64), gpytorch.settings.max_lanczos_quadrature_iterations(60):
            cg = mll(model(x[:1000]), y[:1000])
    assert abs(cg.item() - exact.item()) <= 1e-3 * abs(exact.item()) + 1e-3


def test_verification_ensemble_on_cuda_passes_and_matches_cpu_budget():
    """The statistical suite on the GPU: a correct kernel passes at α = 1e-4 (fixed seed), a ×1.02 mutant
    of the same kernel is rejected with the same networks (power of this budget measured on CPU:
    docs/verification.md)."""
    from verification import default_inputs, verify
    from verification.verify import analytic_kernel

    mlp = A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense())
    inputs = default_inputs().to(CUDA)
    result = verify(mlp, inputs=inputs, networks=20000, width=1024, seed=3, weight_var=1.5, bias_var=0.2)
    assert result.passed, result
    analytic = analytic_kernel(mlp, inputs, as_hyper(1.5, 0.2))
    wrong = verify(mlp, inputs=inputs, networks=20000, width=1024, seed=3, weight_var=1.5, bias_var=0.2,
                   analytic=1.02 * analytic)
    assert not wrong.passed


def test_monte_carlo_gram_on_cuda_resumes_and_stays_there(tmp_path):
    """The Monte Carlo Gram runs its networks and sums on the inputs' device, and a CUDA checkpoint resumes."""
    from verification import default_inputs
    from verification.monte_carlo import monte_carlo_gram

    x = default_inputs(k=4, d=3).to(CUDA)
    kwargs = dict(width=64, weight_var=2.0, bias_var=0.1, seed=1, progress=False)
    whole = monte_carlo_gram(A.mlp(2), x, networks=8, **kwargs)
    monte_carlo_gram(A.mlp(2), x, networks=4, checkpoint=tmp_path / "g.pt", **kwargs)
    resumed = monte_carlo_gram(A.mlp(2), x, networks=8, checkpoint=tmp_path / "g.pt", **kwargs)
    # the same networks and sums; 1e-12 relative where cuBLAS reorders a reduction between the two runs
    assert whole.mean.device.type == "cuda" and torch.allclose(resumed.mean, whole.mean, rtol=1e-12, atol=0)


def test_empirical_ntk_on_cuda_passes():
    from verification import default_inputs, verify_ntk

    mlp = A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.ReLU(), A.Dense())
    result = verify_ntk(mlp, inputs=default_inputs().to(CUDA), networks=256, width=1024, seed=5,
                        weight_var=2.0, bias_var=0.1)
    assert result.passed, result


def as_hyper(weight_var: float, bias_var: float):
    from verification.ensembles import as_hyperparameters

    return as_hyperparameters(weight_var, bias_var)

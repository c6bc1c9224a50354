"""Our kernels behave like GPyTorch's own: the shared kernel test case, composition, models, solver paths."""

from __future__ import annotations

import pickle
import unittest
import warnings

import gpytorch
import pytest
import torch
from gpytorch.kernels import AdditiveKernel, MultiDeviceKernel, RBFKernel, ScaleKernel
from gpytorch.priors import GammaPrior, LogNormalPrior
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase
from linear_operator.utils.warnings import NumericalWarning

from nngp_gpytorch import MLPKernel, NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch import kernels as K

torch.set_num_threads(1)


# --- GPyTorch's shared kernel test case ---------------------------------------------------------------
class TestNNGPKernelConformance(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        arch = A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense())
        return NNGPKernel(arch, weight_var=1.5, bias_var=0.1, **kwargs)


class TestNNGPKernelPerLayerConformance(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        arch = A.Serial(A.Dense(), A.GELU(), A.Dense(), A.Sign(), A.Dense())
        return NNGPKernel(arch, weight_var=[1.2, 1.7, 0.9], bias_var=[0.1, 0.2, 0.3], per_layer=True, **kwargs)


class TestNTKKernelConformance(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return NTKKernel(A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.ReLU(), A.Dense()), weight_var=1.5,
                         bias_var=0.1, **kwargs)


class TestMLPKernelConformance(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        # tanh has no closed form: exercises the quadrature dual under every batch layout
        return NNGPKernel(A.mlp(3, A.Tanh()), weight_var=1.5, bias_var=0.1, **kwargs)


class _StructuredInputs(BaseKernelTestCase):
    """Kernels told an ``input_shape``: the test case's data have 2 features, read as 2 positions/steps of 1
    channel; ``active_dims`` (which changes the feature count) is incompatible with a fixed input_shape."""

    def test_active_dims_list(self):
        self.skipTest("a structured kernel's input_shape fixes the feature count")

    def test_active_dims_range(self):
        self.skipTest("a structured kernel's input_shape fixes the feature count")


class TestResNetKernelConformance(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return K.NNGPKernel(A.resnet(depth=2), weight_var=1.3, bias_var=0.1, **kwargs)


class TestResNetNTKKernelConformance(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return K.NTKKernel(A.resnet(depth=2), weight_var=1.3, bias_var=0.1, **kwargs)


class TestCNNKernelConformance(_StructuredInputs, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return K.NNGPKernel(A.cnn(depth=1), input_shape=(1, 2), weight_var=1.3, bias_var=0.1, **kwargs)


class TestRNNKernelConformance(_StructuredInputs, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return K.NNGPKernel(A.rnn(), input_shape=(2, 1), per_layer=True, **kwargs)


class TestTransformerKernelConformance(_StructuredInputs, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return K.NNGPKernel(A.transformer(depth=1), input_shape=(2, 1), **kwargs)


def test_kernel_with_priors_pickles():
    """Regression: prior closures were lambdas, so a kernel with priors could not be pickled."""
    kernel = NNGPKernel(A.mlp(2), weight_var_prior=LogNormalPrior(0.0, 1.0), bias_var_prior=GammaPrior(2.0, 10.0),
                        weight_var=1.3, bias_var=0.2)
    clone = pickle.loads(pickle.dumps(kernel))
    x = torch.randn(5, 3)
    torch.testing.assert_close(clone(x).to_dense(), kernel(x).to_dense())
    assert {name for name, *_ in clone.named_priors()} == {"weight_var_prior", "bias_var_prior"}


# --- composition -----------------------------------------------------------------------------------------
def _data(n=30, d=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.sin(x.sum(-1)) + 0.1 * torch.randn(n, generator=g, dtype=dtype)
    return x, y


def test_scale_and_additive_kernels_compose():
    x, _ = _data()
    nngp = NNGPKernel(A.mlp(2), weight_var=1.4, bias_var=0.05).double()
    scaled = ScaleKernel(nngp).double()
    scaled.outputscale = 2.5
    torch.testing.assert_close(scaled(x).to_dense(), 2.5 * nngp(x).to_dense())
    torch.testing.assert_close(scaled(x, diag=True), 2.5 * nngp(x, diag=True))

    rbf = RBFKernel().double()
    total = nngp + rbf
    assert isinstance(total, AdditiveKernel)
    torch.testing.assert_close(total(x).to_dense(), nngp(x).to_dense() + rbf(x).to_dense())
    explicit = AdditiveKernel(NNGPKernel(A.mlp(1),
                                         active_dims=[0, 1]), NNGPKernel(A.mlp(1), active_dims=[2, 3])).double()
    expected = NNGPKernel(A.mlp(1)).double()(x[:, :2]).to_dense() + NNGPKernel(A.mlp(1)).double()(x[:, 2:]).to_dense()
    torch.testing.assert_close(explicit(x).to_dense(), expected)
    # a product with a stationary kernel works too
    torch.testing.assert_close((nngp * rbf)(x).to_dense(), nngp(x).to_dense() * rbf(x).to_dense())


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood, kernel):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@pytest.mark.parametrize("kernel_cls", [MLPKernel, NTKKernel])
def test_exact_gp_trains_and_predicts(kernel_cls):
    x, y = _data(40)
    kernel = NNGPKernel(A.mlp(2)) if kernel_cls is MLPKernel else NTKKernel(A.mlp(2))
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    model = _ExactGP(x, y, likelihood, ScaleKernel(kernel)).double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert kernel.raw_weight_var.grad is not None and torch.isfinite(kernel.raw_weight_var.grad).all()
    model.eval()
    xt, yt = _data(20, seed=1)
    with torch.no_grad(), gpytorch.settings.fast_pred_var():
        pred = likelihood(model(xt))
    assert pred.mean.shape == (20,) and torch.isfinite(pred.variance).all() and (pred.variance > 0).all()
    assert ((pred.mean - yt) ** 2).mean() < ((yt - y.mean()) ** 2).mean()


class _SVGP(gpytorch.models.ApproximateGP):
    def __init__(self, inducing, kernel):
        distribution = gpytorch.variational.CholeskyVariationalDistribution(inducing.shape[0])
        strategy = gpytorch.variational.VariationalStrategy(self, inducing, distribution,
                                                            learn_inducing_locations=True)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def test_approximate_gp_with_variational_strategy():
    x, y = _data(60)
    model = _SVGP(x[:10].clone(), ScaleKernel(NNGPKernel(A.mlp(1)))).double()
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=x.shape[0])
    opt = torch.optim.Adam([*model.parameters(), *likelihood.parameters()], lr=0.05)
    model.train()
    likelihood.train()
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # inducing locations receive gradients through the kernel's input path
    assert model.variational_strategy.inducing_points.grad is not None
    model.eval()
    with torch.no_grad():
        pred = model(x[:5])
    assert torch.isfinite(pred.mean).all() and (pred.variance > 0).all()


# --- solver paths ----------------------------------------------------------------------------------------
def test_cg_path_matches_cholesky():
    """Above ``max_cholesky_size`` GPyTorch solves with CG + Lanczos: same MLL and predictions as Cholesky."""
    x, y = _data(300, d=5, seed=3)
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    model = _ExactGP(x, y, likelihood, ScaleKernel(NNGPKernel(A.mlp(2), bias_var=0.1))).double()
    likelihood.noise = 0.05
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    model.train()

    def mll_and_grad():
        model.zero_grad()
        value = mll(model(x), y)
        value.backward()
        return value.detach(), model.covar_module.base_kernel.raw_weight_var.grad.clone()

    with gpytorch.settings.max_cholesky_size(10_000):
        chol, chol_grad = mll_and_grad()
    # CG with a rank-50 pivoted-Cholesky preconditioner (GPyTorch applies one only above 2000 points by default)
    with gpytorch.settings.max_cholesky_size(0), gpytorch.settings.min_preconditioning_size(0), \
            gpytorch.settings.max_preconditioner_size(50), gpytorch.settings.num_trace_samples(64), \
            gpytorch.settings.max_cg_iterations(1000), warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        torch.manual_seed(0)
        cg, cg_grad = mll_and_grad()
    # log-det by stochastic Lanczos quadrature (64 probes): measured spread over seeds ~5e-4 relative
    torch.testing.assert_close(cg, chol, rtol=2e-3, atol=0)
    torch.testing.assert_close(cg_grad, chol_grad, rtol=2e-2, atol=0)

    model.eval()
    xt, _ = _data(50, d=5, seed=4)
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(10_000):
        mean_chol = model(xt).mean
    model.prediction_strategy = None
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(0), gpytorch.settings.min_preconditioning_size(0), \
            gpytorch.settings.max_preconditioner_size(50), gpytorch.settings.eval_cg_tolerance(1e-8), \
            gpytorch.settings.max_cg_iterations(2000), warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        mean_cg = model(xt).mean
    torch.testing.assert_close(mean_cg, mean_chol, rtol=1e-4, atol=1e-5)


# --- scale-out --------------------------------------------------------------------------------------------
def test_row_blocks_equal_full_matrix():
    """What ``MultiDeviceKernel`` relies on: kernel(x1 chunk, x2) are row blocks of kernel(x1, x2)."""
    x, _ = _data(37)
    kernel = NNGPKernel(A.mlp(3, A.Erf()), bias_var=0.2).double()
    full = kernel(x).to_dense()
    blocks = torch.cat([kernel(chunk, x).to_dense() for chunk in x.split(10)], dim=-2)
    torch.testing.assert_close(blocks, full)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="GPyTorch's MultiDeviceKernel needs CUDA (torch DataParallel); RBFKernel fails identically "
                           "on CPU")
def test_multi_device_kernel():
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    x, _ = _data(64)
    x = x.to(devices[0])
    base = NNGPKernel(A.mlp(2)).double().to(devices[0])
    kernel = MultiDeviceKernel(base, device_ids=devices, output_device=devices[0])
    torch.testing.assert_close(kernel(x).to_dense(), base(x).to_dense())


# --- conveniences (nngp_gpytorch.models) -------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_fit_learns_hyperparameters_on_diabetes(optimizer):
    from sklearn.datasets import load_diabetes

    from nngp_gpytorch.models import NNGPRegressionModel, fit

    features, targets = load_diabetes(return_X_y=True)
    x = torch.tensor(features[:200])
    y = torch.tensor(targets[:200])
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    model = NNGPRegressionModel(x[:150], y[:150], NNGPKernel(A.mlp(2)))
    result = fit(model, optimizer=optimizer, steps=60 if optimizer == "adam" else 10)
    assert result.final_loss < result.losses[0]
    assert model.covar_module.weight_var.item() != pytest.approx(1.0, abs=1e-3)
    mean, variance = model.predict(x[150:])
    assert (variance > 0).all()
    assert ((mean - y[150:]) ** 2).mean() < 0.8 * ((y[150:] - y[:150].mean()) ** 2).mean()


def test_fit_rejects_bad_arguments():
    from nngp_gpytorch.models import NNGPRegressionModel, fit

    x, y = _data(10)
    with pytest.raises(ValueError, match="optimizer"):
        fit(NNGPRegressionModel(x, y), optimizer="sgd")
    with pytest.raises(ValueError, match="train_y"):
        NNGPRegressionModel(x, y[:5])

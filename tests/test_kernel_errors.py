"""Bad input gets a clear error, never a silent NaN."""

import pytest
import torch
from gpytorch.priors import GammaPrior

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A


@pytest.fixture
def kernel():
    return NNGPKernel(A.mlp(2, A.ReLU())).double()


def test_wrong_feature_dimension(kernel):
    with pytest.raises(ValueError, match="x1 has 3 features but x2 has 4"):
        kernel(torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64))
    fixed = NNGPKernel(A.mlp(2), input_dim=3).double()
    with pytest.raises(ValueError, match="expected 3"):
        fixed(torch.randn(5, 4, dtype=torch.float64))
    shaped = NNGPKernel(A.mlp(1), input_shape=(2, 3)).double()
    with pytest.raises(ValueError, match=r"prod\(input_shape"):
        shaped(torch.randn(5, 5, dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs(kernel, bad):
    x = torch.randn(4, 2, dtype=torch.float64)
    x[1, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        kernel(x)


def test_one_dimensional_input(kernel):
    with pytest.raises(ValueError, match=r"\(\.\.\., n, d\)"):
        kernel(torch.randn(5, dtype=torch.float64))


def test_mismatched_dtypes():
    kernel = NNGPKernel(A.mlp(2))  # float32 parameters
    with pytest.raises(TypeError, match="float64 but the kernel's parameters are torch.float32"):
        kernel(torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        kernel(torch.ones(4, 2, dtype=torch.int64))


def test_mismatched_devices():
    kernel = NNGPKernel(A.mlp(2)).double()
    x = torch.randn(3, 2, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="is on meta"):
        kernel._check_inputs(x, None)


@pytest.mark.parametrize("name,value", [("weight_var", 0.0), ("weight_var", -1.0), ("bias_var", -0.1),
                                        ("weight_var", float("nan"))])
def test_non_positive_variances(name, value):
    with pytest.raises(ValueError, match=name):
        NNGPKernel(A.mlp(2), **{name: value})
    kernel = NNGPKernel(A.mlp(2))
    with pytest.raises(ValueError, match=name):
        setattr(kernel, name, value)


def test_wrong_number_of_per_layer_variances():
    with pytest.raises(ValueError, match="per_layer=True"):
        NNGPKernel(A.mlp(2), weight_var=[1.0, 2.0])
    with pytest.raises(ValueError, match="3 variance slot"):
        NNGPKernel(A.mlp(2), per_layer=True, weight_var=[1.0, 2.0])


def test_invalid_architecture_and_options():
    with pytest.raises(A.ArchitectureError, match="readout"):
        NNGPKernel(A.Serial(A.Dense(), A.ReLU()))
    with pytest.raises(TypeError, match="arch"):
        NNGPKernel("mlp")
    with pytest.raises(ValueError, match="lengthscale"):
        NNGPKernel(A.mlp(2), ard_num_dims=3)
    with pytest.raises(ValueError, match="block_size"):
        NNGPKernel(A.mlp(2), block_size=0)
    with pytest.raises(TypeError, match="Prior"):
        NNGPKernel(A.mlp(2), weight_var_prior=torch.distributions.Gamma(2.0, 1.0))
    with pytest.raises(NotImplementedError, match="last_dim_is_batch"):
        NNGPKernel(A.mlp(2)).double().forward(torch.randn(3, 2, dtype=torch.float64),
                   torch.randn(3, 2, dtype=torch.float64),
                                      last_dim_is_batch=True)


def test_zero_bias_zero_input_is_finite():
    """σb² = 0 with a zero input vector: 0/0 in the correlation is defined as its limit, not NaN."""
    kernel = NNGPKernel(A.mlp(3, A.Erf()), bias_var=0.0).double()
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    k = kernel(x).to_dense()
    assert torch.isfinite(k).all()
    assert torch.allclose(k[0], torch.zeros(2, dtype=torch.float64), atol=1e-6)


def test_prior_is_registered_for_pyro():
    kernel = NNGPKernel(A.mlp(2), weight_var_prior=GammaPrior(2.0, 1.0), bias_var_prior=GammaPrior(1.0, 5.0))
    names = {name for name, *_ in kernel.named_priors()}
    assert names == {"weight_var_prior", "bias_var_prior"}
    kernel.weight_var_prior  # noqa: B018  (attribute exists)

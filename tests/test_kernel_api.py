"""One kernel API: ``NNGPKernel(description)`` / ``NTKKernel(description)`` for every description, the deprecated
named aliases, and full-precision hyperparameters (exact float64 values, exact zero bias)."""

import math
import pickle

import pytest
import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.kernels import BatchNormKernel, GraphNNGPKernel, GraphNTKKernel
from nngp_gpytorch.tensor_programs import TensorProgramKernel, TensorProgramNTKKernel
from nngp_gpytorch.tensor_programs.examples import mlp_program

F64 = torch.float64


def _x(n=6, d=3, seed=0):
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _relu_mlp_reference(x: torch.Tensor, w: float, b: float) -> torch.Tensor:
    """Depth-1 ReLU MLP NNGP in float64 from the arc-cosine formula (Cho & Saul 2009), written out."""
    k = w * (x @ x.T) / x.shape[1] + b
    d = torch.sqrt(torch.diagonal(k))
    c = (k / (d[:, None] * d[None, :])).clamp(-1.0, 1.0)
    theta = torch.arccos(c)
    v = d[:, None] * d[None, :] * (torch.sin(theta) + (math.pi - theta) * c) / (2 * math.pi)
    return w * v + b


# --- precision ------------------------------------------------------------------------------------------------
def test_readme_pattern_keeps_float64_hyperparameters():
    """``NNGPKernel(net, weight_var=1.5, bias_var=0.1).double()`` holds 1.5 and 0.1 to float64 rounding and agrees
    with an exact float64 reference to 1e-12 relative (the float32-rounded 0.1 was off by 1.5e-8 relative)."""
    kernel = NNGPKernel(A.mlp(1), weight_var=1.5, bias_var=0.1).double()
    assert kernel.weight_var.item() == 1.5
    assert abs(kernel.bias_var.item() - 0.1) <= 2e-16
    x = _x()
    reference = _relu_mlp_reference(x, 1.5, 0.1)
    got = kernel(x).to_dense()
    assert ((got - reference).abs() / reference.abs()).max() <= 1e-12
    # the same through dtype= and through .to(torch.float64)
    for k in (NNGPKernel(A.mlp(1), weight_var=1.5, bias_var=0.1, dtype=F64),
              NNGPKernel(A.mlp(1), weight_var=1.5, bias_var=0.1).to(F64)):
        assert ((k(x).to_dense() - reference).abs() / reference.abs()).max() <= 1e-12


def test_trained_values_are_converted_not_rederived():
    kernel = NNGPKernel(A.mlp(1), weight_var=1.5, bias_var=0.1)
    with torch.no_grad():
        kernel.raw_weight_var.add_(0.25)  # as an optimizer step would
    trained = kernel.weight_var.detach().clone()
    kernel = kernel.double()
    assert kernel.weight_var.dtype == F64
    torch.testing.assert_close(kernel.weight_var.float(), trained)  # the trained float32 value, not 1.5
    # a value set later is kept exactly again
    kernel.weight_var = 2.3
    assert kernel.float().double().weight_var.item() == 2.3


def test_zero_bias_is_exactly_zero():
    x = _x()
    linear = NNGPKernel(A.mlp(0), weight_var=2.0, bias_var=0.0).double()
    assert linear.bias_var.item() == 0.0
    assert torch.equal(linear(x).to_dense(), 2.0 * (x @ x.T) / 3)
    relu = NNGPKernel(A.mlp(1), weight_var=1.5, bias_var=[0.0]).double()
    reference = _relu_mlp_reference(x, 1.5, 0.0)
    assert ((relu(x).to_dense() - reference).abs() / reference.abs()).max() <= 1e-12
    # orthogonal inputs without bias: exactly zero covariance in the linear kernel
    e = torch.eye(3, dtype=F64)
    assert linear(e).to_dense()[0, 1].item() == 0.0
    # per-slot zeros, and a later positive value is learnable again
    per_layer = NNGPKernel(A.mlp(1), per_layer=True, bias_var=[0.0, 0.3]).double()
    assert per_layer.bias_var[0].item() == 0.0 and abs(per_layer.bias_var[1].item() - 0.3) < 1e-15
    per_layer(x).to_dense().sum().backward()
    assert per_layer.raw_bias_var.grad[0] == 0.0 and per_layer.raw_bias_var.grad[1] != 0.0
    per_layer.bias_var = 0.2
    assert torch.all(per_layer.bias_var > 0)
    assert pickle.loads(pickle.dumps(relu)).bias_var.item() == 0.0


def test_zero_bias_with_a_prior_stays_learnable():
    from gpytorch.priors import GammaPrior

    kernel = NNGPKernel(A.mlp(1), bias_var=0.0, bias_var_prior=GammaPrior(2.0, 10.0))
    assert 0.0 < kernel.bias_var.item() <= 1e-11
    assert not kernel.bias_var_fixed_zero.any()


# --- one front for every description --------------------------------------------------------------------------
def test_trees_of_every_family_build_through_the_front():
    x = _x()
    for cls in (NNGPKernel, NTKKernel):
        kernel = cls(A.mlp(2)).double()
        assert type(kernel) is cls and kernel(x).to_dense().shape == (6, 6)
    seq = torch.randn(4, 3 * 2, dtype=F64)
    for description in (A.rnn(), A.transformer(1)):
        for cls in (NNGPKernel, NTKKernel):
            kernel = cls(description, input_shape=(3, 2)).double()
            assert isinstance(kernel, cls) and kernel(seq).to_dense().shape == (4, 4)
    image = torch.randn(3, 1 * 4 * 4, dtype=F64)
    for description in (A.cnn(depth=1), A.resnet(depth=1, conv=True)):
        assert NTKKernel(description, input_shape=(1, 4, 4)).double()(image).to_dense().shape == (3, 3)


def test_recurrent_per_step_and_gated_ntk_through_the_front():
    seq = torch.randn(3, 4 * 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    gru = NNGPKernel(A.gru(samples=2**10), input_shape=(4, 2), per_layer=True).double()
    assert gru.per_step(seq).shape == (3, 3, 4, 4)
    with pytest.raises(ValueError, match="recurrent"):
        NNGPKernel(A.mlp(1)).per_step(seq)
    theta = NTKKernel(A.gru(samples=2**10), input_shape=(4, 2), weight_var=[1.0, 1.2, 0.8], bias_var=[0.1, 0, 0],
                      dtype=F64)
    assert isinstance(theta, NTKKernel) and not isinstance(theta, NNGPKernel)
    assert abs(theta.variance("hidden_var").item() - 1.2) <= 4e-16 and theta.variance("input_var").dtype == F64
    k, t = theta.nngp_and_ntk(seq)
    assert t.shape == (3, 3) and torch.all(torch.linalg.eigvalsh(t) > -1e-6)
    # the NTK's K is the same limit as the dedicated GRU algebra (QMC accuracy ~1e-3 at these sizes)
    gru.weight_var, gru.bias_var = [1.0, 1.2, 0.8], [0.1, 0, 0]
    torch.testing.assert_close(k, gru(seq).to_dense(), atol=2e-2, rtol=0)


def test_programs_through_the_front():
    program = mlp_program(1, 3)
    x = _x()
    nngp, ntk = NNGPKernel(program, dtype=F64), NTKKernel(program, dtype=F64)
    assert type(nngp) is TensorProgramKernel and type(ntk) is TensorProgramNTKKernel
    assert isinstance(nngp, NNGPKernel) and not isinstance(nngp, NTKKernel) and isinstance(ntk, NTKKernel)
    assert nngp.variances.dtype == F64
    tree = NNGPKernel(A.mlp(1), weight_var=1.0, bias_var=0.0).double()
    torch.testing.assert_close(nngp(x).to_dense(), tree(x).to_dense(), rtol=1e-10, atol=1e-10)  # two algebras
    with pytest.raises(TypeError, match="names its variances"):
        NNGPKernel(program, weight_var=2.0)


def test_set_and_transductive_descriptions_get_their_kernels():
    kernel = NNGPKernel(A.batchnorm_mlp(1))
    assert type(kernel) is BatchNormKernel and isinstance(kernel, NNGPKernel)
    with pytest.raises(A.ArchitectureError, match="BatchNorm.*no neural tangent kernel"):
        NTKKernel(A.batchnorm_mlp(1))
    adjacency = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    nodes = torch.randn(3, 2, dtype=F64)
    nngp = NNGPKernel(A.gcn(adjacency, depth=1), node_features=nodes).double()
    ntk = NTKKernel(A.gcn(adjacency, depth=1), node_features=nodes).double()
    assert type(nngp) is GraphNNGPKernel and type(ntk) is GraphNTKKernel
    ids = torch.arange(3, dtype=F64).unsqueeze(-1)
    assert nngp(ids).to_dense().shape == (3, 3) and ntk(ids).to_dense().shape == (3, 3)
    with pytest.raises(TypeError, match="architecture description"):
        NNGPKernel("mlp")


def test_deprecated_names_warn_and_agree_with_the_front():
    from nngp_gpytorch import MLPKernel, RNNKernel

    x = _x()
    with pytest.warns(DeprecationWarning, match="NNGPKernel"):
        old = MLPKernel(2, A.Erf(), weight_var=1.3).double()
    new = NNGPKernel(A.mlp(2, A.Erf()), weight_var=1.3).double()
    assert isinstance(old, NNGPKernel) and torch.equal(old(x).to_dense(), new(x).to_dense())
    with pytest.warns(DeprecationWarning):
        RNNKernel(input_shape=(3, 2))


def test_capabilities_are_read_from_the_tree():
    caps = A.capabilities(A.batchnorm_mlp(1))
    assert caps.set_semantics and not caps.has_ntk and "BatchNorm" in caps.no_ntk
    assert A.capabilities(A.mlp(2)) == A.Capabilities(True, False, False, False, None)
    assert A.capabilities(A.cnn(1)).needs_full_positions
    assert A.capabilities(A.gcn(torch.eye(2), 1)).transductive


def test_fused_and_layer_by_layer_ntk_and_nngp_agree():
    """The fusion pass changes how, not what: optimize=False gives the same K (and Θ) to rounding."""
    x = _x(9, 4)
    x[3] = x[0]
    hyper = Hyperparameters(torch.tensor([1.4], dtype=F64), torch.tensor([0.2], dtype=F64))
    for arch in (A.mlp(3), A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense(), A.ReLU(), A.Dense())):
        for with_ntk in (False, True):
            fused = evaluate(arch, x, x, hyper, with_ntk=with_ntk)
            plain = evaluate(arch, x, x, hyper, with_ntk=with_ntk, optimize=False)
            for a, b in zip(fused, plain, strict=True):
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)

"""``compile_program``: every description read as a NETSOR program (Yang 2019), and the fallback it gives.

* On the dedicated rules' domain the compiled program's master-theorem kernel and Tensor Programs II NTK equal
  the covariance algebra's to ≤ 1e-10 in float64 (closed-form duals only, so the two computations are exact up to
  rounding): MLP, conv + GlobalAvgPool (1-D and 2-D), conv + Flatten, RNN, attention, transformer, residual/LN.
* Compositions the algebra refuses get their kernel through the program (``NNGPKernel(description)``), and that
  kernel agrees with finite networks: the program's literal twin and the description's own finite twin
  (α = 1e-4 per test, fixed seeds), while a planted wrong kernel (the cross term of the two branches dropped) is
  rejected.
* What does not compile raises an error naming the layer.
"""

from __future__ import annotations

import math

import pytest
import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters
from nngp_gpytorch.tensor_programs import (
    CompiledNNGPKernel,
    CompiledNTKKernel,
    CompileError,
    ProgramError,
    compile_program,
)
from verification.ensembles import split_readout
from verification.statistics import mean_test
from verification.tensor_programs import sample_program
from verification.twins import TwinContext, run_twin

W, B = 1.5, 0.1
ALPHA = 1e-4

CASES = {
    "mlp-relu-erf": (A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense()), (3,), {}),
    "mlp-per-layer": (A.mlp(2, A.Erf()), (3,),
                      dict(per_layer=True, weight_var=[1.2, 0.8, 1.4], bias_var=[0.1, 0, 0.3])),
    "conv1d-gap": (A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.Conv(3), A.Erf(), A.GlobalAvgPool(), A.Dense()),
                   (2, 5), {}),
    "conv2d-gap": (A.Serial(A.Conv((2, 2), padding="same"), A.ReLU(), A.GlobalAvgPool(), A.Dense()), (1, 3, 3), {}),
    "conv1d-flatten": (A.Serial(A.Conv(3, stride=2, padding="circular"), A.ReLU(), A.AvgPool(2, padding="same"),
                                A.Flatten(), A.Dense()), (2, 5), {}),
    "rnn-erf-last": (A.rnn(A.Erf()), (3, 2), dict(per_layer=True, weight_var=[1.2, 0.8, 1.1], bias_var=[0.1, 0, 0.05])),
    "rnn-relu-mean": (A.rnn(A.ReLU(), readout="mean"), (4, 2), {}),
    "attention": (A.Serial(A.TokenDense(), A.SelfAttention(), A.SequenceReadout(), A.Dense()), (3, 2), {}),
    "attention-causal": (A.Serial(A.TokenDense(), A.SelfAttention(causal=True, temperature=0.7),
                                  A.SequenceReadout("last"), A.Dense()), (3, 2), {}),
    "transformer": (A.transformer(1), (3, 2), {}),
    "resnet-layernorm": (A.resnet(2, layer_norm=True), (3,), {}),
    "layernorm-of-features": (A.Serial(A.Dense(), A.ReLU(), A.LayerNorm(), A.Dense(), A.Erf(), A.Dense()), (3,), {}),
}


def _inputs(shape, n=5, seed=0):
    d = 1
    for s in shape:
        d *= s
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_kernels_equal_the_dedicated_kernels(case):
    net, shape, kw = CASES[case]
    kw = {"weight_var": W, "bias_var": B, **kw}
    x = _inputs(shape)
    program = compile_program(net, shape, **kw)
    k_prog, t_prog = NTKKernel(program, dtype=torch.float64).nngp_and_ntk(x)
    k_ded, t_ded = NTKKernel(net, input_shape=shape, dtype=torch.float64, **kw).nngp_and_ntk(x)
    assert (k_prog - k_ded).abs().max() <= 1e-10
    assert (t_prog - t_ded).abs().max() <= 1e-10
    k_gram = NNGPKernel(program, dtype=torch.float64)(x).to_dense()
    assert (k_gram - k_ded).abs().max() <= 1e-10
    assert (NNGPKernel(program, dtype=torch.float64)(x, diag=True) - k_ded.diagonal()).abs().max() <= 1e-10


def _relu_dual(k: torch.Tensor) -> torch.Tensor:
    d = k.diagonal().sqrt()
    c = (k / d[:, None] / d[None, :]).clamp(-1, 1)
    theta = torch.arccos(c)
    return d[:, None] * d[None, :] / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * c)


LN_AFTER_RELU_SKIP = A.Serial(A.Dense(), A.ReLU(), A.Residual(A.Serial(A.Dense(), A.ReLU(), A.Dense())), A.LayerNorm(),
                              A.Dense())


def _ln_after_relu_skip_by_hand(x: torch.Tensor) -> torch.Tensor:
    """``LN(relu(g) + g_b)``: mean ``μ = E[relu(g)]`` (``g_b`` is centred and independent of ``g``), second moment
    ``V_relu(K₁) + K_b``; then the readout ``σw²·(F − μμ')/(σσ') + σb²``."""
    k1 = W * x @ x.T / x.shape[-1] + B
    v1 = _relu_dual(k1)
    kb = W * _relu_dual(W * v1 + B) + B
    mu = k1.diagonal().sqrt() / math.sqrt(2 * math.pi)
    f = v1 + kb
    sd = (f.diagonal() - mu**2).sqrt()
    return W * (f - mu[:, None] * mu[None, :]) / (sd[:, None] * sd[None, :]) + B


def test_layernorm_after_a_skip_over_relu_features_matches_the_formula():
    x = _inputs((3,))
    k = NNGPKernel(compile_program(LN_AFTER_RELU_SKIP, 3, W, B), dtype=torch.float64)(x).to_dense()
    assert (k - _ln_after_relu_skip_by_hand(x)).abs().max() <= 1e-12


def test_dedicated_layernorm_after_a_skip_over_relu_features_matches_the_formula():
    """``Serial(Dense(), ReLU(), Residual(Serial(Dense(), ReLU(), Dense())), LayerNorm(), Dense())``, σw² = W, σb² = B.

    Derivation (Yang 2019; NETSOR+ for the layer norm's moments). ``g = W₀x + b₀``: ``K₁ = σw²·x·x'/d + σb²``;
    ``h = relu(g)``: ``⟨h, h'⟩/n → V_relu(K₁)``. The branch ``g_b = W₂·relu(W₁h + b₁) + b₂`` has fresh matrices, so
    its G-var is independent of ``g`` and centred: ``K_b = σw²·V_relu(σw²·V_relu(K₁) + σb²) + σb²``. The sum
    ``s = h + g_b`` then has
      second moment ``F = lim ⟨s, s'⟩/n = V_relu(K₁) + K_b`` (the cross terms ``E[relu(g)·g_b'] = E[relu(g)]·0``),
      channel mean ``μ(x) = lim (1/n)·Σ_α s_α(x) = E[relu(g(x))] + E[g_b] = √(K₁(x, x)/2π)``,
    LayerNorm ``ŝ = (s − μ)/σ`` with ``σ²(x) = F(x, x) − μ(x)²`` has ``⟨ŝ, ŝ'⟩/n → (F − μμ')/(σσ')``, and the readout
    gives ``K = σw²·(F − μμ')/(σσ') + σb²`` (:func:`_ln_after_relu_skip_by_hand`).

    The algebra was 1.3e-3 off this (1.8e-3 on other inputs): after the sum the state records the mean of
    ``relu(g)`` through a ``MeanCarrier(ReLU())`` marker, whose type hid ReLU from ``activation_mean``'s closed-form
    table, so ``E[relu(u)]`` was integrated by 96-point Gauss–Hermite across the kink (0.4 % relative error).
    Now the marker is unwrapped (and ``SumOf`` means add, compositions use a rule split at the kink): the dedicated
    kernel equals the formula and the compiled program to ≤ 1e-10 (measured 3e-15). Finite networks decide it too:
    ``tests/test_layernorm_features.py`` (α = 1e-4, fixed seeds; the old mean rejected, p = 5e-10)."""
    x = _inputs((3,))
    k = NNGPKernel(LN_AFTER_RELU_SKIP, weight_var=W, bias_var=B, dtype=torch.float64)(x).to_dense()
    assert (k - _ln_after_relu_skip_by_hand(x)).abs().max() <= 1e-10
    compiled = NNGPKernel(compile_program(LN_AFTER_RELU_SKIP, 3, W, B), dtype=torch.float64)(x).to_dense()
    assert (k - compiled).abs().max() <= 1e-10


def test_the_readout_is_the_networks_own_where_it_can_be():
    """A final Dense on one vector is the program's readout (exact NTK); after Flatten (independent readout vectors
    per position) the program reads the output G-var with a unit ``output_scale``, and the NTK kernel subtracts K."""
    assert compile_program(A.mlp(1), 3).output_scale is None
    flat = compile_program(A.cnn(1, readout="flatten"), (1, 4))
    assert flat.output_scale == "output_scale" and "output_scale" in flat.parameter_names
    assert isinstance(NTKKernel(flat), CompiledNTKKernel)


REFUSED = {
    "two-non-gaussian-summands": A.Serial(A.Dense(), A.ReLU(), A.Parallel(A.Serial(A.Dense(), A.ReLU()),
                                                                          A.Serial(A.Dense(), A.ReLU())), A.Dense()),
    "activation-after-phi-plus-gaussian": A.Serial(A.Dense(), A.ReLU(), A.Residual(A.Dense()), A.Erf(), A.Dense()),
    "weight-free-branch": A.Serial(A.Dense(), A.ReLU(), A.Residual(A.LayerNorm()), A.Dense()),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_compositions_get_the_compiled_kernel(case):
    net = REFUSED[case]
    with pytest.raises(A.ArchitectureError):
        net.validate()
    x = _inputs((3,), n=4)
    kernel = NNGPKernel(net, weight_var=W, bias_var=B, dtype=torch.float64)
    assert isinstance(kernel, CompiledNNGPKernel) and isinstance(kernel, NNGPKernel)
    k = kernel(x).to_dense()
    expected = NNGPKernel(compile_program(net, 3, W, B), dtype=torch.float64,
                          accuracy=kernel.accuracy).evaluate_with_error(x)
    assert (k - expected.kernel).abs().max() <= 1e-12
    assert torch.isfinite(k).all() and (torch.linalg.eigvalsh(k) > -1e-8).all()
    # no input dimension fixed: compiled again for inputs of another size, same named variances
    assert kernel(_inputs((4,), n=3)).to_dense().shape == (3, 3)
    values = kernel.variance_dict()
    assert kernel.program.input_dim == 4 and (values["weight_var"], values["bias_var"]) == pytest.approx((W, B))


def test_refused_compositions_get_the_compiled_ntk():
    net = REFUSED["two-non-gaussian-summands"]
    x = _inputs((3,), n=4)
    theta = NTKKernel(net, weight_var=W, bias_var=B, dtype=torch.float64)
    assert isinstance(theta, CompiledNTKKernel) and isinstance(theta, NTKKernel)
    k, t = theta.nngp_and_ntk(x)
    k_prog, t_prog = NTKKernel(compile_program(net, 3, W, B), dtype=torch.float64,
                               accuracy=theta.accuracy).nngp_and_ntk(x)
    assert (t - t_prog).abs().max() <= 1e-12 and (k - k_prog).abs().max() <= 1e-12
    assert (t.diagonal() > k.diagonal()).all()  # Θ = K + (positive semi-definite terms)


@pytest.mark.parametrize("net, match", [
    (A.Serial(A.Dense(), A.ReLU(), A.Dropout(0.3), A.ReLU(), A.Dense()), r"Dropout.*nor does it compile.*Dropout"),
    (A.Serial(A.Dense(), A.ReLU(), A.LayerNorm(), A.ReLU(), A.Dense()), r"LayerNorm.*nor does it compile.*scalar"),
])
def test_refused_compositions_that_do_not_compile_keep_their_error(net, match):
    with pytest.raises(A.ArchitectureError, match=match):
        NNGPKernel(net)


@pytest.mark.parametrize("net, shape, match", [
    (A.Serial(A.ReLU(), A.Dense()), (3,), r"Serial\[0\] ReLU\(\).*raw input"),
    (A.Serial(A.Dense(), A.Dropout(0.2), A.Dense()), (3,), r"Serial\[1\] Dropout\(rate=0.2\).*mask"),
    (A.gru(), (3, 2), r"GRU\(\).*gru_program"),
    (A.Serial(A.Dense(), A.BatchNorm(A.ReLU()), A.Dense()), (3,), r"BatchNorm.*batch"),
    (A.Serial(A.TokenDense(masked=True), A.SequenceReadout(), A.Dense()), (3, 2), r"TokenDense.*masked"),
    (A.Serial(A.Conv(3), A.ReLU(), A.Flatten(), A.Dense()), (4,), r"Conv\(\).*structured inputs"),
    (A.Serial(A.Dense(), A.ReLU()), (3,), r"does not end in one vector of Gaussian outputs"),
])
def test_compile_errors_name_the_layer(net, shape, match):
    with pytest.raises(CompileError, match=match) as info:
        compile_program(net, shape)
    assert isinstance(info.value, ProgramError) and isinstance(info.value, A.ArchitectureError)


def test_bad_arguments():
    with pytest.raises(ValueError, match="input_shape"):
        compile_program(A.mlp(1))
    with pytest.raises(ValueError, match="2 values but the description draws 3"):
        compile_program(A.mlp(2), 3, weight_var=[1.0, 2.0], per_layer=True)
    with pytest.raises(ValueError, match="weight_var must be finite and > 0"):
        compile_program(A.mlp(1), 3, weight_var=0.0)
    with pytest.raises(TypeError, match="architecture description"):
        compile_program("mlp", 3)
    with pytest.raises(TypeError, match="quadrature_degree"):
        NNGPKernel(REFUSED["two-non-gaussian-summands"], quadrature_degree=16)


# ---------------------------------------------------------------------------------------------------- finite twins
TWO_RELU_BRANCHES = REFUSED["two-non-gaussian-summands"]


def _description_twin(net, x, networks, width, seed):
    """Per-network covariances of the description's own finite twin (``verification.twins``), run without the
    architecture validation that refuses it; the final Dense averaged analytically as ``sample_ensemble`` does."""
    body, readout = split_readout(net)
    hyper = Hyperparameters.constant(W, B)
    ctx = TwinContext(generator=torch.Generator().manual_seed(seed), width=width, hyper=hyper, sampler="gram",
                      dtype=torch.float32, input_shape=None)
    with torch.no_grad():
        h = run_twin(body, x.float().expand(networks, *x.shape), ctx).double()
    w, b = ctx.variances(readout, readout.weight_var, readout.bias_var)
    return w * h @ h.transpose(-1, -2) / h.shape[-1] + b


def test_refused_composition_agrees_with_finite_networks():
    """``Serial(Dense(), ReLU(), Parallel(Serial(Dense(), ReLU()), Serial(Dense(), ReLU())), Dense())``: two independent
    ReLU branches summed (the algebra refuses: their cross covariance is the product of their means). The compiled
    kernel against (1) the program's literal twin (width 512, 256 networks), (2) the description's own finite twin
    (Gram-conditional sampler, width 2048, 256 networks; estimated finite-width bias ≤ 0.4 standard errors): α = 1e-4
    each, seeds 0, 1 (measured p = 0.32 and 0.49). Power: the kernel that drops the cross term
    (``2·K_single − σb²``, what adding covariances would give) is rejected by the same samples (the cross term is
    24% of max K; p < 1e-170)."""
    x = _inputs((3,), n=6, seed=3)
    kernel = NNGPKernel(TWO_RELU_BRANCHES, weight_var=W, bias_var=B, dtype=torch.float64)
    k = kernel(x).to_dense().detach()
    program_sample = sample_program(kernel.program, x, networks=256, width=512, seed=0)
    twin = _description_twin(TWO_RELU_BRANCHES, x, networks=256, width=2048, seed=1)
    single = NNGPKernel(A.mlp(2), weight_var=W, bias_var=B, dtype=torch.float64)(x).to_dense().detach()
    wrong = 2 * single - B
    for covariances, width in ((program_sample.covariances, 512), (twin, 2048)):
        assert mean_test(covariances, k, alpha=ALPHA, width=width).passed
        assert not mean_test(covariances, wrong, alpha=ALPHA, width=width).passed


def test_activation_after_a_sum_agrees_with_finite_networks():
    """``Serial(Dense(), ReLU(), Residual(Dense()), Erf(), Dense())`` (erf of ``relu(g) + W relu(g)``: refused by the
    algebra; 4-D QMC expectations in the program, error bar 1.7e-4) against the description's finite twin (width 2048,
    256 networks), α = 1e-4, seed 2 (measured p = 1); the kernel that forgets the skip path
    (``Serial(Dense(), ReLU(), Dense(), Erf(), Dense())``) is rejected (p ≈ 1e-212)."""
    net = REFUSED["activation-after-phi-plus-gaussian"]
    x = _inputs((3,), n=5, seed=4)
    k = NNGPKernel(net, weight_var=W, bias_var=B, dtype=torch.float64)(x).to_dense().detach()
    twin = _description_twin(net, x, networks=256, width=2048, seed=2)
    assert mean_test(twin, k, alpha=ALPHA, width=2048).passed
    no_skip = A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense())
    wrong = NNGPKernel(no_skip, weight_var=W, bias_var=B, dtype=torch.float64)(x).to_dense().detach()
    assert not mean_test(twin, wrong, alpha=ALPHA, width=2048).passed

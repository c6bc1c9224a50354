"""``LayerNorm`` of post-activation features that carry a non-zero channel mean, in the covariance algebra.

The rule (:mod:`nngp_gpytorch.algebra.layernorm`) centres by the channel mean ``μ(x) = lim (1/n)·Σ_α h_α(x)`` and
normalizes by ``σ²(x) = F(x, x) − μ(x)²``: ``K ← (F(x, x') − μ(x)μ(x'))/(σ(x)σ(x'))``, Θ divided by the same
``σ(x)σ(x')``. For features ``h = φ(g) + Σ_b g_b`` (a skip path or parallel branch over ``φ(g)`` summed with
independent zero-mean Gaussian branches) ``μ = E[φ(u)]``, ``u ~ N(0, K_g(x, x))``: the Gaussians add nothing to the
mean. ``E[φ(u)]`` is linear in ``φ``, exact for the named activations, and integrated by a rule split at the kink
``u = 0`` for compositions and user callables.

Checked here:

* ``activation_mean`` against closed forms over ``v ∈ [1e-4, 1e4]`` (including ``erf∘relu``:
  ``E[erf(relu(u))] = arctan(√(2v))/π``) and through its markers (``MeanCarrier``, ``SumOf``);
* the dedicated kernels equal the compiled tensor programs' (``compile_program``; per-term moments and kink-split
  expectations, written independently) to ≤ 1e-10 in float64, NNGP and NTK, for LayerNorm after ReLU/abs/leaky-ReLU/
  erf features with skips, after two skips, after Parallel of a post-activation branch with Gaussian branches, on
  conv (Flatten) and token (sequence) states;
* against finite networks (the description's own finite twin, Gram-conditional sampler) at α = 1e-4, fixed seeds,
  with power against the bug that was fixed (the mean by 96-point Gauss–Hermite across ReLU's kink);
* the master theorem's NETSOR+ inner-product moments ``moment(None, g, h)`` take the covariance route.
"""

from __future__ import annotations

import math

import pytest
import torch

from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import layernorm
from nngp_gpytorch.algebra.composite import MeanCarrier
from nngp_gpytorch.numerics import normal_rule
from nngp_gpytorch.tensor_programs import Accuracy, Program, compile_program, evaluate_program
from verification import verify, verify_ntk
from verification.ensembles import sample_ensemble
from verification.statistics import mean_test

W, B = 1.5, 0.1
ALPHA = 1e-4


def _inputs(d, n=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ the mean E[φ(u)]
def test_activation_mean_is_exact_for_named_and_composed_activations():
    """Closed forms vs the kink-split rule applied to the same function as an anonymous callable (relative error
    ≤ 1e-14 measured 4e-16), the markers unwrapped, and the Gauss–Hermite error that the rule replaced (≥ 1e-3)."""
    v = torch.logspace(-4, 4, 33, dtype=torch.float64)
    mean = layernorm.activation_mean
    for named in (A.ReLU(), A.Abs(), A.LeakyReLU(0.2), A.GELU(), A.Step(), A.Sigmoid()):
        exact = mean(named, v)
        split = mean(A.Activation(named.__call__), v)  # no closed form for an anonymous callable
        assert ((split - exact) / exact).abs().max() <= 1e-14, named
    erf_relu = mean(A.Composite(A.ReLU(), A.Erf()), v)
    assert ((erf_relu - torch.atan(torch.sqrt(2 * v)) / math.pi) / erf_relu).abs().max() <= 1e-14
    relu = mean(A.ReLU(), v)
    assert torch.equal(mean(MeanCarrier(A.ReLU()), v), relu)
    assert torch.equal(mean(MeanCarrier(MeanCarrier(A.ReLU())), v), relu)
    both = mean(A.SumOf(A.Identity(), A.ReLU(), A.Abs()), v)
    assert torch.allclose(both, 3 * relu, rtol=1e-15, atol=0)
    z, w = normal_rule(96, v)  # what MeanCarrier(ReLU()) got before: Gauss–Hermite across the kink
    plain = (torch.relu(torch.sqrt(v).unsqueeze(-1) * z) * w).sum(-1)
    assert ((plain - relu) / relu).abs().min() >= 1e-3


# ----------------------------------------------------------------------------------- dedicated = compiled program
def _block():
    return A.Serial(A.Dense(), A.ReLU(), A.Dense())


def _conv_block():
    return A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.Conv(3, padding="same"))


#: (description, input_shape, compiled accuracy: None = default; erf needs a finer rule than the default to 1e-10)
CASES = {
    "relu-skip": (A.Serial(A.Dense(), A.ReLU(), A.Residual(_block()), A.LayerNorm(), A.Dense()), (3,), None),
    "abs-skip": (A.Serial(A.Dense(), A.Abs(), A.Residual(A.Dense()), A.LayerNorm(), A.Dense()), (3,), None),
    "leaky-skip": (A.Serial(A.Dense(), A.LeakyReLU(0.2), A.Residual(A.Dense()), A.LayerNorm(), A.Dense()), (3,), None),
    "relu-two-skips": (A.Serial(A.Dense(), A.ReLU(), A.Residual(_block()), A.Residual(_block()), A.LayerNorm(),
                                A.Dense()), (3,), None),
    "parallel-relu-and-gaussians": (A.Serial(A.Dense(), A.ReLU(), A.Parallel(A.Serial(A.Dense(), A.ReLU()), A.Dense(),
                                                                               A.Dense()), A.LayerNorm(), A.Dense()),
                                    (3,), None),
    "parallel-relu-and-dense": (A.Serial(A.Dense(), A.Parallel(A.Serial(A.Dense(), A.ReLU()), A.Dense()),
                                         A.LayerNorm(), A.Dense()), (3,), None),
    "erf-skip": (A.Serial(A.Dense(), A.Erf(), A.Residual(_block()), A.LayerNorm(), A.Dense()), (3,),
                 Accuracy(quadrature_degree=256, gh_max_nodes=2**17)),
    "conv-relu-skip-flatten": (A.Serial(A.Conv(3, padding="same"), A.ReLU(), A.Residual(_conv_block()), A.LayerNorm(),
                                        A.Flatten(), A.Dense()), (1, 3), None),
    "tokens-relu-skip": (A.Serial(A.TokenDense(), A.ReLU(), A.Residual(A.Serial(A.TokenDense(), A.ReLU(),
                                                                                 A.TokenDense())),
                                  A.LayerNorm(), A.SequenceReadout(), A.Dense()), (2, 2), None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dedicated_layernorm_of_features_equals_the_compiled_program(case):
    """NNGP and NTK to ≤ 1e-10 (measured ≤ 1e-13; before the fix the ReLU/abs/leaky cases were 4e-4 to 2e-3 off in
    K and 2e-3 to 9e-3 in Θ). The erf case's mean is 0 by symmetry and was already right; the compiled program's
    default Gauss–Hermite degree leaves 2e-9 there, so it is evaluated at degree 256."""
    net, shape, accuracy = CASES[case]
    x = _inputs(math.prod(shape), n=3)
    k_ded, t_ded = NTKKernel(net, weight_var=W, bias_var=B, input_shape=shape, dtype=torch.float64).nngp_and_ntk(x)
    kw = {} if accuracy is None else {"accuracy": accuracy}
    k_prog, t_prog = NTKKernel(compile_program(net, shape, W, B), dtype=torch.float64, **kw).nngp_and_ntk(x)
    assert (k_ded - k_prog).abs().max() <= 1e-10
    assert (t_ded - t_prog).abs().max() <= 1e-10


# ------------------------------------------------------------------------------------------------- finite networks
def _gauss_hermite_mean(activation, variance):
    """The mean the rule computed before the fix for ``MeanCarrier`` features (96-point Gauss–Hermite)."""
    if isinstance(activation, MeanCarrier):
        z, w = normal_rule(96, variance)
        return (activation(torch.sqrt(variance.clamp_min(0)).unsqueeze(-1) * z) * w).sum(-1)
    return _exact_mean(activation, variance)


_exact_mean = layernorm.activation_mean


def _kernels(net, x, monkeypatch, ntk=False):
    """``(right, before the fix)`` NNGP (or NTK) kernels of ``net`` on ``x``."""
    out = []
    for mean in (_exact_mean, _gauss_hermite_mean):
        monkeypatch.setattr(layernorm, "activation_mean", mean)
        k, t = NTKKernel(net, weight_var=W, bias_var=B, dtype=torch.float64).nngp_and_ntk(x)
        out.append((t if ntk else k).detach())
    monkeypatch.setattr(layernorm, "activation_mean", _exact_mean)
    return out


#: the reported case with the skip branch's output scaled down (σw² = 0.2 on its last Dense), which makes the mean's
#: share of the features larger and the old error (4.8e-3 in K) visible to a budget of seconds
SMALL_BRANCH = A.Serial(A.Dense(), A.ReLU(), A.Residual(A.Serial(A.Dense(), A.ReLU(), A.Dense(weight_var=0.2))),
                        A.LayerNorm(), A.Dense())


def test_layernorm_after_a_relu_skip_agrees_with_finite_networks(monkeypatch):
    """``SMALL_BRANCH`` against its finite twin (Gram-conditional sampler, width 4096, 1024 networks, seed 0), α = 1e-4:
    the kernel passes (measured p = 1), the kernel with the old Gauss–Hermite mean is rejected by the same samples
    (measured p = 5e-10; 512 networks: 3e-5 and 8e-6 at seeds 0, 1). Finite-width bias, measured (8192 networks at
    width 256 against 2048 at width 4096): slope ``|b| ≤ 0.75`` (se 0.27), so ``|b|/4096 ≤ 1.8e-4`` ≈ 0.17 standard
    errors of this budget (the conservative bound ``1.15/width·√(K_ii K_jj)`` that ``mean_test`` reports says 3.7);
    the 1/width-extrapolated test of the same two ensembles gives p = 1 for the kernel and p ≈ 1e-21 for the old one.
    The reported case itself (all σw² = 1.5; its old error 1.8e-3 is ≈ 0.8 standard errors of 256 networks at width
    2048) passes too (seed 1; measured p = 1)."""
    x = _inputs(3, n=6, seed=5)
    right, old = _kernels(SMALL_BRANCH, x, monkeypatch)
    assert (right - old).abs().max() > 4e-3
    sample = sample_ensemble(SMALL_BRANCH, x, networks=1024, width=4096, seed=0, weight_var=W, bias_var=B)
    assert mean_test(sample.covariances, right, alpha=ALPHA, width=4096).passed
    assert not mean_test(sample.covariances, old, alpha=ALPHA, width=4096).passed
    reported = CASES["relu-skip"][0]
    k = NNGPKernel(reported, weight_var=W, bias_var=B, dtype=torch.float64)(x).to_dense().detach()
    assert verify(reported, x, networks=256, width=2048, seed=1, weight_var=W, bias_var=B, analytic=k).passed


@pytest.mark.slow
def test_layernorm_after_a_relu_skip_ntk_agrees_with_finite_networks(monkeypatch):
    """Empirical NTKs ``J·Jᵀ`` of ``SMALL_BRANCH`` (literal weights, width 1024, 64 networks, seed 2; ~12 s) against
    Θ at α = 1e-4 (measured p = 0.77). Calibration only: the old mean's Θ error (7.8e-3) is below this budget's noise
    (p = 1 for it too); the power on Θ comes from the compiled program's independent NTK (Tensor Programs II),
    which the dedicated Θ matches to ≤ 1e-10 above and missed by 2e-3 to 9e-3 before the fix."""
    x = _inputs(3, n=4, seed=6)
    right, _ = _kernels(SMALL_BRANCH, x, monkeypatch, ntk=True)
    assert verify_ntk(SMALL_BRANCH, x, networks=64, width=1024, seed=2, weight_var=W, bias_var=B,
                      analytic=right).passed


# ---------------------------------------------------------------------- master theorem: inner-product moments
def _normalized_program(fn):
    """``y = g/√(θ)``, ``θ = moment(fn, g, g)``, read out: with ``fn = None`` (⟨g, g⟩/n) the kernel is the correlation
    of ``g = U x`` (``σ_U² = 1.5``, ``σ_v² = 1``)."""
    p = Program("normalized")
    x = p.input("x", 3)
    g = p.matmul(p.input_matrix("U", init=W), x)
    scale = p.scalar(torch.rsqrt, p.moment(fn, g, g))
    p.readout(p.lincomb((scale, g)))
    return p


def _evaluate(program, x):
    values = {"U": W, "v": 1.0}
    variances = torch.tensor([values[name] for name in program.parameter_names], dtype=torch.float64)
    return evaluate_program(program, x, None, variances)


def test_inner_product_moments_take_the_covariance_route():
    """``moment(None, g, h)`` of two G-vars is ``Σ(g, h)`` with no quadrature (the check compared the function's name
    with ``"_product"`` while the function is ``product``, so every such moment went through Gauss–Hermite); a user
    function that merely shares the name is integrated."""
    x = _inputs(3, n=4, seed=7)
    k = W * x @ x.T / 3
    d = k.diagonal().sqrt()
    result = _evaluate(_normalized_program(None), x)
    assert result.methods.get("gauss-hermite", 0) == 0 and result.methods.get("qmc", 0) == 0
    assert result.methods["covariance"] >= 1
    assert (result.kernel - k / (d[:, None] * d[None, :])).abs().max() <= 1e-14

    def product(a, b):  # same __name__ as the fast route's function, another function
        return a * b + 1.0

    shifted = _evaluate(_normalized_program(product), x)
    assert shifted.methods["gauss-hermite"] >= 1
    d1 = (k.diagonal() + 1.0).sqrt()
    assert (shifted.kernel - k / (d1[:, None] * d1[None, :])).abs().max() <= 1e-12

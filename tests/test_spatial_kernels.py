"""Deterministic tests of the conv / pool / residual / layer-norm kernels: a naive reference of the
convolution formula, layout and tiling invariances, NTK bookkeeping, GPyTorch use and input errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nngp_gpytorch import CNNKernel, NNGPKernel, NTKKernel, ResNetKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.algebra.positional import wants_full_positions

torch.set_num_threads(1)
H = Hyperparameters.constant(1.6, 0.15)


def _x(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def naive_conv_cov(k_in, spatial, kernel, stride, dilation, padding):
    """Reference of ``(1/k)·Σ_β K[s·p + d·β − lo, s·p' + d·β − lo]`` by explicit loops over positions."""
    nd = len(spatial)
    outs, los = [], []
    for n, kk, s, d in zip(spatial, kernel, stride, dilation, strict=True):
        span = d * (kk - 1) + 1
        if padding == "valid":
            outs.append((n - span) // s + 1)
            los.append(0)
        else:
            out = math.ceil(n / s)
            outs.append(out)
            los.append(max((out - 1) * s + span - n, 0) // 2)
    taps = list(itertools.product(*(range(kk) for kk in kernel)))
    out_pos = list(itertools.product(*(range(o) for o in outs)))
    res = torch.zeros(len(out_pos), len(out_pos), dtype=k_in.dtype)

    def source(o, beta):
        idx = []
        for i in range(nd):
            j = stride[i] * o[i] + dilation[i] * beta[i] - los[i]
            if padding == "circular":
                j %= spatial[i]
            elif not 0 <= j < spatial[i]:
                return None
            idx.append(j)
        return int(sum(v * math.prod(spatial[i + 1:]) for i, v in enumerate(idx)))

    for a, o1 in enumerate(out_pos):
        for b, o2 in enumerate(out_pos):
            total = 0.0
            for beta in taps:
                p, q = source(o1, beta), source(o2, beta)
                if p is not None and q is not None:
                    total += k_in[p, q]
            res[a, b] = total / len(taps)
    return res, tuple(outs)


@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
@pytest.mark.parametrize("spatial,kernel,stride,dilation", [
    ((7,), (3,), (2,), (1,)),
    ((5, 4), (3, 2), (1, 2), (2, 1)),
    ((3, 4, 3), (2, 3, 2), (1, 1, 2), (1, 1, 1)),
])
def test_conv_matches_naive_reference(padding, spatial, kernel, stride, dilation):
    """One linear conv on raw inputs against the naive formula (input covariance x_p·x'_q/C)."""
    channels = 2
    x = _x(3, channels * math.prod(spatial), seed=1)
    net = A.Serial(A.Conv(kernel, stride=stride, dilation=dilation, padding=padding), A.AvgPool(1), A.Flatten(),
                   A.Dense(weight_var=1.0, bias_var=0.0))
    try:
        net.validate((channels, *spatial))
    except A.ArchitectureError:
        pytest.skip("filter does not fit")
    k, _ = evaluate(net, x, x, H, input_shape=(channels, *spatial))
    xs = x.reshape(3, channels, -1)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            k_in = xs[i].T @ xs[j] / channels
            conv, _ = naive_conv_cov(k_in, spatial, kernel, stride, dilation, padding)
            expected[i, j] = (1.6 * conv + 0.15).diagonal().mean()  # conv affine, then Flatten + Dense(1, 0)
    torch.testing.assert_close(k, expected, rtol=1e-12, atol=1e-12)


def test_layout_choice_and_same_vs_full_agree():
    """Flatten readouts use the same-position layout; pooling forces the full one; both agree."""
    conv = A.Serial(A.Conv(3), A.ReLU(), A.Conv(3, stride=2), A.Erf(), A.Flatten(), A.Dense())
    pooled = A.Serial(A.Conv(3), A.ReLU(), A.Conv(3, stride=2), A.Erf(), A.AvgPool(1), A.Flatten(), A.Dense())
    assert not wants_full_positions(conv) and wants_full_positions(pooled)
    x = _x(4, 2 * 6 * 5)
    for diag in (False, True):
        k1, t1 = evaluate(conv, x, x, H, diag=diag, with_ntk=True, input_shape=(2, 6, 5))
        k2, t2 = evaluate(pooled, x, x, H, diag=diag, with_ntk=True, input_shape=(2, 6, 5))
        torch.testing.assert_close(k1, k2, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(t1, t2, rtol=1e-12, atol=1e-14)


def test_diag_matches_full_and_ntk_nngp_consistent():
    net = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(2, padding="same"), A.Conv(2, padding="circular"), A.GELU(),
                   A.GlobalAvgPool(), A.Dense())
    x = _x(5, 3 * 5 * 5, seed=2)
    k, t = evaluate(net, x, x, H, with_ntk=True, input_shape=(3, 5, 5))
    kd, td = evaluate(net, x, x, H, diag=True, with_ntk=True, input_shape=(3, 5, 5))
    torch.testing.assert_close(kd, k.diagonal(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(td, t.diagonal(), rtol=1e-12, atol=1e-14)
    assert torch.linalg.eigvalsh(k).min() > -1e-10 and torch.linalg.eigvalsh(t).min() > -1e-10
    assert (t >= k - 1e-12).diagonal().all()  # Θ ⪰ K entrywise on the diagonal (Θ = K + positive terms)


def test_one_by_one_conv_is_dense_and_gap_of_constant_image():
    """A 1×1 conv + Flatten on a 1×1 image is exactly an MLP; GAP of a 1×1 image equals Flatten."""
    x = _x(4, 3)
    mlp = A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense())
    cnn = A.Serial(A.Conv(1), A.ReLU(), A.Conv(1), A.Erf(), A.Flatten(), A.Dense())
    gap = A.Serial(A.Conv(1), A.ReLU(), A.Conv(1), A.Erf(), A.GlobalAvgPool(), A.Dense())
    k0, t0 = evaluate(mlp, x, x, H, with_ntk=True)
    for net in (cnn, gap):
        k, t = evaluate(net, x, x, H, with_ntk=True, input_shape=(3, 1, 1))
        torch.testing.assert_close(k, k0, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(t, t0, rtol=1e-12, atol=1e-14)


def test_residual_closed_form_and_parallel():
    """K' = K + σw²·V_φ(K) + σb² (reference/kernels.md) and Parallel sums independent branches."""
    x = _x(5, 4)
    base = A.Serial(A.Dense(), A.Residual(A.Serial(A.ReLU(), A.Dense())), A.Dense())
    k, _ = evaluate(base, x, x, H)
    k1, _ = evaluate(A.Dense(), x, x, H)
    branch, _ = evaluate(A.Serial(A.Dense(), A.ReLU(), A.Dense()), x, x, H)
    torch.testing.assert_close(k, 1.6 * (k1 + branch) + 0.15, rtol=1e-12, atol=1e-14)
    par = A.Serial(A.Dense(), A.Parallel(A.Dense(), A.Serial(A.ReLU(), A.Dense())), A.Dense())
    k2, _ = evaluate(par, x, x, H)
    torch.testing.assert_close(k2, 1.6 * (1.6 * k1 + 0.15 + branch) + 0.15, rtol=1e-12, atol=1e-14)


def test_layer_norm_is_correlation_and_subtracts_relu_mean():
    x = _x(5, 4) * 3
    k_pre, _ = evaluate(A.Serial(A.Dense(), A.LayerNorm(), A.Dense(weight_var=1.0, bias_var=0.0)), x, x, H)
    k1, _ = evaluate(A.Dense(), x, x, H)
    d = k1.diagonal().sqrt()
    torch.testing.assert_close(k_pre, k1 / d[:, None] / d[None, :], rtol=1e-12, atol=1e-14)
    k_post, _ = evaluate(A.Serial(A.Dense(), A.ReLU(), A.LayerNorm(), A.Dense(weight_var=1.0, bias_var=0.0)),
                         x, x, H)
    v, _ = evaluate(A.Serial(A.Dense(), A.ReLU(), A.Dense(weight_var=1.0, bias_var=0.0)), x, x, H)
    mu = (k1.diagonal() / (2 * math.pi)).sqrt()
    c = v - mu[:, None] * mu[None, :]
    s = c.diagonal().sqrt()
    torch.testing.assert_close(k_post, c / s[:, None] / s[None, :], rtol=1e-10, atol=1e-12)
    assert torch.allclose(k_post.diagonal(), torch.ones(5, dtype=torch.float64))


def test_positional_layer_norm_matches_per_position_correlation():
    net = A.Serial(A.Conv(3), A.ReLU(), A.LayerNorm(), A.AvgPool(1), A.Flatten(), A.Dense(weight_var=1.0, bias_var=0.0))
    x = _x(3, 2 * 4 * 4)
    k, t = evaluate(net, x, x, H, with_ntk=True, input_shape=(2, 4, 4))
    same = A.Serial(A.Conv(3), A.ReLU(), A.LayerNorm(), A.Flatten(), A.Dense(weight_var=1.0, bias_var=0.0))
    k2, t2 = evaluate(same, x, x, H, with_ntk=True, input_shape=(2, 4, 4))
    torch.testing.assert_close(k, k2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(t, t2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k.diagonal(), torch.ones(3, dtype=torch.float64))


def test_pair_tiling_gives_identical_values():
    # a pooled CNN outside the fast conv-stack engine (a layer norm inside the run): tiles of P² entries per pair
    net = A.Serial(A.Conv(3), A.ReLU(), A.AvgPool(1), A.Conv(3), A.LayerNorm(), A.ReLU(), A.Flatten(), A.Dense())
    x1, x2 = _x(7, 2 * 6 * 6, seed=3), _x(5, 2 * 6 * 6, seed=4)
    plain = NNGPKernel(net, input_shape=(2, 6, 6), weight_var=1.7, bias_var=0.1, max_memory=None, dtype=torch.float64)
    tiled = NTKKernel(net, input_shape=(2, 6, 6), weight_var=1.7, bias_var=0.1, max_memory=16 * 8 * 1296 * 6,
                      dtype=torch.float64)
    assert tiled.entries_per_pair() == 1296 and tiled.tile_sizes(7, 5, torch.float64) == (2, 3)
    with torch.no_grad():
        k_t, t_t = tiled.nngp_and_ntk(x1, x2)
        k_p, t_p = plain.nngp_and_ntk(x1, x2)
        torch.testing.assert_close(k_t, k_p, rtol=0, atol=0)
        torch.testing.assert_close(t_t, t_p, rtol=0, atol=0)
        torch.testing.assert_close(tiled.nngp_and_ntk(x1, x1, diag=True)[0], plain(x1, x1, diag=True), rtol=0, atol=0)
        # K(X, X): tiles below the diagonal are the transposes of those above (exactly symmetric); the untiled
        # block averages its two triangles, so the two agree to rounding
        k_sym = tiled.nngp_and_ntk(x1, x1)[0]
        assert torch.equal(k_sym, k_sym.mT)
        torch.testing.assert_close(k_sym, plain(x1, x1).to_dense(), rtol=1e-14, atol=0)


def test_cnn_kernel_trains_with_gpytorch_gradients():
    import gpytorch

    x = _x(6, 1 * 5 * 5, seed=5)
    y = torch.sin(x.sum(-1))
    kernel = CNNKernel((1, 5, 5), depth=2, weight_var=1.5, bias_var=0.1).double()
    lik = gpytorch.likelihoods.GaussianLikelihood().double()

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(x, y, lik)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = kernel

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

    model = GP().double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
    loss = -mll(model(x), y)
    loss.backward()
    assert torch.isfinite(kernel.raw_weight_var.grad).all() and kernel.raw_weight_var.grad.abs().sum() > 0
    assert torch.isfinite(kernel.raw_bias_var.grad).all()


def test_batched_hyperparameters_and_resnet_kernel():
    x = _x(4, 1 * 4 * 4)
    k = ResNetKernel(depth=2, input_shape=(1, 4, 4), layer_norm=True, batch_shape=torch.Size([3])).double()
    out = k(x, x).to_dense()
    assert out.shape == (3, 4, 4)
    flat = ResNetKernel(depth=2, weight_var=1.2, bias_var=0.1).double()
    assert flat(_x(4, 3), _x(4, 3)).to_dense().shape == (4, 4)


# --- errors -------------------------------------------------------------------------------------


def test_flattened_size_must_match_input_shape():
    kernel = CNNKernel((2, 5, 5), depth=1).double()
    with pytest.raises(ValueError, match=r"input_shape"):
        kernel(_x(3, 49), _x(3, 49)).to_dense()


def test_filter_larger_than_input_with_valid_padding():
    with pytest.raises(A.ArchitectureError, match=r"larger than the input"):
        NNGPKernel(A.Serial(A.Conv(5, padding="valid"), A.ReLU(), A.Flatten(), A.Dense()), input_shape=(1, 4, 4))
    with pytest.raises(A.ArchitectureError, match=r"larger than the input"):
        A.Serial(A.Conv(3, padding="valid"), A.ReLU(), A.AvgPool(4), A.Flatten(), A.Dense()).validate((1, 5, 5))


def test_structural_errors_name_the_layer():
    # a skip over post-activation features is defined (h + W h: the affine summand adds its covariance), but a
    # skip over the raw input, or around a weight-free mixing branch, is not
    A.Serial(A.Dense(), A.ReLU(), A.Residual(A.Dense()), A.Dense()).validate()
    with pytest.raises(A.ArchitectureError, match=r"Residual.*raw input"):
        A.Serial(A.Residual(A.Dense()), A.Dense()).validate()
    with pytest.raises(A.ArchitectureError, match=r"GlobalAvgPool\(\) of Residual.*no freshly drawn weights"):
        A.Serial(A.Conv(3), A.Residual(A.GlobalAvgPool()), A.Dense()).validate((1, 4, 4))
    with pytest.raises(A.ArchitectureError, match=r"branch 0's output and branch 1's output, independent non-Gaussian"):
        relu_branch = A.Serial(A.Dense(), A.ReLU())
        A.Serial(A.Dense(), A.Parallel(relu_branch, relu_branch), A.Dense()).validate()
    with pytest.raises(A.ArchitectureError, match=r"needs structured inputs"):
        A.Serial(A.Conv(3), A.ReLU(), A.Flatten(), A.Dense()).validate()
    with pytest.raises(A.ArchitectureError, match=r"needs spatial features"):
        A.Serial(A.Dense(), A.ReLU(), A.Conv(3), A.Flatten(), A.Dense()).validate((1, 4, 4))
    with pytest.raises(A.ArchitectureError, match=r"Flatten\(\) or GlobalAvgPool\(\)"):
        A.Serial(A.Conv(3), A.ReLU(), A.Dense()).validate((1, 4, 4))
    with pytest.raises(A.ArchitectureError, match=r"padding must be one of"):
        A.Conv(3, padding="reflect")
    with pytest.raises(A.ArchitectureError, match=r"kernel_size=\(3, 3\) has 2 entries"):
        A.Serial(A.Conv((3, 3)), A.ReLU(), A.Flatten(), A.Dense()).validate((1, 8))


def test_ntk_kernel_of_cnn_runs():
    x = _x(3, 2 * 4 * 4)
    k = NTKKernel(A.Serial(A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense()), input_shape=(2, 4, 4)).double()
    assert torch.isfinite(k(x, x).to_dense()).all()


def test_flatten_of_flat_features_is_identity():
    """Flatten after Dense/ReLU on structured inputs must not rebuild positions from the raw input."""
    x = _x(3, 16)
    plain, _ = evaluate(A.Serial(A.Dense(), A.ReLU(), A.Dense()), x, x, H)
    for net in (A.Serial(A.Dense(), A.ReLU(), A.Flatten(), A.Dense()),
                A.Serial(A.Flatten(), A.Dense(), A.ReLU(), A.Dense())):
        k, _ = evaluate(net, x, x, H, input_shape=(1, 4, 4))
        torch.testing.assert_close(k, plain, rtol=1e-12, atol=1e-14)


def test_mix_positions_api_for_other_families():
    """``mix_positions`` (general A K Aᵀ, shared or per input) agrees with the separable ``mix_axes`` and
    with the diag layout; per-input matrices act on each side with that input's own matrix."""
    from nngp_gpytorch.algebra import input_state
    from nngp_gpytorch.algebra.positional import average_matrix, from_inputs, mix_axes, mix_positions

    x1, x2 = _x(3, 2 * 4 * 3, seed=7), _x(2, 2 * 4 * 3, seed=8)
    full = from_inputs(input_state(x1, x2, False, True, (2, 4, 3)), channel_axis=0, full=True)
    a_h, a_w = average_matrix(4, 2, 2, "valid"), average_matrix(3, 2, 1, "same")
    sep = mix_axes(full, [a_h, a_w], (2, 3))
    gen = mix_positions(full, torch.kron(a_h, a_w), positions=(2, 3))
    for name in ("k12", "k11", "k22"):
        torch.testing.assert_close(getattr(gen, name), getattr(sep, name), rtol=1e-12, atol=1e-14)
    # per-input matrices: scaling input i's positions by (i + 1) scales K12[i, j] by (i + 1)(j + 1)
    p = 12
    a1 = torch.stack([(i + 1.0) * torch.eye(p, dtype=torch.float64) for i in range(3)])
    a2 = torch.stack([(j + 1.0) * torch.eye(p, dtype=torch.float64) for j in range(2)])
    per = mix_positions(full, a1, a2)
    scale = torch.outer(torch.arange(1.0, 4.0), torch.arange(1.0, 3.0)).to(torch.float64)
    torch.testing.assert_close(per.k12, full.k12 * scale[:, :, None, None])
    squares = torch.arange(1.0, 4.0, dtype=torch.float64) ** 2
    torch.testing.assert_close(per.k11, full.k11 * squares[:, None, None, None])
    # (T, d) sequences: channel axis last
    seq = from_inputs(input_state(x1, x1, True, False, (4, 6)), channel_axis=-1, full=True)
    assert seq.k12.shape == (3, 4, 4) and seq.positions == (4,)
    torch.testing.assert_close(seq.k12[0], x1[0].reshape(4, 6) @ x1[0].reshape(4, 6).T / 6)


def test_default_tile_budget_follows_the_device():
    kernel = CNNKernel((1, 4, 4), depth=1)
    assert kernel.max_memory == "auto" and kernel.tile_budget() == 64 * 2**20  # CPU: cache-sized tiles
    assert CNNKernel((1, 4, 4), depth=1, max_memory=2**20).tile_budget() == 2**20
    with pytest.raises(ValueError, match="max_memory"):
        CNNKernel((1, 4, 4), depth=1, max_memory="lots")

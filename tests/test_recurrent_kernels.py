"""Recurrent kernels against independent references (closed forms, scalar loops, quadrature)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from nngp_gpytorch import GRUKernel, LSTMKernel, RNNKernel, RNNNTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.algebra.orthant import gate_product_expectation, gru_reference_table, orthant_probability_reference
from nngp_gpytorch.sequences import pack_sequences

torch.set_num_threads(1)
DT = torch.float64
HYPER = Hyperparameters(torch.tensor([1.0, 1.5, 1.2], dtype=DT), torch.tensor([0.1, 0.0, 0.05], dtype=DT))


def _seqs(lengths, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(L, d, generator=g, dtype=DT) for L in lengths]


def _erf_dual(k11, k22, k12):
    return 2 / math.pi * math.asin(2 * k12 / math.sqrt((1 + 2 * k11) * (1 + 2 * k22)))


def rnn_erf_reference(a: torch.Tensor, b: torch.Tensor, wu, bb, ww, wv, bv, readout="last") -> float:
    """Scalar-loop RNN NNGP of one pair of sequences of their own lengths (kernels.md "Simple RNN")."""
    A_, B_ = a.numpy(), b.numpy()
    d = A_.shape[1]

    def sig(x, y, tx, ty, cache):
        if (tx, ty) in cache:
            return cache[(tx, ty)]
        v = wu * float(x[tx] @ y[ty]) / d + bb
        if tx > 0 and ty > 0:
            v += ww * _erf_dual(sig(x, x, tx - 1, tx - 1, {}), sig(y, y, ty - 1, ty - 1, {}),
                                sig(x, y, tx - 1, ty - 1, cache))
        cache[(tx, ty)] = v
        return v

    def V(tx, ty):
        return _erf_dual(sig(A_, A_, tx, tx, {}), sig(B_, B_, ty, ty, {}), sig(A_, B_, tx, ty, {}))

    if readout == "last":
        return wv * V(len(A_) - 1, len(B_) - 1) + bv
    return wv * np.mean([V(t, s) for t in range(len(A_)) for s in range(len(B_))]) + bv


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_rnn_matches_scalar_reference_with_own_lengths(readout):
    seqs = _seqs([1, 3, 5, 8])
    x = pack_sequences(seqs, 8)
    layer = A.RNN(activation=A.Erf(), readout=readout, masked=True, readout_bias_var=None)
    K, _ = evaluate(layer, x, x, HYPER, input_shape=(8, 3))
    for i, j in itertools.product(range(4), repeat=2):
        ref = rnn_erf_reference(seqs[i], seqs[j], 1.0, 0.1, 1.5, 1.2, 0.05, readout)
        assert abs(K[i, j].item() - ref) < 1e-12


def test_rnn_padding_invariance_and_unmasked_equivalence():
    seqs = _seqs([4, 4, 4])
    layer = A.RNN(activation=A.ReLU(), masked=True)
    k6, _ = evaluate(layer, pack_sequences(seqs, 6), pack_sequences(seqs, 6), HYPER, input_shape=(6, 3))
    k9, _ = evaluate(layer, pack_sequences(seqs, 9), pack_sequences(seqs, 9), HYPER, input_shape=(9, 3))
    flat = torch.stack(seqs).reshape(3, 8)
    ku, _ = evaluate(A.RNN(activation=A.ReLU()), flat, flat, HYPER, input_shape=(4, 2))
    torch.testing.assert_close(k6, k9, rtol=0, atol=1e-13)
    torch.testing.assert_close(k6, ku, rtol=0, atol=1e-13)


def test_rnn_single_step_is_one_hidden_layer_mlp():
    x = torch.randn(5, 3, dtype=DT)
    K, _ = evaluate(A.RNN(activation=A.Erf(), readout_bias_var=None), x, x, HYPER, input_shape=(1, 3))
    k0 = 1.0 * x @ x.T / 3 + 0.1
    d = k0.diagonal()
    ref = torch.tensor([[_erf_dual(d[i], d[j], k0[i, j]) for j in range(5)] for i in range(5)], dtype=DT)
    torch.testing.assert_close(K, 1.2 * ref + 0.05, rtol=0, atol=1e-12)


def test_rnn_readout_scale_is_sigma_v_only():
    """The readout scales by σv² alone (a public reference multiplies by an extra σw²)."""
    x = pack_sequences(_seqs([2, 5, 3]), 5)
    layer = A.RNN(activation=A.Erf(), masked=True, readout_bias_var=0.0)
    h1 = Hyperparameters(torch.tensor([1.0, 2.0, 1.0], dtype=DT), torch.tensor([0.1, 0.0, 0.0], dtype=DT))
    h3 = Hyperparameters(torch.tensor([1.0, 2.0, 3.0], dtype=DT), torch.tensor([0.1, 0.0, 0.0], dtype=DT))
    k1, _ = evaluate(layer, x, x, h1, input_shape=(5, 3))
    k3, _ = evaluate(layer, x, x, h3, input_shape=(5, 3))
    torch.testing.assert_close(k3, 3 * k1)


def test_gru_single_step_closed_form():
    x = torch.randn(4, 2, dtype=DT)
    K, _ = evaluate(A.GRU(readout_bias_var=None), x, x, HYPER, input_shape=(1, 2))
    c = x @ x.T / 2
    z = 1.0 * c + 0.1  # Σ_z = Σ_h at t = 1 (K(0, ·) = 0)
    d = z.diagonal()
    for i, j in itertools.product(range(4), repeat=2):
        arg = 2 * z[i, j] / torch.sqrt((1 + 2 * d[i]) * (1 + 2 * d[j]))
        gate = 0.25 + torch.arcsin(arg.clamp(-1, 1)) / (2 * math.pi)
        ref = 1.2 * gate * _erf_dual(d[i], d[j], z[i, j]) + 0.05
        assert abs(K[i, j] - ref) < 2e-5


def _gh_orthant(nodes=24):
    """P(X ≥ 0), X ~ N(0, C + ½I) as E[Π Φ(√2 y)], y ~ N(0, C), by tensor Gauss–Hermite (dim ≤ 4)."""
    x, w = np.polynomial.hermite.hermgauss(nodes)

    def orthant(mean, cov):
        from scipy.special import ndtr

        c = cov - 0.5 * np.eye(len(mean))
        evals, evecs = np.linalg.eigh(c)
        L = evecs * np.sqrt(np.clip(evals, 0, None))
        m = len(mean)
        grid = np.array(list(itertools.product(range(nodes), repeat=m)))
        g = math.sqrt(2) * x[grid]
        wt = np.prod(w[grid], axis=1) / math.pi ** (m / 2)
        y = g @ L.T
        return float(np.sum(wt * np.prod(ndtr(math.sqrt(2) * y), axis=1)))

    return orthant


def test_gru_two_steps_matches_orthant_reference():
    """QMC gate expectations vs every orthant problem solved by tensor Gauss–Hermite (T = 2)."""
    seqs = _seqs([2, 2], seed=3)
    x = torch.stack(seqs).reshape(2, 4)
    K, _ = evaluate(A.GRU(samples=2**14, readout_bias_var=None), x, x, Hyperparameters.constant(1.5, 0.1),
                    input_shape=(2, 2))
    c12 = (seqs[0] @ seqs[1].T / 2).numpy()
    c11 = (seqs[0] @ seqs[0].T / 2).numpy()
    c22 = (seqs[1] @ seqs[1].T / 2).numpy()
    k12, k11, k22 = gru_reference_table(c12, c11, c22, 1.5, 0.1, 1.5, orthant=_gh_orthant())
    # QMC error of 2^14 scrambled Sobol points on this table: ~1.5e-5 (docs/recurrent.md); bound 5e-5
    assert abs(K[0, 1].item() - (1.5 * k12[-1, -1] + 0.1)) < 5e-5
    assert abs(K[0, 0].item() - (1.5 * k11[-1, -1] + 0.1)) < 5e-5


def test_gate_product_expectation_matches_scipy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=DT)
    cov = a @ a.T / 5 + 0.2
    signs = torch.tensor([1.0, -1, 1, -1, -1], dtype=DT)
    mean = torch.zeros(5, dtype=DT)
    ref = orthant_probability_reference(np.zeros(5), (signs[:, None] * cov * signs).numpy() + 0.5 * np.eye(5),
                                        abseps=1e-8, releps=0)
    assert abs(gate_product_expectation(mean, cov, signs, 2**14).item() - ref) < 2e-5


def _lstm_one_step_reference(c, wu, b, wv, bv, nodes=40):
    """T = 1: σv²·E[σ(o)σ(o')]·E[tanh(σ(i)tanh(g)) tanh(σ(i')tanh(g'))] + σvb², by 2-D/4-D Gauss–Hermite."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    sig = wu * c + b
    n = len(c)
    out = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        cov = np.array([[sig[i, i], sig[i, j]], [sig[i, j], sig[j, j]]])
        L = np.linalg.cholesky(cov + 1e-14 * np.eye(2))
        u = math.sqrt(2) * np.stack(np.meshgrid(x, x, indexing="ij"), -1) @ L.T  # (40, 40, 2)
        ww2 = np.outer(w, w) / math.pi
        s = 1 / (1 + np.exp(-u))
        eo = np.sum(ww2 * s[..., 0] * s[..., 1])
        hi = s  # σ(i) on the grid
        tg = np.tanh(u)
        ci = hi[:, :, None, None, 0] * tg[None, None, :, :, 0]
        cj = hi[:, :, None, None, 1] * tg[None, None, :, :, 1]
        ec = np.sum(ww2[:, :, None, None] * ww2[None, None] * np.tanh(ci) * np.tanh(cj))
        out[i, j] = wv * eo * ec + bv
    return out


def test_lstm_single_step_matches_quadrature():
    # Seeded: unseeded inputs made this test depend on test order. Seed 4 gives variances up to ~3, where the
    # 40-node reference itself is off by 1.5e-4 (tanh converges slowly): 56 nodes 4e-5, 72 nodes 1.4e-5.
    x = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(4))
    K, _ = evaluate(A.LSTM(samples=2**14, readout_bias_var=None), x, x, HYPER, input_shape=(1, 2))
    ref = _lstm_one_step_reference((x @ x.T / 2).numpy(), 1.0, 0.1, 1.2, 0.05, nodes=56)
    assert np.abs(K.numpy() - ref).max() < 1e-4


@pytest.mark.parametrize("kernel_cls", [GRUKernel, LSTMKernel, RNNKernel])
def test_gated_kernels_are_deterministic_symmetric_psd_and_differentiable(kernel_cls):
    x = pack_sequences(_seqs([1, 4, 2, 4], seed=5), 4)
    kw = {} if kernel_cls is RNNKernel else {"samples": 2**11}
    k = kernel_cls(input_shape=(4, 3), masked=True, **kw).to(DT)
    k.weight_var = [1.0, 1.5, 1.2]
    K1 = k(x).to_dense()
    K2 = k(x).to_dense()
    assert torch.equal(K1, K2)
    torch.testing.assert_close(K1, K1.T, rtol=0, atol=1e-14)
    assert torch.linalg.eigvalsh(K1.detach()).min() > -1e-8
    torch.testing.assert_close(k(x, diag=True), K1.diagonal(), rtol=0, atol=1e-12)
    K1.sum().backward()
    assert torch.isfinite(k.raw_weight_var.grad).all() and k.raw_weight_var.grad.abs().sum() > 0


def test_rnn_batch_shape_kernel():
    x = pack_sequences(_seqs([2, 3]), 3)
    k = RNNKernel(input_shape=(3, 3), masked=True, batch_shape=torch.Size([2])).to(DT)
    k.weight_var = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], dtype=DT)
    K = k(x).to_dense()
    assert K.shape == (2, 2, 2)
    k1 = RNNKernel(input_shape=(3, 3), masked=True).to(DT)
    k1.weight_var = [2.0, 2.0, 2.0]
    torch.testing.assert_close(K[1], k1(x).to_dense())


def _rnn_empirical_ntk(x, T, d, width, networks, seed, wu, b, ww, wv):
    """Mean empirical NTK of erf RNNs in the NTK parameterization, by autograd (weights shared in time)."""
    g = torch.Generator().manual_seed(seed)
    k = x.shape[0]
    tokens = x.reshape(k, T, d)
    out = []
    for _ in range(networks):
        U = torch.randn(d, width, generator=g, dtype=DT, requires_grad=True)
        W = torch.randn(width, width, generator=g, dtype=DT, requires_grad=True)
        bias = torch.randn(width, generator=g, dtype=DT, requires_grad=True)
        v = torch.randn(width, generator=g, dtype=DT, requires_grad=True)
        h = None
        for t in range(T):
            pre = math.sqrt(wu / d) * tokens[:, t] @ U + math.sqrt(b) * bias
            if h is not None:
                pre = pre + math.sqrt(ww / width) * torch.erf(h) @ W
            h = pre
        f = math.sqrt(wv / width) * torch.erf(h) @ v
        J = torch.stack([torch.cat([p.reshape(-1) for p in torch.autograd.grad(f[i], [U, W, bias, v],
                                                                                 retain_graph=True)])
                         for i in range(k)])
        out.append(J @ J.T)
    return torch.stack(out)


def test_rnn_ntk_matches_empirical_ntk():
    T, d = 3, 2
    x = torch.stack(_seqs([3, 3, 3], seed=7)).reshape(3, T * d)
    hyper = Hyperparameters(torch.tensor([1.0, 1.5, 1.2], dtype=DT), torch.tensor([0.2, 0.0, 0.0], dtype=DT))
    _, theta = evaluate(A.RNN(activation=A.Erf()), x, x, hyper, with_ntk=True, input_shape=(T, d))
    samples = _rnn_empirical_ntk(x, T, d, 256, 24, 0, 1.0, 0.2, 1.5, 1.2)
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    z = (mean - theta) / se
    # 6 distinct entries, Holm/Bonferroni at α = 1e-4: |z| < 4.9 (t with 23 d.o.f.: 5.9); bias O(1/256)
    assert z.abs().max() < 5.9, (z, mean, theta)
    k = RNNNTKKernel(input_shape=(T, d)).to(DT)
    k.weight_var = [1.0, 1.5, 1.2]
    k.bias_var = [0.2, 0.0, 0.0]
    torch.testing.assert_close(k(x).to_dense(), theta)


def test_gru_control_variate_is_exact_for_one_step_and_consistent():
    from nngp_gpytorch.algebra.gru import gru_tables
    from nngp_gpytorch.numerics import sobol_normals as qmc_normals

    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 2, generator=g, dtype=DT)
    c = x @ x.transpose(-1, -2) / 2
    p = [torch.tensor([v], dtype=DT) for v in (1.0, 0.1, 1.5)]
    plain = gru_tables(c, None, None, None, None, *p, qmc_normals(4, 2**15, 0))
    cv = gru_tables(c, None, None, None, None, *p, qmc_normals(4, 2**8, 0), control_variate=True)
    exact = gru_tables(c[:, :1, :1], None, None, None, None, *p, qmc_normals(1, 2**4, 0), control_variate=True)
    zc = c[0, 0, 0].item() + 0.1
    ref = (0.25 + math.asin(2 * zc / (1 + 2 * zc)) / (2 * math.pi)) * 2 / math.pi * math.asin(2 * zc / (1 + 2 * zc))
    assert abs(exact[0, 0, 0].item() - ref) < 1e-13
    assert (plain - cv).abs().max() < 2e-3


@pytest.mark.parametrize("kernel_cls", [GRUKernel, LSTMKernel, RNNNTKKernel])
def test_diag_of_distinct_pairs_matches_full(kernel_cls):
    g = torch.Generator().manual_seed(0)
    a = pack_sequences([torch.randn(L, 2, generator=g, dtype=DT) for L in (2, 4, 3)], 4)
    b = pack_sequences([torch.randn(L, 2, generator=g, dtype=DT) for L in (4, 1, 3)], 4)
    b[2] = a[2]
    kw = {} if kernel_cls is RNNNTKKernel else {"samples": 2**10}
    k = kernel_cls(input_shape=(4, 3), masked=True, **kw).to(DT)
    full = k(a, b).to_dense()
    torch.testing.assert_close(k(a, b, diag=True), full.diagonal(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kernel_cls", [RNNKernel, GRUKernel, LSTMKernel])
def test_per_step_kernel_contains_last_and_mean_readouts(kernel_cls):
    seqs = _seqs([2, 4, 3], seed=8)
    x = pack_sequences(seqs, 4)
    kw = {} if kernel_cls is RNNKernel else {"samples": 2**10}
    last = kernel_cls(input_shape=(4, 3), masked=True, **kw).to(DT)
    mean = kernel_cls(input_shape=(4, 3), masked=True, readout="mean", **kw).to(DT)
    steps = last.per_step(x)
    assert steps.shape == (3, 3, 4, 4)
    L = [2, 4, 3]
    for i, j in itertools.product(range(3), repeat=2):
        assert abs(steps[i, j, L[i] - 1, L[j] - 1] - last(x).to_dense()[i, j]) < 1e-12
        assert abs(steps[i, j, : L[i], : L[j]].mean() - mean(x).to_dense()[i, j]) < 1e-12


# --- GRU accuracy against high-accuracy references, PSD Grams ---------------------------------------

# Converged reference of the 7×9-token pair of benchmarks/bench_recurrent.py (tokens torch.randn(7, 2) and
# torch.randn(9, 2) from torch.Generator().manual_seed(0), float64; σu² = 1, σb² = 0.1, σw² = 1.5): hidden kernel
# K11(7,7), K12(7,9), K22(9,9), computed once (≈3 min) by the principal-component QMC rule at 2²⁰ points with two
# independent scramblings (seeds 100, 200), which agree to 2.3e-6; the entries below are their mean. Cross-check by the
# other sampling order (gru_tables(method="interleaved"), 2¹⁹ points, seeds 11/12, which differ by 1.5e-5): mean
# within 9.6e-6 of these values.
GRU_7x9_REFERENCE = (0.32231851451687127, 0.246159005653257, 0.32206447877080485)

# Genz reference of a 2×2-token pair (tokens of _seqs([2, 2], seed=4)), σu² = σw² = σv² = 1.5, σb² = σvb² = 0.1:
# output kernel by gru_reference_table with orthant_probability_reference(abseps=1e-9, releps=0) (37 s). Two runs
# agree to 1e-9. (The tensor Gauss–Hermite reference with 40 nodes is NOT converged here: 30 vs 40 nodes differ by
# 9e-5, because of the large token variances.)
GRU_2x2_GENZ = ((0.7705832880785525, 0.38898931167645867), (0.38898931167645867, 0.6197572301597988))


def test_gru_short_pair_matches_genz_reference_to_1e5():
    seqs = _seqs([2, 2], seed=4)
    x = torch.stack(seqs).reshape(2, 4)
    K, _ = evaluate(A.GRU(samples=2**18, readout_bias_var=None), x, x, Hyperparameters.constant(1.5, 0.1),
                    input_shape=(2, 2))
    # measured error at 2^18 points: 8.6e-7 (2^14: 2.3e-5, 2^16: 1.3e-5); the claim is ≤ 1e-5 at 2^18
    assert (K - torch.tensor(GRU_2x2_GENZ, dtype=DT)).abs().max() < 1e-5


def _pair_7x9():
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randn(7, 2, generator=g, dtype=DT), torch.randn(9, 2, generator=g, dtype=DT)]
    return pack_sequences(seqs, 9)


@pytest.mark.parametrize("samples, tol", [(2**13, 8e-4), (2**15, 1.5e-4)])
def test_gru_7x9_pair_matches_converged_reference(samples, tol):
    """Default and 4× larger rules on the benchmark pair. Measured max errors over seeds 0–2 (docs/recurrent.md):
    3.2e-4 at 2^13, 6.8e-5 at 2^15 (entries of σv²·K, σv² = 1.2); tolerances are ~2.5× those (QMC errors of
    a single seed are not Gaussian-tailed, 2.5× covers the seeds tried)."""
    x = _pair_7x9()
    hyper = Hyperparameters(torch.tensor([1.0, 1.5, 1.2], dtype=DT), torch.tensor([0.1, 0.0, 0.0], dtype=DT))
    K, _ = evaluate(A.GRU(masked=True, samples=samples), x, x, hyper, input_shape=(9, 3))
    ref = 1.2 * torch.tensor([[GRU_7x9_REFERENCE[0], GRU_7x9_REFERENCE[1]],
                              [GRU_7x9_REFERENCE[1], GRU_7x9_REFERENCE[2]]], dtype=DT)
    assert (K - ref).abs().max() < tol


def test_principal_and_interleaved_gru_rules_agree():
    """The two sampling orders integrate the same expectation: at 2^15 points both are within ~1e-4 of each
    other on a 5-step pair (each has error ≲ 1e-4 there)."""
    from nngp_gpytorch.algebra.gru import gru_tables
    from nngp_gpytorch.numerics import sobol_normals as qmc_normals

    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(1, 5, 3, generator=g, dtype=DT), torch.randn(1, 5, 3, generator=g, dtype=DT)
    p = [torch.tensor([v], dtype=DT) for v in (1.0, 0.1, 1.5)]
    c11, c22, c12 = a @ a.mT / 3, b @ b.mT / 3, a @ b.mT / 3
    out = []
    for method in ("principal", "interleaved"):
        k11 = gru_tables(c11, None, None, None, None, *p, qmc_normals(5, 2**15, 0), method=method)
        k22 = gru_tables(c22, None, None, None, None, *p, qmc_normals(5, 2**15, 1), method=method)
        out.append(gru_tables(c12, c11, c22, k11, k22, *p, qmc_normals(10, 2**15, 2), method=method))
    assert (out[0] - out[1]).abs().max() < 3e-4


def _near_duplicate_batch(n=32, T=6, dtype=DT, seed=0):
    """n sequences of mixed lengths 1..T, many of them tiny perturbations of a few base sequences, so that the
    Gram has eigenvalues far below the per-pair QMC error (the raw per-pair Gram is then indefinite)."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(T, 2, generator=g, dtype=DT) for _ in range(3)]
    lengths = torch.randint(1, T + 1, (n,), generator=g).tolist()
    seqs = [(base[i % 3] + 1e-4 * torch.randn(T, 2, generator=g, dtype=DT))[:L] for i, L in enumerate(lengths)]
    return pack_sequences(seqs, T).to(dtype)


@pytest.mark.parametrize("kernel_cls", [GRUKernel, LSTMKernel])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gated_gram_is_psd(kernel_cls, dtype):
    x = _near_duplicate_batch(dtype=dtype)
    k = kernel_cls(input_shape=(6, 3), masked=True, samples=2**8).to(dtype)
    k.weight_var = [1.0, 1.5, 1.2]
    with torch.no_grad():
        K = k(x).to_dense()
        raw = k.per_step(x)  # unprojected per-pair estimates
    lengths = x[:, 2::3].sum(-1).long()
    idx = lengths - 1
    raw_last = raw[torch.arange(32)[:, None], torch.arange(32)[None, :], idx[:, None], idx[None, :]]
    # the test has teeth: the raw Gram of separately estimated pairs is indefinite at this sample size
    assert torch.linalg.eigvalsh(raw_last.double()).min() < -1e-10 * raw_last.double().trace()
    ev = torch.linalg.eigvalsh(K.double())
    assert ev.min() >= -1e-10 * K.double().trace()
    # the projection keeps the diagonal (diag=True evaluation stays consistent) and moves entries only by
    # about the size of the negative part (QMC error of 2^8 points, ~1e-2 here)
    # (to rounding: the rescaling D·K·D reproduces each diagonal entry to a few ulps)
    torch.testing.assert_close(k(x, diag=True).detach(), K.diagonal(), rtol=8 * torch.finfo(dtype).eps, atol=0)
    assert (K.double() - raw_last.double()).abs().max() < 0.05


def test_project_psd_warns_when_negative_part_exceeds_error_bound():
    from nngp_gpytorch.algebra.orthant import project_psd

    K = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=DT)  # eigenvalues 3, −1: not an estimation error
    with pytest.warns(RuntimeWarning, match="more negative"):
        P = project_psd(K, 1e-3)
    assert torch.linalg.eigvalsh(P).min() >= 0
    torch.testing.assert_close(P.diagonal(), K.diagonal())
    same = torch.eye(3, dtype=DT)
    assert project_psd(same, 1e-3) is same


# LSTM on the same pair and hyperparameters (σv² = 1.2, σvb² = 0): output kernel entries (K11, K12, K22), mean of
# three 2²⁰-point interleaved-Cholesky rules (seeds 101, 202, 303; spread 9.9e-6; ≈14 s each); the principal rule
# at 2¹⁷ agrees to 2.1e-5.
LSTM_7x9_REFERENCE = (0.06670524824475467, 0.0573102149454845, 0.06453448828129245)


def test_lstm_7x9_pair_matches_converged_reference():
    """Measured max error over seeds 0–2 at 2^15 points: 1.15e-4 (|K| ≈ 0.067); tolerance 2.5e-4 (~2×, QMC errors of
    one seed are not Gaussian-tailed), plus the reference's own uncertainty (~1e-5)."""
    x = _pair_7x9()
    hyper = Hyperparameters(torch.tensor([1.0, 1.5, 1.2], dtype=DT), torch.tensor([0.1, 0.0, 0.0], dtype=DT))
    K, _ = evaluate(A.LSTM(masked=True, samples=2**15), x, x, hyper, input_shape=(9, 3))
    r = LSTM_7x9_REFERENCE
    assert (K - torch.tensor([[r[0], r[1]], [r[1], r[2]]], dtype=DT)).abs().max() < 2.5e-4

"""GRU and LSTM with per-gate variances and bias means (GP4A's ``thgru`` parameterization; issue 18 item 5).

* Values against an independent nested trapezoidal-rule computation written here (numpy/scipy only, tensor-product
  rules over the gate pre-activations, no library code) on sequences of length ≤ 2: ≤ 1e-6.
* Against literal finite networks (per-entry t-tests + Holm at α = 1e-4 per case; calibration and power in
  the slow tests): the twin (verification/twins/recurrent.py) draws each gate's weights with its own variances
  and its biases with their means, independently of the kernel rule.
* Planted mutant: a gate's bias mean dropped is rejected.
* Bad per-gate tuples raise errors naming the layer.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.special import erf, expit
from scipy.stats import multivariate_normal

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.algebra.gated import bivariate_normal_cdf
from nngp_gpytorch.sequences import pack_sequences
from verification.ensembles import sample_ensemble
from verification.statistics import mean_test

DT = torch.float64
#: learnable slots are unused by the fixed per-gate layers below except the readout (σv² = 1.2, σvb² = 0.05)
HYPER = Hyperparameters(torch.tensor([1.0, 1.0, 1.2], dtype=DT), torch.tensor([0.0, 0.0, 0.05], dtype=DT))
GRU_GATES = dict(gate_input_var=(0.5, 0.8, 0.6), gate_hidden_var=(0.6, 0.4, 0.7), gate_bias_var=(0.1, 0.2, 0.05),
                 gate_bias_mean=(0.5, -0.7, 0.3))
LSTM_GATES = dict(gate_input_var=(0.5, 0.8, 0.6, 0.9), gate_hidden_var=(0.6, 0.4, 0.7, 0.5),
                  gate_bias_var=(0.1, 0.2, 0.05, 0.15), gate_bias_mean=(0.4, 1.0, -0.5, 0.3))


# --- independent reference: nested (tensor-product) trapezoidal rules over the gate pre-activations ----------

def _nodes(h: float):
    """Trapezoidal rule for ``E f(ξ)``, ``ξ ~ N(0, 1)``: nodes ``h·k`` on ``[−8.5, 8.5]``, weights ``h·φ``. For
    integrands analytic in a strip ``|Im ξ| < δ`` (tanh, the logistic sigmoid; erf is entire) its error is
    ``~exp(−2πδ/h)`` (Trefethen & Weideman 2014), far below Gauss–Hermite's ``~exp(−δ·√(2n))`` at equal node
    counts: with ``h = 0.3`` and δ ≳ 1.5 about 1e-13, plus the truncation ``~1e-17``."""
    x = h * np.arange(-int(8.5 / h), int(8.5 / h) + 1)
    return x, h * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)


def _expect(f, mean, cov, h: float = 0.3):
    """``E f(y)``, ``y ~ N(mean, cov)`` (cov PSD, possibly singular: duplicated variables of a self pair), by
    the tensor product of trapezoidal rules (:func:`_nodes`) over the principal axes of ``cov``; one slice of the
    first axis at a time (bounded memory)."""
    mean, cov = np.asarray(mean, float), np.asarray(cov, float)
    lam, V = np.linalg.eigh(cov)
    keep = lam > 1e-12 * max(lam.max(), 1.0)
    L = V[:, keep] * np.sqrt(lam[keep])
    x, w = _nodes(h)
    r = L.shape[1]
    if r > 1:
        rest = np.stack([g.ravel() for g in np.meshgrid(*([x] * (r - 1)), indexing="ij")], -1)
        w_rest = np.prod(np.meshgrid(*([w] * (r - 1)), indexing="ij"), 0).ravel()
    else:
        rest, w_rest = np.zeros((1, 0)), np.ones(1)
    total = 0.0
    for x0, w0 in zip(x, w, strict=True):
        xi = np.concatenate([np.full((len(rest), 1), x0), rest], -1)
        total = total + w0 * np.tensordot(w_rest, f(mean + xi @ L.T), axes=(0, 0))
    return total


def _gate(y):
    return 0.5 * (1 + erf(y))


def gru_reference(seqs, U, W, B, MU, readout_var, readout_bias_var, n=0.5):
    """Output Gram ``σv²·K(L_a, L_b) + σvb²`` of the erf-GRU for token sequences ``seqs`` (length ≤ 2), per-gate
    ``(z, r, h)`` input/hidden/bias variances ``U, W, B`` and bias means ``MU``. The limit: per unit the gate
    families are independent Gaussian processes (different matrices), ``h_t = Σ_k ω(k,t)·erf(h̃_k)`` with
    ``ω(k,t) = ς(z̃_k)·Π_{k<j≤t}(1−ς(z̃_j))``, so ``K = Σ E[ω ω']·E[erf erf]``; every expectation by nested
    trapezoidal rules (the ω moments over the joint update gates of both sequences: up to 4-D)."""
    d = seqs[0].shape[1]

    def C(a, b, t, s):
        return float(seqs[a][t - 1] @ seqs[b][s - 1]) / d

    @functools.cache
    def K(a, b, t, s):
        if t == 0 or s == 0:
            return 0.0
        om = omega(a, b, t, s)
        return sum(om[k - 1, j - 1] * S(a, b, k, j) for k in range(1, t + 1) for j in range(1, s + 1))

    def sig(g, a, b, t, s):
        return U[g] * C(a, b, t, s) + W[g] * K(a, b, t - 1, s - 1) + B[g]

    @functools.cache
    def R(a, b, t, s):
        cov = [[sig(1, a, a, t, t), sig(1, a, b, t, s)], [sig(1, a, b, t, s), sig(1, b, b, s, s)]]
        return _expect(lambda y: _gate(y[:, 0]) * _gate(y[:, 1]), [MU[1]] * 2, cov, n)

    def sig_h(a, b, t, s):
        return U[2] * C(a, b, t, s) + W[2] * K(a, b, t - 1, s - 1) * R(a, b, t, s) + B[2]

    @functools.cache
    def S(a, b, k, j):
        cov = [[sig_h(a, a, k, k), sig_h(a, b, k, j)], [sig_h(a, b, k, j), sig_h(b, b, j, j)]]
        return _expect(lambda y: erf(y[:, 0]) * erf(y[:, 1]), [MU[2]] * 2, cov, n)

    def omega(a, b, t, s):
        idx = [(a, j) for j in range(1, t + 1)] + [(b, j) for j in range(1, s + 1)]
        cov = [[sig(0, p, q, i, j) for (q, j) in idx] for (p, i) in idx]

        def weights(g, cols):
            out = []
            for k, col in enumerate(cols):
                w = g[:, col]
                for j in cols[k + 1:]:
                    w = w * (1 - g[:, j])
                out.append(w)
            return np.stack(out, -1)

        def f(y):
            g = _gate(y)
            wa, wb = weights(g, list(range(t))), weights(g, list(range(t, t + s)))
            return (wa[:, :, None] * wb[:, None, :]).reshape(len(y), -1)

        return _expect(f, [MU[0]] * len(idx), cov, n).reshape(t, s)

    out = np.zeros((len(seqs), len(seqs)))
    for a, sa in enumerate(seqs):
        for b, sb in enumerate(seqs):
            out[a, b] = readout_var * K(a, b, len(sa), len(sb)) + readout_bias_var
    return out


def lstm_reference(seqs, U, W, B, MU, readout_var, readout_bias_var, n=0.4, length_two=True):
    """Output kernel of the sigmoid/tanh LSTM (gates ``i, f, o, g``) for the pairs the nested rule can reach:
    every pair of length-1 sequences (``E[σ(õ)σ(õ')]·E[tanh(c)tanh(c')]``, ``c = σ(ĩ)tanh(g̃)``: a 2-D and a
    4-D expectation) and the self entry of a length-2 sequence (``c₂ = σ(f̃₂)c₁ + σ(ĩ₂)tanh(g̃₂)``: 5-D over
    ``ĩ₁, ĩ₂, f̃₂, g̃₁, g̃₂``, the covariances at step 2 from ``K(1, 1)``; ``length_two=False`` skips these, ~60 s).
    Returns ``{(a, b): value}``. Step ``n = 0.4``: the 0.3 rule agrees to 1.8e-8."""
    d = seqs[0].shape[1]

    def sig(g, a, b, t, s, k_prev):
        return U[g] * float(seqs[a][t - 1] @ seqs[b][s - 1]) / d + W[g] * k_prev + B[g]

    def out_gate(a, b, t, s, kab, kaa, kbb):
        cov = [[sig(2, a, a, t, t, kaa), sig(2, a, b, t, s, kab)], [sig(2, a, b, t, s, kab), sig(2, b, b, s, s, kbb)]]
        return _expect(lambda y: expit(y[:, 0]) * expit(y[:, 1]), [MU[2]] * 2, cov, n)

    def k11(a, b):
        def f(y):  # y: i_a, i_b, g_a, g_b
            return (np.tanh(expit(y[:, 0]) * np.tanh(y[:, 2])) * np.tanh(expit(y[:, 1]) * np.tanh(y[:, 3])))
        ci = [[sig(0, p, q, 1, 1, 0.0) for q in (a, b)] for p in (a, b)]
        cg = [[sig(3, p, q, 1, 1, 0.0) for q in (a, b)] for p in (a, b)]
        cov = np.zeros((4, 4))
        cov[:2, :2], cov[2:, 2:] = ci, cg
        return out_gate(a, b, 1, 1, 0.0, 0.0, 0.0) * _expect(f, [MU[0]] * 2 + [MU[3]] * 2, cov, n)

    out = {}
    for a, sa in enumerate(seqs):
        for b, sb in enumerate(seqs):
            if len(sa) == len(sb) == 1:
                out[(a, b)] = readout_var * k11(a, b) + readout_bias_var
        if len(sa) == 2 and length_two:
            kk = k11(a, a)  # K(1, 1) of this sequence: the step-2 covariances need it

            def f(y):  # i1, i2, f2, g1, g2
                c1 = expit(y[:, 0]) * np.tanh(y[:, 3])
                c2 = expit(y[:, 2]) * c1 + expit(y[:, 1]) * np.tanh(y[:, 4])
                return np.tanh(c2) ** 2
            ci = [[sig(0, a, a, t, s, kk if t == s == 2 else 0.0) for s in (1, 2)] for t in (1, 2)]
            cg = [[sig(3, a, a, t, s, kk if t == s == 2 else 0.0) for s in (1, 2)] for t in (1, 2)]
            cov = np.zeros((5, 5))
            cov[:2, :2], cov[2, 2], cov[3:, 3:] = ci, sig(1, a, a, 2, 2, kk), cg
            value = out_gate(a, a, 2, 2, kk, kk, kk) * _expect(f, [MU[0]] * 2 + [MU[1]] + [MU[3]] * 2, cov, n)
            out[(a, a)] = readout_var * value + readout_bias_var
    return out


def _sequences(lengths, seed=3):
    """Token sequences (d = 2) with token Gram diagonals in [0.5, 1.5] (keeps the pre-activation variances
    ≈ 1: moderate integrands for the reference rules)."""
    rng = np.random.default_rng(seed)
    seqs = []
    for L in lengths:
        s = rng.normal(size=(L, 2))
        seqs.append(s / np.linalg.norm(s, axis=1, keepdims=True) * np.sqrt(2 * rng.uniform(0.5, 1.5, (L, 1))))
    return seqs


def _pack(seqs, T=2):
    return pack_sequences([torch.tensor(s) for s in seqs], T)


# --- values ----------------------------------------------------------------------------------------------------

def test_bivariate_normal_cdf_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 2, (2, 60))
    rho = rng.uniform(-0.97, 0.97, 60)
    ours = bivariate_normal_cdf(torch.tensor(a), torch.tensor(b), torch.tensor(rho)).numpy()
    ref = [multivariate_normal(cov=[[1, r], [r, 1]], abseps=1e-12, releps=1e-12).cdf([u, v])
           for u, v, r in zip(a, b, rho, strict=True)]
    assert np.abs(ours - ref).max() < 1e-12


def test_gru_per_gate_matches_nested_quadrature():
    """Sequences of lengths 1, 2, 2 (T = 2): ≤ 1e-6 at 2²⁰ QMC points (measured 9e-8; 5.7e-7 at 2¹⁸, 2.2e-6 at
    2¹⁶). The reference's own error: its step-0.5 and step-0.3 rules agree to 7e-10."""
    seqs = _sequences((1, 2, 2))
    layer = A.GRU(masked=True, samples=2**20, readout_var=1.2, readout_bias_var=0.05, **GRU_GATES)
    K, _ = evaluate(layer, _pack(seqs), _pack(seqs), HYPER, input_shape=(2, 3))
    ref = gru_reference(seqs, *GRU_GATES.values(), 1.2, 0.05)
    assert np.abs(K.numpy() - ref).max() <= 1e-6
    # planted mutant: the update gate's bias mean dropped moves the kernel by 1e-1, far outside the tolerance
    wrong = gru_reference(seqs, *list(GRU_GATES.values())[:3], (0.0, -0.7, 0.3), 1.2, 0.05)
    assert np.abs(wrong - ref).max() > 1e-2


def _lstm_check(lengths, length_two):
    seqs = _sequences(lengths, seed=5)
    layer = A.LSTM(masked=True, samples=2**18, readout_var=1.2, readout_bias_var=0.05, **LSTM_GATES)
    x = _pack(seqs)
    K, _ = evaluate(layer, x, x, HYPER, input_shape=(2, 3))
    ref = lstm_reference(seqs, *LSTM_GATES.values(), 1.2, 0.05, length_two=length_two)
    return max(abs(K[a, b].item() - v) for (a, b), v in ref.items())


def test_lstm_per_gate_matches_nested_quadrature():
    """Length-1 pairs (4-D rule): ≤ 1e-6 at 2¹⁸ points (measured ≤ 3.4e-8, two scramblings)."""
    assert _lstm_check((1, 1, 2), length_two=False) <= 1e-6


@pytest.mark.slow
def test_lstm_per_gate_length_two_matches_nested_quadrature():
    """The self entries of length-2 sequences too (5-D rule, ~60 s): ≤ 1e-6 at 2¹⁸ (measured 2.3e-7)."""
    assert _lstm_check((1, 1, 2, 2), length_two=True) <= 1e-6


@pytest.mark.parametrize("cell", [A.GRU, A.LSTM])
def test_default_and_equal_per_gate_values_agree(cell):
    """Per-gate tuples that repeat the shared values (means 0) give exactly the shared kernel: the default is
    unchanged and an override is read gate by gate."""
    seqs = _sequences((1, 2, 2))
    x = _pack(seqs)
    hyper = Hyperparameters(torch.tensor([0.7, 0.9, 1.2], dtype=DT), torch.tensor([0.1, 0.0, 0.0], dtype=DT))
    G = 3 if cell is A.GRU else 4
    shared = cell(masked=True, samples=2**10, readout_var=1.2)  # fixed readout: the fully fixed cell draws no
    fixed = cell(masked=True, samples=2**10, readout_var=1.2, gate_input_var=(0.7,) * G, gate_hidden_var=[0.9] * G,
                 gate_bias_var=(0.1,) * G, gate_bias_mean=(0.0,) * G)  # slot at all, the shared one two
    K0, _ = evaluate(shared, x, x, hyper, input_shape=(2, 3))
    K1, _ = evaluate(fixed, x, x, hyper, input_shape=(2, 3))
    torch.testing.assert_close(K0, K1, rtol=0, atol=0)


def test_every_thgru_parameter_is_expressible_and_live():
    """All 12 of GP4A's ``thgru`` parameters map onto the description (``GRU.from_thgru``) and each one moves
    the kernel by more than 5e-5 (2¹² points, the same for every evaluation, so differences are far more precise
    than the ~8e-5 QMC error of each value). The weakest, ``varWr``, moves it by 1.7e-4."""
    seqs = _sequences((2, 2), seed=7)
    x = _pack(seqs)
    base = dict(varUz=0.5, varUr=0.8, varUh=0.6, varWz=0.6, varWr=0.4, varWh=0.7, varbz=0.1, varbr=0.2, varbh=0.05,
                mubz=0.5, mubr=-0.7, mubh=0.3)
    layer = A.GRU.from_thgru(**base, masked=True, samples=2**14)
    assert layer.gate_input_var == (0.5, 0.8, 0.6) and layer.gate_bias_mean == (0.5, -0.7, 0.3)
    assert layer.variance_slots() == 1  # only the readout slot is left learnable
    layer = A.GRU.from_thgru(**base, masked=True, samples=2**12, readout_var=1.2, readout_bias_var=0.05)
    K0, _ = evaluate(layer, x, x, HYPER, input_shape=(2, 3))
    ref = gru_reference(seqs, (0.5, 0.8, 0.6), (0.6, 0.4, 0.7), (0.1, 0.2, 0.05), (0.5, -0.7, 0.3), 1.2, 0.05)
    assert np.abs(K0.numpy() - ref).max() < 3e-4  # ~4× the measured QMC error at 2¹²
    for name in base:
        moved = dict(base, **{name: base[name] + 0.3})
        moved_layer = A.GRU.from_thgru(**moved, masked=True, samples=2**12, readout_var=1.2, readout_bias_var=0.05)
        K1, _ = evaluate(moved_layer, x, x, HYPER, input_shape=(2, 3))
        assert (K1 - K0).abs().max() > 5e-5, name


# --- finite networks -------------------------------------------------------------------------------------------

def _finite(layer, x, seed, width=512, networks=128, shape=(4, 3)):
    return sample_ensemble(layer, x, networks=networks, width=width, weight_var=HYPER, sampler="gram",
                           input_shape=shape, seed=seed).covariances


def _batch(lengths=(1, 3, 4, 2), seed=11):
    g = torch.Generator().manual_seed(seed)
    return pack_sequences([0.8 * torch.randn(L, 2, generator=g, dtype=DT) for L in lengths], 4)


def _finite_check(cell, gates, width, networks):
    x = _batch()
    layer = cell(masked=True, samples=2**14, readout_bias_var=None, **gates)
    K, _ = evaluate(layer, x, x, HYPER, input_shape=(4, 3))
    covs = _finite(layer, x, seed=0, width=width, networks=networks)
    result = mean_test(covs, K, alpha=1e-4, width=width)
    assert result.passed, result.summary()
    means = list(gates["gate_bias_mean"])
    means[0] = 0.0
    mutant = cell(masked=True, samples=2**14, readout_bias_var=None, **dict(gates, gate_bias_mean=tuple(means)))
    K_wrong, _ = evaluate(mutant, x, x, HYPER, input_shape=(4, 3))
    assert not mean_test(covs, K_wrong, alpha=1e-4, width=width).passed


def test_per_gate_gru_passes_against_finite_networks():
    """M = 64 literal networks of width 256 (gram-conditional readout), lengths 1–4: per-entry t-tests + Holm,
    family-wise α = 1e-4. The bias-mean-dropped mutant (μ_z = 0.5 → 0) is rejected."""
    _finite_check(A.GRU, GRU_GATES, width=256, networks=64)


def test_thgru_cell_through_verify():
    """The user-facing route: ``verification.verify`` on a fully specified ``GRU.from_thgru`` cell (64 networks of
    width 256, α = 1e-4) passes (measured max|t| = 0.97) and, given the bias-mean-dropped kernel as ``analytic``,
    rejects it (max|t| = 33)."""
    from verification.verify import verify

    g = torch.Generator().manual_seed(3)
    x = pack_sequences([0.8 * torch.randn(L, 2, generator=g, dtype=DT) for L in (1, 3, 2)], 3)
    params = dict(varUz=0.5, varUr=0.8, varUh=0.6, varWz=0.6, varWr=0.4, varWh=0.7, varbz=0.1, varbr=0.2,
                  varbh=0.05, mubz=0.5, mubr=-0.7, mubh=0.3)
    layer = A.GRU.from_thgru(**params, masked=True, samples=2**14)
    assert verify(layer, x, networks=64, width=256, weight_var=1.2, input_shape=(3, 3)).passed

    def dropped_mean(arch, inputs, hyper):
        mutant = A.GRU.from_thgru(**dict(params, mubz=0.0), masked=True, samples=2**14)
        return evaluate(mutant, inputs, inputs, hyper, input_shape=(3, 3))[0]

    assert not verify(layer, x, networks=64, width=256, weight_var=1.2, input_shape=(3, 3),
                      analytic=dropped_mean).passed


@pytest.mark.slow
@pytest.mark.parametrize("cell, gates", [(A.GRU, GRU_GATES), (A.LSTM, LSTM_GATES)], ids=["gru", "lstm"])
def test_per_gate_kernel_passes_against_finite_networks(cell, gates):
    """As above at width 512, M = 128, GRU and LSTM (mutant: μ_i = 0.4 → 0)."""
    _finite_check(cell, gates, width=512, networks=128)


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell, kwargs, match", [
    (A.GRU, dict(gate_input_var=(1.0, 1.0)), r"GRU\(.*gate_input_var needs 3 values \(gates z, r, h\), got 2"),
    (A.LSTM, dict(gate_hidden_var=(1.0,) * 3), r"LSTM\(.*gate_hidden_var needs 4 values \(gates i, f, o, g\)"),
    (A.GRU, dict(gate_bias_var=(0.1, -0.2, 0.0)), r"GRU\(.*gate_bias_var\[r\] must be >= 0, got -0.2"),
    (A.LSTM, dict(gate_input_var=(1.0, 0.0, 1.0, 1.0)), r"LSTM\(.*gate_input_var\[f\] must be > 0"),
    (A.GRU, dict(gate_hidden_var=(1.0, -1.0, 1.0)), r"gate_hidden_var\[r\] must be > 0"),
    (A.GRU, dict(gate_bias_mean=(0.0, None, 0.0)), r"gate_bias_mean\[r\] must be a number"),
    (A.GRU, dict(gate_bias_mean=(0.0, float("nan"), 0.0)), r"gate_bias_mean\[r\] must be a finite number"),
    (A.GRU, dict(gate_input_var=1.0), r"gate_input_var must be a sequence of 3 values"),
])
def test_bad_per_gate_values_name_the_layer(cell, kwargs, match):
    with pytest.raises(A.ArchitectureError, match=match):
        cell(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("cell, gates", [(A.GRU, GRU_GATES), (A.LSTM, LSTM_GATES)], ids=["gru", "lstm"])
def test_per_gate_calibration_and_power(cell, gates):
    """Calibration over 150 seeds at α = 0.01 (M = 32 networks of width 128, lengths 1, 3, 2): rejections
    ~ Binomial(150, 0.01) under H0 (mean 1.5); we accept ≤ 6 (P(X ≥ 7) = 5e-4 — the false-alarm rate of this
    check). Power on the planted mutant (the first gate's bias mean dropped: μ_z = 0.5 → 0 for the GRU, μ_i =
    0.4 → 0 for the LSTM) from the same samples: ≥ 95% of the seeds reject it. Fixed seeds; ~15 s each."""
    g = torch.Generator().manual_seed(11)
    x = pack_sequences([0.8 * torch.randn(L, 2, generator=g, dtype=DT) for L in (1, 3, 2)], 3)
    layer = cell(masked=True, samples=2**14, readout_bias_var=None, **gates)
    means = (0.0, *gates["gate_bias_mean"][1:])
    mutant = cell(masked=True, samples=2**14, readout_bias_var=None, **dict(gates, gate_bias_mean=means))
    K, _ = evaluate(layer, x, x, HYPER, input_shape=(3, 3))
    K_wrong, _ = evaluate(mutant, x, x, HYPER, input_shape=(3, 3))
    false_alarms = detections = 0
    seeds = range(2000, 2150)
    for seed in seeds:
        covs = _finite(layer, x, seed=seed, width=128, networks=32, shape=(3, 3))
        false_alarms += not mean_test(covs, K, alpha=0.01, width=128).passed
        detections += not mean_test(covs, K_wrong, alpha=0.01, width=128).passed
    assert false_alarms <= 6, false_alarms
    assert detections >= 0.95 * len(seeds), detections

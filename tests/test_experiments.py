"""Smoke test of the long-run experiment script (experiments/mnist1d_kernels.py) at a tiny size: it produces a row
per kernel with an accuracy above chance, a chosen noise from the grid, and its timing and memory."""

from __future__ import annotations

import importlib.util
import queue
from pathlib import Path

import pytest
import torch

pytest.importorskip("mnist1d")
SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "mnist1d_kernels.py"


def _module():
    spec = importlib.util.spec_from_file_location("mnist1d_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kernel", ["mlp", "cnn_gap"])
def test_mnist1d_kernels_row(kernel):
    module = _module()
    out = queue.Queue()
    module.run_one(kernel, 120, 100, out)
    row = out.get_nowait()
    assert row["kernel"] == kernel and row["n_train"] == 120 and row["n_test"] == 100
    assert row["noise"] in module.NOISES
    assert row["test_accuracy"] > 0.2  # chance is 0.1 (ten balanced classes)
    assert row["gram_seconds"] > 0 and row["peak_rss_mib"] > 0


def test_mnist1d_gru_monte_carlo_row(tmp_path):
    """The GRU-GP row from random finite GRUs: above chance, with its estimate's size and resolution recorded."""
    module = _module()
    out = queue.Queue()
    mc = dict(networks=8, width=64, checkpoint=str(tmp_path / "gru.pt"))
    module.run_one("gru_mc", 120, 100, out, mc)
    row = out.get_nowait()
    assert row["kernel"] == "gru_mc" and row["mc_networks"] == 8 and row["mc_width"] == 64
    assert row["test_accuracy"] > 0.2
    assert 0 < row["mc_max_standard_error"] < 0.5 and (tmp_path / "gru.pt").exists()


# --------------------------------------------------------------------------- experiments/lee2018_width.py

LEE = Path(__file__).resolve().parent.parent / "experiments" / "lee2018_width.py"


@pytest.fixture(scope="module")
def lee():
    spec = importlib.util.spec_from_file_location("lee2018_width", LEE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lee2018_finite_network_is_the_kernels_twin(lee):
    """At initialization the finite network's readout kernel σv²·h·hᵀ/n + σvb² tends to the NNGP kernel (error
    ~ 1/√width), for the MLP, the 1-D CNN and the erf Elman RNN (mean readout over 40 steps of 1 token feature)
    built from the same descriptions.

    Fixed seeds (inputs 0, networks 0–3); the second-smallest relative error of the 4 networks is compared (the
    RNN's error is heavy-tailed over seeds: σw² = 2 amplifies a network's fluctuations over the 40 steps). At the
    wider width it must be below 0.12 (measured: 0.056 for the MLP at 2048 units, 0.046 for the CNN at 256 channels
    and for the RNN at 1024 units; 0.36, 0.42, 0.42 at the narrower widths) and below half the narrower width's,
    so a twin with a wrong convention (a variance, fan-in or time-readout off) fails: its error would level off at
    the systematic difference."""
    import torch

    from nngp_gpytorch import NNGPKernel

    x = torch.randn(12, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for arch, widths in (("mlp", (64, 2048)), ("cnn_flatten", (16, 256)), ("rnn", (64, 1024))):
        description, shape = lee.architecture(arch, 2)
        kwargs = {"input_shape": shape} if shape else {}
        K = NNGPKernel(description, weight_var=2.0, bias_var=0.1, dtype=torch.float64, **kwargs)(x).to_dense().detach()
        wv, bv = lee.readout_variances(description)
        errors = []
        for width in widths:
            per_seed = []
            for seed in range(4):
                net = lee.finite_network(description, width, 40, shape, seed=seed).double()
                with torch.no_grad():
                    h = net[:-1](x)
                assert arch != "rnn" or h.shape == (12, width)
                per_seed.append(float((wv * h @ h.T / h.shape[1] + bv - K).norm() / K.norm()))
            errors.append(sorted(per_seed)[1])
        assert errors[1] < 0.12 and errors[1] < errors[0] / 2, (arch, errors)
        assert net[-1].out_features == 10
    assert lee.readout_variances(lee.architecture("rnn")[0]) == (2.0, 0.0)  # the RNN's readout has no bias variance


def test_lee2018_finite_gru_is_the_kernels_twin(lee):
    """The trainable GRU (the verification twin's recursion with trainable weights) at initialization: its readout
    kernel tends to the GRU-GP of the same description (Yang's erf-gated GRU, mean readout) as the width grows.
    Sequences of 4 tokens of 2 features (the 40-step kernel's quasi-Monte Carlo costs minutes per pair); fixed
    seeds as above. Measured: second-smallest relative error 0.18 at 64 units, 0.049 at 1,024 (the 1/√width
    rate: 4× for 16× the width); a wrong gate variance, bias mean or readout weight would level off instead."""
    from nngp_gpytorch import NNGPKernel
    from nngp_gpytorch import arch as A

    description, shape = A.gru(readout="mean"), (4, 2)
    assert type(lee.architecture("gru")[0]) is type(description)
    x = torch.randn(12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    K = NNGPKernel(description, weight_var=2.0, bias_var=0.1, dtype=torch.float64, input_shape=shape)(x)
    K = K.to_dense().detach()
    wv, bv = lee.readout_variances(description)
    errors = []
    for width in (64, 1024):
        per_seed = []
        for seed in range(4):
            net = lee.finite_network(description, width, 8, shape, seed=seed).double()
            with torch.no_grad():
                h = net[:-1](x)
            per_seed.append(float((wv * h @ h.T / h.shape[1] + bv - K).norm() / K.norm()))
        errors.append(sorted(per_seed)[1])
    assert errors[1] < 0.08 and errors[1] < errors[0] / 2.5, errors
    with pytest.raises(ValueError, match="--no-gp"):
        lee.run_width("gru", [4], [0], n_train=50, n_test=20, num_samples=2000, progress=False)
    result = lee.run_width("gru", [4], [0], n_train=100, n_test=50, lrs=(3e-3,), max_epochs=2, num_samples=2000,
                           gp=False, progress=False)
    assert 0 <= result["trained"]["4"]["0"]["test_accuracy"] <= 1 and "erf-gated GRU" in lee.markdown_table([result])


def test_lee2018_width_smoke(lee, tmp_path):
    """The width run at a tiny size: depth chosen on validation, the NNGP above chance, every (width, seed) cell
    written, a rerun resumes without retraining, and the report (table, both figures) renders."""
    import matplotlib

    matplotlib.use("Agg")
    out = tmp_path / "mlp.json"
    kwargs = dict(n_train=150, n_test=100, depths=(1, 2), lrs=(3e-3,), max_epochs=3, num_samples=2000, out=str(out),
                  progress=False)
    result = lee.run_width("mlp", [8, 32], [0, 1], ntk=True, **kwargs)
    assert result["depth"] in (1, 2) and result["depth_selection"]["depth"] == result["depth"]
    assert result["gp"]["test_accuracy"] > 0.2 and result["gp"]["noise"] in lee.NOISES
    assert len(result["gp"]["predictive_variance"]) == 100 and min(result["gp"]["predictive_variance"]) > 0
    assert set(result["trained"]) == {"8", "32"} and set(result["trained"]["32"]) == {"0", "1"}
    assert 1 <= result["selection"]["8"]["epochs"] <= 3
    for cell in result["trained"]["32"].values():
        assert 0 <= cell["test_accuracy"] <= 1 and 0 <= cell["agreement"] <= 1
    again = lee.run_width("mlp", [8, 32], [0, 1], ntk=True, **kwargs)
    assert again["trained"] == result["trained"]  # resumed, not retrained
    rows = lee.summary(again)
    assert [r["width"] for r in rows] == [8, 32] and rows[0]["seeds"] == 2
    one_se = lee.run_width("mlp", [8], [0], ntk=False, lr_rule="one-se", reuse_selection=str(out),
                           **{**kwargs, "out": None})
    assert one_se["config"]["lr_rule"] == "one-se"
    assert one_se["selection"]["8"]["curves"] == result["selection"]["8"]["curves"]  # reused, not retrained
    cnn = lee.run_width("cnn_flatten", [4], [0], depth=1, ntk=False, **{**kwargs, "out": None})
    assert cnn["gp"]["test_accuracy"] > 0.2 and "0" in cnn["trained"]["4"]
    rnn = lee.run_width("rnn", [4], [0], ntk=False, **{**kwargs, "n_train": 100, "n_test": 50, "out": None})
    assert rnn["gp"]["test_accuracy"] > 0.2 and "0" in rnn["trained"]["4"] and "0" in rnn["readout"]["4"]
    table = lee.markdown_table([again, cnn, rnn])
    assert "| 8 | 2 |" in table and "erf Elman RNN, mean readout, N = 100" in table
    lee.plot_width([again, cnn, rnn], str(tmp_path / "width.png"))
    rows = lee.run_calibration(("mlp",), n_train=150, n_test=100, depth=1, num_samples=2000)
    assert [r["inputs"] for r in rows] == ["raw", "sphere"] and all(-1 <= r["spearman"] <= 1 for r in rows)
    lee.plot_calibration(rows, str(tmp_path / "calibration.png"))
    assert (tmp_path / "width.png").stat().st_size > 0 and (tmp_path / "calibration.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="another configuration"):
        lee.run_width("mlp", [8], [0], **{**kwargs, "max_epochs": 4})


def test_lee2018_readout_in_feature_space_is_the_kernel_posterior(lee):
    """With fewer features than points the Bayesian readout solves in feature space (what makes it fit at
    N = 50,000); the push-through identity makes that the same posterior mean and the same noise choice as the
    n × n kernel solve, to float64 round-off."""
    torch.manual_seed(0)
    n, m, wv, bv = 300, 20, 2.0, 0.1
    h, ht = torch.randn(n, m, dtype=torch.float64), torch.randn(50, m, dtype=torch.float64)
    labels = torch.randint(0, 10, (n,))
    phi, phi_test = lee.readout_features(h, wv, bv), lee.readout_features(ht, wv, bv)
    k_train, k_cross = wv * h @ h.T / m + bv, wv * ht @ h.T / m + bv  # the readout kernel, written out
    assert torch.allclose(phi @ phi.T, k_train, rtol=0, atol=1e-12 * float(k_train.abs().max()))
    for noise in lee.NOISES:
        dual = lee.gp_posterior(k_train, k_cross, lee.targets_of(labels), noise)[0]
        primal = lee.feature_posterior(phi, phi_test, lee.targets_of(labels), noise)
        assert torch.allclose(primal, dual, rtol=0, atol=1e-8 * float(dual.abs().max()))
    assert lee.choose_noise_features(phi, labels) == lee.choose_noise(k_train, labels)


def test_lee2018_width_without_the_gp(lee, tmp_path):
    """``gp=False`` (the 50,000-point trained runs): trained and readout cells without an NNGP, agreement left
    empty, the table and figure still render, and the configuration records it (no resuming a run with a GP)."""
    import matplotlib

    matplotlib.use("Agg")
    out = tmp_path / "mlp.json"
    kwargs = dict(n_train=150, n_test=100, depth=1, lrs=(3e-3,), max_epochs=2, num_samples=2000, out=str(out),
                  progress=False)
    result = lee.run_width("mlp", [8], [0], gp=False, **kwargs)
    assert "gp" not in result and "ntk" not in result and result["config"]["gp"] is False
    cell = result["trained"]["8"]["0"]
    assert 0 <= cell["test_accuracy"] <= 1 and cell["agreement"] is None
    table = lee.markdown_table([result])
    assert "NNGP not fitted" in table and "| — |" in table  # no NNGP − trained gap, no agreement
    lee.plot_width([result], str(tmp_path / "width.png"))
    with pytest.raises(SystemExit, match="another configuration"):
        lee.run_width("mlp", [8], [0], **kwargs)


def test_lee2018_scale_row(lee, tmp_path):
    """The large-N row through nngp_gpytorch.scale (inline), at a tiny size."""
    row = lee.run_scale("mlp", 2, 300, 60, str(tmp_path / "store"), tile=128, num_samples=2000, progress=False)
    assert row["n_train"] == 300 and row["test_accuracy"] > 0.2
    assert row["wall_seconds"] > 0 and row["peak_rss_mib"] > 0 and row["method"] in ("cholesky", "cg")
    assert row["preconditioner_rows"] == "kernel"


def test_lee2018_inputs_do_not_depend_on_the_thread_count(lee):
    """``width`` (one thread) and ``scale`` (two) must see the same inputs to the bit, or their Gram stores'
    fingerprints disagree."""
    threads = torch.get_num_threads()
    try:
        loaded = []
        for count in (1, 2):
            torch.set_num_threads(count)
            getattr(lee.load_mnist1d, "cache_clear", lambda: None)()
            loaded.append(lee.load_mnist1d(1600, 10, 2000)[0])
            assert torch.get_num_threads() == count
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(loaded[0], loaded[1])


def test_lee2018_grams_through_stores_are_read_back(lee, tmp_path, monkeypatch):
    """``width --store``: the Grams through Zarr stores equal the in-memory ones to float32 rounding; a second call
    reads the stores back (no tile computed); another kernel is refused by the stores' fingerprints."""
    import nngp_gpytorch.scale as scale
    from nngp_gpytorch import NNGPKernel
    from nngp_gpytorch.scale import StoreMismatchError

    x, _, xt, _ = lee.load_mnist1d(90, 30, 2000)
    description, shape = lee.architecture("cnn_flatten", 1)
    kernel = NNGPKernel(description, weight_var=2.0, bias_var=0.1, dtype=torch.float64, input_shape=shape)
    dense = lee.kernel_grams(kernel, x, xt)
    computed = []
    original = scale.compute_gram

    def counted(*args, **kwargs):
        gram = original(*args, **kwargs)
        computed.append(gram.last_run.computed)
        return gram

    monkeypatch.setattr(scale, "compute_gram", counted)
    stored = lee.kernel_grams(kernel, x, xt, str(tmp_path))
    for a, b in zip(dense[:3], stored[:3], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6 * float(a.abs().max()))  # float32 stores
    lee.kernel_grams(kernel, x, xt, str(tmp_path))
    assert computed[:2] != [0, 0] and computed[2:] == [0, 0]
    other = NNGPKernel(description, weight_var=1.5, bias_var=0.1, dtype=torch.float64, input_shape=shape)
    with pytest.raises(StoreMismatchError):
        lee.kernel_grams(other, x, xt, str(tmp_path))


def test_lee2018_search_chooses_on_validation_and_resumes(lee, tmp_path):
    """The σw²/σb² search records every grid point, chooses the best validation accuracy (ties: nearest the default),
    and resumes from its JSON without recomputing."""
    import json

    out = tmp_path / "search.json"
    result = lee.run_search("mlp", (1.0, 2.0), (0.1, 1.0), n_train=120, n_test=60, out=str(out), progress=False)
    rows = list(result["grid"].values())
    assert len(rows) == 4 and all(r["noise"] in lee.NOISES and 0 <= r["test_accuracy"] <= 1 for r in rows)
    best = max(r["validation_accuracy"] for r in rows)
    assert result["chosen"]["validation_accuracy"] == best and result["default"] == result["grid"]["2,0.1"]
    ties = [r for r in rows if r["validation_accuracy"] == best]
    distance = [abs(r["weight_var"] - 2.0) + abs(r["bias_var"] - 0.1) for r in ties]
    assert abs(result["chosen"]["weight_var"] - 2.0) + abs(result["chosen"]["bias_var"] - 0.1) == min(distance)
    saved = json.loads(out.read_text())
    saved["grid"]["1,0.1"]["test_accuracy"] = -1.0  # a resumed run keeps stored points as they are
    out.write_text(json.dumps(saved))
    again = lee.run_search("mlp", (1.0, 2.0), (0.1, 1.0), n_train=120, n_test=60, out=str(out), progress=False)
    assert again["grid"]["1,0.1"]["test_accuracy"] == -1.0

"""nngp_gpytorch.scale: stored Grams equal in-memory Grams, stores resume and refuse the wrong computation,
faults (an interrupted run, a torn chunk, a killed worker) lose no finished tile, streamed CG agrees with
Cholesky, and the mnist1d command runs end to end on a Dask cluster (the N ≈ 2,000 CI path)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("distributed")
pytest.importorskip("zarr")

from nngp_gpytorch import NNGPKernel, NTKKernel  # noqa: E402
from nngp_gpytorch import arch as A  # noqa: E402
from nngp_gpytorch.scale import (  # noqa: E402
    GramStore,
    KernelRows,
    StoredGram,
    StoreMismatchError,
    compute_gram,
    fit_predict,
    kernel_regression,
    select_noise,
    solve,
    stream_matmul,
)

F64 = torch.float64
CLUSTER_TIMEOUT_S = 240  # a cluster that hangs fails the test instead of the CI job


def _data(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _kernel() -> NNGPKernel:
    return NNGPKernel(A.mlp(2), weight_var=1.6, bias_var=0.1).double()


def _dense(kernel, x1, x2=None) -> np.ndarray:
    with torch.no_grad():
        return kernel(x1, x1 if x2 is None else x2).to_dense().numpy()


# --- values ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_stored_gram_equals_the_in_memory_gram(tmp_path, dtype):
    kernel, x, xt = _kernel(), _data(150), _data(40, seed=1)
    gram = compute_gram(kernel, x, store=str(tmp_path / "g"), tile=64, dtype=dtype, client="inline", progress=False)
    cross = compute_gram(kernel, xt, x, store=str(tmp_path / "c"), tile=64, dtype=dtype, client="inline",
                         progress=False)
    assert gram.symmetric and gram.complete and len(gram.tiles()) == 6  # 3×3 grid, upper triangle
    assert not cross.symmetric and len(cross.tiles()) == 3
    # float64: the same computation tile by tile (round-off of the kernel's blocked reductions only)
    atol = 1e-13 if dtype == "float64" else 0.0
    rtol = 1e-12 if dtype == "float64" else 2**-23  # float32: exactly one rounding of each value
    for store, want in ((gram, _dense(kernel, x)), (cross, _dense(kernel, xt, x))):
        got = store.to_numpy()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    full = gram.to_numpy()
    assert np.array_equal(full, full.T)  # the lower triangle is the transposed upper one, diagonal tiles symmetrized


def test_ntk_and_diagonal_tiles_are_exactly_symmetric(tmp_path):
    kernel, x = NTKKernel(A.mlp(1)).double(), _data(70)
    gram = compute_gram(kernel, x, store=str(tmp_path / "g"), tile=32, dtype="float64", client="inline",
                        progress=False)
    np.testing.assert_allclose(gram.to_numpy(), _dense(kernel, x), rtol=1e-12, atol=1e-13)
    diagonal_tile = gram.read_tile(1, 1)
    assert np.array_equal(diagonal_tile, diagonal_tile.T)


def test_stored_gram_operator_matches_the_dense_matrix(tmp_path):
    kernel, x = _kernel(), _data(130)
    gram = compute_gram(kernel, x, store=str(tmp_path / "g"), tile=50, dtype="float64", client="inline",
                        progress=False)
    dense = torch.from_numpy(_dense(kernel, x))
    op = StoredGram(gram)
    v = torch.randn(130, 3, dtype=F64)
    torch.testing.assert_close(op @ v, dense @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op @ v[:, 0], dense @ v[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.diagonal(), dense.diagonal(), rtol=0, atol=0)
    rows = torch.tensor([0, 51, 129, 51])
    assert np.array_equal(gram.rows(rows.numpy()), gram.to_numpy()[rows.numpy()])  # strips of tiles, as stored
    # indexing goes through linear_operator's interpolation (a sparse matmul): equal up to round-off
    torch.testing.assert_close(op[rows, :].to_dense(), dense[rows], rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(StoredGram(gram, rows=KernelRows(kernel, x))[rows, :].to_dense(), dense[rows],
                               rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="symmetric"):
        StoredGram(compute_gram(kernel, x[:10], x, store=str(tmp_path / "c"), tile=50, client="inline",
                                progress=False))


# --- the solve --------------------------------------------------------------------------------------------------
def test_streamed_cg_agrees_with_cholesky_and_dense_gpytorch_posterior(tmp_path):
    kernel, x, xt = _kernel(), _data(400), _data(60, seed=2)
    y = torch.sin(2 * x[:, :2].sum(1)) + 0.1 * torch.randn(400, dtype=F64, generator=torch.Generator().manual_seed(5))
    gram = compute_gram(kernel, x, store=str(tmp_path / "g"), tile=128, dtype="float64", client="inline",
                        progress=False)
    cross = compute_gram(kernel, xt, x, store=str(tmp_path / "c"), tile=128, dtype="float64", client="inline",
                         progress=False)
    noise, index = 0.05, torch.tensor([0, 7, 59])
    diag = torch.from_numpy(np.diagonal(_dense(kernel, xt))).to(F64)[index]
    exact = kernel_regression(gram, y, noise, cross, test_diagonal=diag, variance_index=index, method="cholesky")
    tol = 1e-6
    cg = kernel_regression(gram, y, noise, cross, test_diagonal=diag, variance_index=index, method="cg",
                           tolerance=tol, preconditioner_rank=30, rows=KernelRows(kernel, x))
    assert exact.solve.method == "cholesky" and cg.solve.method == "cg" and cg.solve.iterations > 1
    assert cg.solve.relative_residual < 10 * tol  # CG's recurrence residual vs the true one, re-multiplied
    # ‖Δmean‖ ≤ ‖K*‖ ‖(K + σ²)⁻¹‖ ‖residual‖: with σ² = 0.05 and these scales, well under 1e-3 of the mean
    torch.testing.assert_close(cg.mean, exact.mean, rtol=0, atol=1e-3 * float(exact.mean.abs().max()))
    # the dense reference: R&W eqs. 2.25–2.26 with torch.linalg.solve
    K = torch.from_numpy(_dense(kernel, x)) + noise * torch.eye(400, dtype=F64)
    Ks = torch.from_numpy(_dense(kernel, xt, x))
    torch.testing.assert_close(exact.mean, Ks @ torch.linalg.solve(K, y[:, None]), rtol=1e-9, atol=1e-10)
    want_var = diag - (Ks[index] @ torch.linalg.solve(K, Ks[index].T)).diagonal()
    torch.testing.assert_close(exact.variance, want_var, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(cg.variance, want_var, rtol=0, atol=1e-3 * float(diag.max()))


def test_solve_rejects_an_indefinite_system_and_bad_targets(tmp_path):
    kernel, x = _kernel(), _data(30)
    gram = compute_gram(kernel, x, store=str(tmp_path / "g"), tile=16, dtype="float64", client="inline",
                        progress=False)
    with pytest.raises(ValueError, match="targets"):
        solve(gram, torch.ones(29, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        solve(gram, torch.full((30,), float("nan"), dtype=F64), 0.1)
    with pytest.raises(ValueError, match="noise"):
        solve(gram, torch.ones(30, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="method"):
        solve(gram, torch.ones(30, dtype=F64), 0.1, method="lu")
    duplicate = torch.cat([x[:15], x[:15]])  # a singular Gram: Cholesky fails at σ² = 0 and says so
    singular = compute_gram(kernel, duplicate, store=str(tmp_path / "s"), tile=16, dtype="float64", client="inline",
                            progress=False)
    with pytest.raises(torch.linalg.LinAlgError, match="noise"):
        solve(singular, torch.ones(30, dtype=F64), 0.0, method="cholesky")


def test_noise_selection_recovers_the_noise_of_gp_samples(tmp_path):
    """Targets drawn from GP(0, k) + N(0, σ²) with σ² = 0.3·mean diag: the marginal likelihood's choice
    among 13 log-spaced candidates (factor 3.16 apart) lies within a factor 10 of the truth. 8 independent
    columns; seed fixed (the estimate's spread at n = 300 is far below the factor-10 window)."""
    kernel, x = _kernel(), _data(300)
    gram = compute_gram(kernel, x, store=str(tmp_path / "g"), tile=128, dtype="float64", client="inline",
                        progress=False)
    K = torch.from_numpy(gram.to_numpy())
    true_noise = 0.3 * float(K.diagonal().mean())
    chol = torch.linalg.cholesky(K + true_noise * torch.eye(300, dtype=F64))
    y = chol @ torch.randn(300, 8, dtype=F64, generator=torch.Generator().manual_seed(11))
    choice = select_noise(gram, y, criterion="mll", subset=300)
    assert true_noise / 10 <= choice.noise <= true_noise * 10
    assert len(choice.scores) == len(choice.candidates) == 13
    validated = select_noise(gram, y, criterion="validation", subset=300)
    assert validated.noise in validated.candidates
    with pytest.raises(ValueError, match="criterion"):
        select_noise(gram, y, criterion="aic")


# --- resumability and the fingerprint ---------------------------------------------------------------------------
def test_an_interrupted_run_resumes_with_only_the_missing_tiles(tmp_path):
    kernel, x, url = _kernel(), _data(200), str(tmp_path / "g")
    total = 10  # a 4×4 grid of 50-point tiles, upper triangle

    def interrupt_after_four(done, _total):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_gram(kernel, x, store=url, tile=50, client="inline", progress=False, on_tile=interrupt_after_four)
    partial = GramStore.open(url)
    assert len(partial.pending()) == total - 4  # the four finished tiles were recorded in the finally
    resumed = compute_gram(kernel, x, store=url, tile=50, client="inline", progress=False)
    assert (resumed.last_run.computed, resumed.last_run.skipped, resumed.last_run.torn) == (total - 4, 4, 0)
    np.testing.assert_allclose(resumed.to_numpy(), _dense(kernel, x), rtol=2**-23, atol=0)
    again = compute_gram(kernel, x, store=url, tile=50, client="inline", progress=False)
    assert again.last_run.computed == 0 and again.last_run.skipped == total


def test_a_store_for_another_computation_is_refused(tmp_path):
    kernel, x, url = _kernel(), _data(60), str(tmp_path / "g")
    compute_gram(kernel, x, store=url, tile=32, client="inline", progress=False)
    other_kernel = NNGPKernel(A.mlp(2), weight_var=1.7, bias_var=0.1).double()
    cases = [
        ((other_kernel, x), {}, "kernel"),
        ((kernel, x + 1e-9), {}, "x1"),
        ((kernel, x), {"dtype": "float64"}, "dtype"),
        ((kernel, x), {"tile": 16}, "tile"),
        ((NNGPKernel(A.mlp(3), weight_var=1.6, bias_var=0.1).double(), x), {}, "kernel"),
    ]
    for args, options, field in cases:
        with pytest.raises(StoreMismatchError, match=field):
            compute_gram(*args, store=url, **{"tile": 32, "client": "inline", "progress": False, **options})
    replaced = compute_gram(other_kernel, x, store=url, tile=32, client="inline", progress=False, overwrite=True)
    assert replaced.last_run.computed == 3
    np.testing.assert_allclose(replaced.to_numpy(), _dense(other_kernel, x), rtol=2**-23, atol=0)


def test_a_torn_chunk_is_found_and_recomputed(tmp_path):
    kernel, x, url = _kernel(), _data(120), str(tmp_path / "g")
    compute_gram(kernel, x, store=url, tile=40, dtype="float64", client="inline", progress=False)
    chunks = sorted(p for p in Path(url, "gram").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(chunks) == 6
    torn = chunks[2]
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # a write cut off half way
    flipped = chunks[4]
    data = bytearray(flipped.read_bytes())
    data[100] ^= 0xFF  # a corrupted byte: the chunk decodes, the checksum does not match
    flipped.write_bytes(bytes(data))
    repaired = compute_gram(kernel, x, store=url, tile=40, dtype="float64", client="inline", progress=False)
    assert repaired.last_run.torn == 2 and repaired.last_run.computed == 2
    np.testing.assert_allclose(repaired.to_numpy(), _dense(kernel, x), rtol=1e-12, atol=1e-13)


def test_bad_inputs_are_refused(tmp_path):
    kernel = _kernel()
    with pytest.raises(ValueError, match="NaN"):
        compute_gram(kernel, torch.full((4, 6), float("nan"), dtype=F64), store=str(tmp_path / "a"),
                     client="inline", progress=False)
    with pytest.raises(ValueError, match="same d"):
        compute_gram(kernel, _data(4), _data(4, d=5), store=str(tmp_path / "b"), client="inline", progress=False)
    with pytest.raises(TypeError, match="client"):
        compute_gram(kernel, _data(4), store=str(tmp_path / "c"), client=42, progress=False)
    with pytest.raises(FileNotFoundError):
        GramStore.open(str(tmp_path / "nothing"))


# --- on Dask --------------------------------------------------------------------------------------------------
class _KillsItsWorkerOnce(torch.nn.Module):
    """A kernel wrapper whose first call on a worker process, anywhere, ends that process (``os._exit``),
    leaving a marker file so that the rescheduled task succeeds."""

    def __init__(self, kernel, marker: str):
        super().__init__()
        self.kernel, self.marker = kernel, marker

    def forward(self, x1, x2=None, diag=False):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return self.kernel(x1, x2, diag=diag)


@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_local_cluster_survives_a_killed_worker(tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    kernel, x = _kernel(), _data(160)
    marker = str(tmp_path / "killed")
    dying = _KillsItsWorkerOnce(kernel, marker)
    seen = []
    gram = compute_gram(dying, x, store=str(tmp_path / "g"), tile=40, dtype="float64", n_workers=2,
                        progress=False, on_tile=lambda done, total: seen.append(done))
    assert os.path.exists(marker)  # a worker did die
    assert gram.complete and gram.last_run.computed == 10 and seen[-1] == 10
    np.testing.assert_allclose(gram.to_numpy(), _dense(kernel, x), rtol=1e-12, atol=1e-13)


@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_scattered_inputs_lost_mid_run_are_scattered_again(tmp_path):
    """A dead worker can take the scattered kernel and inputs with it (dask/distributed#3149): the tile tasks are
    then cancelled. Forcing that loss after the first tile, the run scatters again and finishes the other tiles."""
    from distributed import Client, Future, LocalCluster

    kernel, x = _kernel(), _data(160)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        lost = []

        def lose_the_inputs(done, total):
            if not lost:
                lost.extend(k for k in list(client.futures) if not str(k).startswith("gram-tile"))
                client.cancel([Future(k, client) for k in lost], force=True)

        with pytest.warns(RuntimeWarning, match="scattering the kernel and inputs again"):
            gram = compute_gram(kernel, x, store=str(tmp_path / "g"), tile=40, dtype="float64", client=client,
                                progress=False, on_tile=lose_the_inputs)
    assert len(lost) == 2  # the kernel and x
    assert gram.complete and gram.last_run.computed == 10
    np.testing.assert_allclose(gram.to_numpy(), _dense(kernel, x), rtol=1e-12, atol=1e-13)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_a_separate_scheduler_and_two_workers_by_address(tmp_path):
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if dask is None:
        pytest.skip("the dask command line is not installed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = open(tmp_path / "cluster.log", "w")
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-dashboard"], stdout=logs, stderr=logs)]
    try:
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:  # the scheduler accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        processes += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                        "--local-directory", str(tmp_path / f"w{k}")], stdout=logs, stderr=logs)
                      for k in range(2)]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        kernel, x, xt = _kernel(), _data(120), _data(30, seed=3)
        gram = compute_gram(kernel, x, store=str(tmp_path / "g"), tile=40, dtype="float64", client=address,
                            progress=False)
        cross = compute_gram(kernel, xt, x, store=str(tmp_path / "c"), tile=40, dtype="float64", client=address,
                             progress=False)
        np.testing.assert_allclose(gram.to_numpy(), _dense(kernel, x), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(cross.to_numpy(), _dense(kernel, xt, x), rtol=1e-12, atol=1e-13)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()


@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_mnist1d_command_on_a_local_cluster(tmp_path):
    """The CLI's path at N = 2,000 (the 50k run is benchmarks/bench_scale.py): Grams on a 2-worker
    LocalCluster, noise by marginal likelihood, streamed CG. Chance is 10%; a depth-3 ReLU MLP-NNGP
    reaches ~60% here (one run: 0.60), so 40% fails only if something is broken."""
    pytest.importorskip("mnist1d")
    from nngp_gpytorch.scale.__main__ import main

    out = tmp_path / "result.json"
    record = main(["mnist1d", "--n-train", "2000", "--n-test", "400", "--tile", "512", "--workers", "2",
                   "--store", str(tmp_path / "store"), "--method", "cg", "--no-progress", "--json", str(out)])
    assert out.exists() and record["method"] == "cg" and record["cg_passes"] > 1
    assert record["relative_residual"] < 1e-2
    assert record["test_accuracy"] > 0.4
    assert set(record["seconds"]) >= {"train_gram", "test_gram", "noise", "solve", "predict", "total"}
    assert len(record["peak_rss_gb"]) == 3  # the driver and two workers


def test_fit_predict_inline_resumes(tmp_path):
    kernel, x, xt = _kernel(), _data(90), _data(20, seed=4)
    y = x[:, 0].clone()
    first = fit_predict(kernel, x, y, xt, store=str(tmp_path / "s"), noise=0.1, tile=32, client="inline",
                        progress=False)
    second = fit_predict(kernel, x, y, xt, store=str(tmp_path / "s"), noise=0.1, tile=32, client="inline",
                         progress=False)
    assert second.train.last_run.computed == 0 and second.test.last_run.computed == 0
    torch.testing.assert_close(first.prediction.mean, second.prediction.mean, rtol=0, atol=0)
    assert first.noise_choice is None and first.noise == 0.1
    torch.testing.assert_close(stream_matmul(first.test, torch.ones(90, 1, dtype=F64)),
                               torch.from_numpy(first.test.to_numpy()).double().sum(1, keepdim=True),
                               rtol=1e-6, atol=1e-6)

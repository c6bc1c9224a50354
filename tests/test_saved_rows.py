"""nngp_gpytorch.scale.SavedRows: the preconditioner's kernel rows survive an interruption and a rerun, are
the kernel's rows exactly, and are never mixed with another kernel's or kept when non-finite."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("distributed")
pytest.importorskip("zarr")

from nngp_gpytorch import NNGPKernel  # noqa: E402
from nngp_gpytorch import arch as A  # noqa: E402
from nngp_gpytorch.scale import (  # noqa: E402
    KernelRows,
    SavedRows,
    StoreMismatchError,
    StoreRows,
    compute_gram,
    fit_predict,
    rows_fingerprint,
    solve,
)

F64 = torch.float64


def _data(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 5, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _kernel(weight_var: float = 1.6) -> NNGPKernel:
    return NNGPKernel(A.mlp(2), weight_var=weight_var, bias_var=0.1).double()


class _Counting:
    """A row source that counts the rows it computes and raises KeyboardInterrupt after ``stop_after``."""

    def __init__(self, source, stop_after: int | None = None) -> None:
        self.source, self.stop_after, self.rows = source, stop_after, 0

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        if self.stop_after is not None and self.rows + len(index) > self.stop_after:
            raise KeyboardInterrupt
        self.rows += len(index)
        return self.source(index)


def _saved(kernel, x, url, source=None, **options) -> SavedRows:
    return SavedRows(source or KernelRows(kernel, x), url, fingerprint=rows_fingerprint(kernel, x), n=x.shape[0],
                     **options)


def test_saved_rows_are_the_kernel_rows_and_are_read_back_not_recomputed(tmp_path):
    kernel, x = _kernel(), _data(120)
    first = _saved(kernel, x, tmp_path / "rows", _Counting(KernelRows(kernel, x)))
    got = first(torch.tensor([5, 3, 5]))
    # the kernel's value of a row depends on which rows share its batch only at round-off (blocked reductions)
    torch.testing.assert_close(got, KernelRows(kernel, x)(torch.tensor([5, 3, 5])), rtol=1e-13, atol=1e-14)
    assert torch.equal(got[0], got[2]) and (first.computed, first.read, len(first)) == (2, 0, 2)
    counting = _Counting(KernelRows(kernel, x))
    again = _saved(kernel, x, tmp_path / "rows", counting)
    reread = again(torch.tensor([3, 5, 7]))
    assert torch.equal(reread[:2], got[[1, 0]])  # float64 rows stored as they were computed
    torch.testing.assert_close(reread[2], KernelRows(kernel, x)(torch.tensor([7]))[0], rtol=1e-13, atol=1e-14)
    assert (counting.rows, again.read, again.computed, len(again)) == (1, 2, 1, 3)
    with pytest.raises(IndexError, match=r"\[0, 120\)"):
        again(torch.tensor([120]))


def test_an_interrupted_preconditioner_keeps_its_rows_and_the_rerun_solves_identically(tmp_path, capsys):
    kernel, x = _kernel(), _data(300)
    y = torch.sin(x.sum(1))
    gram = compute_gram(kernel, x, store=str(tmp_path / "g"), tile=100, dtype="float64", client="inline",
                        progress=False)
    options = dict(method="cg", tolerance=1e-6, preconditioner_rank=20, max_iterations=60)
    plain = _Counting(KernelRows(kernel, x))
    reference = solve(gram, y, 1e-3, rows=plain, **options)
    assert plain.rows == 20  # the rank-20 pivoted Cholesky asks for 20 rows

    with pytest.raises(KeyboardInterrupt):
        solve(gram, y, 1e-3, rows=_saved(kernel, x, tmp_path / "rows", _Counting(KernelRows(kernel, x), 7)),
              **options)
    resumed_source = _Counting(KernelRows(kernel, x))
    resumed = _saved(kernel, x, tmp_path / "rows", resumed_source)
    assert len(resumed) == 7
    result = solve(gram, y, 1e-3, rows=resumed, **options)
    # the same pivots in the same order: the 7 saved rows read back, only the other 13 evaluated
    assert (resumed.read, resumed_source.rows) == (7, 13)
    assert torch.equal(result.weights, reference.weights) and result.iterations == reference.iterations
    # another noise reuses every row (the preconditioner's rows are of K, not of K + σ²I)
    another_source = _Counting(KernelRows(kernel, x))
    capsys.readouterr()
    solve(gram, y, 1e-2, rows=_saved(kernel, x, tmp_path / "rows", another_source), progress=True, **options)
    assert another_source.rows == 0
    shown = capsys.readouterr().err  # the rows' bar, then CG's
    assert "preconditioner rows: 100%" in shown and "20/20" in shown and "CG passes over the Gram" in shown
    assert shown.rindex("preconditioner rows") < shown.index("CG passes")


def test_rows_of_another_kernel_or_inputs_are_refused_and_non_finite_rows_never_kept(tmp_path):
    kernel, x = _kernel(), _data(50)
    _saved(kernel, x, tmp_path / "rows")(torch.tensor([0, 1]))
    with pytest.raises(StoreMismatchError, match="kernel"):
        _saved(_kernel(weight_var=2.0), x, tmp_path / "rows")
    with pytest.raises(StoreMismatchError, match="x1"):
        _saved(kernel, x + 1, tmp_path / "rows")
    assert len(_saved(_kernel(weight_var=2.0), x, tmp_path / "rows", overwrite=True)) == 0

    def nan_rows(index):
        return torch.full((len(index), 50), float("nan"), dtype=F64)

    broken = _saved(kernel, x, tmp_path / "nan", nan_rows)
    with pytest.raises(FloatingPointError, match="nothing was saved"):
        broken(torch.tensor([3]))
    assert len(broken) == 0

    # a row that reads back non-finite (a damaged store) is evaluated again, not handed to the preconditioner
    saved = _saved(kernel, x, tmp_path / "good")
    saved(torch.tensor([4]))
    saved.rows_array[0] = float("nan")
    source = _Counting(KernelRows(kernel, x))
    reopened = _saved(kernel, x, tmp_path / "good", source)
    assert torch.equal(reopened(torch.tensor([4])), KernelRows(kernel, x)(torch.tensor([4])))
    assert source.rows == 1 and len(_saved(kernel, x, tmp_path / "good")) == 1


@pytest.mark.parametrize("kernel_rows", [True, False])
def test_fit_predict_saves_the_preconditioner_rows_beside_the_grams(tmp_path, monkeypatch, kernel_rows):
    kernel, x, xt = _kernel(), _data(200), _data(20, seed=1)
    y = torch.nn.functional.one_hot((x[:, 0] > 0).long(), 2).to(F64)
    options = dict(store=str(tmp_path / "s"), tile=64, client="inline", progress=False, method="cg",
                   preconditioner_rank=15, tolerance=1e-6, kernel_rows=kernel_rows)
    first = fit_predict(kernel, x, y, xt, noise=1e-2, **options)
    source = KernelRows(kernel, x) if kernel_rows else StoreRows(first.train)
    saved = SavedRows(source, tmp_path / "s" / f"rows-{'kernel' if kernel_rows else 'store'}.zarr")
    assert len(saved) == 15
    index = torch.tensor(sorted(saved.position)[:3])
    # rows from the store are its float32 values exactly; the kernel's are float64 (round-off of the batch)
    torch.testing.assert_close(saved(index), source(index).to(F64), rtol=0 if not kernel_rows else 1e-13,
                               atol=0 if not kernel_rows else 1e-14)

    def not_again(self, index):
        raise AssertionError("a saved row was fetched again")

    monkeypatch.setattr(KernelRows, "__call__", not_again)
    monkeypatch.setattr(StoreRows, "__call__", not_again)
    again = fit_predict(kernel, x, y, xt, noise=1e-2, **options)
    assert torch.equal(again.prediction.mean, first.prediction.mean)


def test_rows_read_from_the_store_belong_to_that_store(tmp_path):
    kernel, x = _kernel(), _data(90)
    a = compute_gram(kernel, x, store=str(tmp_path / "a"), tile=32, client="inline", progress=False)
    b = compute_gram(kernel, x, store=str(tmp_path / "b"), tile=30, client="inline", progress=False)
    rows = SavedRows(StoreRows(a), tmp_path / "rows")
    assert torch.equal(rows(torch.tensor([89, 2])), torch.from_numpy(a.to_numpy()[[89, 2]]).to(F64))
    with pytest.raises(StoreMismatchError, match="gram"):  # another tiling: another stored Gram
        SavedRows(StoreRows(b), tmp_path / "rows")

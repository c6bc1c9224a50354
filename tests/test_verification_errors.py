"""Bad input gets clear errors naming the layer; the CLI lists, runs, writes plots and sets exit codes."""

import json
import sys
from dataclasses import dataclass

import pytest
import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.arch.base import Signal
from verification import NoFiniteTwinError, verify
from verification.cli import main
from verification.registry_archs import register_architecture

torch.set_num_threads(1)


@dataclass(frozen=True)
class Mystery(A.Layer):
    """A layer nobody wrote a finite twin for."""

    def propagate(self, signal: Signal, path: str) -> Signal:
        return signal


def test_no_finite_twin_names_the_layer():
    with pytest.raises(NoFiniteTwinError, match=r"Mystery\(\)"):
        verify(A.Serial(A.Dense(), A.ReLU(), Mystery(), A.Dense()), networks=8, width=16)


def test_non_finite_outputs_name_the_layer():
    blowup = A.Activation(lambda x: torch.exp(200 * x), name="exp200")
    with pytest.raises(FloatingPointError, match=r"Activation\(exp200\)"):
        verify(A.Serial(A.Dense(), blowup, A.Dense()), networks=8, width=16)


def test_bad_budget_and_inputs():
    with pytest.raises(ValueError, match="networks"):
        verify(A.mlp(1), networks=1, width=16)
    with pytest.raises(ValueError, match="NaN"):
        verify(A.mlp(1), torch.full((3, 2), float("nan")), networks=8, width=16)


def test_register_architecture_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("relu_mlp3", A.mlp(3))


def test_cli_list(capsys):
    assert main(["list"]) == 0
    assert "relu_mlp3" in capsys.readouterr().out


def test_cli_run_writes_table_plots_and_json(tmp_path, capsys):
    code = main(["run", "relu_mlp1", "sign_mlp1_nobias", "--networks", "64", "--width", "512", "--out",
                 str(tmp_path), "--widths", "32,128", "--convergence-networks", "4", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "relu_mlp1" in out and "PASS" in out
    for name in ("relu_mlp1_entries.png", "relu_mlp1_convergence.png", "sign_mlp1_nobias_entries.png"):
        assert (tmp_path / name).stat().st_size > 1000
    records = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in records] == ["relu_mlp1", "sign_mlp1_nobias"] and records[0]["convergence"]


def test_cli_exit_codes(monkeypatch, capsys):
    assert main(["run", "no_such_arch"]) == 2
    v = sys.modules["verification.verify"]  # the module (the package attribute is the function)

    wrong = v.analytic_kernel
    monkeypatch.setattr(v, "analytic_kernel", lambda *a, **k: 1.1 * wrong(*a, **k))
    assert main(["run", "relu_mlp1", "--networks", "64", "--width", "512", "--no-progress"]) == 1
    assert "REJECT" in capsys.readouterr().out

"""Tensor-program builder: well-formed programs, and every ill-formed one rejected naming its instruction."""

import pytest
import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.tensor_programs import Program, ProgramError, TensorProgramKernel, evaluate_program
from nngp_gpytorch.tensor_programs.examples import (
    attention_program,
    gru_program,
    lstm_program,
    minimal_gated_unit_program,
    mlp_program,
    rnn_program,
    tied_mlp_program,
)


def small_program():
    p = Program("small")
    x = p.input("x", 3)
    u = p.input_matrix("U")
    g = p.matmul(u, x, name="g")
    h = p.nonlin(A.ReLU(), g, name="h")
    return p, x, u, g, h


def test_examples_are_complete():
    for prog in (mlp_program(2, 3), rnn_program(3, 2), gru_program(2, 2), lstm_program(2, 2),
                 attention_program(3, 2), minimal_gated_unit_program(2, 2), tied_mlp_program(3, 2)):
        prog.check_complete()
        assert prog.input_dim > 0 and prog.parameter_names
        assert prog.name in prog.describe()


def test_composition_records_base_gvars():
    p, x, u, g, h = small_program()
    g2 = p.matmul(p.matrix("W"), h, name="g2")
    k = p.nonlin(lambda a, b: a * b, h, g2, name="k")
    assert k.base == (g, g2) and not k.is_g and g2.is_g
    z = torch.randn(4, 5, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64)
    assert torch.equal(k.flat_fn(z, w), torch.relu(z) * w)


def test_use_before_definition_by_name():
    p, *_ = small_program()
    with pytest.raises(ProgramError, match=r"instruction \d+ \(matmul 'g9'\).*'h_later' is used before it is defined"):
        p.matmul("U", "h_later", name="g9")


def test_variable_from_another_program():
    p, x, u, g, h = small_program()
    q = Program("other")
    w = q.matrix("W")
    with pytest.raises(ProgramError, match=r"'h' belongs to another program \('small'\)"):
        q.matmul(w, h)
    with pytest.raises(ProgramError, match="belongs to another program"):
        p.matmul(w, h)


def test_lincomb_of_hvars_rejected():
    p, x, u, g, h = small_program()
    with pytest.raises(ProgramError, match=r"lincomb 'bad'.*'h' is an H-var"):
        p.lincomb(g, h, name="bad")
    with pytest.raises(ProgramError, match="input token"):
        p.lincomb(g, x, name="bad2")


def test_matrix_applied_to_wrong_size():
    p, x, u, g, h = small_program()
    w = p.matrix("W")
    with pytest.raises(ProgramError, match=r"matmul 'e1'.*'W' is n×n but 'x' is an input of dimension 3"):
        p.matmul(w, x, name="e1")
    with pytest.raises(ProgramError, match=r"input matrix 'U' is n×d .* 'h' is a width-n vector"):
        p.matmul(u, h, name="e2")
    y = p.input("y", 2)
    with pytest.raises(ProgramError, match=r"input matrix 'U' is n×3 but input 'y' has dimension 2"):
        p.matmul(u, y, name="e3")


def test_nonlin_wrong_shape_and_nonfinite_rejected_at_definition():
    p, x, u, g, h = small_program()
    with pytest.raises(ProgramError, match=r"nonlin 'r'.*must be elementwise"):
        p.nonlin(lambda a: a.sum(-1), g, name="r")
    with pytest.raises(ProgramError, match=r"nonlin 'e'.*non-finite"):
        p.nonlin(lambda a: torch.exp(a * 100), g, name="e")
    with pytest.raises(ProgramError, match=r"nonlin 'f'.*failed on probe inputs"):
        p.nonlin(lambda a, b: a * b, g, name="f")  # wrong arity
    with pytest.raises(ProgramError, match="torch callable"):
        p.nonlin(3.0, g)


def test_names_parameters_and_readout_errors():
    p, x, u, g, h = small_program()
    with pytest.raises(ProgramError, match="already defined"):
        p.nonlin(torch.tanh, g, name="h")
    with pytest.raises(ProgramError, match="initial value"):
        p.matrix("W", var="U", init=3.0)
    with pytest.raises(ProgramError, match=">= 0"):
        p.bias("b", init=-1.0)
    with pytest.raises(ProgramError, match="no readout"):
        p.check_complete()
    with pytest.raises(ProgramError, match="no readout"):
        TensorProgramKernel(p)
    p.readout(h)
    with pytest.raises(ProgramError, match="already has a readout"):
        p.readout(h)


def test_wrong_input_dimension_and_bad_inputs():
    p, x, u, g, h = small_program()
    p.readout(h)
    kernel = TensorProgramKernel(p).double()
    with pytest.raises(ValueError, match="has 4 features, the program's inputs have 3"):
        kernel(torch.randn(5, 4, dtype=torch.float64)).to_dense()
    with pytest.raises(ValueError, match="NaN"):
        kernel(torch.full((2, 3), float("nan"), dtype=torch.float64)).to_dense()
    with pytest.raises(TypeError, match="float32"):
        kernel(torch.randn(2, 3))
    with pytest.raises(ValueError, match="inputs have 4/4 features"):
        evaluate_program(p, torch.randn(2, 4), None, torch.ones(2))


def test_nonlin_that_breaks_on_real_values_is_named():
    p, x, u, g, h = small_program()

    def sometimes_bad(a):  # fine on the probes, non-finite far out in the tails
        return torch.where(a.abs() > 40, torch.full_like(a, float("inf")), a)

    k = p.nonlin(sometimes_bad, g, name="k")
    k2 = p.nonlin(lambda a, b: a * b, k, g, name="k2")
    p.readout(k2)
    kernel = TensorProgramKernel(p, variances={"U": 3000.0}).double()
    with pytest.raises(ProgramError, match=r"nonlin 'k2'.*non-finite"):
        kernel(torch.randn(3, 3, dtype=torch.float64)).to_dense()

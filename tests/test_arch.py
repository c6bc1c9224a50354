"""The architecture language: descriptions compose, compare by value and validate themselves."""

import pytest
import torch

from nngp_gpytorch import arch as A


def test_serial_composes_and_counts_variance_slots():
    net = A.Serial(A.Dense(), A.ReLU(), A.Dense(weight_var=2.0, bias_var=0.0), A.Erf(), A.Dense())
    assert net.validate().kind is A.SignalKind.GAUSSIAN
    assert net.variance_slots() == 2  # the middle layer's variances are fixed
    assert A.mlp(3).variance_slots() == 4


def test_descriptions_are_values():
    assert A.mlp(2, A.LeakyReLU(0.1)) == A.mlp(2, A.LeakyReLU(0.1))
    assert A.mlp(2, A.LeakyReLU(0.1)) != A.mlp(2, A.LeakyReLU(0.2))
    assert hash(A.ReLU()) == hash(A.ReLU())
    assert A.LeakyReLU(0.3).a == 0.3
    assert "LeakyReLU(a=0.3)" in A.Serial(A.Dense(), A.LeakyReLU(0.3), A.Dense()).describe()


def test_activation_first_is_rejected_naming_the_layer():
    with pytest.raises(A.ArchitectureError, match=r"Serial\[0\] ReLU\(\).*affine layer"):
        A.Serial(A.ReLU(), A.Dense()).validate()


def test_two_activations_in_a_row_compose():
    """A chain of activations is one Nonlin of the Gaussian before it (issue 18): accepted."""
    assert A.Serial(A.Dense(), A.ReLU(), A.Erf(), A.Dense()).validate().kind is A.SignalKind.GAUSSIAN
    with pytest.raises(A.ArchitectureError, match=r"Serial\[0\] Identity\(\).*raw input"):
        A.Serial(A.Identity(), A.Erf(), A.Dense()).validate()


def test_missing_readout_is_rejected():
    with pytest.raises(A.ArchitectureError, match="readout"):
        A.Serial(A.Dense(), A.Tanh()).validate()


def test_bad_layer_arguments():
    with pytest.raises(A.ArchitectureError, match="weight_var"):
        A.Dense(weight_var=0.0)
    with pytest.raises(A.ArchitectureError, match="bias_var"):
        A.Dense(bias_var=-1.0)
    with pytest.raises(A.ArchitectureError, match="forget the parentheses"):
        A.Serial(A.Dense(), A.ReLU, A.Dense())
    with pytest.raises(A.ArchitectureError):
        A.Serial()
    with pytest.raises(TypeError, match="callable"):
        A.Activation(3.0)
    with pytest.raises(A.ArchitectureError, match="depth"):
        A.mlp(-1)


def test_activation_wraps_callables():
    act = A.Activation(torch.cos, name="cos")
    x = torch.linspace(-2, 2, 5)
    assert torch.equal(act(x), torch.cos(x))
    assert act.describe() == "Activation(cos)"
    named = {cls().describe() if cls is not A.LeakyReLU else "LeakyReLU" for cls in A.NAMED_ACTIVATIONS}
    assert len(named) == len(A.NAMED_ACTIVATIONS)
    for cls in A.NAMED_ACTIVATIONS:
        y = cls()(x)
        assert y.shape == x.shape and torch.isfinite(y).all()


def test_skip_connection_branches_need_fresh_weights():
    """A branch with no fresh affine layer stays correlated with the skip path: a silent wrong kernel."""
    for branch in (A.LayerNorm(), A.Serial(A.SelfAttention(residual=False), A.LayerNorm())):
        with pytest.raises(A.ArchitectureError, match="no freshly drawn weights"):
            A.Serial(A.TokenDense(), A.Residual(branch), A.SequenceReadout(), A.Dense()).validate((5, 3))
    with pytest.raises(A.ArchitectureError, match="not elementwise"):
        A.Serial(A.Dense(), A.Parallel(A.LayerNorm(), A.Serial(A.LayerNorm())), A.Dense()).validate()
    with pytest.raises(A.ArchitectureError, match="independent non-Gaussian"):
        A.Serial(A.Dense(), A.Parallel(A.Serial(A.Dense(), A.ReLU()), A.Serial(A.Dense(), A.ReLU())),
                 A.Dense()).validate()
    # elementwise branches without weights and skips over post-activation features are accepted
    for net in (A.Serial(A.Dense(), A.Parallel(A.Identity(), A.Identity()), A.Dense()),
                A.Serial(A.Dense(), A.ReLU(), A.Residual(A.Dense()), A.Dense()),
                A.Serial(A.Dense(), A.Residual(A.ReLU()), A.Dense())):
        assert net.validate().kind is A.SignalKind.GAUSSIAN
    ok = A.Serial(A.TokenDense(), A.Residual(A.Serial(A.SelfAttention(residual=False), A.TokenDense())),
                  A.SequenceReadout(), A.Dense())
    assert ok.validate((5, 3)).kind is A.SignalKind.GAUSSIAN

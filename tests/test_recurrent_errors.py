"""Bad sequence inputs and bad recurrent descriptions raise clear errors."""

from __future__ import annotations

import pytest
import torch

from nngp_gpytorch import GRUKernel, RNNKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.sequences import mask_from_lengths, pack_sequences, split_sequences

DT = torch.float64


def _masked(mask_rows):
    """Inputs (n, T·2) with one token feature and the given masks."""
    mask = torch.tensor(mask_rows, dtype=DT)
    x = torch.randn(*mask.shape, 1, dtype=DT)
    return torch.cat([x, mask.unsqueeze(-1)], -1).reshape(mask.shape[0], -1)


@pytest.mark.parametrize("kernel_cls", [RNNKernel, GRUKernel])
def test_length_zero_is_rejected(kernel_cls):
    k = kernel_cls(input_shape=(3, 2), masked=True).to(DT)
    with pytest.raises(ValueError, match="length 0"):
        k(_masked([[1, 1, 0], [0, 0, 0]])).to_dense()


def test_non_prefix_mask_is_rejected():
    k = RNNKernel(input_shape=(3, 2), masked=True).to(DT)
    with pytest.raises(ValueError, match="not a prefix"):
        k(_masked([[1, 0, 1], [1, 1, 1]])).to_dense()


def test_non_binary_mask_is_rejected():
    with pytest.raises(ValueError, match="0 or 1"):
        split_sequences(_masked([[1, 0.5, 0]]).reshape(1, 3, 2), masked=True)


def test_length_longer_than_T_is_rejected():
    with pytest.raises(ValueError, match="> T = 3"):
        pack_sequences([torch.zeros(2, 1), torch.zeros(4, 1)], max_length=3)
    with pytest.raises(ValueError, match="exceeds T"):
        mask_from_lengths(torch.tensor([2, 5]), 3)
    with pytest.raises(ValueError, match=">= 1"):
        mask_from_lengths(torch.tensor([0, 2]), 3)
    with pytest.raises(ValueError, match="length 0"):
        pack_sequences([torch.zeros(0, 1)])


def test_input_shape_is_required_and_checked():
    with pytest.raises(A.ArchitectureError, match="input_shape=\\(T, D\\)"):
        A.RNN().validate(None)
    with pytest.raises(A.ArchitectureError, match="D >= 2"):
        A.RNN(masked=True).validate((4, 1))
    k = RNNKernel(input_shape=(3, 2)).to(DT)
    with pytest.raises(ValueError, match="expected 6"):
        k(torch.randn(2, 5, dtype=DT))


def test_recurrent_layer_must_read_raw_sequences():
    with pytest.raises(A.ArchitectureError, match="first layer"):
        A.Serial(A.Dense(), A.RNN()).validate((3, 2))


def test_bad_descriptions():
    with pytest.raises(A.ArchitectureError, match="readout"):
        A.RNN(readout="max")
    with pytest.raises(A.ArchitectureError, match="hidden_var"):
        A.GRU(hidden_var=0.0)
    with pytest.raises(A.ArchitectureError, match="bias_var"):
        A.LSTM(bias_var=-1.0)
    with pytest.raises(A.ArchitectureError, match="activation"):
        A.RNN(activation="tanh")


def test_gated_ntk_is_not_silently_wrong():
    from nngp_gpytorch.algebra import Hyperparameters, evaluate

    x = torch.randn(2, 6, dtype=DT)
    with pytest.raises(NotImplementedError, match="GRU NTK is GRUNTKKernel"):
        evaluate(A.GRU(), x, x, Hyperparameters.constant(), with_ntk=True, input_shape=(3, 2))
    with pytest.raises(NotImplementedError, match="LSTM NTK is LSTMNTKKernel"):
        evaluate(A.LSTM(), x, x, Hyperparameters.constant(), with_ntk=True, input_shape=(3, 2))

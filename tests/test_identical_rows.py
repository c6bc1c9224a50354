"""``identical_rows``: the exact row-equality mask every kernel uses to pin identical pairs to their variance."""

import pytest
import torch

from nngp_gpytorch.algebra import state
from nngp_gpytorch.algebra.state import identical_rows


def brute_force(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    return (x1[..., :, None, :] == x2[..., None, :, :]).all(-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_matches_elementwise_equality_with_batches_and_signed_zeros(dtype):
    g = torch.Generator().manual_seed(1)
    x1 = torch.randint(-1, 2, (3, 40, 3), generator=g).to(dtype)  # few distinct rows: many equal pairs
    x2 = torch.randint(-1, 2, (1, 30, 3), generator=g).to(dtype)
    x1[0, 0] = torch.tensor([-0.0, 0.0, -0.0], dtype=dtype)  # −0.0 == 0.0, though their bits differ
    x2[0, 0] = 0.0
    mask = identical_rows(x1, x2)
    assert mask.shape == (3, 40, 30)
    assert torch.equal(mask, brute_force(x1, x2))
    assert mask[0, 0, 0]
    assert torch.equal(identical_rows(x1[1], x1[1]), brute_force(x1[1], x1[1]))


def test_key_collisions_are_resolved_by_comparing_the_rows(monkeypatch):
    """Every row given the same key (the worst collision): the mask must still be exact."""
    monkeypatch.setattr(state, "_row_keys", lambda x, multipliers: torch.zeros(x.shape[:-1], dtype=torch.int64))
    g = torch.Generator().manual_seed(2)
    x1 = torch.randint(0, 2, (2, 25, 4), generator=g).double()
    x2 = torch.randint(0, 2, (2, 20, 4), generator=g).double()
    assert torch.equal(identical_rows(x1, x2), brute_force(x1, x2))


def test_gradients_pass_through_inputs_untouched():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    mask = identical_rows(x, x)
    assert torch.equal(mask, torch.eye(5, dtype=torch.bool))
    assert not mask.requires_grad

"""The per-input-set cache (``algebra/side_cache``) and the conv engine's use of it (``algebra/conv_stack_sides``).

A hit must be exact: every value through the cache equals, to the bit, a fresh evaluation with the cache off, after
new variances, an input changed in place, another readout, NNGP after NTK, another memory budget; nothing that
autograd must see is cached; the limits on entries and bytes hold.
"""

from __future__ import annotations

import pytest
import torch

import nngp_gpytorch.algebra.side_cache as side_cache
from nngp_gpytorch import NNGPKernel, NTKKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra.conv_stack_sides import SIDES
from nngp_gpytorch.algebra.side_cache import SideCache, content_key, footprint
from nngp_gpytorch.scale.operator import KernelRows

DT = torch.float64


def test_content_key_is_equal_for_equal_values_only():
    x = torch.randn(4, 3, dtype=DT)
    assert content_key(x, 1.0) == content_key(x.clone(), 1.0)
    assert content_key(x, 1.0) != content_key(x, 2.0)
    assert content_key(x, 1.0) != content_key(x.float(), 1.0)
    assert content_key(x, 1.0) != content_key(x.reshape(3, 4), 1.0)
    y = x.clone()
    y[2, 1] += 1e-12
    assert content_key(x, 1.0) != content_key(y, 1.0)
    assert content_key(x.t(), 1.0) == content_key(x.t().contiguous(), 1.0)  # values, not memory layout
    with pytest.raises(ValueError, match="CPU"):
        content_key(torch.empty(2, device="meta"))
    half = torch.randn(4, 3).bfloat16()  # no numpy dtype: hashed as raw bytes
    assert content_key(half) == content_key(half.clone()) != content_key(half.float())


def test_a_bfloat16_conv_kernel_still_evaluates():
    """Keys hash the inputs' raw bytes, so dtypes numpy lacks go through the cached engine as before."""
    kernel = NNGPKernel(_conv("gap"), weight_var=2.0, bias_var=0.1, dtype=torch.float32, input_shape=(1, 8))
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(4)).bfloat16()
    with torch.no_grad():
        k = kernel.to(torch.bfloat16)(x, x[:2]).to_dense()
    assert k.dtype == torch.bfloat16 and torch.isfinite(k).all()


def test_limits_on_entries_and_bytes(monkeypatch):
    cache = SideCache()
    calls = []

    def make(i):
        def compute():
            calls.append(i)
            return torch.zeros(1000, dtype=DT)  # 8,000 bytes
        return compute

    keys = [content_key(torch.tensor([float(i)]), "k") for i in range(5)]
    monkeypatch.setattr(side_cache, "MAX_ENTRIES", 3)
    for key, i in zip(keys, range(5), strict=True):
        cache.fetch(key, make(i))
    assert len(cache) == 3
    cache.fetch(keys[4], make(4))  # the most recent: a hit
    cache.fetch(keys[0], make(0))  # evicted: computed again
    assert calls == [0, 1, 2, 3, 4, 0]
    monkeypatch.setattr(side_cache, "MAX_BYTES", 20_000)  # two entries of 8,000 bytes and their keys
    cache.fetch(keys[1], make(1))
    assert len(cache) == 2 and cache.nbytes() <= 20_000
    monkeypatch.setattr(side_cache, "MAX_BYTES", 1_000)  # an entry above the limit alone is not kept
    cache.fetch(keys[2], make(2))
    assert len(cache) == 0
    monkeypatch.setattr(side_cache, "MAX_ENTRIES", 0)  # off: always computed, nothing kept
    cache.fetch(keys[3], make(3))
    cache.fetch(keys[3], make(3))
    assert calls[-2:] == [3, 3] and len(cache) == 0


def test_footprint_counts_shared_arrays_once():
    a = torch.zeros(10, dtype=DT)
    assert footprint([a, a, (a, a.numpy())]) == 80 + 80  # the numpy view is another object over the same bytes


def _conv(readout):
    return A.cnn(2, kernel_size=3, readout=readout)


@pytest.mark.parametrize("readout", ["flatten", "gap"])
@pytest.mark.parametrize("kernel_class", [NNGPKernel, NTKKernel])
def test_conv_rows_through_the_cache_equal_fresh_rows(readout, kernel_class, monkeypatch):
    """A preconditioner's rows, cache on and off, to the bit; new variances and an input changed in place miss."""
    x = torch.randn(30, 12, dtype=DT, generator=torch.Generator().manual_seed(0))
    kernel = kernel_class(_conv(readout), weight_var=2.0, bias_var=0.1, dtype=DT, input_shape=(1, 12))
    rows = KernelRows(kernel, x)
    SIDES.clear()

    def both(index):
        cached = rows(index)
        monkeypatch.setattr(side_cache, "MAX_ENTRIES", 0)
        fresh = rows(index)
        monkeypatch.setattr(side_cache, "MAX_ENTRIES", 32)
        assert torch.equal(cached, fresh)
        return cached

    first = [both(torch.tensor([i])) for i in (0, 1, 0)]
    assert len(SIDES) >= 1  # the 30-input side is kept between rows
    assert torch.equal(first[0], first[2])
    with torch.no_grad():
        kernel.weight_var = 1.5
    assert not torch.equal(both(torch.tensor([0])), first[0])
    x[7, 3] += 1.0
    again = both(torch.tensor([0]))
    assert not torch.equal(again[..., 7], first[0][..., 7])


def test_conv_budget_and_readout_are_part_of_the_key(monkeypatch):
    """The same inputs under another memory budget or another readout are other entries (their work differs)."""
    x = torch.randn(8, 10, dtype=DT, generator=torch.Generator().manual_seed(1))
    SIDES.clear()
    values = []
    for readout, budget in (("gap", None), ("gap", 20_000), ("flatten", None)):
        kernel = NNGPKernel(_conv(readout), weight_var=2.0, bias_var=0.1, dtype=DT, input_shape=(1, 10),
                            max_memory=budget)
        with torch.no_grad():
            values.append(kernel(x, x[:3]).to_dense())
    assert len(SIDES) == 6  # two input sets under three keys
    torch.testing.assert_close(values[0], values[1], rtol=1e-12, atol=0)


def test_a_pooled_runs_readout_is_part_of_the_key():
    """With average pools both readouts use the full layout and the same groups; their ``K(x, x)`` differ (the
    mean of all position pairs vs of the diagonal), so a side cached by one must not serve the other."""
    x = torch.randn(6, 12, dtype=DT, generator=torch.Generator().manual_seed(3))
    SIDES.clear()
    values = {}
    for readout in ("gap", "flatten", "gap"):
        pooled = A.Serial(A.Conv(kernel_size=3, padding="same"), A.ReLU(), A.AvgPool(2), A.Conv(kernel_size=3),
                          A.ReLU(), A.GlobalAvgPool() if readout == "gap" else A.Flatten(), A.Dense(), A.ReLU(),
                          A.Dense())  # a dual after the readout reads K(x, x)
        kernel = NNGPKernel(pooled, weight_var=2.0, bias_var=0.1, dtype=DT, input_shape=(1, 12))
        with torch.no_grad():
            cached = kernel(x[:2], x).to_dense()
        side_cache.MAX_ENTRIES, entries = 0, side_cache.MAX_ENTRIES
        try:
            with torch.no_grad():
                fresh = kernel(x[:2], x).to_dense()
        finally:
            side_cache.MAX_ENTRIES = entries
        assert torch.equal(cached, fresh)
        values.setdefault(readout, cached)
    assert not torch.equal(values["gap"], values["flatten"])


def test_nothing_autograd_must_see_is_cached():
    x = torch.randn(6, 10, dtype=DT, generator=torch.Generator().manual_seed(2))
    kernel = NNGPKernel(_conv("gap"), weight_var=2.0, bias_var=0.1, dtype=DT, input_shape=(1, 10))
    SIDES.clear()
    k = kernel(x, x[:2]).to_dense()
    assert k.requires_grad and len(SIDES) == 0
    k.sum().backward()
    assert kernel.raw_weight_var.grad is not None

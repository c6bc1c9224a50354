"""One input set's per-set work for the fast positional engine (:mod:`.conv_stack`), kept between calls.

Per input set the engine needs the pre-activation variances ``v_l`` of every group (the same-position chain, or for a
run with pools each input's full self covariance), the variances' roots (for the torch path and for the compiled
loops), the chain's last same-position ``(K, Θ)`` and the readout's ``K(x, x)``, ``Θ(x, x)``. That is ``O(n·P)``
(``O(n·P²)`` with a GAP readout or pools) per call against the pairs' ``O(n1·n2·…)``, except where one side is tiny
and the other large: a preconditioner's kernel row ``K(x_i, X)`` (:class:`nngp_gpytorch.scale.operator.KernelRows`)
paid ~60 % of its time for ``X``'s work. :data:`SIDES` keeps it, keyed by the inputs' values and everything the work
depends on (:mod:`.side_cache`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..arch import ReLU
from .conv_stack_compiled import CompiledRun
from .side_cache import SideCache, content_key

#: input sets' per-set work between calls (:mod:`.side_cache`: content-keyed, bounded by its settings)
SIDES = SideCache()

Roots = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Side:
    """One input set's data for the engine: inputs ``(n, P, C)`` (full layout) or ``(n, C, P)`` (Flatten), and per
    group the pre-activation variances ``v`` ``(n, P_l)``; ``fast[l]``: a ReLU group whose ``v`` clears ``tiny``,
    whose :attr:`roots` ``√v``, ``−1/√v``, ``1/√v`` the torch path uses. ``chain``: the same-position chain's last
    ``(K, Θ)`` ``(n, P_L)`` (None with pools; Θ None without the NTK). Work done on first use and kept with the side:
    :attr:`roots`, :attr:`compiled_roots` (the compiled loops' ``√v``, ``1/√v``, ``1/√(1 + 2v)``, concatenated
    over groups) and ``own``, the readout's ``(K(x, x), Θ(x, x))`` ``(n,)`` (set by the engine)."""

    x: torch.Tensor
    pre: list[torch.Tensor]
    fast: list[bool]
    chain: tuple[torch.Tensor, torch.Tensor | None] | None = None
    given_roots: list[Roots | None] | None = None
    own: tuple[torch.Tensor, torch.Tensor | None] | None = None
    loop_roots: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def roots(self) -> list[Roots | None]:
        def roots_of(v: torch.Tensor) -> Roots:
            q = v.clamp_min(0.0).sqrt()
            return q, -1.0 / q, 1.0 / q

        if self.given_roots is None:
            self.given_roots = [roots_of(v) if fast else None for v, fast in zip(self.pre, self.fast, strict=True)]
        return self.given_roots

    @property
    def compiled_roots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.loop_roots is None:
            self.loop_roots = CompiledRun.roots_of(self.pre)
        return self.loop_roots

    def take(self, index: torch.Tensor) -> Side:
        """The side of the inputs ``index`` (torch path chunks)."""
        return Side(self.x[index], [v[index] for v in self.pre], self.fast,
                    given_roots=[None if r is None else tuple(a[index] for a in r) for r in self.roots])


def make_side(x: torch.Tensor, pre: list[torch.Tensor], groups: list, full: bool,
              chain: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> Side:
    """The :class:`Side` of inputs ``x`` ``(n, P, C)`` with variances ``pre`` (transposed to ``(n, C, P)`` for a
    Flatten run of convolutions alone)."""
    # a zero-norm input (v below tiny) goes through the dual's own conventions instead
    fast = [type(g.activation) is ReLU and bool(v.min() > torch.finfo(v.dtype).tiny)
            for g, v in zip(groups, pre, strict=True)]
    return Side(x if full else x.transpose(-1, -2).contiguous(), pre, fast, chain)


def groups_key(groups: list) -> tuple:
    """What a side's work depends on besides its inputs: each group's geometry, variances and activation."""
    return tuple((g.kernel, g.stride, g.dilation, g.padding, g.positions_in, g.pool, float(g.weight_var),
                  float(g.bias_var), None if g.dual is None else g.activation) for g in groups)


def cached_side(raw: torch.Tensor, key: tuple | None, compute: Callable[[], Side]) -> Side:
    """The side of the raw inputs ``raw`` from :data:`SIDES` under ``content_key(raw, *key)``, or ``compute()``;
    ``key`` None: not cached (gradients, quadrature duals whose degree depends on the other side)."""
    if key is None:
        return compute()
    return SIDES.fetch(content_key(raw, *key), compute)


__all__ = ["SIDES", "Side", "cached_side", "groups_key", "make_side"]

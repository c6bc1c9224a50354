"""The dual-activation interface.

For a centred Gaussian pair ``(u, v) ~ N(0, [[k11, k12], [k12, k22]])`` a dual gives

* ``nngp(k11, k22, k12) = E[φ(u) φ(v)]``   (the NNGP layer map, Lee et al. 2018 eq. 5),
* ``ntk(k11, k22, k12) = E[φ'(u) φ'(v)]``  (the derivative dual of the NTK recursion, Jacot et al. 2018),

and their diagonal forms ``nngp_diag(k) = E[φ(u)²]``, ``ntk_diag(k) = E[φ'(u)²]`` with ``u ~ N(0, k)``.
All arguments are tensors of any broadcastable shapes; results have the broadcast shape.
``identical`` (bool, broadcastable) marks pairs of identical inputs so that ``c = 1`` exactly.
"""

from __future__ import annotations

import torch


class Dual:
    """Base class: one activation's dual and derivative dual."""

    #: True when ``V(λK) = λ^α V(K)`` (ReLU-like), False otherwise; informational.
    homogeneous: bool = False

    def nngp(
        self, k11: torch.Tensor, k22: torch.Tensor, k12: torch.Tensor, identical: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def nngp_diag(self, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ntk(
        self, k11: torch.Tensor, k22: torch.Tensor, k12: torch.Tensor, identical: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def ntk_diag(self, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def nngp_and_ntk(
        self, k11: torch.Tensor, k22: torch.Tensor, k12: torch.Tensor, identical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(nngp(...), ntk(...))``; duals whose two expectations share work override this."""
        return self.nngp(k11, k22, k12, identical), self.ntk(k11, k22, k12, identical)

    def propagate_pair(
        self, k11: torch.Tensor, k22: torch.Tensor, k12: torch.Tensor, t12: torch.Tensor,
        identical: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The activation's map of the pair (K, Θ): ``(V_φ(K), V_φ'(K) ⊙ Θ)`` (Jacot et al. 2018), shapes as
        :meth:`nngp` with ``t12`` broadcastable to ``k12``. A dual with a fused kernel for the whole map (the
        ReLU's single pass) overrides this; that is the only place such a fast path is chosen."""
        k, derivative = self.nngp_and_ntk(k11, k22, k12, identical)
        return k, derivative * t12

"""Composed nonlinearities and elementwise sums: one Nonlin of one Gaussian pre-activation.

``Serial(Dense(), ReLU(), Erf(), Dense())`` applies ``φ = erf∘relu`` to the Gaussian output of the first Dense:
in the tensor-program reading (Yang 2019) this is a single Nonlin of one G-var, so its kernel is the bivariate
expectation ``V_φ(K) = E[φ(u)φ(v)]``, ``(u, v) ~ N(0, K)``, and its NTK factor is ``V_φ'(K)`` with the chain rule
``φ' = erf'(relu(·))·relu'(·)``. :func:`simplify_chain` first reduces the chain to a closed form where the
composite has one (``ReLU∘ReLU = ReLU``, ``Abs∘ReLU = ReLU``, ``ReLU∘Abs = Abs``, ``Step∘ReLU = Step``,
``Sign∘ReLU = Step``, ``Identity`` dropped); otherwise the dual of :class:`~nngp_gpytorch.arch.Composite` is
computed by Gauss–Hermite quadrature (:class:`nngp_gpytorch.duals.QuadratureDual`) with the derivative by autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..arch import Abs, Activation, Composite, Identity, ReLU, Sign, Step, SumOf


def _reduce_pair(inner: Activation, outer: Activation) -> Activation | None:
    """``outer∘inner`` as one named activation when the composite has a closed form, else ``None``."""
    ti, to = type(inner), type(outer)
    if to is Identity:
        return inner
    if ti is Identity:
        return outer
    if ti is ReLU and to in (ReLU, Abs):
        return ReLU()  # relu(relu(x)) = |relu(x)| = relu(x)
    if ti is Abs and to in (ReLU, Abs):
        return Abs()  # relu(|x|) = ||x|| = |x|
    if ti is ReLU and to in (Step, Sign):
        return Step()  # 1[relu(x) > 0] = sign(relu(x)) = 1[x > 0]
    return None


def simplify_chain(chain: tuple[Activation, ...]) -> Activation:
    """The activation ``chain[-1]∘…∘chain[0]``: a named one where the chain reduces to it, else a
    :class:`~nngp_gpytorch.arch.Composite` of the reduced chain."""
    reduced: list[Activation] = []
    for act in chain:
        parts = act.chain if isinstance(act, Composite) else (act,)
        for part in parts:
            while reduced:
                merged = _reduce_pair(reduced[-1], part)
                if merged is None:
                    break
                reduced.pop()
                part = merged
            reduced.append(part)
    if not reduced:
        return Identity()
    return reduced[0] if len(reduced) == 1 else Composite(*reduced)


def compose(inner: Activation, outer: Activation) -> Activation:
    """``outer∘inner`` simplified (:func:`simplify_chain`)."""
    return simplify_chain((inner, outer))


def elementwise_function(layer) -> Activation:
    """The activation an elementwise branch (an ``Activation`` or a ``Serial`` of them) computes."""
    from ..arch import Serial

    if isinstance(layer, Activation):
        return layer
    if isinstance(layer, Serial):
        return simplify_chain(tuple(elementwise_function(sub) for sub in layer.layers))
    raise TypeError(f"{layer.describe()} is not elementwise")


def sum_of(terms: list[Activation]) -> Activation:
    """``Σ_b φ_b`` as one activation (``Identity + Identity`` stays a quadrature-free linear map: the dual of
    ``SumOf(Identity(), Identity())`` is ``4K`` computed by quadrature, exact for polynomials of degree ≤ 2·deg−1)."""
    return terms[0] if len(terms) == 1 else SumOf(*terms)


@dataclass(frozen=True, init=False)
class MeanCarrier(Activation):
    """Marks the features of a sum ``φ(u) + (zero-mean independent Gaussians)`` for a later layer norm: its
    ``__call__`` is ``φ``, so the channel mean ``E[φ(u)]`` of the sum is that of ``φ``. Not an activation of the
    sum: the activation rule refuses to compose through it."""

    inner: Activation = field(default=None)

    def __init__(self, inner: Activation):
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "fn", None)
        object.__setattr__(self, "name", None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

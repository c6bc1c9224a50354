"""Skip connections and parallel branches (summed).

A sum of two branches is Gaussian in the limit only if each summand is the output of an affine layer
(pre-activations): summing post-activation features is not a Gaussian process, and is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import ArchitectureError, Layer, Signal, SignalKind, has_fresh_weights


def _require_summable(layer: Layer, signal: Signal, what: str, path: str) -> None:
    if signal.kind is not SignalKind.GAUSSIAN:
        kind = "the raw input" if signal.kind is SignalKind.INPUT else "non-Gaussian post-activation features"
        raise ArchitectureError(
            f"{path}: {layer.describe()} sums {what}, which is {kind}; a sum is a Gaussian process only when every "
            "summand is the output of an affine layer (Dense/Conv) — end the branch with one, or put one before"
        )


@dataclass(frozen=True, init=False)
class Residual(Layer):
    """Skip connection ``h' = h + branch(h)``.

    Kernel (reference/kernels.md, "Structural rules"): the branch's weights are independent of ``h``, so
    ``K' = K + K_branch(K)`` and ``Θ' = Θ + Θ_branch`` (e.g. ``branch = Serial(φ, Dense())`` gives
    ``K' = K + σw²·V_φ(K) + σb²``). Both ``h`` and the branch output must be Gaussian (outputs of affine
    layers), and the branch must keep the spatial shape.
    """

    branch: Layer = field(default=None)

    def __init__(self, branch: Layer):
        if not isinstance(branch, Layer):
            raise ArchitectureError(f"Residual(branch) needs a layer description, got {branch!r}")
        object.__setattr__(self, "branch", branch)

    def children(self) -> tuple[Layer, ...]:
        return (self.branch,)

    def variance_slots(self) -> int:
        return self.branch.variance_slots()

    def propagate(self, signal: Signal, path: str) -> Signal:
        _require_summable(self, signal, "its input (the skip path)", path)
        if not has_fresh_weights(self.branch):
            raise ArchitectureError(
                f"{path}: the branch {self.branch.describe()} of {self.describe()} applies no freshly drawn weights "
                "(no Dense/Conv/TokenDense/GraphConv), so its output stays correlated with the skip path and the "
                "sum is not a sum of independent Gaussians; put an affine layer in the branch"
                " (for attention use SelfAttention(residual=True))"
            )
        out = self.branch.propagate(signal, f"{path} > branch {self.branch.describe()}")
        _require_summable(self, out, "the branch output", path)
        if out.spatial != signal.spatial:
            raise ArchitectureError(f"{path}: {self.describe()} adds a branch of spatial shape {out.spatial} to "
                                    f"its input of shape {signal.spatial}")
        return out

    def describe(self) -> str:
        return f"Residual({self.branch.describe()})"


@dataclass(frozen=True, init=False)
class Parallel(Layer):
    """Sum of independent branches applied to the same input: ``h' = Σ_b branch_b(h)``.

    ``K' = Σ_b K_b``, ``Θ' = Σ_b Θ_b`` (independent weights). Every branch must end in an affine layer, and
    all must produce the same spatial shape. ``Parallel(Identity-free branches)`` with one branch equals
    that branch.
    """

    branches: tuple[Layer, ...] = field(default=())

    def __init__(self, *branches: Layer):
        if len(branches) == 1 and isinstance(branches[0], list | tuple):
            branches = tuple(branches[0])
        if not branches:
            raise ArchitectureError("Parallel() needs at least one branch")
        for i, b in enumerate(branches):
            if not isinstance(b, Layer):
                raise ArchitectureError(f"Parallel branch {i} is {b!r}, not a layer description")
        object.__setattr__(self, "branches", tuple(branches))

    def children(self) -> tuple[Layer, ...]:
        return self.branches

    def variance_slots(self) -> int:
        return sum(b.variance_slots() for b in self.branches)

    def propagate(self, signal: Signal, path: str) -> Signal:
        without = [i for i, b in enumerate(self.branches) if not has_fresh_weights(b)]
        if len(without) > 1:
            raise ArchitectureError(
                f"{path}: branches {without} of {self.describe()} apply no freshly drawn weights, so they are "
                "correlated with each other through the shared input; at most one branch may lack an affine layer"
            )
        outs = []
        for i, b in enumerate(self.branches):
            out = b.propagate(signal, f"{path} > branch {i} {b.describe()}")
            _require_summable(self, out, f"branch {i}'s output", path)
            outs.append(out)
        if len({o.spatial for o in outs}) > 1:
            raise ArchitectureError(f"{path}: {self.describe()} sums branches of different spatial shapes "
                                    f"{[o.spatial for o in outs]}")
        return outs[0]

    def describe(self) -> str:
        return f"Parallel({', '.join(b.describe() for b in self.branches)})"

"""Skip connections and parallel branches (summed).

A sum of branches is read as in a tensor program (Yang 2019): branches with fresh weights are independent,
so covariances add; elementwise branches without weights (``Identity()``, ``ReLU()``) are one Nonlin of the
shared Gaussian; an affine summand (zero mean) may be added to non-Gaussian post-activation features (the
ResNet skip over ``φ(h)``), since what follows (Dense, pooling, layer norm) needs only second moments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .base import ArchitectureError, Layer, Serial, Signal, SignalKind, has_fresh_weights


def is_elementwise(layer: Layer) -> bool:
    """Whether ``layer`` is an elementwise function of its input (activations, possibly chained in a
    ``Serial``): no fresh weights, so it stays correlated with its input, but the correlation is that of one
    Nonlin of the same Gaussian (a bivariate expectation), which the kernel computes exactly."""
    from .activations import Activation

    if isinstance(layer, Activation):
        return True
    if isinstance(layer, Serial):
        return all(is_elementwise(sub) for sub in layer.layers)
    return False


def sum_signal(layer: Layer, summands: list[tuple[str, Signal, bool]], path: str) -> Signal:
    """The signal of a sum of branch outputs ``(what, signal, independent)``.

    Rules (the tensor-program reading, Yang 2019): a sum of Gaussians with fresh independent weights is Gaussian
    with additive covariance; elementwise branches of the same input are one Nonlin of it; a summand that is an
    affine layer's output (zero mean, independent of everything else given its input) adds its covariance to
    anything. What cannot be read off second moments alone is a sum of two independent *non-Gaussian* summands
    (their cross term is the product of their means): that is refused here; written as a tensor program
    (:class:`nngp_gpytorch.tensor_programs.Program`, whose kernel tracks the means) it has a kernel.
    """
    for what, signal, _ in summands:
        if signal.kind is SignalKind.INPUT:
            raise ArchitectureError(f"{path}: {layer.describe()} sums {what}, which is the raw input; put an affine "
                                    "layer (Dense/Conv) before it")
    if len({s.spatial for _, s, _ in summands}) > 1:
        raise ArchitectureError(f"{path}: {layer.describe()} sums branches of different spatial shapes "
                                f"{[s.spatial for _, s, _ in summands]}")
    non_gaussian = [what for what, s, _ in summands if s.kind is not SignalKind.GAUSSIAN]
    if len(non_gaussian) > 1:
        raise ArchitectureError(
            f"{path}: {layer.describe()} sums {' and '.join(non_gaussian)}, independent non-Gaussian post-activation "
            "features whose cross covariance is the product of their means; the covariance algebra needs at most "
            "one non-Gaussian summand (end the other branches with an affine layer), or write the network as a "
            "tensor program (nngp_gpytorch.tensor_programs.Program; docs/tensor_programs.md)"
        )
    kind = SignalKind.FEATURES if non_gaussian else SignalKind.GAUSSIAN
    out = summands[-1][1].with_kind(kind)
    if non_gaussian and len(summands) > 1:  # φ(g) + an independent Gaussian: no longer a function of g alone
        out = replace(out, not_pointwise=out.not_pointwise or layer.describe())
    return out


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
        if signal.kind is SignalKind.INPUT:
            raise ArchitectureError(f"{path}: {self.describe()} sums its input (the skip path), which is the raw "
                                    "input; put an affine layer (Dense/Conv) before the residual block")
        fresh = has_fresh_weights(self.branch)
        if not fresh and not is_elementwise(self.branch):
            raise ArchitectureError(
                f"{path}: the branch {self.branch.describe()} of {self.describe()} applies no freshly drawn weights "
                "(no Dense/Conv/TokenDense/GraphConv) and is not elementwise, so its output stays correlated with "
                "the skip path in a way the covariance algebra does not track; put an affine layer in the branch"
                " (for attention use SelfAttention(residual=True))"
            )
        out = self.branch.propagate(signal, f"{path} > branch {self.branch.describe()}")
        if out.spatial != signal.spatial:
            raise ArchitectureError(f"{path}: {self.describe()} adds a branch of spatial shape {out.spatial} to "
                                    f"its input of shape {signal.spatial}")
        if not fresh:  # h + φ(h): one elementwise function of the skip path's Gaussian
            return out.with_kind(SignalKind.FEATURES)
        return sum_signal(self, [("its input (the skip path)", signal, True), ("the branch output", out, True)], path)

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
        summands, elementwise = [], []
        for i, b in enumerate(self.branches):
            fresh = has_fresh_weights(b)
            if not fresh and not is_elementwise(b):
                raise ArchitectureError(
                    f"{path}: branch {i} {b.describe()} of {self.describe()} applies no freshly drawn weights and is "
                    "not elementwise, so it is correlated with the other branches through the shared input in a way "
                    "the covariance algebra does not track; put an affine layer in it"
                )
            out = b.propagate(signal, f"{path} > branch {i} {b.describe()}")
            if fresh:
                summands.append((f"branch {i}'s output", out, True))
            else:
                elementwise.append((i, out))
        if elementwise:  # Σ φ_b(h) over the branches without weights: one elementwise function of h
            if signal.kind is SignalKind.INPUT:
                raise ArchitectureError(f"{path}: branch {elementwise[0][0]} of {self.describe()} is elementwise "
                                        "on the raw input; put an affine layer before it")
            names = ", ".join(str(i) for i, _ in elementwise)
            summands.append((f"the elementwise branches ({names})", elementwise[0][1].with_kind(SignalKind.FEATURES),
                             False))
        return sum_signal(self, summands, path)

    def describe(self) -> str:
        return f"Parallel({', '.join(b.describe() for b in self.branches)})"

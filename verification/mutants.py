"""Planted bugs: mutant analytic kernels that the verification must reject (power, not assumed).

Each :class:`Mutant` pairs a correct finite architecture (the networks are sampled from it) with a
wrong analytic kernel computed by the real covariance algebra under a perturbed
:class:`~nngp_gpytorch.algebra.RuleContext` (wrong variances, a buggy dual, a dropped bias or readout
scale). ``verify(arch, ..., analytic=mutant.kernel)`` must then reject. The suite follows
reference/verification.md: σw² × 1.03 (all layers, and the readout only), σb² + 0.05, the ReLU dual
with sin/cos swapped, erf(√π x/2) substituted for tanh, a dropped bias, a missing readout scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, RuleContext, input_state, propagate
from nngp_gpytorch.duals import Dual, ErfDual
from nngp_gpytorch.duals.safe_math import correlation, safe_arccos, safe_arcsin

VarianceHook = Callable[[int, int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class MutantContext(RuleContext):
    """A :class:`RuleContext` with planted bugs.

    ``dual_overrides`` maps an activation type to a (wrong) dual; ``variance_hook(index, count, w, b)``
    may alter the (σw², σb²) handed to the ``index``-th of ``count`` affine layers.
    """

    dual_overrides: dict[type, Dual] = field(default_factory=dict)
    variance_hook: VarianceHook | None = None
    affine_count: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._affine_index = 0

    def variances(self, layer, weight_var=None, bias_var=None):
        w, b = super().variances(layer, weight_var, bias_var)
        if self.variance_hook is not None:
            w, b = self.variance_hook(self._affine_index, self.affine_count, w, b)
        self._affine_index += 1
        return w, b

    def dual(self, activation) -> Dual:
        override = self.dual_overrides.get(type(activation))
        return override if override is not None else super().dual(activation)


def mutant_kernel(architecture: A.Layer, inputs: torch.Tensor, hyper: Hyperparameters,
                  dual_overrides: dict[type, Dual] | None = None,
                  variance_hook: VarianceHook | None = None) -> torch.Tensor:
    """``(k, k)`` NNGP kernel of ``architecture`` on ``inputs`` ``(k, d)`` under the planted bugs."""
    count = sum(isinstance(layer, A.Dense) for layer in architecture.walk())
    ctx = MutantContext(hyper=hyper, dual_overrides=dual_overrides or {}, variance_hook=variance_hook,
                        affine_count=count)
    x = inputs.to(torch.float64)
    return propagate(architecture, input_state(x, x, False, False), ctx).k12


class SwappedReLUDual(Dual):
    """ReLU dual with sin and cos swapped in the arc-cosine kernel: ``s/(2π)·(cos θ + (π − θ)·sin θ)``
    instead of ``s/(2π)·(sin θ + (π − θ)·cos θ)`` (the diagonal ``k/2`` is left correct)."""

    def nngp(self, k11, k22, k12, identical=None):
        c, s = correlation(k11, k22, k12, identical)
        theta = safe_arccos(c)
        return s / (2 * math.pi) * (torch.cos(theta) + (math.pi - theta) * torch.sin(theta))

    def nngp_diag(self, k):
        return k / 2


class ScaledErfDual(Dual):
    """Dual of ``erf(a·x)``: ``(2/π)·arcsin(2a²k12/√((1+2a²k11)(1+2a²k22)))``. With ``a = √π/2`` this is
    the classic erf substitute for tanh (same slope at 0), *not* tanh's dual."""

    def __init__(self, a: float = math.sqrt(math.pi) / 2):
        self.a2 = a * a
        self._erf = ErfDual()

    def nngp(self, k11, k22, k12, identical=None):
        c, s = correlation(k11, k22, k12, identical)
        return (2.0 / math.pi) * safe_arcsin(2 * self.a2 * c * s / torch.sqrt((1 + 2 * self.a2 * k11)
                                                                              * (1 + 2 * self.a2 * k22)))

    def nngp_diag(self, k):
        return self._erf.nngp_diag(self.a2 * k)


def _scale_weights(factor: float, only_last: bool = False) -> VarianceHook:
    def hook(i, n, w, b):
        return (w * factor, b) if (not only_last or i == n - 1) else (w, b)
    return hook


def _add_bias(delta: float) -> VarianceHook:
    return lambda i, n, w, b: (w, b + delta)


def _drop_bias(layer_index: int) -> VarianceHook:
    return lambda i, n, w, b: (w, torch.zeros_like(b)) if i == layer_index else (w, b)


def _no_readout_scale(i, n, w, b):
    return (torch.ones_like(w), b) if i == n - 1 else (w, b)


@dataclass(frozen=True)
class Mutant:
    """A planted bug: sample ``architecture`` with ``(weight_var, bias_var)``, test against ``kernel``."""

    name: str
    description: str
    architecture: A.Layer
    weight_var: float
    bias_var: float
    dual_overrides: dict = field(default_factory=dict, hash=False)
    variance_hook: VarianceHook | None = None

    def kernel(self, architecture: A.Layer, inputs: torch.Tensor, hyper: Hyperparameters) -> torch.Tensor:
        """The mutant analytic kernel (signature of ``verify(..., analytic=...)``)."""
        return mutant_kernel(architecture, inputs, hyper, self.dual_overrides, self.variance_hook)


RELU3 = A.mlp(3, A.ReLU())
TANH2 = A.mlp(2, A.Tanh())

MUTANTS: dict[str, Mutant] = {m.name: m for m in [
    Mutant("weight_var_x1.03", "σw² × 1.03 in every layer", RELU3, 2.0, 0.1,
           variance_hook=_scale_weights(1.03)),
    Mutant("readout_weight_var_x1.03", "σw² × 1.03 in the readout only", RELU3, 2.0, 0.1,
           variance_hook=_scale_weights(1.03, only_last=True)),
    Mutant("bias_var_plus_0.05", "σb² + 0.05 in every layer", RELU3, 2.0, 0.1, variance_hook=_add_bias(0.05)),
    Mutant("relu_dual_sin_cos_swapped", "ReLU arc-cosine dual with sin θ and cos θ swapped", RELU3, 2.0, 0.1,
           dual_overrides={A.ReLU: SwappedReLUDual()}),
    Mutant("erf_for_tanh", "tanh dual replaced by the dual of erf(√π x/2)", TANH2, 1.6, 0.1,
           dual_overrides={A.Tanh: ScaledErfDual()}),
    Mutant("dropped_bias", "the first layer's bias dropped from the kernel", RELU3, 2.0, 0.1,
           variance_hook=_drop_bias(0)),
    Mutant("dropped_hidden_bias", "the second layer's bias dropped from the kernel", A.mlp(2, A.Erf()), 1.6, 0.1,
           variance_hook=_drop_bias(1)),
    Mutant("missing_readout_scale", "readout K' = K + σb² (σw² forgotten)", RELU3, 2.0, 0.1,
           variance_hook=_no_readout_scale),
]}

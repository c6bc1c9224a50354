"""Recurrent layer descriptions: simple RNN, GRU (Yang 2019's erf-gated variant) and LSTM.

Each description is ONE layer node holding its cell *and* its linear readout, reading raw sequences
flattened to ``(n, T·D)`` with the kernel's ``input_shape=(T, D)`` (see :mod:`nngp_gpytorch.sequences`
for the variable-length convention, ``masked=True``). Weights are shared over time steps.

Variances (standard parameterization, hidden width ``n``, token dimension ``d``):

* input weights ``U ~ N(0, σu²/d)`` and biases ``b ~ N(0, σb²)``       — slot 1 ``(input_var, bias_var)``
* hidden (recurrent) weights ``W ~ N(0, σw²/n)``                          — slot 2 ``(hidden_var, ·)``
* readout ``v ~ N(0, σv²/n)``, readout bias ``N(0, σvb²)``               — slot 3 ``(readout_var, readout_bias_var)``

``None`` means learnable: the variance is drawn from the kernel's hyperparameters, slot by slot in this
order (with shared hyperparameters every weight variance is σw² and every bias variance σb²). The second
entry of the hidden slot is unused (a recurrent map has no bias of its own).

**Gates** (GRU: ``z, r, h``; LSTM: ``i, f, o, g``). By default every gate's ``U``, ``W``, ``b`` have the
slot variances σu², σw², σb² and the biases have mean 0. The reference parameterization (GP4A's ``thgru``:
``varUz, varWz, varbz, mubz`` for each gate) is expressed by four per-gate tuples, one entry per gate in the
order above (:attr:`GatedLayer.gate_names`):

* ``gate_input_var``, ``gate_hidden_var``, ``gate_bias_var``: a number fixes that gate's variance (a
  per-gate *override*, not learnable); ``None`` (or the whole tuple ``None``) keeps the slot's value, learnable
  or fixed. A slot whose entry every gate overrides is not drawn from the hyperparameters at all.
* ``gate_bias_mean``: the gates' bias means ``b ~ N(μ, σb²)`` (fixed numbers; default all 0).

:meth:`GatedLayer.gate_values` resolves them, for the kernel rule (tensors) and the finite twin (floats)
alike; :meth:`GRU.from_thgru` takes GP4A's keyword names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .activations import Activation, Erf
from .base import ArchitectureError, Layer, Signal, SignalKind

READOUTS = ("last", "mean")


@dataclass(frozen=True)
class RecurrentLayer(Layer):
    """Common fields of :class:`RNN`, :class:`GRU`, :class:`LSTM` (not used directly).

    Attributes:
        readout: ``"last"`` (hidden state at each sequence's own last step) or ``"mean"`` (mean over
            each sequence's own steps). The per-step kernel is available from the kernels' ``per_step``.
        input_var, bias_var, hidden_var, readout_var, readout_bias_var: fixed variances or ``None``
            (learnable; see the module docstring for the slot layout). ``readout_bias_var`` defaults to 0.
        width: hidden width of the finite twin (``None``: the run's width); the kernel ignores it.
        masked: inputs carry a mask channel (the last feature of every token, 1 = token present,
            0 = padding; masks must be prefixes): variable-length sequences. See
            :mod:`nngp_gpytorch.sequences`.
    """

    readout: str = "last"
    input_var: float | None = None
    hidden_var: float | None = None
    bias_var: float | None = None
    readout_var: float | None = None
    readout_bias_var: float | None = 0.0
    width: int | None = None
    masked: bool = False

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ArchitectureError(f"{self.describe()}: readout must be one of {READOUTS}, got {self.readout!r}")
        for name in ("input_var", "hidden_var", "readout_var"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ArchitectureError(f"{self.describe()}: {name} must be > 0, got {value}")
        for name in ("bias_var", "readout_bias_var"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ArchitectureError(f"{self.describe()}: {name} must be >= 0, got {value}")
        if self.width is not None and self.width < 1:
            raise ArchitectureError(f"{self.describe()}: width must be a positive integer")

    def slot_requests(self) -> tuple[tuple[float | None, float | None], ...]:
        """The three (weight, bias) variance requests, in drawing order: input, hidden, readout."""
        return ((self.input_var, self.bias_var), (self.hidden_var, 0.0), (self.readout_var, self.readout_bias_var))

    def variance_slots(self) -> int:
        return sum(1 for w, b in self.slot_requests() if w is None or b is None)

    def token_dim(self, input_shape: tuple[int, ...]) -> int:
        """Features per token (the mask channel excluded)."""
        return input_shape[-1] - (1 if self.masked else 0)

    def propagate(self, signal: Signal, path: str) -> Signal:
        if signal.kind is not SignalKind.INPUT:
            raise ArchitectureError(
                f"{path}: {type(self).__name__} reads raw sequences and must be the first layer of the network")
        shape = signal.input_shape
        if shape is None or len(shape) != 2:
            raise ArchitectureError(
                f"{path}: {type(self).__name__} needs input_shape=(T, D) (sequences flattened to T·D features), "
                f"got input_shape={shape}")
        if self.masked and shape[1] < 2:
            raise ArchitectureError(
                f"{path}: masked=True needs D >= 2 (token features plus the mask channel), got input_shape={shape}")
        return Signal(SignalKind.GAUSSIAN, (), shape)


@dataclass(frozen=True)
class RNN(RecurrentLayer):
    """Elman RNN ``h_t = W·φ(h_{t−1}) + U·x_t + b`` (no ``W`` term at ``t = 1``), readout ``f = v·φ(h_read)``.

    NNGP (reference kernels.md "Simple RNN"): ``Σ(t,s) = σw²·V_φ(Σ)(t−1,s−1)·[t,s>1] + σu²·x_t·x'_s/d + σb²``,
    output ``σv²·V_φ(Σ)(T_a, T_b) + σvb²`` at each sequence's own last step (``mean``: averaged over
    ``t ≤ T_a, s ≤ T_b``).
    """

    activation: Activation = field(default_factory=Erf)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.activation, Activation):
            raise ArchitectureError(f"RNN: activation must be an Activation description, got {self.activation!r}")


def _per_gate(layer: GatedLayer, name: str, value, positive: bool, allow_none: bool):
    """Check one per-gate tuple: its length, its entries (``> 0`` / ``>= 0`` / finite), ``None`` where allowed."""
    gates = layer.gate_names
    try:
        values = tuple(value)
    except TypeError:
        raise ArchitectureError(f"{layer.describe()}: {name} must be a sequence of {len(gates)} values (gates "
                                f"{', '.join(gates)}), got {value!r}") from None
    if len(values) != len(gates):
        raise ArchitectureError(f"{layer.describe()}: {name} needs {len(gates)} values (gates {', '.join(gates)}), "
                                f"got {len(values)}: {values!r}")
    for gate, v in zip(gates, values, strict=True):
        if v is None:
            if not allow_none:
                raise ArchitectureError(f"{layer.describe()}: {name}[{gate}] must be a number, got None")
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ArchitectureError(f"{layer.describe()}: {name}[{gate}] must be a finite number, got {v!r}")
        if positive is True and not v > 0:
            raise ArchitectureError(f"{layer.describe()}: {name}[{gate}] must be > 0, got {v}")
        if positive is None and not v >= 0:
            raise ArchitectureError(f"{layer.describe()}: {name}[{gate}] must be >= 0, got {v}")
    return tuple(None if v is None else float(v) for v in values)


@dataclass(frozen=True)
class GatedLayer(RecurrentLayer):
    """Common fields of :class:`GRU` and :class:`LSTM` (not used directly): the QMC rule of the limit's gate
    expectations and the per-gate variances and bias means (module docstring, "Gates").

    Attributes:
        samples, qmc_seed: the deterministic scrambled-Sobol rule of the gate expectations (accuracy knob; see
            docs/recurrent.md); the finite twin ignores them.
        gate_input_var, gate_hidden_var, gate_bias_var: ``None`` or one entry per gate (``None`` entries keep
            the slot's value). gate_bias_mean: ``None`` (all 0) or one bias mean per gate.
    """

    samples: int = 2**13
    qmc_seed: int = 0
    gate_input_var: Sequence[float | None] | None = None
    gate_hidden_var: Sequence[float | None] | None = None
    gate_bias_var: Sequence[float | None] | None = None
    gate_bias_mean: Sequence[float] | None = None

    gate_names: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 2:
            raise ArchitectureError(f"{self.describe()}: samples must be >= 2")
        for name, positive, allow_none in (("gate_input_var", True, True), ("gate_hidden_var", True, True),
                                           ("gate_bias_var", None, True), ("gate_bias_mean", False, False)):
            value = getattr(self, name)
            if value is not None:  # tuples of floats: hashable, equal for equal values
                object.__setattr__(self, name, _per_gate(self, name, value, positive, allow_none))

    def _overrides(self, name: str) -> tuple[float | None, ...]:
        value = getattr(self, name)
        return (None,) * len(self.gate_names) if value is None else value

    def _all_fixed(self, name: str) -> bool:
        return all(v is not None for v in self._overrides(name))

    def slot_requests(self) -> tuple[tuple[float | None, float | None], ...]:
        """As :meth:`RecurrentLayer.slot_requests`; an entry every gate overrides is requested as fixed (its
        value unused), so it draws no hyperparameter."""
        (wu, b), (ww, bw), readout = super().slot_requests()
        if self._all_fixed("gate_input_var"):
            wu = self.gate_input_var[0]
        if self._all_fixed("gate_bias_var"):
            b = self.gate_bias_var[0]
        if self._all_fixed("gate_hidden_var"):
            ww = self.gate_hidden_var[0]
        return (wu, b), (ww, bw), readout

    @property
    def bias_means(self) -> tuple[float, ...]:
        """The gates' bias means (zeros by default)."""
        return self.gate_bias_mean if self.gate_bias_mean is not None else (0.0,) * len(self.gate_names)

    @property
    def per_gate(self) -> bool:
        """Whether any gate departs from the shared slot variances or has a nonzero bias mean."""
        return any(getattr(self, n) is not None and any(v is not None for v in getattr(self, n))
                   for n in ("gate_input_var", "gate_hidden_var", "gate_bias_var")) or any(self.bias_means)

    def gate_overrides(self) -> list[tuple[float | None, float | None, float | None, float]]:
        """Per gate ``(σu², σw², σb², μ_b)`` as described: ``None`` where the gate keeps the slot's variance."""
        return list(zip(self._overrides("gate_input_var"), self._overrides("gate_hidden_var"),
                        self._overrides("gate_bias_var"), self.bias_means, strict=True))

    def gate_values(self, input_var, bias_var, hidden_var) -> list[tuple]:
        """Per gate ``(σu², σw², σb², μ_b)``: the override where given, else the slot's value (``input_var``,
        ``hidden_var``, ``bias_var`` as drawn by the kernel — tensors — or the twin — floats). Overrides are
        returned as floats; the caller broadcasts them."""
        rows = zip(self._overrides("gate_input_var"), self._overrides("gate_hidden_var"),
                   self._overrides("gate_bias_var"), self.bias_means, strict=True)
        return [(input_var if u is None else u, hidden_var if w is None else w, bias_var if b is None else b, mu)
                for u, w, b, mu in rows]


@dataclass(frozen=True)
class GRU(GatedLayer):
    """Erf-gated GRU of Yang (2019): gates ``ς(x) = (1 + erf x)/2``, candidate ``erf``::

        z_t = ς(U_z x_t + W_z h_{t−1} + b_z),  r_t = ς(U_r x_t + W_r h_{t−1} + b_r)
        h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ erf(U_h x_t + W_h (h_{t−1} ⊙ r_t) + b_h),  h_0 = 0

    Readout ``f = v·h_read`` (the hidden state itself, no extra nonlinearity). Gates ``("z", "r", "h")``
    for the per-gate tuples (``b_g ~ N(μ_g, σ²_bg)``).

    ``samples`` (a power of two) and ``qmc_seed`` set the deterministic quasi-Monte Carlo rule of the
    gate expectations (the accuracy knob; see docs/recurrent.md); the finite twin ignores them.
    """

    gate_names: tuple[str, ...] = field(default=("z", "r", "h"), init=False, repr=False, compare=False)

    @classmethod
    def from_thgru(cls, varUz: float = 1.0, varUr: float = 1.0, varUh: float = 1.0, varWz: float = 1.0,
                   varWr: float = 1.0, varWh: float = 1.0, varbz: float = 1.0, varbr: float = 1.0,
                   varbh: float = 1.0, mubz: float = 0.0, mubr: float = 0.0, mubh: float = 0.0, **fields) -> GRU:
        """The GRU of GP4A's ``thgru`` (Yang 2019's reference implementation), its keyword names and defaults.

        Names as in kernels.md: ``varU·`` the **input** weights, ``varW·`` the **hidden** (recurrent) weights
        (GP4A's docstring names the input weights ``W``; its recursion multiplies the input Gram by the
        variances it calls ``varW·`` — pass them as ``varU·`` here). All nine variances and three means are
        fixed; ``fields`` (readout, masked, readout_var, samples, ...) go to :class:`GRU`.
        """
        return cls(gate_input_var=(varUz, varUr, varUh), gate_hidden_var=(varWz, varWr, varWh),
                   gate_bias_var=(varbz, varbr, varbh), gate_bias_mean=(mubz, mubr, mubh), **fields)


@dataclass(frozen=True)
class LSTM(GatedLayer):
    """Standard LSTM with logistic-sigmoid gates and tanh::

        i, f, o = σ(U_· x_t + W_· h_{t−1} + b_·),  g = tanh(U_g x_t + W_g h_{t−1} + b_g)
        c_t = f ⊙ c_{t−1} + i ⊙ g,  h_t = o ⊙ tanh(c_t),  h_0 = c_0 = 0

    Readout ``f = v·h_read``. Gates ``("i", "f", "o", "g")`` for the per-gate tuples (``g``: the candidate
    cell, written c̃ in some texts). ``samples``/``qmc_seed``: the quasi-Monte Carlo rule of the limit's
    expectations (accuracy knob, see docs/recurrent.md); the finite twin ignores them.
    """

    gate_names: tuple[str, ...] = field(default=("i", "f", "o", "g"), init=False, repr=False, compare=False)

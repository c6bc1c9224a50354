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
entry of the hidden slot is unused (a recurrent map has no bias of its own). GRU and LSTM gates share
these variances (every gate's ``U``, ``W``, ``b`` have variances σu², σw², σb²).
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class GRU(RecurrentLayer):
    """Erf-gated GRU of Yang (2019): gates ``ς(x) = (1 + erf x)/2``, candidate ``erf``::

        z_t = ς(U_z x_t + W_z h_{t−1} + b_z),  r_t = ς(U_r x_t + W_r h_{t−1} + b_r)
        h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ erf(U_h x_t + W_h (h_{t−1} ⊙ r_t) + b_h),  h_0 = 0

    Readout ``f = v·h_read`` (the hidden state itself, no extra nonlinearity).

    ``samples`` (a power of two) and ``qmc_seed`` set the deterministic quasi-Monte Carlo rule of the
    gate expectations (the accuracy knob; see docs/recurrent.md); the finite twin ignores them.
    """

    samples: int = 2**13
    qmc_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 2:
            raise ArchitectureError(f"{self.describe()}: samples must be >= 2")


@dataclass(frozen=True)
class LSTM(RecurrentLayer):
    """Standard LSTM with logistic-sigmoid gates and tanh::

        i, f, o = σ(U_· x_t + W_· h_{t−1} + b_·),  g = tanh(U_g x_t + W_g h_{t−1} + b_g)
        c_t = f ⊙ c_{t−1} + i ⊙ g,  h_t = o ⊙ tanh(c_t),  h_0 = c_0 = 0

    Readout ``f = v·h_read``. ``samples``/``qmc_seed``: the quasi-Monte Carlo rule of the limit's
    expectations (accuracy knob, see docs/recurrent.md); the finite twin ignores them.
    """

    samples: int = 2**13
    qmc_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 2:
            raise ArchitectureError(f"{self.describe()}: samples must be >= 2")

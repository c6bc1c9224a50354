"""NTKs of the gated recurrent cells (erf-GRU, LSTM) as the NTKs of their tensor programs.

The dedicated covariance algebra of :class:`~nngp_gpytorch.kernels.GRUKernel` and
:class:`~nngp_gpytorch.kernels.LSTMKernel` carries the NNGP only; the NTK comes from the generic
tensor-program NTK (:mod:`.ntk`, Yang 2020) of the same cells written as NETSOR programs (:func:`gated_program`,
also :func:`~.examples.gru_program` / :func:`~.examples.lstm_program`), under the names users look for.

**Per-gate parameters** (issue 18; :class:`~nngp_gpytorch.arch.recurrent.GatedLayer`): a gate whose variance is
overridden gets its own named variance (``input_var_z``, ``hidden_var_f``, ``bias_var_h``, ...; initial value the
override), the others share ``input_var`` / ``hidden_var`` / ``bias_var``. A bias mean ``μ`` is folded into the
gate's Nonlin (``ς(z̃ + μ)`` with a zero-mean bias G-var): the same network, and the bias gradient ``∂f/∂β`` is
unchanged by the mean, so the NTK is the one of ``b ~ N(μ, σb²)``.

**Variable lengths** (``masked=True``; :mod:`nngp_gpytorch.sequences`). Each token's mask channel is a separate
1-D input ``m_t``; the NETSOR+ moment ``θ_t = ⟨U_m m_t, U_m m_t⟩/n → σ_m²·m_t`` recovers the mask per input, and
the readout weights are the scalars ``w_t = (θ_t − θ_{t+1})/θ_1`` (``last``: one-hot at the sequence's own last
step, ``θ_{T+1} = 0``) or ``w_t = θ_t/Σ_s θ_s`` (``mean``). NETSOR cannot scale an H-var by a scalar, so the
program reads ``y = Σ_t w_t·(R h_t)`` through an auxiliary ``n×n`` matrix ``R`` (variance ``mask_readout_var``,
1 by default) and ``f = v·y/√n``: its NNGP is the masked cell's with readout variance ``σv²·σR²``. Its NTK has
one extra term, ``R``'s own, ``σR²·Σ_{t,s} E[dg_t dg'_s]·E[h_t h'_s] = K − σvb²`` (``dg_t = w_t·σv v``), and
``Rᵀ(σv v)`` is a fresh Gaussian of variance ``σv²σR²`` (TP2's backward rule), exactly the readout gradient of
the original cell, so ``Θ_cell = Θ_program − (K − σvb²)``: :class:`GRUNTKKernel` returns the corrected value
(its error bar adds the two standard errors). The mask's matrix ``U_m`` feeds only moments, whose gradient
path vanishes in the limit (:mod:`.ntk`), so it adds nothing to Θ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..numerics import erf_gate
from .expectations import Accuracy
from .kernel import TensorProgramNTKKernel
from .ntk import evaluate_program_ntk
from .program import Program, Var

GATE_NAMES = {"gru": ("z", "r", "h"), "lstm": ("i", "f", "o", "g")}
#: per gate ``(σu², σw², σb², μ_b)``: ``None`` for a variance keeps the shared named variance
GateSpec = Sequence[tuple[float | None, float | None, float | None, float]]


def _shift(mean: float):
    return (lambda u: u) if not mean else (lambda u: u + mean)


def gated_program(cell: str, length: int, token_dim: int, readout: str = "last", input_var: float = 1.0,
                  hidden_var: float = 1.0, bias_var: float = 0.0, readout_var: float = 1.0,
                  readout_bias_var: float = 0.0, gates: GateSpec | None = None, masked: bool = False) -> Program:
    """The NETSOR program of a GRU (``cell="gru"``, Yang's erf cell) or LSTM (``"lstm"``, sigmoid/tanh) over
    ``length`` tokens of ``token_dim`` features (``token_dim`` includes the mask channel when ``masked``).

    ``gates``: one ``(σu², σw², σb², μ_b)`` per gate (``z, r, h`` / ``i, f, o, g``), ``None`` variances sharing
    ``input_var`` / ``hidden_var`` / ``bias_var`` (module docstring). ``masked``: variable lengths, read out
    through the auxiliary matrix of the module docstring (its NTK needs the correction :class:`GRUNTKKernel`
    applies). Without ``gates`` and ``masked`` the programs are :func:`~.examples.gru_program` /
    :func:`~.examples.lstm_program`, instruction for instruction."""
    names = GATE_NAMES[cell]
    if gates is not None and len(gates) != len(names):
        raise ValueError(f"gated_program({cell}): needs {len(names)} gate entries ({', '.join(names)}), "
                         f"got {len(gates)}")
    p = Program(f"{cell}(T={length}, {readout}{', masked' if masked else ''})")
    if masked:
        xs, ms = [], []
        for t in range(length):
            xs.append(p.input(f"x[{t}]", token_dim - 1))
            ms.append(p.input(f"m[{t}]", 1))
    else:
        xs, ms = p.sequence("x", length, token_dim), []
    spec = gates or [(None, None, None, 0.0)] * len(names)
    mats, shifts = {}, {}
    for name, (u, w, b, mean) in zip(names, spec, strict=True):
        mats[name] = (p.input_matrix(f"U_{name}", var="input_var" if u is None else f"input_var_{name}",
                                     init=input_var if u is None else u),
                      p.matrix(f"W_{name}", var="hidden_var" if w is None else f"hidden_var_{name}",
                               init=hidden_var if w is None else w),
                      p.bias(f"b_{name}", var="bias_var" if b is None else f"bias_var_{name}",
                             init=bias_var if b is None else b))
        shifts[name] = _shift(float(mean))
    hs = (_gru_steps if cell == "gru" else _lstm_steps)(p, xs, mats, shifts)
    if masked:
        _masked_readout(p, hs, ms, readout, readout_var, readout_bias_var)
    else:
        readout_over_time(p, hs, readout, readout_var, readout_bias_var)
    return p


def _gru_steps(p: Program, xs, mats, sh) -> list[Var]:
    z_, r_, h_ = sh["z"], sh["r"], sh["h"]
    hs: list[Var] = []
    for t, x in enumerate(xs, start=1):
        def pre(gate_name, h_in, t=t, x=x):
            uu, ww, bb = mats[gate_name]
            terms = [p.matmul(uu, x), bb] + ([p.matmul(ww, h_in)] if h_in is not None else [])
            return p.lincomb(*terms, name=f"{gate_name}~{t}")

        prev = hs[-1] if hs else None
        z = pre("z", prev)
        if prev is None:
            cand = pre("h", None)
            h = p.nonlin(lambda zz, cc: erf_gate(z_(zz)) * torch.erf(h_(cc)), z, cand, name=f"h{t}")
        else:
            r = pre("r", prev)
            gated = p.nonlin(lambda hh, rr: hh * erf_gate(r_(rr)), prev, r, name=f"hr{t}")
            cand = pre("h", gated)
            h = p.nonlin(lambda hh, zz, cc: (1 - erf_gate(z_(zz))) * hh + erf_gate(z_(zz)) * torch.erf(h_(cc)),
                         prev, z, cand, name=f"h{t}")
        hs.append(h)
    return hs


def _lstm_steps(p: Program, xs, mats, sh) -> list[Var]:
    i_, f_, o_, g_ = sh["i"], sh["f"], sh["o"], sh["g"]
    hs: list[Var] = []
    c = None
    for t, x in enumerate(xs, start=1):
        prev = hs[-1] if hs else None
        pre = {}
        for name, (uu, ww, bb) in mats.items():
            terms = [p.matmul(uu, x), bb] + ([p.matmul(ww, prev)] if prev is not None else [])
            pre[name] = p.lincomb(*terms, name=f"{name}~{t}")
        if c is None:
            c = p.nonlin(lambda ii, gg: torch.sigmoid(i_(ii)) * torch.tanh(g_(gg)), pre["i"], pre["g"], name=f"c{t}")
        else:
            c = p.nonlin(lambda cc, ff, ii, gg: torch.sigmoid(f_(ff)) * cc + torch.sigmoid(i_(ii)) * torch.tanh(g_(gg)),
                         c, pre["f"], pre["i"], pre["g"], name=f"c{t}")
        hs.append(p.nonlin(lambda oo, cc: torch.sigmoid(o_(oo)) * torch.tanh(cc), pre["o"], c, name=f"h{t}"))
    return hs


def readout_over_time(p: Program, hs: list[Var], readout: str, readout_var: float, readout_bias_var: float) -> None:
    """The program's readout of the hidden states ``hs``: the last one (``"last"``) or their mean (``"mean"``),
    variances ``readout_var``/``readout_bias_var`` (shared by the recurrent example programs)."""
    if readout == "last":
        terms = hs[-1]
    elif readout == "mean":
        terms = [(1.0 / len(hs), h) for h in hs]
    else:
        raise ValueError(f"readout must be 'last' or 'mean', got {readout!r}")
    p.readout(terms, var="readout_var", init=readout_var, bias="readout_bias_var", bias_init=readout_bias_var)


def _masked_readout(p: Program, hs: list[Var], ms, readout: str, readout_var: float,
                    readout_bias_var: float) -> None:
    """``f = v·Σ_t w_t(x)·R h_t/√n`` with the per-input readout weights of the module docstring."""
    if readout not in ("last", "mean"):
        raise ValueError(f"readout must be 'last' or 'mean', got {readout!r}")
    um = p.input_matrix("U_mask", var="mask_var", init=1.0)
    gm = [p.matmul(um, m, name=f"mask{t}") for t, m in enumerate(ms)]
    theta = [p.moment(None, g, g, name=f"theta_m{t}") for t, g in enumerate(gm)]
    T = len(hs)
    weights = []
    for t in range(T):
        if readout == "last":
            if t + 1 < T:
                w = p.scalar(lambda a, b, first: (a - b) / first, theta[t], theta[t + 1], theta[0], name=f"w{t}")
            else:
                w = p.scalar(lambda a, first: a / first, theta[t], theta[0], name=f"w{t}")
        else:
            w = p.scalar(lambda *th, t=t: th[t] / sum(th), *theta, name=f"w{t}")
        weights.append(w)
    rm = p.matrix("R_read", var="mask_readout_var", init=1.0)
    y = p.lincomb(*[(w, p.matmul(rm, h, name=f"Rh{t}")) for t, (w, h) in enumerate(zip(weights, hs, strict=True))],
                  name="y_read")
    p.readout(y, var="readout_var", init=readout_var, bias="readout_bias_var", bias_init=readout_bias_var)


class _GatedNTK(TensorProgramNTKKernel):
    """The NTK of a gated cell as the NTK of its tensor program (shared constructor of the two below)."""

    _cell = ""

    def __init__(self, input_shape: Sequence[int], readout: str = "last", samples: int = 2**12, qmc_seed: int = 0,
                 input_var: float = 1.0, hidden_var: float = 1.0, bias_var: float = 0.0, readout_var: float = 1.0,
                 readout_bias_var: float = 0.0, gates: GateSpec | None = None, masked: bool = False, **kwargs):
        name = type(self).__name__
        if input_shape is None or len(tuple(input_shape)) != 2:
            raise ValueError(f"{name} needs input_shape=(T, D) (sequences flattened to T·D features), got "
                             f"{input_shape}")
        length, token_dim = (int(v) for v in input_shape)
        if masked and token_dim < 2:
            raise ValueError(f"{name}: masked=True needs D >= 2 (token features plus the mask channel), got "
                             f"input_shape={tuple(input_shape)}")
        program = gated_program(type(self)._cell, length, token_dim, readout, input_var, hidden_var, bias_var,
                                readout_var, readout_bias_var, gates=gates, masked=bool(masked))
        # target=None: the erf-gated cells' few product rules are smooth 1-2-D integrals (measured quadrature error
        # 3.4e-7 against a QMC error bar of 2.1e-3, GRU T = 4) and the end-to-end estimate would re-run the ~60 QMC
        # expectations twice (28 s → 82 s); the QMC standard error is the error bar (`last_result.ntk_error`).
        accuracy = kwargs.pop("accuracy", None) or Accuracy(qmc_points=int(samples), seed=int(qmc_seed), target=None)
        super().__init__(program, accuracy=accuracy, **kwargs)
        self.input_shape = (length, token_dim)
        self.masked = bool(masked)

    def _check_mask(self, *xs) -> None:
        if self.masked:
            from ..sequences import split_sequences  # validates the masks (prefixes of 0/1, length >= 1)

            for x in xs:
                if x is not None:
                    split_sequences(x.reshape(*x.shape[:-1], *self.input_shape), True)

    def _corrected(self, result):
        """Masked programs read out through ``R``: remove its own NTK term ``K − σvb²`` (module docstring)."""
        if self.masked:
            bias = self.variance("readout_bias_var").reshape(*self.batch_shape, *([1] * (result.kernel.dim()
                                                                                  - len(self.batch_shape))))
            result.ntk = result.ntk - (result.kernel - bias)
            result.ntk_stderr = result.ntk_stderr + result.kernel_stderr
            if result.ntk_error is not None and result.kernel_error is not None:
                result.ntk_error = result.ntk_error + result.kernel_error
        return result

    def evaluate_ntk_with_error(self, x1, x2=None, diag: bool = False):
        self._check_mask(x1, x2)
        return self._corrected(super().evaluate_ntk_with_error(x1, x2, diag=diag))

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if not self.masked:
            return super().forward(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch, **params)
        if last_dim_is_batch:
            raise NotImplementedError(f"{type(self).__name__} does not support last_dim_is_batch")
        self._check_mask(x1, x2)
        same = x2 is x1 or (x1.shape == x2.shape and torch.equal(x1, x2))
        result = self._corrected(evaluate_program_ntk(self.program, x1, None if same else x2, self.variances,
                                                      diag=diag, accuracy=self.accuracy))
        self.last_result = result
        return result.ntk


class GRUNTKKernel(_GatedNTK):
    r"""NTK of the erf-gated GRU (NTK parameterization), computed as the NTK of its tensor program
    (:func:`~nngp_gpytorch.tensor_programs.examples.gru_program`; Yang 2020, *Tensor Programs II*, Cor. 4.4):
    ``Θ = K + Σ_W σ_W²·Σ_{uses i,j} E[dgᵢ dg'ⱼ]·E[hᵢ h'ⱼ] + Σ_b σ_b²·E[db db']`` over the gates' input, hidden
    and bias parameters, shared over time (every pair of time steps contributes). Expectations by scrambled
    Sobol QMC with ``samples`` points per replicate; :meth:`evaluate_with_error` returns the standard errors
    (measured on a 16×16 Gram of length-6 sequences: 3e-3 at 2¹², 7.5e-4 at 2¹⁴, i.e. < 0.3% of the
    diagonal; docs/ntk.md).

    Inputs ``(..., n, T·D)`` with ``input_shape=(T, D)``; with ``masked=True`` the last feature of each token is
    the prefix mask (variable lengths, :mod:`nngp_gpytorch.sequences`; module docstring for how the program reads
    each sequence at its own length). Hyperparameters are the program's named variances ``input_var`` (σu²),
    ``hidden_var`` (σw²), ``bias_var`` (σb², shared by the gates without an override in ``gates``; overridden
    ones are ``input_var_z`` etc.), ``readout_var`` (σv²), ``readout_bias_var`` (σvb²) — the same numbers as
    :class:`GRUKernel`'s ``weight_var = (σu², σw², σv²)``, ``bias_var = (σb², ·, σvb²)``.
    :meth:`nngp_and_ntk` gives the NNGP beside Θ from the same pass. Cost: ~5–10× the NNGP of the same
    program; prefer a GPU for Grams beyond a few dozen sequences.
    """

    _cell = "gru"


class LSTMNTKKernel(_GatedNTK):
    r"""NTK of the standard sigmoid/tanh LSTM (NTK parameterization) as the NTK of its tensor program
    (:func:`~nngp_gpytorch.tensor_programs.examples.lstm_program`); same construction, arguments and accuracy
    knob as :class:`GRUNTKKernel` (measured QMC error on a 16×16 Gram of length-6 sequences: 3.5e-4 at 2¹²).
    """

    _cell = "lstm"


__all__ = ["GRUNTKKernel", "LSTMNTKKernel", "gated_program", "readout_over_time"]

"""NETSOR programs (Yang 2019, "Tensor Programs I"): a small embedded language to write a wide network.

A :class:`Program` is built instruction by instruction. Its variables, for one input ``x``, are vectors
of the width ``n → ∞``:

* **A-vars** — :meth:`Program.matrix`: an ``n×n`` matrix with i.i.d. entries ``N(0, σ²/n)``, reusable
  anywhere (weight sharing, recurrence); :meth:`Program.input_matrix`: an ``n×d`` matrix with entries
  ``N(0, σ²/d)`` applied to input tokens (:meth:`Program.input`, :meth:`Program.sequence`).
* **G-vars** (asymptotically Gaussian per coordinate): ``MatMul`` ``g := W h`` (:meth:`Program.matmul`),
  biases (:meth:`Program.bias`, ``N(0, σ²)`` per coordinate, the same vector for every input), input
  projections ``U x`` and ``LinComb`` ``g := Σ aᵢ gᵢ`` (:meth:`Program.lincomb`; the coefficients are
  numbers or NETSOR+ scalars, below).
* **H-vars** — ``Nonlin`` ``h := φ(g¹, …, gᵏ)`` (:meth:`Program.nonlin`) for any elementwise torch
  callable of several variables. Every G-var is also an H-var (identity). An H-var may be an argument of
  another ``Nonlin``: the composition is recorded as one nonlinearity of the underlying G-vars
  (``H.base``), which is legal NETSOR and keeps gated cells (GRU, LSTM) short to write.
* **Scalars** (NETSOR+): :meth:`Program.moment` ``θ = (1/n)·Σ_α ψ(g…)_α`` converges to the deterministic
  ``E[ψ(Z…)]``; :meth:`Program.scalar` maps scalars through a torch function (e.g. a softmax of logits).
  They can be ``LinComb`` coefficients (tied-query/key attention).

The output is :meth:`Program.readout` ``f(x) = v·h(x)/√n + b`` with ``v ~ N(0, σv²)``, whose covariance
over inputs (one output unit) is the program's kernel: ``σv²·E[Z^h(x) Z^h(x')] + σb²``
(:mod:`~nngp_gpytorch.tensor_programs.master`).

Variances are named parameters (``var=`` on every matrix, bias and readout; objects naming the same
parameter share one learnable value); ``init`` gives its initial value.

Validation happens instruction by instruction, before any expensive work, and names the offending
instruction: a variable used before it is defined (by name) or taken from another program, a ``LinComb``
of H-vars that are not G-vars, a matrix applied to a vector of the wrong kind or size, a ``Nonlin``
callable that fails, returns the wrong shape or non-finite values on probe inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..arch import Activation
from .elementwise import ProgramError, compose, identity, probe_elementwise, product


@dataclass(eq=False)
class Token:
    """A slice ``x[offset:offset+dim]`` of the (flattened) input: one data vector of dimension ``dim``."""

    program: Program = field(repr=False)
    name: str
    offset: int
    dim: int


@dataclass(eq=False)
class Matrix:
    """An A-var. ``kind == "hidden"``: ``n×n``, entries ``N(0, σ²/n)``; ``"input"``: ``n×d``, ``N(0, σ²/d)``."""

    program: Program = field(repr=False)
    name: str
    var: str
    kind: str
    fan_in: int | None = None  # input matrices: d, fixed at first use


@dataclass(eq=False)
class Var:
    """A vector variable of the program (a G-var, or an H-var when ``is_g`` is False).

    Attributes:
        op: ``"input"`` (``U x``), ``"bias"``, ``"matmul"``, ``"lincomb"`` (G-vars) or ``"nonlin"`` (H-var).
        base: the G-vars this variable is a function of (``(self,)`` for a G-var).
        flat_fn: ``flat_fn(*base_values) -> value`` (identity for a G-var).
        fn, args: the ``Nonlin`` as written (``fn(*args)``); ``activation`` when ``fn`` is a named
            univariate :class:`~nngp_gpytorch.arch.Activation` (closed-form dual dispatch).
        matrix, source: ``MatMul``/input projection ``matrix @ source``.
        terms: ``LinComb`` terms ``(coefficient, G-var)``; a coefficient is a float or a :class:`Scalar`.
        var: the variance parameter of a bias.
    """

    program: Program = field(repr=False)
    index: int
    name: str
    op: str
    is_g: bool
    instruction: str = field(repr=False)
    base: tuple[Var, ...] = field(default=(), repr=False)
    flat_fn: Callable[..., torch.Tensor] | None = field(default=None, repr=False)
    fn: Callable[..., torch.Tensor] | None = field(default=None, repr=False)
    args: tuple[Var, ...] = field(default=(), repr=False)
    activation: Activation | None = field(default=None, repr=False)
    matrix: Matrix | None = field(default=None, repr=False)
    source: Var | Token | None = field(default=None, repr=False)
    terms: tuple[tuple[float | Scalar, Var], ...] = field(default=(), repr=False)
    var: str | None = None


@dataclass(eq=False)
class Scalar:
    """A NETSOR+ scalar: ``"moment"`` ``(1/n)·Σ_α fn(args)_α → E[fn(Z…)]`` or ``"scalar"`` ``fn(*args)``."""

    program: Program = field(repr=False)
    index: int
    name: str
    op: str
    instruction: str = field(repr=False)
    fn: Callable[..., torch.Tensor] | None = field(default=None, repr=False)
    args: tuple = field(default=(), repr=False)
    base: tuple[Var, ...] = field(default=(), repr=False)
    flat_fn: Callable[..., torch.Tensor] | None = field(default=None, repr=False)


@dataclass(eq=False)
class Readout:
    """``f = v·(Σ_t c_t h_t)/√n + b`` with ``v ~ N(0, σ_var²)`` and ``b ~ N(0, σ_bias²)`` (``bias`` may be None)."""

    terms: tuple[tuple[float, Var], ...]
    var: str
    bias: str | None


class Program:
    """A NETSOR program under construction (see the module docstring for the language).

    >>> from nngp_gpytorch import arch as A
    >>> p = Program("one hidden layer")
    >>> x = p.input("x", 3)
    >>> g = p.lincomb(p.matmul(p.input_matrix("U", var="weight_var"), x), p.bias("b0", var="bias_var"))
    >>> h = p.nonlin(A.ReLU(), g)
    >>> p.readout(h, var="weight_var", bias="bias_var")
    """

    _ids = itertools.count()

    def __init__(self, name: str = "program"):
        self.name = str(name)
        self.tokens: list[Token] = []
        self.matrices: list[Matrix] = []
        self.vars: list[Var] = []
        self.scalars: list[Scalar] = []
        self.parameters: dict[str, float] = {}
        self.output: Readout | None = None
        self._names: dict[str, object] = {}
        self._instructions = 0
        self._uid = next(Program._ids)

    # ----------------------------------------------------------------- bookkeeping
    @property
    def input_dim(self) -> int:
        """Number of input features: the declared tokens, concatenated in declaration order."""
        return sum(t.dim for t in self.tokens)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(self.parameters)

    def _where(self, op: str, name: str) -> str:
        return f"{self.name}: instruction {self._instructions} ({op} '{name}')"

    def _fresh(self, name: str | None, prefix: str, where_op: str) -> str:
        if name is None:
            counter = len(self._names)
            while f"{prefix}#{counter}" in self._names:
                counter += 1
            name = f"{prefix}#{counter}"
        if not isinstance(name, str) or not name:
            raise ProgramError(f"{self.name}: {where_op} needs a non-empty string name, got {name!r}")
        if name in self._names:
            raise ProgramError(f"{self._where(where_op, name)}: the name '{name}' is already defined")
        return name

    def _declare_parameter(self, where: str, var: str, init: float, allow_zero: bool) -> str:
        if not isinstance(var, str) or not var:
            raise ProgramError(f"{where}: var must be a parameter name (string), got {var!r}")
        init = float(init)
        if not (init >= 0 if allow_zero else init > 0) or init != init or init == float("inf"):
            raise ProgramError(f"{where}: initial variance of '{var}' must be {'>= 0' if allow_zero else '> 0'}"
                               f" and finite, got {init}")
        if var in self.parameters and self.parameters[var] != init:
            raise ProgramError(f"{where}: parameter '{var}' was declared with initial value "
                               f"{self.parameters[var]}, now {init}; give the same value or a new name")
        self.parameters.setdefault(var, init)
        return var

    def _resolve(self, ref, where: str, what: str):
        if isinstance(ref, str):
            if ref not in self._names:
                raise ProgramError(f"{where}: {what} '{ref}' is used before it is defined")
            ref = self._names[ref]
        if isinstance(ref, Token | Matrix | Var | Scalar):
            if ref.program is not self:
                raise ProgramError(f"{where}: {what} '{ref.name}' belongs to another program "
                                   f"('{ref.program.name}'); variables cannot be shared between programs")
            return ref
        raise ProgramError(f"{where}: {what} must be a variable of this program, got {ref!r}")

    def _add_var(self, **kwargs) -> Var:
        v = Var(program=self, index=len(self.vars), **kwargs)
        if v.is_g:
            v.base, v.flat_fn = (v,), identity
        self.vars.append(v)
        self._names[v.name] = v
        return v

    # ----------------------------------------------------------------- declarations
    def input(self, name: str, dim: int) -> Token:
        """Declare an input token of ``dim`` features (the next ``dim`` columns of the input)."""
        self._instructions += 1
        name = self._fresh(name, "x", "input")
        if not isinstance(dim, int) or dim < 1:
            raise ProgramError(f"{self._where('input', name)}: dim must be a positive integer, got {dim!r}")
        token = Token(self, name, self.input_dim, dim)
        self.tokens.append(token)
        self._names[name] = token
        return token

    def sequence(self, name: str, length: int, dim: int) -> list[Token]:
        """``length`` tokens ``name[0] … name[length-1]`` of ``dim`` features each (time-major flattening,
        i.e. ``input_shape = (length, dim)``)."""
        if not isinstance(length, int) or length < 1:
            raise ProgramError(f"{self.name}: sequence '{name}' needs a positive length, got {length!r}")
        return [self.input(f"{name}[{t}]", dim) for t in range(length)]

    def matrix(self, name: str, var: str | None = None, init: float = 1.0) -> Matrix:
        """An ``n×n`` matrix, entries ``N(0, σ²/n)`` with ``σ² =`` parameter ``var`` (default: ``name``)."""
        self._instructions += 1
        name = self._fresh(name, "W", "matrix")
        var = self._declare_parameter(self._where("matrix", name), var or name, init, allow_zero=False)
        m = Matrix(self, name, var, "hidden")
        self.matrices.append(m)
        self._names[name] = m
        return m

    def input_matrix(self, name: str, var: str | None = None, init: float = 1.0) -> Matrix:
        """An ``n×d`` matrix applied to input tokens of dimension ``d``: ``Cov(Ux, Ux') = σ²·x·x'/d``."""
        self._instructions += 1
        name = self._fresh(name, "U", "input_matrix")
        var = self._declare_parameter(self._where("input_matrix", name), var or name, init, allow_zero=False)
        m = Matrix(self, name, var, "input")
        self.matrices.append(m)
        self._names[name] = m
        return m

    def bias(self, name: str, var: str | None = None, init: float = 0.0) -> Var:
        """A bias G-var: ``N(0, σ²)`` per coordinate, the same vector for every input."""
        self._instructions += 1
        name = self._fresh(name, "b", "bias")
        where = self._where("bias", name)
        var = self._declare_parameter(where, var or name, init, allow_zero=True)
        return self._add_var(name=name, op="bias", is_g=True, instruction=where, var=var)

    # ----------------------------------------------------------------- instructions
    def matmul(self, matrix: Matrix | str, h: Var | Token | str, name: str | None = None) -> Var:
        """``MatMul``: ``g := W h`` (a G-var). ``W`` hidden: ``h`` any G- or H-var; ``W`` input: ``h`` a token."""
        self._instructions += 1
        name = self._fresh(name, "g", "matmul")
        where = self._where("matmul", name)
        w = self._resolve(matrix, where, "matrix")
        if not isinstance(w, Matrix):
            raise ProgramError(f"{where}: '{w.name}' is not a matrix (declare it with matrix() or input_matrix())")
        h = self._resolve(h, where, "argument")
        if w.kind == "hidden":
            if isinstance(h, Token):
                raise ProgramError(f"{where}: matrix '{w.name}' is n×n but '{h.name}' is an input of dimension "
                                   f"{h.dim}; apply an input_matrix() to inputs")
            if not isinstance(h, Var):
                raise ProgramError(f"{where}: matrix '{w.name}' must be applied to a vector, got '{h.name}'")
            return self._add_var(name=name, op="matmul", is_g=True, instruction=where, matrix=w, source=h)
        if not isinstance(h, Token):
            raise ProgramError(f"{where}: input matrix '{w.name}' is n×d and applies to input tokens, but '{h.name}' "
                               "is a width-n vector; use a matrix() for hidden vectors")
        if w.fan_in is None:
            w.fan_in = h.dim
        elif w.fan_in != h.dim:
            raise ProgramError(f"{where}: input matrix '{w.name}' is n×{w.fan_in} but input '{h.name}' has "
                               f"dimension {h.dim}")
        return self._add_var(name=name, op="input", is_g=True, instruction=where, matrix=w, source=h)

    def lincomb(self, *terms, name: str | None = None) -> Var:
        """``LinComb``: ``g := Σ aᵢ gᵢ``. Each term is a G-var (coefficient 1) or ``(a, G-var)`` with ``a`` a
        number or a :class:`Scalar`."""
        self._instructions += 1
        name = self._fresh(name, "g", "lincomb")
        where = self._where("lincomb", name)
        if not terms:
            raise ProgramError(f"{where}: needs at least one term")
        parsed = []
        for term in terms:
            coef, v = term if isinstance(term, tuple) else (1.0, term)
            v = self._resolve(v, where, "term")
            if isinstance(coef, Scalar | str):
                coef = self._resolve(coef, where, "coefficient")
                if not isinstance(coef, Scalar):
                    raise ProgramError(f"{where}: coefficient '{coef.name}' is not a scalar")
            elif isinstance(coef, int | float):
                coef = float(coef)
                if coef != coef or abs(coef) == float("inf"):
                    raise ProgramError(f"{where}: coefficient {coef} is not finite")
            else:
                raise ProgramError(f"{where}: coefficient must be a number or a Scalar, got {coef!r}")
            if not isinstance(v, Var) or not v.is_g:
                kind = "an input token" if isinstance(v, Token) else "an H-var (a Nonlin output), not a G-var"
                raise ProgramError(f"{where}: LinComb term '{v.name}' is {kind}; a LinComb of non-Gaussian vectors "
                                   "is not Gaussian. Apply a matrix first, or fold the sum into the Nonlin")
            parsed.append((coef, v))
        return self._add_var(name=name, op="lincomb", is_g=True, instruction=where, terms=tuple(parsed))

    def add(self, *gs, name: str | None = None) -> Var:
        """``LinComb`` with all coefficients 1."""
        return self.lincomb(*gs, name=name)

    def nonlin(self, fn, *args, name: str | None = None) -> Var:
        """``Nonlin``: ``h := fn(a¹, …, aᵏ)`` elementwise. ``fn`` is a torch callable of ``k`` tensors (or an
        :class:`~nngp_gpytorch.arch.Activation` of one G-var: closed-form dual dispatch). Arguments that
        are H-vars are composed (``h.base`` collects the G-vars). ``fn`` is probed on small inputs now."""
        self._instructions += 1
        name = self._fresh(name, "h", "nonlin")
        where = self._where("nonlin", name)
        if not callable(fn):
            raise ProgramError(f"{where}: fn must be a torch callable, got {fn!r}")
        if not args:
            raise ProgramError(f"{where}: a Nonlin needs at least one argument")
        args = tuple(self._resolve(a, where, "argument") for a in args)
        for a in args:
            if not isinstance(a, Var):
                raise ProgramError(f"{where}: argument '{a.name}' is not a vector variable (inputs enter through "
                                   "input_matrix())")
        base, flat_fn = compose(fn, args)
        probe_elementwise(flat_fn, len(base), where)
        activation = fn if isinstance(fn, Activation) and len(args) == 1 and args[0].is_g else None
        return self._add_var(name=name, op="nonlin", is_g=False, instruction=where, base=base, flat_fn=flat_fn,
                             fn=fn, args=args, activation=activation)

    def moment(self, fn, *args, name: str | None = None) -> Scalar:
        """NETSOR+ scalar ``θ = (1/n)·Σ_α fn(args)_α → E[fn(Z…)]`` (per input). ``fn=None`` with two
        arguments is the inner product ``⟨a, b⟩/n`` (closed form: their covariance)."""
        self._instructions += 1
        name = self._fresh(name, "theta", "moment")
        where = self._where("moment", name)
        args = tuple(self._resolve(a, where, "argument") for a in args)
        if not args or any(not isinstance(a, Var) for a in args):
            raise ProgramError(f"{where}: a moment needs vector arguments")
        if fn is None:
            if len(args) != 2:
                raise ProgramError(f"{where}: fn=None is the inner product of exactly two vectors")
            fn = product
        if not callable(fn):
            raise ProgramError(f"{where}: fn must be a torch callable, got {fn!r}")
        base, flat_fn = compose(fn, args)
        probe_elementwise(flat_fn, len(base), where)
        s = Scalar(self, len(self.scalars), name, "moment", where, fn=fn, args=args, base=base, flat_fn=flat_fn)
        self.scalars.append(s)
        self._names[name] = s
        return s

    def scalar(self, fn: Callable[..., torch.Tensor], *args, name: str | None = None) -> Scalar:
        """A deterministic function ``fn(θ¹, …)`` of scalars (elementwise over inputs)."""
        self._instructions += 1
        name = self._fresh(name, "s", "scalar")
        where = self._where("scalar", name)
        args = tuple(self._resolve(a, where, "argument") for a in args)
        if not args or any(not isinstance(a, Scalar) for a in args):
            raise ProgramError(f"{where}: scalar() takes Scalar arguments (moments or other scalars)")
        if not callable(fn):
            raise ProgramError(f"{where}: fn must be a torch callable, got {fn!r}")
        probe_elementwise(fn, len(args), where, positive=True)
        s = Scalar(self, len(self.scalars), name, "scalar", where, fn=fn, args=args)
        self.scalars.append(s)
        self._names[name] = s
        return s

    def readout(self, h, var: str = "v", init: float = 1.0, bias: str | None = None,
                bias_init: float = 0.0) -> Readout:
        """The output ``f = v·h/√n (+ b)``. ``h`` is a variable or a list of ``(c, variable)`` (e.g. a mean
        over time steps). Kernel: ``σ_var²·Σ c_t c_s E[Z^{h_t} Z^{h_s}] + σ_bias²``."""
        self._instructions += 1
        where = f"{self.name}: instruction {self._instructions} (readout)"
        if self.output is not None:
            raise ProgramError(f"{where}: the program already has a readout")
        items = h if isinstance(h, list | tuple) else [h]
        terms = []
        for item in items:
            coef, v = item if isinstance(item, tuple) else (1.0, item)
            v = self._resolve(v, where, "argument")
            if not isinstance(v, Var):
                raise ProgramError(f"{where}: the readout applies to vectors, got '{v.name}'")
            terms.append((float(coef), v))
        if not terms:
            raise ProgramError(f"{where}: nothing to read out")
        var = self._declare_parameter(where, var, init, allow_zero=False)
        if bias is not None:
            bias = self._declare_parameter(where, bias, bias_init, allow_zero=True)
        self.output = Readout(tuple(terms), var, bias)
        return self.output

    # ----------------------------------------------------------------- checks
    def check_complete(self) -> None:
        """Raise :class:`ProgramError` unless the program has inputs and a readout."""
        if self.output is None:
            raise ProgramError(f"{self.name}: the program has no readout; call readout(h) last")
        if not self.tokens:
            raise ProgramError(f"{self.name}: the program has no inputs")

    def describe(self) -> str:
        return (f"Program({self.name!r}: {len(self.tokens)} input token(s), {len(self.matrices)} matrices, "
                f"{len(self.vars)} vectors, {len(self.scalars)} scalars, parameters {list(self.parameters)})")

    def __repr__(self) -> str:
        return self.describe()

"""The machinery that compiles an architecture description into a NETSOR program (Yang 2019), rule by rule.

The third reading of a description (DESIGN.md, "One description, three readings"): every layer of
:mod:`nngp_gpytorch.arch` is a few NETSOR instructions, so a description *is* a tensor program and the master
theorem (Tensor Programs I, Thm. 5.4) gives its kernel. The per-layer rules live in :mod:`.compile_rules`; the
public entry point is :func:`nngp_gpytorch.tensor_programs.compile.compile_program`.

**What flows between layers** (:class:`Flow`): for one input, the features of a layer are width-``n`` vectors,
one per spatial position (row-major; one for flat features, one per token for sequences, one per flattened block
after ``Flatten``). Each is a :data:`Vec`, a *formal linear combination* ``Σ_i c_i·h_i`` of program variables
(G-vars or H-vars) with coefficients ``c_i`` that are numbers or NETSOR+ scalars. Keeping sums formal is what
removes the covariance algebra's refusals:

* a matrix distributes over the sum, ``W(Σ c_i h_i) = Σ c_i·W h_i`` (a ``LinComb`` of ``MatMul`` G-vars), so a
  sum of two independent post-activation branches, a skip over features, a pooled sum of positions are read by
  the next affine layer with the exact cross terms ``E[h_i h'_j]`` (means included) — each a low-dimensional
  expectation;
* a nonlinearity of a sum is one ``Nonlin`` of all the variables involved (``φ(ψ(g₁) + g₂)``: a function of two
  G-vars), which is legal NETSOR whatever the summands are.

**Variances** follow the architecture kernels' hyperparameter slots (:class:`~nngp_gpytorch.algebra.registry.
VarianceCursor`): shared ``weight_var`` / ``bias_var``, or ``weight_var_{i}`` / ``bias_var_{i}`` per slot with
``per_layer=True`` (traversal order, the order of the kernel rules); a layer's fixed variance becomes a program
variance initialised to it. A bias variance of exactly 0 writes no bias at all (the arch kernels' fixed zero).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..arch import ArchitectureError, Layer
from ..arch.dispatch import LayerDispatch
from .elementwise import ProgramError, product
from .program import Matrix, Program, Scalar, Token, Var

Coef = float | Scalar
Term = tuple[Coef, Var]
#: a formal linear combination ``Σ c_i·h_i`` of width-n program vectors
Vec = tuple[Term, ...]


class CompileError(ProgramError, ArchitectureError):
    """A description (or one of its layers, named in the message) that has no tensor-program compilation."""


class CompiledProgram(Program):
    """A :class:`Program` compiled from an architecture description.

    Attributes:
        description: the compiled layer tree.
        input_shape: the per-example input shape compiled for (``(d,)`` for flat inputs).
        output_scale: ``None`` when the program's readout is the network's own last affine layer (a ``Dense``
            on one vector: the program's NTK is the network's); otherwise the name of a unit-initialised variance
            ``s`` of a readout ``f = v·g/√n`` of the network's output G-var ``g``, so that ``K_program = s·K`` and
            ``Θ_program = s·(K + Θ)`` — :class:`~.compiled_kernel.CompiledNTKKernel` subtracts ``K``.
    """

    def __init__(self, name: str, description: Layer, input_shape: tuple[int, ...]):
        super().__init__(name)
        self.description = description
        self.input_shape = input_shape
        self.output_scale: str | None = None


@dataclass(frozen=True)
class Flow:
    """The features between two layers: one :data:`Vec` per position (``spatial``, row-major) or per flattened
    block (``spatial == ()``, several ``vecs`` after ``Flatten``). ``raw``: the input itself, as ``tokens``
    (``layout`` ``"flat"``: one token; ``"image"``: one scalar token per channel and position, channel-major as the
    flattened input; ``"sequence"``: one token per time step)."""

    vecs: tuple[Vec, ...] = ()
    spatial: tuple[int, ...] = ()
    raw: bool = False
    tokens: tuple[Token, ...] = ()
    layout: str = "flat"


Rule = Callable[[Layer, Flow, "Compiler", str, bool], Flow]
_RULES: LayerDispatch[Rule] = LayerDispatch()


def compile_rule(*layer_types: type) -> Callable[[Rule], Rule]:
    """Register ``rule(layer, flow, compiler, path, final) -> flow`` for the given layer types. ``final``: the layer
    is the network's last, so an affine layer may write the program's readout instead of a G-var."""
    return _RULES.register(*layer_types)


class LinearCombination:
    """``Σ_i c_i·a_i`` elementwise (picklable): the Nonlin of a sum of H-vars."""

    def __init__(self, coefs: Sequence[float]):
        self.coefs = tuple(float(c) for c in coefs)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.coefs[0] * args[0]
        for c, a in zip(self.coefs[1:], args[1:], strict=True):
            out = out + c * a
        return out


class Scaled:
    """``c·θ`` for a NETSOR+ scalar ``θ``."""

    def __init__(self, c: float):
        self.c = float(c)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return self.c * theta


class Compiler:
    """The state of one compilation: the program being written, the variance cursor, memoized ``MatMul``s."""

    def __init__(self, program: CompiledProgram, weight_var: Sequence[float], bias_var: Sequence[float],
                 per_layer: bool):
        self.p = program
        self.weight_var, self.bias_var = list(weight_var), list(bias_var)
        self.per_layer = per_layer
        self.position = 0
        self.counter = 0
        self._matmuls: dict[tuple[int, int], Var] = {}
        self._lincombs: dict[tuple, Var] = {}

    # ------------------------------------------------------------------ dispatch
    def compile(self, layer: Layer, flow: Flow, path: str, final: bool = False) -> Flow:
        rule = _RULES.lookup(layer)
        if rule is None:
            raise CompileError(f"{path}: {layer.describe()} has no tensor-program compilation rule")
        return rule(layer, flow, self, path, final)

    def tag(self, layer: Layer) -> str:
        """A fresh prefix for the names of one layer's matrices and vectors: ``Dense3``."""
        self.counter += 1
        return f"{type(layer).__name__}{self.counter}"

    # ------------------------------------------------------------------ variances
    def variances(self, layer: Layer, weight_var: float | None, bias_var: float | None, tag: str
                  ) -> tuple[tuple[str, float], tuple[str, float] | None]:
        """``((name, init) of σw², (name, init) of σb² or None for a zero bias)`` of the next affine layer, drawing
        a slot as :class:`~nngp_gpytorch.algebra.registry.VarianceCursor` does (in the same traversal order)."""
        slot = None
        if weight_var is None or bias_var is None:
            slot = self.position if self.per_layer else 0
            if slot >= len(self.weight_var):
                raise CompileError(f"{layer.describe()} needs variance slot {slot} but only {len(self.weight_var)} "
                                   "per-layer variances were given")
            self.position += 1
        suffix = "" if not self.per_layer else f"_{slot}"
        w = (f"{tag}.weight_var", float(weight_var)) if weight_var is not None else \
            (f"weight_var{suffix}", self.weight_var[slot])
        b = (f"{tag}.bias_var", float(bias_var)) if bias_var is not None else (f"bias_var{suffix}", self.bias_var[slot])
        return w, (b if b[1] != 0.0 else None)

    def matrix(self, name: str, var: tuple[str, float], kind: str = "hidden") -> Matrix:
        if kind == "hidden":
            return self.p.matrix(name, var=var[0], init=var[1])
        return self.p.input_matrix(name, var=var[0], init=var[1])

    def bias_terms(self, bias: tuple[str, float] | None, name: str) -> list[Term]:
        return [] if bias is None else [(1.0, self.p.bias(name, var=bias[0], init=bias[1]))]

    # ------------------------------------------------------------------ formal linear combinations
    def mul(self, a: Coef, b: Coef) -> Coef:
        """The product of two coefficients (a NETSOR+ scalar when either is one)."""
        if isinstance(a, Scalar) and isinstance(b, Scalar):
            return self.p.scalar(product, a, b)
        if isinstance(b, Scalar):
            a, b = b, a
        if isinstance(a, Scalar):
            return a if float(b) == 1.0 else self.p.scalar(Scaled(b), a)
        return float(a) * float(b)

    def scale(self, vec: Vec, c: Coef) -> Vec:
        return tuple((self.mul(c, k), h) for k, h in vec)

    def sum(self, vecs: Sequence[tuple[Coef, Vec]]) -> Vec:
        """``Σ_j c_j·vec_j`` as one formal combination."""
        return tuple(term for c, vec in vecs for term in self.scale(vec, c))

    def matmul(self, w: Matrix, vec: Vec, coef: Coef = 1.0) -> list[Term]:
        """``coef·W·vec = Σ_i coef·c_i·(W h_i)``; Gaussian summands with numeric coefficients are combined first
        (one ``MatMul`` of their ``LinComb``), the others distributed (one ``MatMul`` each)."""
        gaussian = [(c, h) for c, h in vec if h.is_g and not isinstance(c, Scalar)]
        rest = [(c, h) for c, h in vec if not (h.is_g and not isinstance(c, Scalar))]
        terms = []
        if len(gaussian) > 1:
            rest.append((1.0, self.lincomb(gaussian)))
        else:
            rest = gaussian + rest
        for c, h in rest:
            key = (id(w), h.index)
            if key not in self._matmuls:
                self._matmuls[key] = self.p.matmul(w, h)
            terms.append((self.mul(coef, c), self._matmuls[key]))
        return terms

    def lincomb(self, terms: Sequence[Term]) -> Var:
        """``LinComb`` of G-var terms, memoized (the same combination read by several matrices is one G-var)."""
        key = tuple((c.index if isinstance(c, Scalar) else float(c), isinstance(c, Scalar), h.index) for c, h in terms)
        if key not in self._lincombs:
            self._lincombs[key] = self.p.lincomb(*terms)
        return self._lincombs[key]

    def gaussian(self, vec: Vec, path: str, layer: Layer) -> Var:
        """The G-var ``Σ c_i g_i`` of a combination of G-vars; raises naming ``layer`` otherwise."""
        if any(not h.is_g for _, h in vec):
            raise CompileError(f"{path}: {layer.describe()} needs Gaussian features (the output of an affine layer) "
                               "but receives post-activation features")
        if len(vec) == 1 and not isinstance(vec[0][0], Scalar) and vec[0][0] == 1.0:
            return vec[0][1]
        return self.lincomb(vec)

    def variable(self, vec: Vec, path: str, layer: Layer) -> Var:
        """One program variable equal to ``vec``: itself, a ``LinComb`` of G-vars, or a ``Nonlin`` summing H-vars."""
        if all(h.is_g for _, h in vec):
            return self.gaussian(vec, path, layer)
        if any(isinstance(c, Scalar) for c, _ in vec):
            raise CompileError(
                f"{path}: {layer.describe()} acts on post-activation features rescaled by per-input NETSOR+ scalars "
                "(a LayerNorm of features); the Program language has no Nonlin with scalar parameters. Put an affine "
                "layer (e.g. Dense()) before it")
        if len(vec) == 1 and vec[0][0] == 1.0:
            return vec[0][1]
        return self.p.nonlin(LinearCombination([c for c, _ in vec]), *(h for _, h in vec))


def check_float_coefficients(vec: Vec) -> bool:
    return all(not isinstance(c, Scalar) for c, _ in vec)


__all__ = ["CompileError", "CompiledProgram", "Compiler", "Flow", "LinearCombination", "Scaled", "Term", "Vec",
           "check_float_coefficients", "compile_rule"]

"""The elementwise functions of a tensor program's ``Nonlin`` instructions: composition of H-vars into one
function of their base G-vars, the probe that checks a callable is elementwise and finite, and the error
type of ill-formed programs (:mod:`~nngp_gpytorch.tensor_programs.program`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class ProgramError(ValueError):
    """An ill-formed tensor program; the message names the offending instruction."""


def identity(x: torch.Tensor) -> torch.Tensor:
    """The nonlinearity of a G-var seen as an H-var."""
    return x


def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a·b`` elementwise (the nonlinearity of a product of two H-vars)."""
    return a * b


class Composed:
    """``fn(*(arg.flat_fn(base values of arg) for arg in args))`` — a picklable closure."""

    def __init__(self, fn, args: Sequence, base: Sequence):
        self.fn = fn
        self.inner = [a.flat_fn for a in args]
        self.where = [tuple(base.index(g) for g in a.base) for a in args]

    def __call__(self, *values: torch.Tensor) -> torch.Tensor:
        return self.fn(*(f(*(values[i] for i in idx)) for f, idx in zip(self.inner, self.where, strict=True)))


def compose(fn, args: Sequence) -> tuple[tuple, Callable[..., torch.Tensor]]:
    """Flatten ``fn(args)`` with H-var arguments into one function of the union of their base G-vars."""
    base: list = []
    for a in args:
        for g in a.base:
            if g not in base:
                base.append(g)
    return tuple(base), Composed(fn, args, base)


def probe_elementwise(fn, arity: int, where: str, positive: bool = False) -> None:
    """Call ``fn`` on small float64 probes (a grid over ``[−10, 10]`` and random normals at scales 0.3 … 3)
    and check the output's shape and finiteness."""
    gen = torch.Generator().manual_seed(0)
    shape = (4, 10)
    grid = torch.linspace(-10.0, 10.0, 21, dtype=torch.float64)
    probes = []
    for i in range(arity):
        rand = torch.randn(19, generator=gen, dtype=torch.float64) * torch.tensor([0.3, 1.0, 3.0]).repeat(7)[:19]
        probes.append(torch.cat([grid.roll(3 * i), rand]).reshape(shape))
    if positive:  # scalars such as moments of squares: probe on positive values
        probes = [p.abs() + 0.01 for p in probes]
    try:
        out = fn(*probes)
    except Exception as err:  # noqa: BLE001 - re-raised with the instruction named
        raise ProgramError(f"{where}: fn failed on probe inputs of shape {shape} with {arity} argument(s) "
                           f"({type(err).__name__}: {err})") from err
    if not isinstance(out, torch.Tensor) or out.shape != probes[0].shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ProgramError(f"{where}: fn must be elementwise: {arity} input(s) of shape {shape} gave output {got}")
    if not torch.isfinite(out).all():
        raise ProgramError(f"{where}: fn returned non-finite values on finite probe inputs (|x| ≤ 10)")

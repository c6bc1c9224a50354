"""Hypothesis strategies: random well-formed tensor programs.

:func:`programs` draws a random DAG of ``MatMul`` / ``LinComb`` / ``Nonlin`` instructions over one or two
input tokens, with one or two hidden matrices that are **reused**: every program applies its first matrix
to a function of its own output, ``W φ(W φ(g))`` (recurrence / weight tying), and later ``MatMul``s may
reuse either matrix. Also biases, numeric ``LinComb`` coefficients, univariate named activations
(closed-form dispatch: ReLU, erf; quadrature: tanh), smooth functions of two variables (product rule /
QMC dispatch) and NETSOR+ normalizations ``g/√(⟨g, g⟩/n)`` (a moment as a ``LinComb`` coefficient).
Every ``Nonlin`` depends on at most two G-vars, so all expectations have dimension ≤ 4; the readout
reads the last vector written.

Draws shrink towards short programs with one token and one matrix.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from nngp_gpytorch import arch as A
from nngp_gpytorch.tensor_programs import Program


def _sin(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x)


def _erf_times_tanh(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.erf(x) * torch.tanh(y)


def _product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * y


def _sin_plus(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) + 0.5 * torch.erf(y)


def _rsqrt(theta: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(theta)


UNIVARIATE = (A.ReLU(), A.Erf(), A.Tanh(), _sin)
BIVARIATE = (_erf_times_tanh, _product, _sin_plus)


@st.composite
def programs(draw, max_instructions: int = 6) -> Program:
    """A random complete :class:`~nngp_gpytorch.tensor_programs.Program` (inputs ``(k, program.input_dim)``)."""
    p = Program("random")
    d = draw(st.integers(1, 3))
    tokens = [p.input(f"x{t}", d) for t in range(draw(st.integers(1, 2)))]
    u = p.input_matrix("U", var="u", init=draw(st.sampled_from([0.5, 1.0, 2.0])))
    bias_var = draw(st.sampled_from([0.0, 0.1, 0.5]))
    gs = []
    for i, tok in enumerate(tokens):
        g = p.matmul(u, tok, name=f"ux{i}")
        if bias_var > 0 and draw(st.booleans()):
            g = p.lincomb(g, p.bias(f"b{i}", var="b", init=bias_var), name=f"g_in{i}")
        gs.append(g)
    mats = [p.matrix(f"W{j}", var=f"w{j}", init=draw(st.sampled_from([0.5, 1.0, 1.5])))
            for j in range(draw(st.integers(1, 2)))]
    vectors = list(gs)  # every var written so far (G and H)
    # every program reuses a matrix on its own output (recurrence / weight tying): W φ(g), W φ(W φ(g))
    w = mats[0]
    first = p.matmul(w, p.nonlin(draw(st.sampled_from(UNIVARIATE)), draw(st.sampled_from(gs)), name="r0"), name="rw0")
    second = p.matmul(w, p.nonlin(draw(st.sampled_from(UNIVARIATE)), first, name="r1"), name="rw1")
    gs += [first, second]
    vectors += [first, second]
    for step in range(draw(st.integers(1, max_instructions))):
        op = draw(st.sampled_from(["matmul", "lincomb", "nonlin", "nonlin2", "normalize"]))
        if op == "matmul":
            w = draw(st.sampled_from(mats))
            h = draw(st.sampled_from(vectors))
            v = p.matmul(w, h, name=f"mm{step}")
            gs.append(v)
        elif op == "lincomb" and len(gs) >= 2:
            a, b = draw(st.lists(st.sampled_from(gs), min_size=2, max_size=2, unique=True))
            ca, cb = draw(st.sampled_from([1.0, 0.5, -1.0])), draw(st.sampled_from([1.0, 0.7, -0.5]))
            v = p.lincomb((ca, a), (cb, b), name=f"lc{step}")
            gs.append(v)
        elif op == "normalize":  # NETSOR+: g/√(⟨g, g⟩/n), a LinComb with a scalar (moment) coefficient
            g = draw(st.sampled_from(gs))
            scale = p.scalar(_rsqrt, p.moment(None, g, g, name=f"ms{step}"), name=f"sc{step}")
            v = p.lincomb((scale, g), name=f"ln{step}")
            gs.append(v)
        elif op == "nonlin2" and len(gs) >= 2:
            a, b = draw(st.lists(st.sampled_from(gs), min_size=2, max_size=2, unique=True))
            v = p.nonlin(draw(st.sampled_from(BIVARIATE)), a, b, name=f"nl{step}")
        else:
            v = p.nonlin(draw(st.sampled_from(UNIVARIATE)), draw(st.sampled_from(gs)), name=f"nl{step}")
        vectors.append(v)
    p.readout(vectors[-1], var="v", init=draw(st.sampled_from([1.0, 2.0])))
    return p


__all__ = ["BIVARIATE", "UNIVARIATE", "programs"]

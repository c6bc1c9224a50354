r"""Compiled scalar math shared by the CPU loops (:mod:`.conv_stack_jit`, :mod:`.recurrent_jit`): numba's decorator
and the ReLU and erf duals at one entry.

The arc cosine is a polynomial that vectorizes (``acos x = π/2 − asin x`` for ``|x| ≤ 1/2``, ``2·asin √((1 − |x|)/2)``
otherwise, and ``asin s = s + s·z·R(z)`` with ``R`` the degree-18 Chebyshev interpolant of ``(asin √z/√z − 1)/z`` on
``[0, 1/4]``, built from its positive-term Taylor series): within 1e-15 of libm's. The duals follow the torch path's
conventions (:func:`.conv_stack_torch.relu_in_place`, :mod:`nngp_gpytorch.duals.safe_math`): identical inputs at the
same position get ``c = 1`` exactly; with the NTK, ``|c| ≥ 1 − 8·eps`` snaps to ``±1``. numba caches a compiled
function keyed on its own file: after changing a function here, touch the files whose loops inline it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import chebyshev

try:  # optional: without numba the engine keeps its torch path
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is not installed
    numba = None

#: numba is installed (else every loop module keeps its torch path)
AVAILABLE = numba is not None
_TWO_PI_INV = 1.0 / (2.0 * math.pi)


def _asin_series(z: np.ndarray) -> np.ndarray:
    """``(asin √z/√z − 1)/z = Σ_{n≥1} ((2n)!/(4ⁿ n!²))/(2n + 1)·z^{n−1}``: positive terms, no cancellation."""
    total, coefficient = np.zeros_like(z), 1.0
    for n in range(1, 64):
        coefficient *= (2 * n - 1) / (2 * n)
        total += coefficient / (2 * n + 1) * z ** (n - 1)
    return total


_R = chebyshev.Chebyshev.interpolate(_asin_series, 18, domain=[0.0, 0.25]).convert(
    kind=np.polynomial.Polynomial, domain=[0.0, 0.25], window=[0.0, 0.25]).coef
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, R11, R12, R13, R14, R15, R16, R17, R18 = (float(c) for c in _R)


def jit_function(**options):
    """numba's ``njit`` (cached; numpy's error model; ``a·b + c`` may be fused into one FMA, which rounds once), or
    the plain function without numba."""
    def wrap(fn):
        return numba.njit(cache=True, error_model="numpy", fastmath={"contract"}, **options)(fn) if AVAILABLE else fn
    return wrap


@jit_function(inline="always")
def _asin_r(z):
    r = R14 + z * (R15 + z * (R16 + z * (R17 + z * R18)))
    r = R9 + z * (R10 + z * (R11 + z * (R12 + z * (R13 + z * r))))
    r = R4 + z * (R5 + z * (R6 + z * (R7 + z * (R8 + z * r))))
    return R0 + z * (R1 + z * (R2 + z * (R3 + z * r)))


@jit_function(inline="always")
def _asin_reduced(ax):
    """``(asin s, small)`` for ``ax = |x| ≤ 1``: ``s = ax`` when ``small`` (``ax ≤ 1/2``), else ``s = √((1 − ax)/2)``,
    with ``asin s = s + s·z·R(z)``, ``z = s²``: the one polynomial both inverse functions use."""
    small = ax <= 0.5
    zb = (1.0 - ax) * 0.5
    z = ax * ax if small else zb
    s = ax if small else math.sqrt(zb)
    return s + s * z * _asin_r(z), small


@jit_function(inline="always")
def arccos(x):
    """``arccos x`` for ``x ∈ [−1, 1]``, branch-free (selects), so loops over it vectorize."""
    a, small = _asin_reduced(abs(x))
    neg = x < 0.0
    r_small = 0.5 * math.pi - (-a if neg else a)
    r_big = math.pi - 2.0 * a if neg else 2.0 * a
    return r_small if small else r_big


@jit_function(inline="always")
def arcsin(x):
    """``arcsin x`` for ``x ∈ [−1, 1]`` from the same polynomial (``π/2 − 2·asin √((1 − |x|)/2)`` above 1/2)."""
    a, small = _asin_reduced(abs(x))
    r = a if small else 0.5 * math.pi - 2.0 * a
    return -r if x < 0.0 else r


@jit_function(inline="always")
def erf_dual(s, q1, iq1, r1, q2, iq2, r2, ident):
    """``(K', Θ̇)`` of the erf dual (Williams 1997) at pre-activation covariance ``s``: ``(2/π)·arcsin(2k·r·r')`` and
    ``(4/π)·((1 + 2v)(1 + 2v') − 4k²)^(−1/2)`` with ``r = 1/√(1 + 2v)``, ``k = c·√(v·v')`` (``c = 1`` for identical
    inputs at the same position, as :func:`~nngp_gpytorch.duals.safe_math.correlation` does)."""
    c = min(max(s * iq1 * iq2, -1.0), 1.0)
    c = 1.0 if ident else c
    k = c * (q1 * q2)
    a = min(max(2.0 * k * (r1 * r2), -1.0), 1.0)
    det = max(1.0 / (r1 * r1) * (1.0 / (r2 * r2)) - 4.0 * k * k, 2.2250738585072014e-308)
    return (2.0 / math.pi) * arcsin(a), (4.0 / math.pi) / math.sqrt(det)


@jit_function(inline="always")
def relu_dual(s, q1, iq1, q2, iq2, snap, ident):
    """``(K', (π − θ)/2π)`` of the ReLU dual at pre-activation covariance ``s`` (``iq = 1/√v``)."""
    c = min(max(s * -iq1 * iq2, -1.0), 1.0)  # −c, as the torch path holds it
    c = 1.0 if c >= snap else (-1.0 if c <= -snap else c)
    c = -1.0 if ident else c
    pmt = arccos(c)  # π − θ
    j1 = math.sqrt(1.0 - c * c) - pmt * c
    return j1 * q1 * (q2 * _TWO_PI_INV), pmt * _TWO_PI_INV


@jit_function()
def variance_roots(v, q, inverse, erf_scale):
    """Per entry of the flat variances ``v`` (clamped at 0), in one pass: ``q = √v``, ``inverse = 1/√v`` (the ReLU
    dual's) and ``erf_scale = 1/√(1 + 2v)`` (the erf dual's), written into the given arrays of ``v``'s shape."""
    for i in range(v.shape[0]):
        x = max(v[i], 0.0)
        r = math.sqrt(x)
        q[i] = r
        inverse[i] = 1.0 / r
        erf_scale[i] = 1.0 / math.sqrt(1.0 + 2.0 * x)


__all__ = ["AVAILABLE", "arccos", "arcsin", "erf_dual", "jit_function", "relu_dual", "variance_roots"]

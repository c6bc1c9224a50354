"""The NNGP and NTK kernels of any architecture description."""

from __future__ import annotations

from .base import InfiniteWidthKernel


class NNGPKernel(InfiniteWidthKernel):
    r"""Neural network Gaussian process kernel (Neal 1995; Lee et al. 2018; Yang 2019).

    ``K(x, x') = lim_{width→∞} Cov[f(x), f(x')]`` for one output unit ``f`` of the network described by
    ``architecture`` with i.i.d. Gaussian weights ``N(0, σw²/fan_in)`` and biases ``N(0, σb²)``. The
    covariance is propagated layer by layer; for an MLP
    ``K¹ = σw²·x·x'/d + σb²`` and ``K^{l+1} = σw²·E[φ(u)φ(v)] + σb²`` with ``(u, v) ~ N(0, K^l)``
    (Lee et al. 2018, eq. 4–5).

    >>> from nngp_gpytorch import NNGPKernel, arch as A
    >>> kernel = NNGPKernel(A.Serial(A.Dense(), A.ReLU(), A.Dense()), weight_var=2.0, bias_var=0.1)

    See :class:`~nngp_gpytorch.kernels.base.InfiniteWidthKernel` for the arguments.
    """


class NTKKernel(InfiniteWidthKernel):
    r"""Neural tangent kernel at initialization (Jacot et al. 2018; Yang 2019), NTK parameterization.

    Weights are ``ω ~ N(0, 1)`` scaled by ``σw/sqrt(fan_in)`` and biases ``σb·β`` with ``β ~ N(0, 1)``;
    ``Θ(x, x') = Σ_params ∂f(x)/∂p · ∂f(x')/∂p`` over all ``ω`` and ``β``, in the limit of infinite width
    (width-independent). For a dense layer ``Θ' = K' + σw²·V_φ'(K)⊙Θ``. In the standard
    parameterization the NTK would instead grow with the widths (see ``docs/ntk.md``).

    Same arguments, hyperparameters and behaviour as :class:`NNGPKernel`;
    :meth:`~nngp_gpytorch.kernels.base.InfiniteWidthKernel.nngp_and_ntk` gives both from one pass.
    """

    _returns_ntk = True

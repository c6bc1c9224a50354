"""The catalogue of named architectures that ``python -m verification`` and the test suite verify.

Adding one is one line::

    register_architecture("relu_mlp3", A.mlp(3, A.ReLU()), weight_var=2.0, bias_var=0.1)

An entry holds the architecture, the hyperparameters both readings use (shared floats or a
:class:`~nngp_gpytorch.algebra.Hyperparameters`, e.g. per layer), and how to build its test inputs
(``inputs``: a callable returning ``(k, d)``, default :func:`~verification.ensembles.default_inputs`)
with an optional ``input_shape`` for structured families, and optionally its own budget
(``networks``, ``width``, ``widths`` for the convergence plot) where literal weight sharing makes the
default 256 × 4096 too slow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters

from .ensembles import as_hyperparameters, default_inputs


@dataclass(frozen=True)
class CatalogueEntry:
    """A named architecture with the settings it is verified at."""

    name: str
    architecture: A.Layer
    weight_var: float | Hyperparameters = 1.0
    bias_var: float = 0.0
    inputs: Callable[[], torch.Tensor] = field(default=default_inputs, repr=False)
    input_shape: tuple[int, ...] | None = None
    description: str = ""
    networks: int | None = None
    width: int | None = None
    widths: tuple[int, ...] | None = None
    analytic: Callable | None = field(default=None, repr=False)

    @property
    def hyper(self) -> Hyperparameters:
        return as_hyperparameters(self.weight_var, self.bias_var)

    def make_inputs(self) -> torch.Tensor:
        return self.inputs()


ARCHITECTURES: dict[str, CatalogueEntry] = {}


def register_architecture(name: str, architecture: A.Layer, weight_var: float | Hyperparameters = 1.0,
                          bias_var: float = 0.0, inputs: Callable[[], torch.Tensor] = default_inputs,
                          input_shape: tuple[int, ...] | None = None, description: str = "",
                          networks: int | None = None, width: int | None = None,
                          widths: tuple[int, ...] | None = None, analytic: Callable | None = None) -> CatalogueEntry:
    """Add ``architecture`` to the catalogue under ``name`` (names are unique); ``networks``/``width``
    override the default budget (256 × 4096), ``widths`` the convergence plot's widths; ``analytic``
    ``(architecture, x, hyper) -> K`` replaces the pairwise kernel (set-dependent kernels: batch norm)."""
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is already registered")
    if name == "all":
        raise ValueError("'all' is reserved for running the whole catalogue")
    entry = CatalogueEntry(name, architecture, weight_var, bias_var, inputs, input_shape,
                           description or architecture.describe(), networks, width, widths, analytic)
    ARCHITECTURES[name] = entry
    return entry


def get_architecture(name: str) -> CatalogueEntry:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None


def _per_layer(weight_vars: list[float], bias_vars: list[float]) -> Hyperparameters:
    return Hyperparameters(torch.tensor(weight_vars, dtype=torch.float64), torch.tensor(bias_vars, dtype=torch.float64))


# --- MLPs (dense layers + elementwise activations) ------------------------------------------------------
register_architecture("relu_mlp1", A.mlp(1, A.ReLU()), weight_var=2.0, bias_var=0.1)
register_architecture("relu_mlp3", A.mlp(3, A.ReLU()), weight_var=2.0, bias_var=0.1)
register_architecture("erf_mlp2", A.mlp(2, A.Erf()), weight_var=1.6, bias_var=0.1)
register_architecture("tanh_mlp2", A.mlp(2, A.Tanh()), weight_var=1.6, bias_var=0.1)
register_architecture("sign_mlp2", A.mlp(2, A.Sign()), weight_var=1.5, bias_var=0.1)
register_architecture("step_mlp2", A.mlp(2, A.Step()), weight_var=1.5, bias_var=0.1)
register_architecture("gelu_mlp2", A.mlp(2, A.GELU()), weight_var=1.6, bias_var=0.1)
register_architecture("abs_mlp2", A.mlp(2, A.Abs()), weight_var=1.0, bias_var=0.1)
register_architecture("leaky_relu_mlp2", A.mlp(2, A.LeakyReLU(0.2)), weight_var=1.8, bias_var=0.1)
register_architecture("identity_mlp2", A.mlp(2, A.Identity()), weight_var=1.2, bias_var=0.1)
register_architecture("sigmoid_mlp2", A.mlp(2, A.Sigmoid()), weight_var=2.0, bias_var=0.1)
register_architecture("silu_mlp2", A.mlp(2, A.SiLU()), weight_var=1.8, bias_var=0.1)
register_architecture("cos_mlp2", A.mlp(2, A.Activation(torch.cos, name="cos")), weight_var=1.5, bias_var=0.1,
                      description="user callable Activation(torch.cos): dual by Gauss–Hermite quadrature")
register_architecture("sign_mlp1_nobias", A.mlp(1, A.Sign()), weight_var=1.0, bias_var=0.0,
                      description="deterministic diagonal (sign² = 1): exact comparison of zero-variance entries")
register_architecture(
    "mixed_mlp3_per_layer",
    A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.Erf(), A.Dense(), A.Tanh(), A.Dense()),
    weight_var=_per_layer([1.5, 2.0, 1.2, 1.8], [0.05, 0.1, 0.0, 0.2]),
    description="ReLU → erf → tanh with per-layer (σw², σb²)",
)
register_architecture(
    "relu_mlp2_fixed_readout",
    A.Serial(A.Dense(), A.ReLU(), A.Dense(), A.ReLU(), A.Dense(weight_var=1.0, bias_var=0.5)),
    weight_var=2.0, bias_var=0.05, description="fixed readout variances on the last Dense",
)


# --- structured families (budgets as in their own statistical tests; docs/spatial.md, recurrent.md, attention.md)
def _images(k: int = 6, shape: tuple[int, ...] = (1, 4, 4), seed: int = 3) -> torch.Tensor:
    return torch.randn(k, int(torch.Size(shape).numel()), generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _sequences(lengths=(1, 3, 5, 8, 2), d: int = 2, t: int = 8, seed: int = 11) -> torch.Tensor:
    from nngp_gpytorch.sequences import pack_sequences

    g = torch.Generator().manual_seed(seed)
    return pack_sequences([torch.randn(n, d, generator=g, dtype=torch.float64) for n in lengths], t)


def _tokens(k: int = 4, t: int = 5, d: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, t * d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


_RECURRENT_HYPER = _per_layer([1.0, 1.5, 1.2], [0.1, 0.0, 0.05])
register_architecture("cnn2_gap", A.Serial(A.Conv(3), A.ReLU(), A.Conv(3), A.ReLU(), A.GlobalAvgPool(), A.Dense()),
                      weight_var=1.8, bias_var=0.1, inputs=_images, input_shape=(1, 4, 4), networks=128, width=512,
                      widths=(32, 64, 128, 256, 512), description="2-layer SAME conv, ReLU, global average pooling")
register_architecture("rnn_erf", A.RNN(activation=A.Erf(), masked=True, readout_bias_var=None),
                      weight_var=_RECURRENT_HYPER, inputs=_sequences, input_shape=(8, 3), networks=128, width=512,
                      widths=(32, 64, 128, 256, 512), description="erf RNN, last-step readout, lengths 1-8")
register_architecture("gru", A.GRU(masked=True, readout_bias_var=None, samples=2**14), weight_var=_RECURRENT_HYPER,
                      inputs=_sequences, input_shape=(8, 3), networks=128, width=512, widths=(32, 64, 128, 256, 512),
                      description="erf-gated GRU (Yang 2019), lengths 1-8")
register_architecture("lstm", A.LSTM(masked=True, readout="mean", readout_bias_var=None, samples=2**15),
                      weight_var=_RECURRENT_HYPER, inputs=lambda: _sequences((2, 5, 8)), input_shape=(8, 3),
                      networks=128, width=512, widths=(32, 64, 128, 256, 512),
                      description="tanh/sigmoid LSTM, mean readout, lengths 2-8")
register_architecture("transformer2", A.transformer(2), weight_var=1.5, bias_var=0.2, inputs=_tokens,
                      input_shape=(5, 3), networks=256, width=2048, widths=(64, 128, 256, 512, 1024),
                      description="2 transformer blocks (tied-query attention, LayerNorm, ReLU MLP), mean readout")


def _one_batch_kernel(architecture: A.Layer, x: torch.Tensor, hyper: Hyperparameters) -> torch.Tensor:
    """Batch norm: the k inputs form one batch (one forward pass of each finite network)."""
    from nngp_gpytorch.algebra.batchnorm import evaluate_batches

    with torch.no_grad():
        return evaluate_batches(architecture, x, (x.shape[-2],), hyper)


register_architecture("batchnorm_mlp2", A.batchnorm_mlp(2), weight_var=1.5, bias_var=0.1,
                      inputs=lambda: default_inputs(k=6), networks=256, width=1024,
                      widths=(64, 128, 256, 512, 1024), analytic=_one_batch_kernel,
                      description="Dense → BatchNorm(ReLU) × 2, batch statistics over the 6 inputs (one batch)")

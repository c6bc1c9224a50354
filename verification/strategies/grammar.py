"""A hypothesis grammar over every family the verification can sample: random architectures with their inputs,
each a case that :func:`verification.verify` checks against its finite twin.

Families (``ArchitectureCase.family``):

* ``"flat"`` — ``st.recursive`` compositions on flat inputs: ``Dense`` followed by a chain of one or two
  activations (composed nonlinearities), ``LayerNorm``, ``Dropout`` then ``Dense``, ``Parallel`` branches with
  fresh weights, sums of weightless branches over one Gaussian, and ``Residual`` blocks whose branch is itself a
  drawn composition (ending in ``Dense``), over Gaussian or post-activation features;
* ``"spatial"`` — conv nets in 1–3 spatial dimensions with stride/dilation/padding, average and max pooling,
  residual convs, layer norm and dropout, read out by ``Flatten`` or ``GlobalAvgPool``;
* ``"sequence"`` — transformers (1–2 blocks, causal or not), Elman RNNs, GRUs and LSTMs on short sequences;
* ``"graph"`` — graph convolutions on a random small graph (transductive: the inputs are all nodes' features);
* ``"batchnorm"`` — ``Dense → BatchNorm(φ)`` blocks (φ positively homogeneous: ReLU, LeakyReLU, Abs, Identity,
  Step, Sign) read out by ``Dense``, on one declared batch: all the case's inputs are one forward pass of each
  finite network (batch statistics over them), and the kernel is the set kernel of that batch
  (:func:`one_batch_kernel`).

Draws that the architecture validation refuses are filtered out, so every case is a valid network. Shrinking
goes to the first alternative of each choice: a one-block ReLU MLP, a one-conv net, a one-block transformer.
Batch norm's kernel is over sets (its GPyTorch rows carry batch ids, ``docs/batchnorm.md``); the grammar checks
it on one batch per case, the set the finite twin normalizes over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hypothesis import assume
from hypothesis import strategies as st

from nngp_gpytorch import arch as A

from .spatial import SMOOTH, conv_layers

#: activations drawn by the grammar (first = what shrinking goes to)
GRAMMAR_ACTIVATIONS = (A.ReLU(), A.Erf(), A.Tanh(), A.Abs(), A.GELU(), A.LeakyReLU(0.2), A.Identity())

#: finite-network budget per family: (networks, width)
BUDGETS = {"flat": (512, 512), "spatial": (256, 256), "sequence": (256, 256), "graph": (256, 512),
           "batchnorm": (256, 512)}
#: positively homogeneous activations that BatchNorm accepts (first = what shrinking goes to)
BATCHNORM_ACTIVATIONS = (A.ReLU(), A.Identity(), A.LeakyReLU(0.2), A.Abs(), A.Step(), A.Sign())


@dataclass(frozen=True)
class ArchitectureCase:
    """A drawn architecture with everything :func:`verification.verify` needs."""

    family: str
    architecture: A.Layer
    inputs: torch.Tensor
    input_shape: tuple[int, ...] | None = None
    weight_var: float = 1.5
    bias_var: float = 0.1
    budget: tuple[int, int] = field(default=(256, 256))
    #: ``True`` for a set kernel over one batch (all inputs): verified with :func:`one_batch_kernel`
    one_batch: bool = False

    def verify_kwargs(self) -> dict:
        networks, width = self.budget
        kwargs = dict(networks=networks, width=width, weight_var=self.weight_var, bias_var=self.bias_var,
                      input_shape=self.input_shape)
        if self.one_batch:
            kwargs["analytic"] = one_batch_kernel
        return kwargs

    def __repr__(self) -> str:
        return (f"ArchitectureCase({self.family}: {self.architecture.describe()}, input_shape={self.input_shape}, "
                f"weight_var={self.weight_var}, bias_var={self.bias_var}, inputs={tuple(self.inputs.shape)})")


def _valid(architecture: A.Layer, input_shape=None) -> bool:
    try:
        architecture.validate(input_shape)
    except A.ArchitectureError:
        return False
    return True


def _inputs(draw, k: int, d: int, duplicate: bool = True) -> torch.Tensor:
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if duplicate and draw(st.booleans()):
        x[-1] = x[0]  # an exact duplicate
    return x


def _variances(draw) -> tuple[float, float]:
    return draw(st.sampled_from([1.5, 1.0, 2.0])), draw(st.sampled_from([0.1, 0.0, 0.3]))


# ---------------------------------------------------------------------------------------------- flat


_activation = st.sampled_from(GRAMMAR_ACTIVATIONS)
_chain = st.lists(_activation, min_size=1, max_size=2)

_flat_leaf = st.one_of(
    _chain.map(lambda acts: [A.Dense(), *acts]),
    st.just([A.LayerNorm()]),
    st.sampled_from([0.1, 0.3]).map(lambda rate: [A.Dropout(rate), A.Dense()]),
    _activation.map(lambda act: [A.Parallel(A.Dense(), A.Serial(act, A.Dense()))]),
    st.tuples(_activation, _activation).map(lambda acts: [A.Parallel(*acts)]),
)


def _flat_extend(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.lists(children, min_size=2, max_size=3).map(lambda blocks: [layer for b in blocks for layer in b]),
        children.map(lambda block: [A.Residual(A.Serial(*block, A.Dense()))]),
    )


flat_blocks = st.recursive(_flat_leaf, _flat_extend, max_leaves=4)


@st.composite
def flat_cases(draw) -> ArchitectureCase:
    """``Serial(Dense(), *blocks, φ, Dense())`` on flat inputs, blocks from the recursive grammar above."""
    net = A.Serial(A.Dense(), *draw(flat_blocks), draw(_activation), A.Dense())
    assume(_valid(net))  # e.g. an activation right after Dropout, or LayerNorm of a non-centred sum
    w, b = _variances(draw)
    x = _inputs(draw, draw(st.integers(3, 5)), draw(st.integers(2, 4)))
    return ArchitectureCase("flat", net, x, None, w, b, BUDGETS["flat"])


# ---------------------------------------------------------------------------------------------- spatial


@st.composite
def spatial_architecture_cases(draw, max_blocks: int = 2) -> ArchitectureCase:
    """``[Conv, extra, φ, post] × blocks, (Flatten | GlobalAvgPool), Dense`` with extras residual/layer norm and
    post-layers average pool, max pool, dropout or layer norm, on ``(C, *spatial)`` inputs."""
    ndim = draw(st.integers(1, 3))
    sizes = {1: (4, 8), 2: (3, 5), 3: (2, 3)}[ndim]
    spatial = tuple(draw(st.integers(*sizes)) for _ in range(ndim))
    channels = draw(st.integers(1, 2))
    activation = draw(st.sampled_from(SMOOTH))
    layers: list[A.Layer] = []
    for _ in range(draw(st.integers(1, max_blocks))):
        layers.append(draw(conv_layers(ndim)))
        extra = draw(st.sampled_from(["none", "residual", "layernorm"]))
        if extra == "residual":
            layers.append(A.Residual(A.Serial(activation, A.Conv(draw(st.integers(1, 3)), padding="same"))))
        if extra == "layernorm":
            layers.append(A.LayerNorm())
        layers.append(activation)
        post = draw(st.sampled_from(["none", "maxpool", "avgpool", "dropout", "layernorm"]))
        if post == "maxpool":
            layers.append(A.MaxPool(draw(st.integers(1, 2)), stride=draw(st.integers(1, 2)),
                                    padding=draw(st.sampled_from(["valid", "same", "circular"])), samples=2**12))
        elif post == "avgpool":
            layers.append(A.AvgPool(2, padding=draw(st.sampled_from(["valid", "same"]))))
        elif post == "dropout":
            layers.append(A.Dropout(0.2))
        elif post == "layernorm":
            layers.append(A.LayerNorm())
    layers += [draw(st.sampled_from([A.Flatten(), A.GlobalAvgPool()])), A.Dense()]
    net, shape = A.Serial(*layers), (channels, *spatial)
    if not _valid(net, shape):
        net = A.Serial(A.Conv(1), activation, A.Flatten(), A.Dense())  # a window or filter did not fit: shrink
    w, b = _variances(draw)
    x = _inputs(draw, draw(st.integers(3, 4)), channels * int(torch.Size(spatial).numel()))
    return ArchitectureCase("spatial", net, x, shape, w, b, BUDGETS["spatial"])


# ---------------------------------------------------------------------------------------------- sequences


@st.composite
def sequence_cases(draw) -> ArchitectureCase:
    """A transformer, an Elman RNN, a GRU or an LSTM on ``(T, D)`` token sequences (``T ≤ 4``)."""
    kind = draw(st.sampled_from(["transformer", "rnn", "gru", "lstm"]))
    t, d = draw(st.integers(2, 4)), draw(st.integers(2, 3))
    if kind == "transformer":
        net = A.transformer(draw(st.integers(1, 2)), causal=draw(st.booleans()))
    elif kind == "rnn":
        net = A.rnn(draw(st.sampled_from([A.Erf(), A.ReLU(), A.Tanh()])), readout=draw(st.sampled_from(["last",
                                                                                                         "mean"])))
    elif kind == "gru":
        net = A.gru(readout=draw(st.sampled_from(["last", "mean"])), samples=2**12)
    else:
        net = A.lstm(readout=draw(st.sampled_from(["last", "mean"])), samples=2**12)
    w, b = _variances(draw)
    x = _inputs(draw, 3, t * d)
    return ArchitectureCase("sequence", net, x, (t, d), w, b, BUDGETS["sequence"])


# ---------------------------------------------------------------------------------------------- graphs


@st.composite
def graph_cases(draw) -> ArchitectureCase:
    """A GCN (``A.gcn``) of depth 0–2 on a random graph of 4–6 nodes (edges with probability ½, no isolated
    requirement: self-loops keep every node connected to itself)."""
    n = draw(st.integers(4, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    upper = (torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) < 0.5).double().triu(1)
    adjacency = upper + upper.T
    net = A.gcn(adjacency, draw(st.integers(0, 2)), draw(st.sampled_from([A.ReLU(), A.Erf(), A.Tanh()])),
                normalize=draw(st.sampled_from(["sym", "row"])))
    w, b = _variances(draw)
    x = _inputs(draw, n, draw(st.integers(2, 3)), duplicate=False)
    return ArchitectureCase("graph", net, x, None, w, b, BUDGETS["graph"])


# ---------------------------------------------------------------------------------------------- batch norm


def one_batch_kernel(architecture: A.Layer, x: torch.Tensor, hyper) -> torch.Tensor:
    """The set kernel of ``architecture`` with all ``k`` rows of ``x`` ``(k, d)`` in one batch (the ``analytic``
    of :func:`verification.verify` for batch-norm cases)."""
    from nngp_gpytorch.algebra.batchnorm import evaluate_batches

    with torch.no_grad():
        return evaluate_batches(architecture, x, (x.shape[-2],), hyper)


@st.composite
def batchnorm_cases(draw) -> ArchitectureCase:
    """``Dense → BatchNorm(φ)`` × 1–2 then ``Dense`` (an optional plain activation block between them) on one batch
    of 3–6 distinct inputs of 2–4 features."""
    layers: list[A.Layer] = [A.Dense()]
    for i in range(draw(st.integers(1, 2))):
        if i:
            layers.append(A.Dense())
        layers.append(A.BatchNorm(draw(st.sampled_from(BATCHNORM_ACTIVATIONS))))
    layers.append(A.Dense())
    net = A.Serial(*layers)
    w, b = _variances(draw)
    x = _inputs(draw, draw(st.integers(3, 6)), draw(st.integers(2, 4)), duplicate=False)
    return ArchitectureCase("batchnorm", net, x, None, w, b, BUDGETS["batchnorm"], one_batch=True)


def architecture_cases() -> st.SearchStrategy[ArchitectureCase]:
    """Any family (flat first, so shrinking ends at an MLP)."""
    return st.one_of(flat_cases(), spatial_architecture_cases(), sequence_cases(), graph_cases(), batchnorm_cases())


__all__ = ["BATCHNORM_ACTIVATIONS", "BUDGETS", "GRAMMAR_ACTIVATIONS", "ArchitectureCase", "architecture_cases",
           "batchnorm_cases", "flat_blocks", "flat_cases", "graph_cases", "one_batch_kernel", "sequence_cases",
           "spatial_architecture_cases"]

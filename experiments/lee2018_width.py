"""Lee et al. 2018's protocol on mnist1d: NNGP regression vs trained finite networks of the same architecture.

Data: mnist1d generated offline (``num_samples`` sequences, its 80/20 split), the first ``--n-train`` training and
the first ``--n-test`` test sequences, inputs divided by the training inputs' standard deviation. Targets: centred
one-hot (``one_hot − 0.1``); prediction: the argmax of the 10 outputs. Validation split: the last 20% of the training
points. Everything chosen on it is then refit on all training points.

* **NNGP** (GP regression, posterior mean): noise chosen on the validation split from ``NOISES`` × the mean prior
  variance (as ``experiments/mnist1d_kernels.py``); σw² = 2, σb² = 0.1 fixed. MLP depth: ``--depth`` (the documented
  runs fix 3), or, omitted, chosen on the same split from ``--depths`` by the one-standard-error rule (the shallowest
  depth whose validation accuracy is within one binomial standard error of the best). The 1-D CNN is 3 × Conv(5,
  same) + ReLU, Flatten, Dense (``--depth`` convolutions, default 3); ``cnn_gap`` the same with global average
  pooling (Novak et al. 2019). ``rnn``: the RNN-GP of ``experiments/mnist1d_kernels.py`` (erf Elman RNN,
  σu² = σw² = σv² = 2, σb² = 0.1, no readout bias, mean readout over the 40 steps, one feature per token).
  ``gru``: Yang's erf-gated GRU with the same readout, trained networks only (``--no-gp``: its GP is
  ``mnist1d_kernels.py``'s Monte Carlo ``gru_mc``).
* **Trained finite networks** of the same description (``finite_network``: every ``Dense``/``Conv`` of the kernel's
  architecture becomes a ``torch.nn.Linear``/``Conv1d`` of ``width`` units/channels) in the **standard
  parameterization**, initialized from the kernel's variances (weights ``N(0, σw²/fan_in)``, biases ``N(0, σb²)``: the
  finite network whose infinite-width prior is this NNGP; the RNN and GRU: the verification twin's recursion with
  trainable weights ``U ~ N(0, σu²/D)``, ``W ~ N(0, σw²/width)``, ``b ~ N(μ_b, σb²)`` per gate, shared over time, and
  the readout ``N(0, σv²/width)`` on the same time-readout as the kernel). Trained by Adam (mini-batches of 100, no
  weight decay) on ``½·Σ_classes (f − y)²`` averaged over the batch. The learning rate (from ``--lrs``) and the number
  of epochs are chosen on the validation split with seed 0 (train on the first 80%, best validation accuracy over
  epochs); then every seed is trained on all training points for that many epochs and its test accuracy reported. A
  learning rate that failed at a narrower width (validation accuracy < 0.2 where a smaller one trained) is not tried
  again.
* **Finite network, Bayesian readout**: the same random network at initialization with only the readout inferred
  (its exact posterior mean: kernel regression with ``K̂ = σw²·h·hᵀ/fan_in + σb²`` of the penultimate features,
  noise chosen on the validation split). As the width grows this *is* the NNGP, so it shows the NN → GP limit the
  NNGP describes, next to the fully trained networks whose limit it is not.
* **NTK regression** (reference): the infinite-width limit of gradient-descent training (NTK parameterization),
  mean prediction, same noise selection.

* **Calibration** (Lee et al. 2018, Fig. 3): the NNGP's predictive variance against the squared error of its
  posterior mean per test point, with the inputs as given and with every sequence projected onto the sphere
  ``‖x‖² = d``: for the (nearly homogeneous) ReLU kernels the prior variance grows with ``‖x‖²``, and on mnist1d the
  larger-norm sequences are the easier ones, which turns the raw inputs' variance–error relation around.

Results go to a JSON file after every (width, seed) cell; rerunning the same command skips finished cells. The
documented runs (``docs/experiments.md``, "Lee et al. 2018's protocol"):

    python experiments/lee2018_width.py width --arch mlp --depth 3 --widths 100 300 1000 3000 --seeds 0 1 2 \\
        --out docs/img/lee2018_width_mlp.json
    python experiments/lee2018_width.py width --arch mlp --depth 3 --widths 1000 3000 300 100 --seeds 0 1 2 \\
        --lr-rule one-se --reuse-selection docs/img/lee2018_width_mlp.json --out docs/img/lee2018_width_mlp_one_se.json
    python experiments/lee2018_width.py width --arch cnn_flatten --widths 16 32 64 128 --seeds 0 1 2 \\
        --out docs/img/lee2018_width_cnn_flatten.json
    python experiments/lee2018_width.py width --arch cnn_gap --depth 3 --widths 16 32 64 128 256 --seeds 0 1 2 \\
        --lr-rule one-se --out docs/img/lee2018_width_cnn_gap.json
    python experiments/lee2018_width.py width --arch rnn --widths 64 128 256 512 1024 --seeds 0 1 2 \\
        --lr-rule one-se --out docs/img/lee2018_width_rnn.json
    python experiments/lee2018_width.py calibration --out docs/img/lee2018_calibration.json \\
        --png docs/img/lee2018_calibration.png
    python experiments/lee2018_width.py scale --arch mlp --depth 3 --n-train 10000 --store /tmp/lee2018-10k-mlp \\
        --out docs/img/lee2018_scale.json          # and --arch cnn_flatten; and --n-train 4000
    python experiments/lee2018_width.py report docs/img/lee2018_width_mlp.json docs/img/lee2018_width_mlp_one_se.json \\
        docs/img/lee2018_width_cnn_flatten.json
    python experiments/lee2018_width.py report docs/img/lee2018_width_cnn_gap.json docs/img/lee2018_width_rnn.json \\
        --width-png docs/img/lee2018_width_gap_rnn.png

Published trained-network accuracies on mnist1d's 4,000 training points (Greydanus 2020): logistic 32%, MLP 68%,
CNN 94%, GRU 91%.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

EXACT_ARCHS = ("mlp", "cnn_flatten", "cnn_gap", "rnn")  # whose exact NNGP Gram is affordable at these sizes
ARCHS = (*EXACT_ARCHS, "gru")  # the GRU: trained networks only (``--no-gp``; its GRU-GP: mnist1d_kernels.py gru_mc)
RECURRENT_ARCHS = ("rnn", "gru")  # no depth
NOISES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # × mean prior variance; as mnist1d_kernels.py
WEIGHT_VAR, BIAS_VAR = 2.0, 0.1
VALIDATION_FRACTION = 0.2
NUM_SAMPLES = 15_000  # mnist1d sequences generated: 12,000 train / 3,000 test, the same for every N used here
CLASSES = 10


# --------------------------------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def load_mnist1d(n_train: int, n_test: int, num_samples: int = NUM_SAMPLES, seed: int = 42
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, x_test, y_test)``: the first ``n_train`` training and ``n_test`` test sequences of mnist1d generated
    with ``num_samples`` samples (float64 ``(n, 40)`` inputs divided by the training inputs' std, int64 labels).
    Cached (the same tensors for the same arguments: do not modify them in place)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    if n_train > int(num_samples * args.train_split) or n_test > num_samples - int(num_samples * args.train_split):
        raise ValueError(f"num_samples={num_samples} gives too few sequences for {n_train} train / {n_test} test")
    data = make_dataset(args)
    x = torch.as_tensor(data["x"][:n_train], dtype=torch.float64)
    xt = torch.as_tensor(data["x_test"][:n_test], dtype=torch.float64)
    # the std's reduction is split over torch's threads, so its last bit depends on their number; it is taken over
    # two threads whatever the command's own count, so that every command (`width` trains on one, `scale` runs on
    # two) sees the same inputs and the Gram stores' fingerprints agree between them
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scale = x.std()
    finally:
        torch.set_num_threads(threads)
    return x / scale, torch.as_tensor(data["y"][:n_train]), xt / scale, torch.as_tensor(data["y_test"][:n_test])


def targets_of(labels: torch.Tensor) -> torch.Tensor:
    """Centred one-hot targets ``one_hot − 0.1`` (Lee et al. 2018), float64 ``(n, 10)``."""
    return torch.nn.functional.one_hot(labels, CLASSES).to(torch.float64) - 1.0 / CLASSES


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax is the label."""
    return float((scores.argmax(-1) == labels).double().mean())


# ------------------------------------------------------------------------------------------ architecture


def architecture(name: str, depth: int = 3):
    """``(description, input_shape)`` of the kernels compared here (``input_shape`` None for flat inputs)."""
    from nngp_gpytorch import arch as A

    if name == "mlp":
        return A.mlp(depth), None
    if name == "cnn_flatten":
        return A.cnn(depth, kernel_size=5, readout="flatten"), (1, 40)
    if name == "cnn_gap":  # Novak et al. 2019's CNN-GP with global average pooling
        return A.cnn(depth, kernel_size=5, readout="gap"), (1, 40)
    if name == "rnn":  # the RNN-GP of experiments/mnist1d_kernels.py: erf Elman RNN, mean readout, 40 tokens of 1
        return A.rnn(A.Erf(), readout="mean"), (40, 1)
    if name == "gru":  # the GRU-GP of mnist1d_kernels.py's gru_mc: Yang's erf-gated GRU, mean readout
        return A.gru(readout="mean"), (40, 1)
    raise ValueError(f"unknown architecture {name!r}; choose from {ARCHS}")


class _Elementwise(torch.nn.Module):
    """An activation layer of the description (its ``__call__`` is the elementwise function) as a module."""

    def __init__(self, layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class _RecurrentTwin(torch.nn.Module):
    """The finite twin of a recurrent description (:class:`~nngp_gpytorch.arch.RNN`, ``GRU``, ``LSTM``) without its
    readout, with trainable weights: the recursion is the verification twin's own
    (:func:`verification.twins.recurrent.recurrent_steps`), so the trained network is the cell the kernel
    describes (the Elman RNN: ``g_1 = U·x_1 + b``, ``g_t = U·x_t + b + W·φ(g_{t−1})``; the erf-gated GRU and the
    LSTM as in :mod:`nngp_gpytorch.arch.recurrent`). Features ``Σ_t w_t·f_t`` with the kernel's readout weights
    (``nngp_gpytorch.sequences.readout_weights``: ``1/T`` each for ``"mean"``, one-hot at ``T`` for ``"last"``).
    Standard parameterization, per gate (``gate_variances``): ``U ~ N(0, σu²/D)``, ``W ~ N(0, σw²/width)``,
    ``b ~ N(μ_b, σb²)``, shared over time. Inputs ``(n, T, D)``; outputs ``(n, width)``."""

    def __init__(self, layer, tokens: int, token_dim: int, width: int, input_var: float, hidden_var: float,
                 bias_var: float, generator: torch.Generator) -> None:
        super().__init__()
        from nngp_gpytorch.sequences import readout_weights
        from verification.twins.recurrent import gate_variances

        self.layer = layer
        self.gates = torch.nn.ParameterList()
        for wu, ww, b, mean in gate_variances(layer, input_var, bias_var, hidden_var):
            self.gates.append(torch.nn.Parameter(torch.randn(1, token_dim, width, generator=generator)
                                                 * math.sqrt(wu / token_dim)))
            self.gates.append(torch.nn.Parameter(torch.randn(1, width, width, generator=generator)
                                                 * math.sqrt(ww / width)))
            self.gates.append(torch.nn.Parameter(torch.randn(1, 1, width, generator=generator) * math.sqrt(b) + mean))
        weights = readout_weights(torch.tensor([tokens]), tokens, layer.readout, torch.float32)[0]
        self.register_buffer("readout_weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from verification.twins.recurrent import recurrent_steps

        w = self.readout_weights.to(x.dtype)
        params = [p.to(x.dtype) for p in self.gates]
        maps = [tuple(params[i:i + 3]) for i in range(0, len(params), 3)]
        feats = recurrent_steps(self.layer, x[None], maps)
        out = w[0] * feats[0][0]
        for t in range(1, len(feats)):
            if w[t] != 0:
                out = out + w[t] * feats[t][0]
        return out


class _GlobalAvgPool(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.dim())))


def finite_network(description, width: int, input_dim: int, input_shape: tuple[int, ...] | None = None, *,
                   weight_var: float = WEIGHT_VAR, bias_var: float = BIAS_VAR, outputs: int = CLASSES,
                   seed: int = 0) -> torch.nn.Sequential:
    """The finite network of a kernel's description, in the standard parameterization (float32).

    Every ``Dense`` becomes ``Linear(fan_in, width)`` (the last affine layer ``outputs`` units) and every 1-D
    ``Conv`` (stride 1, dilation 1, odd kernel, ``"same"`` zero padding) ``Conv1d(C, width, k)``; weights are drawn
    ``N(0, σw²/fan_in)`` (``fan_in = C·k`` for a convolution), biases ``N(0, σb²)``, with the layer's own variances
    where the description fixes them, else ``weight_var``/``bias_var``; a layer's own ``width`` overrides ``width``.
    Activations are the description's own callables; ``Flatten`` and ``GlobalAvgPool`` as in the kernel. At
    initialization every output unit is a random function whose covariance tends to the NNGP kernel as
    ``width → ∞`` (``tests/test_experiments.py`` checks it). Inputs arrive flat, ``(n, input_dim)``;
    ``input_shape`` ``(C, T)`` reshapes them for 1-D convolutions.
    """
    from nngp_gpytorch.arch import Activation, Conv, Dense, Flatten, GlobalAvgPool, Serial
    from nngp_gpytorch.arch.recurrent import RecurrentLayer

    layers = description.layers if isinstance(description, Serial) else (description,)
    generator = torch.Generator().manual_seed(int(seed))
    if isinstance(description, RecurrentLayer):
        return _rnn_network(description, width, input_dim, input_shape, weight_var, bias_var, outputs, generator)
    modules: list[torch.nn.Module] = []
    flat: int | None = input_dim
    channels, spatial = None, ()
    if input_shape is not None:
        if math.prod(input_shape) != input_dim:
            raise ValueError(f"input_shape {input_shape} does not hold {input_dim} features")
        modules.append(torch.nn.Unflatten(1, tuple(input_shape)))
        channels, spatial, flat = input_shape[0], tuple(input_shape[1:]), None
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, Dense | Conv))
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense | Conv):
            out = outputs if i == last else (layer.width or width)
            wv = weight_var if layer.weight_var is None else layer.weight_var
            bv = bias_var if layer.bias_var is None else layer.bias_var
            if isinstance(layer, Dense):
                if flat is None:
                    raise ValueError(f"{layer.describe()} receives spatial features; add Flatten() or GlobalAvgPool()")
                module: torch.nn.Module = torch.nn.Linear(flat, out)
                fan_in, flat = flat, out
            else:
                k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
                if (len(spatial) != 1 or layer.padding != "same" or layer.stride not in (1, (1,))
                        or layer.dilation not in (1, (1,)) or k % 2 == 0):
                    raise ValueError(f"finite_network builds 1-D stride-1 'same' convolutions of odd size, got "
                                     f"{layer.describe()}")
                module = torch.nn.Conv1d(channels, out, k, padding=k // 2)
                fan_in, channels = channels * k, out
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * math.sqrt(wv / fan_in))
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * math.sqrt(bv))
            modules.append(module)
        elif isinstance(layer, Activation):
            modules.append(_Elementwise(layer))
        elif isinstance(layer, Flatten):
            modules.append(torch.nn.Flatten())
            flat = channels * math.prod(spatial) if channels is not None else flat
        elif isinstance(layer, GlobalAvgPool):
            modules.append(_GlobalAvgPool())
            flat = channels
        else:
            raise ValueError(f"finite_network does not build {layer.describe()}")
    return torch.nn.Sequential(*modules)


def _rnn_network(layer, width: int, input_dim: int, input_shape: tuple[int, ...] | None, weight_var: float,
                 bias_var: float, outputs: int, generator: torch.Generator) -> torch.nn.Sequential:
    """``finite_network`` of a recurrent description (RNN, GRU, LSTM): ``Unflatten`` to ``(T, D)``, the cell
    (:class:`_RecurrentTwin`) and the readout ``Linear(width, outputs)`` with weights ``N(0, σv²/width)``
    and bias ``N(0, σvb²)``. Variances: the layer's own where it fixes them, else ``weight_var`` (σu², σw², σv²)
    and ``bias_var`` (σb²) — the kernel's shared hyperparameters."""
    if input_shape is None or len(input_shape) != 2 or math.prod(input_shape) != input_dim:
        raise ValueError(f"a recurrent network needs input_shape=(T, D) with T·D = {input_dim}, got {input_shape}")
    if layer.masked:
        raise ValueError("finite_network builds unmasked (equal-length) sequences only")
    (wu, b), (ww, _), (wv, bv) = _rnn_variances(layer, weight_var, bias_var)
    width = layer.width or width
    readout = torch.nn.Linear(width, outputs)
    cell = _RecurrentTwin(layer, input_shape[0], input_shape[1], width, wu, ww, b, generator)
    with torch.no_grad():
        readout.weight.copy_(torch.randn(readout.weight.shape, generator=generator) * math.sqrt(wv / width))
        readout.bias.copy_(torch.randn(readout.bias.shape, generator=generator) * math.sqrt(bv))
    return torch.nn.Sequential(torch.nn.Unflatten(1, tuple(input_shape)), cell, readout)


def _rnn_variances(layer, weight_var: float = WEIGHT_VAR, bias_var: float = BIAS_VAR):
    """``((σu², σb²), (σw², ·), (σv², σvb²))`` of a recurrent description with shared hyperparameters."""
    return tuple((weight_var if w is None else w, bias_var if b is None else b) for w, b in layer.slot_requests())


def readout_variances(description) -> tuple[float, float]:
    """``(σw², σb²)`` of the description's last affine layer (the readout)."""
    from nngp_gpytorch.arch import Conv, Dense, Serial
    from nngp_gpytorch.arch.recurrent import RecurrentLayer

    if isinstance(description, RecurrentLayer):
        return _rnn_variances(description)[2]
    layers = description.layers if isinstance(description, Serial) else (description,)
    last = [layer for layer in layers if isinstance(layer, Dense | Conv)][-1]
    return (WEIGHT_VAR if last.weight_var is None else last.weight_var,
            BIAS_VAR if last.bias_var is None else last.bias_var)


# ------------------------------------------------------------------------------------------ GP regression


def split_index(n: int) -> int:
    """Number of fit points; the last ``VALIDATION_FRACTION`` of ``n`` are the validation split."""
    return n - int(round(VALIDATION_FRACTION * n))


def gp_posterior(k_train: torch.Tensor, k_cross: torch.Tensor, targets: torch.Tensor, noise: float,
                 k_test_diag: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Posterior mean ``(n*, c)``, latent variance ``(n*,)`` (if ``k_test_diag``) and the noise's absolute value
    ``σ² = noise · mean(diag K)``."""
    sigma2 = float(noise * k_train.diagonal().mean())
    factor = torch.linalg.cholesky(k_train + sigma2 * torch.eye(len(k_train), dtype=k_train.dtype))
    mean = k_cross @ torch.cholesky_solve(targets, factor)
    variance = None
    if k_test_diag is not None:
        half = torch.linalg.solve_triangular(factor, k_cross.mT, upper=False)  # L⁻¹ k*
        variance = (k_test_diag - (half**2).sum(0)).clamp_min(0.0)
    return mean, variance, sigma2


def choose_noise(k_train: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, list[float]]:
    """``(noise, validation accuracy, accuracy per NOISES)``: fit on the first 80%, score the last 20%; the
    largest noise among ties (the same fit, better conditioned)."""
    fit = split_index(len(labels))
    targets = targets_of(labels[:fit])
    scores = [accuracy(gp_posterior(k_train[:fit, :fit], k_train[fit:, :fit], targets, s)[0], labels[fit:])
              for s in NOISES]
    return _largest_of_the_best(scores)


def _largest_of_the_best(scores: list[float]) -> tuple[float, float, list[float]]:
    """``(noise, best accuracy, scores)``: the largest of the ``NOISES`` with the best validation accuracy."""
    best = max(scores)
    return max(s for s, a in zip(NOISES, scores, strict=True) if a == best), best, scores


def kernel_grams(kernel, x: torch.Tensor, xt: torch.Tensor, store: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``(K(X, X), K(X*, X), diag K(X*, X*), seconds)`` in float64. ``store``: a directory of Zarr Gram stores
    (``train.zarr``, ``test.zarr``, as `scale` writes them): the two Grams are computed into it tile by tile, or read
    back where a store of the same kernel and inputs is there (the fingerprint decides), float32 values."""
    start = time.perf_counter()
    with torch.no_grad():
        if store is None:
            k_train = kernel(x).to_dense()
            k_cross = kernel(xt, x).to_dense()
        else:
            from nngp_gpytorch.scale import compute_gram

            def read(*inputs: torch.Tensor, name: str) -> torch.Tensor:
                gram = compute_gram(kernel, *inputs, store=f"{store}/{name}.zarr", client="inline")
                return torch.from_numpy(gram.to_numpy()).double()

            k_train, k_cross = read(x, name="train"), read(xt, x, name="test")
        k_diag = kernel(xt, diag=True)
    return k_train, k_cross, k_diag, time.perf_counter() - start


def gp_fit(kernel, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
           calibration: bool = True, store: str | None = None) -> dict[str, Any]:
    """GP regression with ``kernel`` on centred one-hot targets, noise chosen on the validation split, refit on
    all points. With ``calibration``: per test point the predictive variance ``s·(k** − k*ᵀ(K + σ²I)⁻¹k* + σ²)``
    (``s = yᵀ(K + σ²I)⁻¹y / (n·c)``, the kernel amplitude's maximum-likelihood value for this noise ratio) and the
    squared error of the posterior mean averaged over the 10 outputs. ``store``: see :func:`kernel_grams`."""
    k_train, k_cross, k_diag, seconds = kernel_grams(kernel, x, xt, store)
    noise, val_acc, scores = choose_noise(k_train, y)
    targets = targets_of(y)
    mean, variance, sigma2 = gp_posterior(k_train, k_cross, targets, noise, k_diag)
    row: dict[str, Any] = dict(test_accuracy=accuracy(mean, yt), validation_accuracy=val_acc, noise=noise,
                               validation_scores=scores, gram_seconds=seconds,
                               mean=mean.tolist(), prediction=mean.argmax(1).tolist())
    if calibration:
        factor = torch.linalg.cholesky(k_train + sigma2 * torch.eye(len(k_train), dtype=k_train.dtype))
        amplitude = float((targets * torch.cholesky_solve(targets, factor)).sum() / targets.numel())
        row.update(amplitude=amplitude, predictive_variance=(amplitude * (variance + sigma2)).tolist(),
                   squared_error=((mean - targets_of(yt)) ** 2).mean(1).tolist())
    return row


def choose_depth(x: torch.Tensor, y: torch.Tensor, depths: list[int]) -> dict[str, Any]:
    """The MLP-NNGP's depth on the validation split (fit on the first 80% of ``x``, best noise per depth): the
    shallowest depth whose validation accuracy is within one binomial standard error of the best."""
    from nngp_gpytorch import NNGPKernel

    fit = split_index(len(y))
    rows = {}
    for depth in depths:
        description, _ = architecture("mlp", depth)
        kernel = NNGPKernel(description, weight_var=WEIGHT_VAR, bias_var=BIAS_VAR, dtype=torch.float64)
        with torch.no_grad():
            k = kernel(x).to_dense()
        _, val_acc, _ = choose_noise(k, y)
        rows[depth] = val_acc
    best = max(rows.values())
    se = math.sqrt(best * (1 - best) / (len(y) - fit))
    chosen = min(d for d, a in rows.items() if a >= best - se)
    return dict(validation_accuracy={str(d): a for d, a in rows.items()}, best=best, standard_error=se, depth=chosen)


# ------------------------------------------------------------------------------------- finite networks


def _optimizer(params, lr: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # fused Adam unavailable for this device/build
        return torch.optim.Adam(params, lr=lr)


def train_network(net: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
                  batch: int = 100, seed: int = 0, evaluate: tuple[torch.Tensor, torch.Tensor] | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Adam on ``½·Σ_c (f − y)²`` (mean over a mini-batch) with centred one-hot targets, ``epochs`` passes in a
    seeded random order. ``evaluate = (x_val, labels_val)``: accuracy after every epoch, in ``curve``."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(int(seed) + 10_000)
    xf, tf = x.float(), targets_of(labels).float()
    opt = _optimizer(net.parameters(), lr)
    curve, losses = [], []
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc="epochs", leave=False, disable=not progress, mininterval=5):
        order = torch.randperm(len(xf), generator=generator)
        total = 0.0
        net.train()
        for i in range(0, len(xf), batch):
            idx = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = 0.5 * ((net(xf[idx]) - tf[idx]) ** 2).sum(1).mean()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(xf))
        if evaluate is not None:
            curve.append(predict_accuracy(net, *evaluate))
    return dict(curve=curve, train_loss=losses, seconds=time.perf_counter() - start)


def predict(net: torch.nn.Module, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """Network outputs ``(n, 10)`` in float64 (evaluated in float32, in chunks)."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i:i + chunk].float()) for i in range(0, len(x), chunk)]).double()


def predict_accuracy(net: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Test accuracy of ``net`` on ``(x, labels)``."""
    return accuracy(predict(net, x), labels)


def readout_features(h: torch.Tensor, weight_var: float, bias_var: float) -> torch.Tensor:
    """``Φ = [h·√(σw²/m), √σb²]`` ``(n, m + 1)`` of penultimate features ``h`` ``(n, m)``: the readout's kernel
    ``K̂ = σw²·h·hᵀ/m + σb²`` is ``Φ·Φᵀ``."""
    return torch.cat([h * math.sqrt(weight_var / h.shape[1]), torch.full_like(h[:, :1], math.sqrt(bias_var))], dim=1)


def readout_posterior(net: torch.nn.Sequential, description, x: torch.Tensor, y: torch.Tensor,
                      xt: torch.Tensor) -> dict[str, Any]:
    """The random network's readout inferred exactly: kernel regression with ``K̂ = σw²·h·hᵀ/fan_in + σb²`` of the
    penultimate features ``h`` (noise chosen on the validation split, refit on all points); returns the test
    scores and the chosen noise. Solved in feature space (:func:`feature_posterior`) where the features are fewer
    than the points, else with the ``n × n`` kernel."""
    body = net[:-1]
    body.eval()
    with torch.no_grad():
        h = torch.cat([body(x[i:i + 1000].float()) for i in range(0, len(x), 1000)]).double()
        ht = torch.cat([body(xt[i:i + 1000].float()) for i in range(0, len(xt), 1000)]).double()
    phi, phi_test = (readout_features(z, *readout_variances(description)) for z in (h, ht))
    if phi.shape[1] < len(phi):
        noise, val_acc, _ = choose_noise_features(phi, y)
        mean = feature_posterior(phi, phi_test, targets_of(y), noise)
    else:
        k_train = phi @ phi.T
        noise, val_acc, _ = choose_noise(k_train, y)
        mean, _, _ = gp_posterior(k_train, phi_test @ phi.T, targets_of(y), noise)
    return dict(scores=mean, noise=noise, validation_accuracy=val_acc)


def feature_posterior(phi: torch.Tensor, phi_test: torch.Tensor, targets: torch.Tensor, noise: float
                      ) -> torch.Tensor:
    """:func:`gp_posterior`'s mean for the kernel ``K = Φ·Φᵀ`` of features ``Φ`` ``(n, m)``, solved in feature space
    (push-through identity ``Φᵀ(ΦΦᵀ + σ²I)⁻¹ = (ΦᵀΦ + σ²I)⁻¹Φᵀ``): ``Φ*·(ΦᵀΦ + σ²I)⁻¹·Φᵀ·Y`` with
    ``σ² = noise · mean(diag K)``; ``(n*, c)``."""
    sigma2 = float(noise * (phi**2).sum(1).mean())
    gram = phi.mT @ phi + sigma2 * torch.eye(phi.shape[1], dtype=phi.dtype)
    return phi_test @ torch.cholesky_solve(phi.mT @ targets, torch.linalg.cholesky(gram))


def choose_noise_features(phi: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, list[float]]:
    """:func:`choose_noise` for the kernel ``Φ·Φᵀ``, in feature space (:func:`feature_posterior`)."""
    fit = split_index(len(labels))
    targets = targets_of(labels[:fit])
    scores = [accuracy(feature_posterior(phi[:fit], phi[fit:], targets, s), labels[fit:]) for s in NOISES]
    return _largest_of_the_best(scores)


def _failed_narrower(result: dict[str, Any], width: int, lr: float) -> bool:
    """Whether ``lr`` failed (best validation accuracy below twice chance) in the selection run of a narrower
    network where a smaller learning rate did not: in the standard parameterization the largest stable Adam step
    shrinks as the width grows, so it is not tried again (saves the widest networks' most expensive runs). The
    smallest learning rate is never skipped."""
    def ok(curve: list[float]) -> bool:
        return bool(curve) and max(curve) >= 2.0 / CLASSES

    for w, s in result["selection"].items():
        curves = s["curves"]
        if int(w) < width and str(lr) in curves and curves[str(lr)] and not ok(curves[str(lr)]) \
                and any(float(other) < lr and ok(curve) for other, curve in curves.items()):
            return True
    return False


def _agreement(scores: torch.Tensor, gp_mean: torch.Tensor | None) -> tuple[float | None, float | None]:
    """(fraction of test points with the GP's argmax, ‖f − μ_GP‖ / ‖μ_GP‖); ``None`` without a GP."""
    if gp_mean is None:
        return None, None
    return (float((scores.argmax(1) == gp_mean.argmax(1)).double().mean()),
            float((scores - gp_mean).norm() / gp_mean.norm()))


# ------------------------------------------------------------------------------------------- the runs


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _save(result: dict[str, Any], out: str | None) -> None:
    if out is None:
        return
    tmp = f"{out}.tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    os.replace(tmp, out)


def run_width(arch: str, widths: list[int], seeds: list[int], *, n_train: int = 1000, n_test: int = 1000,
              depth: int | None = None, depths: tuple[int, ...] = (1, 2, 3, 4, 5),
              lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2),
              max_epochs: int = 60, batch: int = 100, num_samples: int = NUM_SAMPLES, ntk: bool = True,
              lr_rule: str = "best", reuse_selection: str | None = None, out: str | None = None,
              progress: bool = True, store: str | None = None, gp: bool = True) -> dict[str, Any]:
    """The width experiment for one architecture (module docstring); returns (and writes to ``out`` after every
    cell, resuming from it) ``{"config", "depth_selection", "gp", "ntk", "selection", "trained", "readout"}``.

    ``depth=None`` (MLP only): chosen on the validation split by :func:`choose_depth` among ``depths``.
    ``trained[width][seed]``: test accuracy, agreement with the NNGP's argmax and relative distance to its posterior
    mean, training seconds; ``readout[width][seed]``: the same for the Bayesian readout; ``selection[width]``: the
    chosen learning rate and epochs and the validation curves.

    ``lr_rule="best"``: the learning rate and epoch of the best validation accuracy; ``"one-se"``: the smallest
    learning rate whose best validation accuracy is within one binomial standard error of the best (the most stable
    step among statistical ties), at its own best epoch. ``reuse_selection``: a JSON file of an earlier run with the
    same data and grid whose validation curves are reused instead of retraining the selection runs. ``store``: the
    NNGP's Grams through Zarr stores in this directory (:func:`kernel_grams`; a `scale` run's stores for the same
    kernel and data are read back instead of recomputed). ``gp=False``: the trained and Bayesian-readout networks
    only, without the NNGP and NTK fits (whose in-memory ``n × n`` solves do not fit at N = 50,000: the NNGP's
    number there comes from `scale`); their agreement fields are then ``None``.
    """
    from tqdm.auto import tqdm

    from nngp_gpytorch import NNGPKernel, NTKKernel

    torch.set_num_threads(1)
    config = dict(arch=arch, n_train=n_train, n_test=n_test, num_samples=num_samples, lrs=list(lrs),
                  max_epochs=max_epochs, batch=batch, weight_var=WEIGHT_VAR, bias_var=BIAS_VAR,
                  requested_depth=depth, depths=list(depths), parameterization="standard", optimizer="Adam")
    if lr_rule != "best":
        config["lr_rule"] = lr_rule
    if not gp:
        config["gp"] = False
    if lr_rule not in ("best", "one-se"):
        raise ValueError(f"lr_rule must be 'best' or 'one-se', got {lr_rule!r}")
    if gp and arch not in EXACT_ARCHS:
        raise ValueError(f"the exact {arch.upper()}-GP Gram is out of reach here (the GRU's quasi-Monte Carlo gate "
                         "integrals: ~80 CPU-hours for 1,000 points of 40 steps); run with gp=False (--no-gp) and take "
                         "the GRU-GP from experiments/mnist1d_kernels.py --kernels gru_mc")
    result: dict[str, Any] = dict(config=config, selection={}, trained={}, readout={})
    if out is not None and Path(out).exists():
        with open(out) as fh:
            previous = json.load(fh)
        if previous.get("config") != config:
            raise SystemExit(f"{out} was written with another configuration:\n  {previous.get('config')}\n"
                             f"  now {config}\nchoose another --out or delete it")
        result = previous
    if reuse_selection is not None:
        with open(reuse_selection) as fh:
            donor = json.load(fh)
        for key, chosen in donor["selection"].items():
            partial = result.setdefault("selection_partial", {}).setdefault(key, {})
            for lr, curve in chosen["curves"].items():
                partial.setdefault(lr, dict(curve=curve, seconds=0.0, reused=reuse_selection))
    x, y, xt, yt = load_mnist1d(n_train, n_test, num_samples)
    if depth is None and arch not in RECURRENT_ARCHS:  # no depth (the command line passes 3, unused)
        if arch != "mlp":
            raise ValueError("depth=None (chosen on validation) is implemented for the MLP only")
        if "depth_selection" not in result:
            result["depth_selection"] = choose_depth(x, y, list(depths))
        depth = result["depth_selection"]["depth"]
        if progress:
            print(f"depth chosen on the validation split: {depth} {result['depth_selection']}", flush=True)
    result["depth"] = depth
    description, input_shape = architecture(arch, depth)
    kwargs = dict(weight_var=WEIGHT_VAR, bias_var=BIAS_VAR, dtype=torch.float64)
    if input_shape is not None:
        kwargs["input_shape"] = input_shape
    if gp and "gp" not in result:
        result["gp"] = gp_fit(NNGPKernel(description, **kwargs), x, y, xt, yt, store=store)
        result["gp"]["peak_rss_mib"] = _peak_rss_mib()
        if store is not None:
            result["gp"]["gram_store"] = store
        _save(result, out)
    if gp and ntk and "ntk" not in result:
        row = gp_fit(NTKKernel(description, **kwargs), x, y, xt, yt, calibration=False)
        result["ntk"] = {k: v for k, v in row.items() if k not in ("mean", "prediction")}
        _save(result, out)
    if progress and gp:
        print(f"{arch} depth {depth}: NNGP test accuracy {result['gp']['test_accuracy']:.3f} (noise "
              f"{result['gp']['noise']:g}, Gram {result['gp']['gram_seconds']:.1f} s)"
              + (f"; NTK {result['ntk']['test_accuracy']:.3f}" if ntk else ""), flush=True)
    gp_mean = torch.tensor(result["gp"]["mean"], dtype=torch.float64) if gp else None
    fit = split_index(n_train)
    cells = [(w, s) for w in widths for s in seeds]
    bar = tqdm(total=len(cells) + len(widths), desc=f"{arch} cells", disable=not progress, mininterval=1)
    for width in widths:
        key = str(width)
        if key not in result["selection"]:
            partial = result.setdefault("selection_partial", {}).setdefault(key, {})
            for lr in lrs:
                if str(lr) in partial:
                    continue
                if _failed_narrower(result, width, lr):
                    partial[str(lr)] = dict(curve=[], seconds=0.0, skipped="failed at a smaller width")
                    continue
                net = finite_network(description, width, x.shape[1], input_shape, seed=0)
                run = train_network(net, x[:fit], y[:fit], epochs=max_epochs, lr=lr, batch=batch, seed=0,
                                    evaluate=(x[fit:], y[fit:]), progress=progress)
                partial[str(lr)] = dict(curve=run["curve"], seconds=run["seconds"])
                _save(result, out)
            curves = {lr: p["curve"] for lr, p in partial.items()}
            best = max((acc, -epoch, float(lr)) for lr, curve in curves.items()
                       for epoch, acc in enumerate(curve, start=1))
            if lr_rule == "one-se":
                se = math.sqrt(best[0] * (1 - best[0]) / (n_train - fit))
                lr = min(float(lr) for lr, curve in curves.items() if curve and max(curve) >= best[0] - se)
                curve = curves[next(k for k in curves if float(k) == lr)]
                best = (max(curve), -(curve.index(max(curve)) + 1), lr)
            result["selection"][key] = dict(lr=best[2], epochs=-best[1], validation_accuracy=best[0], curves=curves,
                                            seconds=sum(p["seconds"] for p in partial.values()),
                                            skipped=[lr for lr, p in partial.items() if "skipped" in p])
            del result["selection_partial"][key]
            _save(result, out)
        bar.update(1)
        chosen = result["selection"][key]
        for seed in seeds:
            if str(seed) in result["trained"].get(key, {}):
                bar.update(1)
                continue
            net = finite_network(description, width, x.shape[1], input_shape, seed=seed)
            readout = readout_posterior(net, description, x, y, xt)
            agree, distance = _agreement(readout["scores"], gp_mean)
            result["readout"].setdefault(key, {})[str(seed)] = dict(
                test_accuracy=accuracy(readout["scores"], yt), noise=readout["noise"], agreement=agree,
                relative_distance=distance)
            run = train_network(net, x, y, epochs=chosen["epochs"], lr=chosen["lr"], batch=batch, seed=seed,
                                progress=progress)
            scores = predict(net, xt)
            agree, distance = _agreement(scores, gp_mean)
            result["trained"].setdefault(key, {})[str(seed)] = dict(
                test_accuracy=accuracy(scores, yt), train_accuracy=predict_accuracy(net, x, y), agreement=agree,
                relative_distance=distance, final_train_loss=run["train_loss"][-1], seconds=run["seconds"])
            result["peak_rss_mib"] = _peak_rss_mib()
            _save(result, out)
            bar.update(1)
            if progress:
                cell = result["trained"][key][str(seed)]
                bar.write(f"width {width:5d} seed {seed}: trained {cell['test_accuracy']:.3f} "
                          f"(lr {chosen['lr']:g}, {chosen['epochs']} epochs, {cell['seconds']:.0f} s), "
                          f"Bayesian readout {result['readout'][key][str(seed)]['test_accuracy']:.3f}"
                          + (f", NNGP {result['gp']['test_accuracy']:.3f}" if gp else ""))
    bar.close()
    return result


def run_scale(arch: str, depth: int, n_train: int, n_test: int, store: str, *, tile: int = 2048,
              num_samples: int = NUM_SAMPLES, noise_subset: int = 3000, progress: bool = True,
              threads: int = 1, weight_var: float = WEIGHT_VAR, bias_var: float = BIAS_VAR,
              preconditioner_rank: int = 100, tolerance: float = 1e-4, kernel_rows: bool = True) -> dict[str, Any]:
    """The NNGP at large ``n_train`` through :func:`nngp_gpytorch.scale.fit_predict` in this process
    (``client="inline"``; float32 tile store, noise by validation accuracy on the first ``noise_subset`` points, the
    solve chosen by ``"auto"``; where that is CG, ``preconditioner_rank`` and ``tolerance`` are its pivoted-Cholesky
    rank and mean relative residual, and ``kernel_rows`` says whether the preconditioner's rows are evaluated by the
    kernel or read from the store): test accuracy, wall time per phase and in all, this process's CPU time (the wall
    time of a shared machine overstates the work) and the load average at the end, peak RSS of this process."""
    from nngp_gpytorch import NNGPKernel
    from nngp_gpytorch.scale import fit_predict

    torch.set_num_threads(threads)
    start, cpu = time.perf_counter(), time.process_time()
    x, y, xt, yt = load_mnist1d(n_train, n_test, num_samples)
    description, input_shape = architecture(arch, depth)
    kwargs = dict(weight_var=weight_var, bias_var=bias_var, dtype=torch.float64)
    if input_shape is not None:
        kwargs["input_shape"] = input_shape
    kernel = NNGPKernel(description, **kwargs)
    fitted = fit_predict(kernel, x, targets_of(y), xt, store=store, noise="validation", tile=tile, client="inline",
                         progress=progress, noise_subset=min(noise_subset, n_train),
                         preconditioner_rank=preconditioner_rank, tolerance=tolerance, kernel_rows=kernel_rows)
    solve = fitted.prediction.solve
    return dict(arch=arch, depth=None if arch == "rnn" else depth, n_train=n_train, n_test=n_test,
                num_samples=num_samples, weight_var=weight_var, bias_var=bias_var,
                preconditioner_rank=preconditioner_rank, tolerance=tolerance,
                preconditioner_rows="kernel" if kernel_rows else "store", cg_passes=solve.iterations,
                relative_residual=solve.relative_residual,
                test_accuracy=accuracy(fitted.prediction.mean, yt), noise=fitted.noise,
                method=solve.method, seconds=fitted.seconds, wall_seconds=time.perf_counter() - start,
                cpu_seconds=time.process_time() - cpu, load_average=os.getloadavg(), peak_rss_mib=_peak_rss_mib(),
                torch_threads=torch.get_num_threads())


def run_search(arch: str, weight_vars: tuple[float, ...], bias_vars: tuple[float, ...], *, depth: int = 3,
               n_train: int = 1000, n_test: int = 1000, num_samples: int = NUM_SAMPLES, threads: int = 1,
               out: str | None = None, progress: bool = True) -> dict[str, Any]:
    """σw², σb² of the NNGP chosen on the validation split (Lee et al. 2018, Sec. 4: a grid search on validation data).

    For each grid point: ``K(X, X)`` on the training points, the noise and validation accuracy by :func:`choose_noise`
    (fit on the first 80%, score the last 20%), then the test accuracy of that setting refit on all training points
    (recorded for every point, to show how much the selection leaves on the table; it plays no part in choosing).
    The chosen setting has the best validation accuracy; among ties, the one nearest the default
    ``(WEIGHT_VAR, BIAS_VAR)`` (grid order otherwise). The JSON is written after every grid point and resumed."""
    from nngp_gpytorch import NNGPKernel

    torch.set_num_threads(threads)
    x, y, xt, yt = load_mnist1d(n_train, n_test, num_samples)
    description, input_shape = architecture(arch, depth)
    result: dict[str, Any] = json.loads(Path(out).read_text()) if out and Path(out).exists() else {}
    result.update(arch=arch, depth=None if arch == "rnn" else depth, n_train=n_train, n_test=n_test)
    grid = result.setdefault("grid", {})
    for wv in weight_vars:
        for bv in bias_vars:
            key = f"{wv:g},{bv:g}"
            if key in grid:
                continue
            kwargs = dict(weight_var=wv, bias_var=bv, dtype=torch.float64)
            if input_shape is not None:
                kwargs["input_shape"] = input_shape
            k_train, k_cross, _, seconds = kernel_grams(NNGPKernel(description, **kwargs), x, xt)
            noise, val_acc, _ = choose_noise(k_train, y)
            mean, _, _ = gp_posterior(k_train, k_cross, targets_of(y), noise)
            grid[key] = dict(weight_var=wv, bias_var=bv, validation_accuracy=val_acc, noise=noise,
                             test_accuracy=accuracy(mean, yt), gram_seconds=seconds)
            if progress:
                print(f"σw² = {wv:g}, σb² = {bv:g}: validation {val_acc:.3f}, test {grid[key]['test_accuracy']:.3f} "
                      f"({seconds:.1f} s)", flush=True)
            _save(result, out)
    rows = list(grid.values())
    best = max(r["validation_accuracy"] for r in rows)
    chosen = min((r for r in rows if r["validation_accuracy"] == best),
                 key=lambda r: (abs(r["weight_var"] - WEIGHT_VAR) + abs(r["bias_var"] - BIAS_VAR)))
    default = grid.get(f"{WEIGHT_VAR:g},{BIAS_VAR:g}")
    result.update(chosen=chosen, default=default, best_test=max(r["test_accuracy"] for r in rows),
                  validation_standard_error=math.sqrt(best * (1 - best) / (n_train - split_index(n_train))))
    _save(result, out)
    return result


# ------------------------------------------------------------------------------------------- reporting

LABELS = {"mlp": "MLP", "cnn_flatten": "1-D CNN, Flatten", "cnn_gap": "1-D CNN, GAP",
          "rnn": "erf Elman RNN, mean readout", "gru": "erf-gated GRU, mean readout"}


def _mean_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), (float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan"))


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per width: mean ± standard error over seeds of the trained and Bayesian-readout networks' test
    accuracy, their agreement with the NNGP's argmax, the NNGP − trained gap, and the chosen lr/epochs."""
    rows = []
    gp = result["gp"]["test_accuracy"] if "gp" in result else math.nan

    def agreement(cells: dict[str, Any]) -> tuple[float, float]:  # None: no NNGP in this run
        return _mean_se([math.nan if c["agreement"] is None else c["agreement"] for c in cells.values()])

    for key in sorted(result["trained"], key=int):
        trained = [c["test_accuracy"] for c in result["trained"][key].values()]
        readout = [c["test_accuracy"] for c in result["readout"][key].values()]
        gap = [gp - a for a in trained]
        rows.append(dict(width=int(key), seeds=len(trained), trained=_mean_se(trained), readout=_mean_se(readout),
                         gap=_mean_se(gap), trained_agreement=agreement(result["trained"][key]),
                         readout_agreement=agreement(result["readout"][key]),
                         train_accuracy=_mean_se([c["train_accuracy"] for c in result["trained"][key].values()]),
                         seconds=_mean_se([c["seconds"] for c in result["trained"][key].values()]),
                         lr=result["selection"][key]["lr"], epochs=result["selection"][key]["epochs"]))
    return rows


def _title(result: dict[str, Any]) -> str:
    config = result["config"]
    rule = ", lr: smallest within 1 SE" if config.get("lr_rule") == "one-se" else ""
    depth = "" if config["arch"] in RECURRENT_ARCHS else f", depth {result['depth']}"
    return f"{LABELS.get(config['arch'], config['arch'])}{depth}{rule}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The width tables (one per architecture) in Markdown."""
    lines = []
    for result in results:
        gp, ntk = result.get("gp"), result.get("ntk")
        headline = (f"NNGP test accuracy {gp['test_accuracy']:.3f}" if gp
                    else "NNGP not fitted in this run (`--no-gp`)")
        lines += [f"**{_title(result)}, N = {result['config']['n_train']:,}** — {headline}"
                  + (f", NTK regression {ntk['test_accuracy']:.3f}" if ntk else "") + ".", "",
                  "| width | seeds | trained NN | NNGP − trained | trained: same argmax as NNGP | train acc. "
                  "| Bayesian readout | readout: same argmax as NNGP | lr, epochs | s per seed |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in summary(result):
            def f(pair):
                return "—" if math.isnan(pair[0]) else f"{pair[0]:.3f} ± {pair[1]:.3f}"
            lines.append(f"| {row['width']:,} | {row['seeds']} | {f(row['trained'])} | {f(row['gap'])} | "
                         f"{f(row['trained_agreement'])} | {row['train_accuracy'][0]:.3f} | {f(row['readout'])} | "
                         f"{f(row['readout_agreement'])} | {row['lr']:g}, {row['epochs']} | {row['seconds'][0]:.0f} |")
        lines.append("")
    return "\n".join(lines)


def plot_width(results: list[dict[str, Any]], path: str | None = None):
    """Test accuracy against width (mean ± SE over seeds) for the trained and Bayesian-readout networks, with the
    NNGP (and NTK) as horizontal lines; one column per architecture. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.2 * len(results), 7.2), squeeze=False, sharex="col")
    for col, result in enumerate(results):
        rows = summary(result)
        widths = [r["width"] for r in rows]
        ax = axes[0, col]
        if result.get("gp"):
            ax.axhline(result["gp"]["test_accuracy"], color="k", ls="--", label="NNGP (posterior mean)")
        if result.get("ntk"):
            ax.axhline(result["ntk"]["test_accuracy"], color="gray", ls=":", label="NTK regression")
        for name, marker, label in (("trained", "o", "trained NN (Adam, all layers)"),
                                    ("readout", "s", "NN at init., Bayesian readout")):
            ax.errorbar(widths, [r[name][0] for r in rows], yerr=[r[name][1] for r in rows], fmt=f"{marker}-",
                        capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{_title(result)}\nmnist1d, N = {result['config']['n_train']:,}", fontsize=10)
        ax.legend(fontsize=8)
        ax = axes[1, col]
        for name, marker in (("trained", "o"), ("readout", "s")):
            ax.errorbar(widths, [r[f"{name}_agreement"][0] for r in rows],
                        yerr=[r[f"{name}_agreement"][1] for r in rows], fmt=f"{marker}-", capsize=3)
        ax.set_xscale("log")
        ax.set_xticks(widths, [f"{w:,}" for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("width (units / channels)")
        ax.set_ylabel("test points with the NNGP's argmax")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


def run_calibration(archs: tuple[str, ...] = EXACT_ARCHS, *, n_train: int = 1000, n_test: int = 1000, depth: int = 3,
                    num_samples: int = NUM_SAMPLES) -> list[dict[str, Any]]:
    """The NNGP's predictive variance and squared error per test point (:func:`gp_fit`), for each architecture
    with the inputs as in the width experiment (``"raw"``) and with every sequence projected onto the sphere
    ``‖x‖² = d`` (``"sphere"``: every input has the same prior variance, as in Lee et al.'s analysis)."""
    from nngp_gpytorch import NNGPKernel

    torch.set_num_threads(1)
    x, y, xt, yt = load_mnist1d(n_train, n_test, num_samples)
    rows = []
    for arch in archs:
        description, input_shape = architecture(arch, depth)
        kwargs = dict(weight_var=WEIGHT_VAR, bias_var=BIAS_VAR, dtype=torch.float64)
        if input_shape is not None:
            kwargs["input_shape"] = input_shape
        for inputs in ("raw", "sphere"):
            a, b = (x, xt) if inputs == "raw" else (sphere(x), sphere(xt))
            row = gp_fit(NNGPKernel(description, **kwargs), a, y, b, yt)
            var, err = torch.tensor(row["predictive_variance"]), torch.tensor(row["squared_error"])
            rows.append(dict(arch=arch, depth=depth, inputs=inputs, n_train=n_train, n_test=n_test,
                             test_accuracy=row["test_accuracy"], noise=row["noise"], amplitude=row["amplitude"],
                             spearman=_spearman(var, err),
                             spearman_norm_variance=_spearman(b.norm(dim=1), var),
                             predictive_variance=row["predictive_variance"], squared_error=row["squared_error"]))
    return rows


def sphere(x: torch.Tensor) -> torch.Tensor:
    """Every row scaled to ``‖x‖² = d``."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * x.shape[1] ** 0.5


def plot_calibration(rows: list[dict[str, Any]], path: str | None = None, bins: int = 10):
    """Lee et al. 2018 Fig. 3: the NNGP's predictive variance against the squared error of its posterior mean
    (averaged over the 10 outputs), test points binned by variance (equal counts; mean ± SE per bin), with the
    identity line and the rank correlation over all test points; one panel per row of :func:`run_calibration`.
    Returns the figure."""
    import matplotlib.pyplot as plt

    columns = min(len(rows), 2)
    fig, axes = plt.subplots(math.ceil(len(rows) / columns), columns, figsize=(4.8 * columns,
                             3.9 * math.ceil(len(rows) / columns)), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        var = torch.tensor(row["predictive_variance"], dtype=torch.float64)
        err = torch.tensor(row["squared_error"], dtype=torch.float64)
        groups = torch.tensor_split(var.argsort(), bins)
        mv = [float(var[g].mean()) for g in groups]
        me = [float(err[g].mean()) for g in groups]
        se = [float(err[g].std() / math.sqrt(len(g))) for g in groups]
        ax.errorbar(mv, me, yerr=se, fmt="o-", capsize=3, label=f"{bins} equal-count bins")
        lo, hi = min(mv + me), max(mv + me)
        ax.plot([lo, hi], [lo, hi], "k:", label="squared error = variance")
        inputs = {"raw": "inputs as given", "sphere": "inputs on the sphere"}.get(row.get("inputs"), "")
        ax.set_title(f"{LABELS.get(row['arch'], row['arch'])}-NNGP, N = {row['n_train']:,}, {inputs}\n"
                     f"accuracy {row['test_accuracy']:.3f}, Spearman {_spearman(var, err):+.2f}", fontsize=9)
        ax.set_xlabel("predictive variance (amplitude by max. likelihood)")
        ax.set_ylabel("squared error of the posterior mean")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


# ------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("width", help="NNGP vs trained finite networks by width (resumable JSON)")
    p.add_argument("--arch", choices=ARCHS, default="mlp")
    p.add_argument("--widths", type=int, nargs="+", default=[100, 300, 1000, 3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--depth", type=int, default=None,
                   help="fixed depth (default: MLP chosen on validation, CNN 3; unused by the RNN)")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="MLP depths to choose from")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2],
                   help="Adam learning rates to choose from")
    p.add_argument("--max-epochs", type=int, default=60, help="epochs of the validation (selection) run")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--num-samples", type=int, default=NUM_SAMPLES, help="mnist1d sequences generated")
    p.add_argument("--no-ntk", action="store_true")
    p.add_argument("--no-gp", action="store_true",
                   help="trained and Bayesian-readout networks only (the NNGP at large N: the `scale` command)")
    p.add_argument("--lr-rule", choices=["best", "one-se"], default="best",
                   help="best validation accuracy, or the smallest lr within one standard error of it")
    p.add_argument("--reuse-selection", default=None, help="JSON of an earlier run whose validation curves to reuse")
    p.add_argument("--store", default=None,
                   help="the NNGP's Grams through Zarr stores here (float32; a `scale` run's stores are reused)")
    p.add_argument("--out", default=None, help="JSON results (resumed if it exists)")
    p = sub.add_parser("scale", help="the NNGP at large N through nngp_gpytorch.scale")
    p.add_argument("--arch", choices=EXACT_ARCHS, default="mlp")
    p.add_argument("--depth", type=int, default=None, help="required except for the RNN (no depth)")
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--store", required=True, help="directory of the Zarr Gram stores (resumable)")
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--num-samples", type=int, default=NUM_SAMPLES)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the compiled conv loops use them too)")
    p.add_argument("--weight-var", type=float, default=WEIGHT_VAR, help="σw² (e.g. the one `search` chose)")
    p.add_argument("--bias-var", type=float, default=BIAS_VAR, help="σb²")
    p.add_argument("--preconditioner-rank", type=int, default=100, help="CG's pivoted-Cholesky rank (large N)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="CG's mean relative residual (large N)")
    p.add_argument("--preconditioner-rows", choices=["kernel", "store"], default="kernel",
                   help="evaluate the preconditioner's rows with the kernel, or read them as strips of the stored "
                        "Gram (faster where a kernel row costs more than ~0.5 s: the GAP CNN-GP at 50k)")
    p.add_argument("--out", default=None, help="JSON file of rows (this row added or replaced)")
    p = sub.add_parser("search", help="σw², σb² of the NNGP chosen on the validation split (resumable JSON)")
    p.add_argument("--arch", choices=EXACT_ARCHS, default="mlp")
    p.add_argument("--depth", type=int, default=3, help="unused by the RNN")
    p.add_argument("--weight-vars", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0])
    p.add_argument("--bias-vars", type=float, nargs="+", default=[0.0, 0.03, 0.1, 0.3, 1.0])
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON results (resumed if it exists)")
    p = sub.add_parser("calibration", help="NNGP predictive variance vs squared error (Lee et al. 2018, Fig. 3)")
    p.add_argument("--archs", nargs="+", choices=EXACT_ARCHS, default=list(EXACT_ARCHS))
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--out", default="docs/img/lee2018_calibration.json")
    p.add_argument("--png", default="docs/img/lee2018_calibration.png")
    p = sub.add_parser("report", help="the width figure and Markdown tables from width JSON files")
    p.add_argument("results", nargs="+")
    p.add_argument("--width-png", default=None, help="write the width figure here (none without it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "width":
        depth = args.depth if args.depth is not None or args.arch == "mlp" else 3
        result = run_width(args.arch, args.widths, args.seeds, n_train=args.n_train, n_test=args.n_test, depth=depth,
                           depths=tuple(args.depths), lrs=tuple(args.lrs), max_epochs=args.max_epochs,
                           batch=args.batch, num_samples=args.num_samples, ntk=not args.no_ntk,
                           lr_rule=args.lr_rule, reuse_selection=args.reuse_selection, out=args.out,
                           store=args.store, gp=not args.no_gp)
        print(markdown_table([result]))
    elif args.command == "scale":
        if args.depth is None and args.arch != "rnn":
            parser.error(f"scale --arch {args.arch} needs --depth")
        depth = 3 if args.depth is None else args.depth  # the RNN ignores it
        row = run_scale(args.arch, depth, args.n_train, args.n_test, args.store, tile=args.tile,
                        num_samples=args.num_samples, threads=args.threads, weight_var=args.weight_var,
                        bias_var=args.bias_var, preconditioner_rank=args.preconditioner_rank,
                        tolerance=args.tolerance, kernel_rows=args.preconditioner_rows == "kernel")
        print(json.dumps(row, indent=1))
        if args.out:
            rows = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else []
            def same(r):  # rows written before the variances were recorded used the defaults
                return ((r["arch"], r["n_train"], r.get("weight_var", WEIGHT_VAR), r.get("bias_var", BIAS_VAR))
                        == (row["arch"], row["n_train"], row["weight_var"], row["bias_var"]))
            rows = [r for r in rows if not same(r)] + [row]
            Path(args.out).write_text(json.dumps(rows, indent=1))
    elif args.command == "search":
        result = run_search(args.arch, tuple(args.weight_vars), tuple(args.bias_vars), depth=args.depth,
                            n_train=args.n_train, n_test=args.n_test, threads=args.threads, out=args.out)
        c, d = result["chosen"], result["default"]
        print(f"chosen on validation: σw² = {c['weight_var']:g}, σb² = {c['bias_var']:g} (validation "
              f"{c['validation_accuracy']:.3f} ± {result['validation_standard_error']:.3f}): "
              f"test {c['test_accuracy']:.3f}" + (f"; default (2, 0.1): test {d['test_accuracy']:.3f}" if d else "")
              + f"; best test on the grid {result['best_test']:.3f}")
    elif args.command == "calibration":
        rows = run_calibration(tuple(args.archs), n_train=args.n_train, n_test=args.n_test, depth=args.depth)
        Path(args.out).write_text(json.dumps(rows))
        plot_calibration(rows, args.png)
        for row in rows:
            print(f"{row['arch']:12s} {row['inputs']:7s} accuracy {row['test_accuracy']:.3f} noise {row['noise']:g} "
                  f"Spearman(variance, squared error) {row['spearman']:+.2f}, "
                  f"Spearman(|x|, variance) {row['spearman_norm_variance']:+.2f}")
        print(f"wrote {args.out} and {args.png}")
    else:
        results = [json.loads(Path(p).read_text()) for p in args.results]
        print(markdown_table(results))
        if args.width_png:
            plot_width(results, args.width_png)
            print(f"wrote {args.width_png}")


if __name__ == "__main__":
    main()

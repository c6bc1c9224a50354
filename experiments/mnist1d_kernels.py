"""mnist1d with infinite-width kernels of four architectures (a reduced Lee et al. 2018 protocol).

GP regression on centred one-hot targets (``one_hot − 0.1``), the noise chosen on a validation split (the last
20% of the training points) from a grid, then refit on all training points; test accuracy of the posterior mean's
argmax. Kernels: MLP-GP (3 ReLU layers), CNN-GP with Flatten and with global average pooling (Novak et al.
2019: 3 × Conv(5, same) + ReLU on the 40-step sequence as a 1-channel signal), RNN-GP (erf RNN, mean readout).
Hyperparameters are fixed (σw² = 2, σb² = 0.1; RNN σu² = σw² = 2, σb² = 0.1), not searched. Each kernel runs in
its own process so that its peak RSS is its own.

On request (not by default), ``gru_mc``: the GRU-GP (Yang's erf-gated GRU, mean readout, the same hyperparameters)
estimated from ``--mc-networks`` random finite GRUs of width ``--mc-width``
(:func:`verification.monte_carlo.monte_carlo_gram`), since its analytic quadrature is out of reach at 40 steps;
``rnn_mc``: the RNN-GP estimated the same way (the control: what the estimate costs against the exact ``rnn``);
``--mc-checkpoint`` makes those runs resumable.

    python experiments/mnist1d_kernels.py [--n-train 1000 4000] [--n-test 1000] [--out docs/img/mnist1d_kernels.json]

Published trained-network accuracies (Greydanus 2020, mnist1d README): logistic 32%, MLP 68%, CNN 94%, GRU 91%.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import torch

KERNELS = ("mlp", "cnn_flatten", "cnn_gap", "rnn")
ON_REQUEST = ("gru_mc", "rnn_mc")
NOISES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def _data(n_train: int, n_test: int):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = max(5000, int((n_train + n_test) / 0.8) + 1)  # mnist1d splits 80/20 train/test
    data = make_dataset(args)
    x = torch.tensor(data["x"], dtype=torch.float64)[:n_train]
    xt = torch.tensor(data["x_test"], dtype=torch.float64)[:n_test]
    scale = x.std()
    return x / scale, torch.tensor(data["y"])[:n_train], xt / scale, torch.tensor(data["y_test"])[:n_test]


def _kernel(name: str):
    from nngp_gpytorch import NNGPKernel
    from nngp_gpytorch import arch as A

    if name == "mlp":
        return NNGPKernel(A.mlp(3), weight_var=2.0, bias_var=0.1, dtype=torch.float64), None
    if name in ("cnn_flatten", "cnn_gap"):
        readout = "flatten" if name == "cnn_flatten" else "gap"
        return NNGPKernel(A.cnn(3, kernel_size=5, readout=readout), input_shape=(1, 40), weight_var=2.0,
                          bias_var=0.1, dtype=torch.float64), None
    return NNGPKernel(A.rnn(A.Erf(), readout="mean"), input_shape=(40, 1), weight_var=2.0, bias_var=0.1,
                      dtype=torch.float64), None


def _solve(k_train: torch.Tensor, k_cross: torch.Tensor, y: torch.Tensor, noise: float) -> torch.Tensor:
    targets = torch.nn.functional.one_hot(y, 10).to(torch.float64) - 0.1
    scale = k_train.diagonal().mean()
    factor = torch.linalg.cholesky(k_train + noise * scale * torch.eye(len(y), dtype=torch.float64))
    return k_cross @ torch.cholesky_solve(targets, factor)


def _monte_carlo(name: str, x: torch.Tensor, xt: torch.Tensor, mc: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``K(X, X)``, ``K(X*, X)`` of the GRU-GP (``gru_mc``) or RNN-GP (``rnn_mc``) estimated from random finite
    networks (one draw for both blocks)."""
    from nngp_gpytorch import arch as A
    from verification.monte_carlo import monte_carlo_gram, relative_error

    description = A.gru(readout="mean") if name == "gru_mc" else A.rnn(A.Erf(), readout="mean")
    gram = monte_carlo_gram(description, torch.cat([x, xt]), mc["networks"], mc["width"],
                            weight_var=2.0, bias_var=0.1, input_shape=(40, 1), checkpoint=mc["checkpoint"],
                            progress=False)
    n = x.shape[0]
    info = dict(mc_networks=gram.networks, mc_width=gram.width, mc_max_standard_error=relative_error(gram),
                mc_sampling_seconds=gram.seconds)
    return gram.mean[:n, :n], gram.mean[n:, :n], info


def run_one(name: str, n_train: int, n_test: int, queue, mc: dict | None = None) -> None:
    torch.set_num_threads(1)
    x, y, xt, yt = _data(n_train, n_test)
    start = time.perf_counter()
    extra: dict = {}
    if name in ON_REQUEST:
        k_train, k_test, extra = _monte_carlo(name, x, xt, mc)
    else:
        kernel, _ = _kernel(name)
        with torch.no_grad():
            k_train = kernel(x).to_dense()
            k_test = kernel(xt, x).to_dense()
    seconds = time.perf_counter() - start
    fit = int(0.8 * n_train)
    val = [(float((_solve(k_train[:fit, :fit], k_train[fit:, :fit], y[:fit], s).argmax(1) == y[fit:]).double()
                  .mean()), s) for s in NOISES]
    best_acc, noise = max(val)
    acc = float((_solve(k_train, k_test, y, noise).argmax(1) == yt).double().mean())
    queue.put(dict(kernel=name, n_train=n_train, n_test=n_test, test_accuracy=acc, validation_accuracy=best_acc,
                   noise=noise, gram_seconds=seconds,
                   peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, nargs="+", default=[1000])
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS + ON_REQUEST)
    parser.add_argument("--mc-networks", type=int, default=128, help="gru_mc, rnn_mc: random finite networks averaged")
    parser.add_argument("--mc-width", type=int, default=512, help="gru_mc, rnn_mc: their hidden width")
    parser.add_argument("--mc-checkpoint", default=None, help="gru_mc, rnn_mc: running sums path prefix")
    parser.add_argument("--out", default=None, help="write the rows as JSON")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    print(f"{'kernel':12s} {'N':>6s} {'test acc':>9s} {'val acc':>8s} {'noise':>6s} {'Gram s':>8s} {'peak MiB':>9s}")
    for n in args.n_train:
        for name in args.kernels:
            queue = ctx.Queue()
            mc = dict(networks=args.mc_networks, width=args.mc_width,
                      checkpoint=args.mc_checkpoint and f"{args.mc_checkpoint}.{name}.{n}.pt")
            proc = ctx.Process(target=run_one, args=(name, n, args.n_test, queue, mc))
            proc.start()
            row = None
            while row is None:
                try:
                    row = queue.get(timeout=5)
                except Exception:  # noqa: BLE001 - queue.Empty: is the child still alive?
                    if not proc.is_alive():
                        row = dict(kernel=name, n_train=n, n_test=args.n_test, test_accuracy=float("nan"),
                                   validation_accuracy=float("nan"), noise=float("nan"), gram_seconds=float("nan"),
                                   peak_rss_mib=float("nan"), failed=f"exit code {proc.exitcode}")
            proc.join()
            rows.append(row)
            print(f"{name:12s} {n:>6d} {row['test_accuracy']:>9.3f} {row['validation_accuracy']:>8.3f} "
                  f"{row['noise']:>6g} {row['gram_seconds']:>8.1f} {row['peak_rss_mib']:>9.0f}", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()

"""Phase diagram of deep NNGPs (Schoenholz et al. 2017; Lee et al. 2018, Fig. 4): test accuracy over (σw², σb²)
at depth L, and over (σw², L) at fixed σb², with the order-to-chaos line χ₁ = 1 and the trainable depth 6·ξ_c
from ``nngp_gpytorch.criticality`` overlaid.

Protocol: GP regression on centred one-hot targets (``y − 0.1``), noise ``1e-3·mean(diag K)`` plus jitter, arg-max
of the posterior mean (Lee et al. 2018). Data: scikit-learn's 8×8 digits (``--data digits``) or mnist1d generated
offline (``--data mnist1d``), inputs standardized and scaled to unit mean square norm per example.

    python experiments/phase_diagram.py [--data digits] [--activation erf] [--depth 50] [--train 500] [--test 500]
        [--out docs/img/phase_diagram_digits.png]

Writes a PNG with both panels and prints the best grid point and the accuracy along the critical line.
"""

from __future__ import annotations

import argparse
import time

import torch

from nngp_gpytorch import NNGPKernel
from nngp_gpytorch import arch as A
from nngp_gpytorch.criticality import critical_weight_var, signal_propagation

ACTIVATIONS = {"erf": A.Erf(), "tanh": A.Tanh(), "relu": A.ReLU()}


def load(data: str, n_train: int, n_test: int, seed: int):
    if data == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = torch.tensor(d.data, dtype=torch.float64), torch.tensor(d.target)
    else:
        from nngp_gpytorch.scale.__main__ import mnist1d_split  # generated offline, the scale CLI's split

        xtr, ytr, xte, yte = mnist1d_split(n_train, n_test, seed=42 + seed)
        x, y = torch.cat([xtr, xte]).double(), torch.cat([ytr, yte])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)[: n_train + n_test]
    x, y = x[perm], y[perm]
    x = (x - x[:n_train].mean(0)) / x[:n_train].std(0).clamp_min(1e-8)
    x = x / x.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-8)  # unit mean square per example: K⁰(x, x) = 1
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def accuracy(kernel: NNGPKernel, xtr, ytr, xte, yte) -> float:
    with torch.no_grad():
        k_all = kernel(torch.cat([xtr, xte])).to_dense()
    n = len(xtr)
    k, ks = k_all[:n, :n], k_all[n:, :n]
    targets = torch.nn.functional.one_hot(ytr, 10).double() - 0.1
    noise = 1e-3 * k.diagonal().mean() + 1e-10
    try:
        chol = torch.linalg.cholesky(k + noise * torch.eye(n, dtype=k.dtype))
    except torch.linalg.LinAlgError:
        return float("nan")
    mean = ks @ torch.cholesky_solve(targets, chol)
    return float((mean.argmax(1) == yte).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=["digits", "mnist1d"], default="digits")
    parser.add_argument("--activation", choices=sorted(ACTIVATIONS), default="erf")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--weight-vars", type=int, default=16, help="grid points in σw² ∈ [0.1, 4]")
    parser.add_argument("--bias-vars", type=int, default=8, help="grid points in σb² ∈ [0, 0.5]")
    parser.add_argument("--bias-var", type=float, default=0.05, help="σb² of the (σw², depth) panel")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 5, 10, 20, 30, 40, 50])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    act = ACTIVATIONS[args.activation]
    xtr, ytr, xte, yte = load(args.data, args.train, args.test, args.seed)
    ws = torch.linspace(0.1, 4.0, args.weight_vars, dtype=torch.float64)
    bs = torch.linspace(0.0, 0.5, args.bias_vars, dtype=torch.float64)
    start = time.perf_counter()
    grid = torch.zeros(len(bs), len(ws))
    for i, b in enumerate(bs):
        for j, w in enumerate(ws):
            kernel = NNGPKernel(A.mlp(args.depth, act), weight_var=float(w), bias_var=float(b), dtype=torch.float64)
            grid[i, j] = accuracy(kernel, xtr, ytr, xte, yte)
    depth_grid = torch.zeros(len(args.depths), len(ws))
    for i, depth in enumerate(args.depths):
        for j, w in enumerate(ws):
            kernel = NNGPKernel(A.mlp(depth, act), weight_var=float(w), bias_var=args.bias_var, dtype=torch.float64)
            depth_grid[i, j] = accuracy(kernel, xtr, ytr, xte, yte)
    seconds = time.perf_counter() - start
    line = critical_weight_var(act, bs)
    xi = signal_propagation(act, ws, args.bias_var).xi_c
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    im = a1.pcolormesh(ws.numpy(), bs.numpy(), grid.numpy(), shading="auto", vmin=0.1, vmax=1.0, cmap="viridis")
    a1.plot(line.numpy(), bs.numpy(), "w--", label="χ₁ = 1 (predicted)")
    a1.set(xlabel="σw²", ylabel="σb²", title=f"{args.data}: depth-{args.depth} {act.describe()} NNGP, test accuracy")
    a1.legend(loc="upper left")
    fig.colorbar(im, ax=a1)
    im2 = a2.pcolormesh(ws.numpy(), torch.tensor(args.depths).numpy(), depth_grid.numpy(), shading="auto",
                        vmin=0.1, vmax=1.0, cmap="viridis")
    a2.plot(ws.numpy(), (6 * xi).clamp(max=max(args.depths)).numpy(), "w--", label="6·ξ_c")
    a2.set(xlabel="σw²", ylabel="depth L", title=f"σb² = {args.bias_var}", ylim=(min(args.depths), max(args.depths)))
    a2.legend(loc="upper left")
    fig.colorbar(im2, ax=a2)
    fig.tight_layout()
    out = args.out or f"docs/img/phase_diagram_{args.data}.png"
    fig.savefig(out, dpi=110)
    best = divmod(int(grid.argmax()), len(ws))
    print(f"{args.data}, {act.describe()}, depth {args.depth}, N = {args.train}/{args.test}: best accuracy "
          f"{float(grid.max()):.3f} at σw² = {float(ws[best[1]]):.2f}, σb² = {float(bs[best[0]]):.2f}; "
          f"{seconds:.0f} s; wrote {out}")
    for i, b in enumerate(bs):
        j_near = int((ws - line[i]).abs().argmin()) if torch.isfinite(line[i]) else None
        near = f"{float(grid[i, j_near]):.3f} at σw² = {float(ws[j_near]):.2f}" if j_near is not None else "n/a"
        print(f"  σb² = {float(b):.2f}: critical σw² = {float(line[i]):.3f}; accuracy there {near}; "
              f"ordered edge (σw² = {float(ws[0]):.2f}) {float(grid[i, 0]):.3f}")


if __name__ == "__main__":
    main()

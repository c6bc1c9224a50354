"""Recurrent kernels: speed, accuracy of the deterministic QMC gate expectations, width convergence.

    python benchmarks/bench_recurrent.py speed        # GRU/LSTM/RNN: 7×9-token pair, 64×64 Gram (T = 8)
    python benchmarks/bench_recurrent.py accuracy     # error vs converged references, per sample count
    python benchmarks/bench_recurrent.py convergence [--plot FILE]   # ‖ΦΦᵀ/n − K‖_F/‖K‖_F vs width, slope
    python benchmarks/bench_recurrent.py compiled [--n 200] [--threads 1 2]   # RNN(erf): compiled vs torch path

One torch thread. Times are wall seconds on this machine; the public reference (R mvtnorm orthant
probabilities) needs ~22 CPU-s for one 7×9-token GRU pair (reference/kernels.md), printed as the baseline.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from nngp_gpytorch import arch as A
from nngp_gpytorch.algebra import Hyperparameters, evaluate
from nngp_gpytorch.sequences import pack_sequences

torch.set_num_threads(1)
DT = torch.float64
HYPER = Hyperparameters(torch.tensor([1.0, 1.5, 1.2], dtype=DT), torch.tensor([0.1, 0.0, 0.0], dtype=DT))
REFERENCE_PAIR_SECONDS = 22.0
DEVICE = torch.device("cpu")  # --device


def pair_inputs(d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(7, d, generator=g, dtype=DT), torch.randn(9, d, generator=g, dtype=DT)]
    x = pack_sequences(seqs, 9).to(DEVICE)
    return x[:1], x[1:], (9, d + 1)


def gram_inputs(n=64, T=8, d=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T * d, generator=g, dtype=DT).to(DEVICE), (T, d)


def timed(fn, repeat=1):
    best = math.inf
    for _ in range(repeat):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return out, best


# Converged references of the 7×9-token pair below (entries of σv²·K + σvb², order K11, K12, K22):
# GRU: principal-component QMC at 2²⁰ points, two scramblings agreeing to 2.3e-6 (tests/test_recurrent_kernels.py
# GRU_7x9_REFERENCE, cross-checked by the interleaved rule at 2¹⁹ to 9.6e-6).
GRU_7x9 = tuple(1.2 * v for v in (0.32231851451687127, 0.246159005653257, 0.32206447877080485))
# LSTM: mean of three 2²⁰-point interleaved rules (seeds 101, 202, 303; spread 9.9e-6); the principal rule at
# 2¹⁷ agrees to 2.1e-5.
LSTM_7x9 = (0.06670524824475467, 0.0573102149454845, 0.06453448828129245)


def pair_error(K, ref):
    return max(abs(float(K[0, 0]) - ref[0]), abs(float(K[0, 1]) - ref[1]), abs(float(K[1, 1]) - ref[2]))


def speed(args):
    x7, x9, shape = pair_inputs()
    xx = torch.cat([x7, x9])
    xg, gshape = gram_inputs()
    evaluate(A.GRU(masked=True, samples=64), x7, x9, HYPER, input_shape=shape)  # warm-up
    for name, cls, ref in [("GRU", A.GRU, GRU_7x9), ("LSTM", A.LSTM, LSTM_7x9)]:
        for n in args.samples:
            layer = cls(masked=True, samples=n)
            _, t = timed(lambda layer=layer: evaluate(layer, x7, x9, HYPER, input_shape=shape), repeat=3)
            K, _ = evaluate(layer, xx, xx, HYPER, input_shape=shape)
            err = f"max error {pair_error(K, ref):.1e}"
            print(f"{name} 7x9-token pair   samples=2^{int(math.log2(n))}: {t:7.3f} s   "
                  f"({REFERENCE_PAIR_SECONDS / t:6.0f}x faster than the 22 CPU-s reference)  {err}")
        gl = cls(samples=args.gram_samples)
        (K, _), t = timed(lambda gl=gl: evaluate(gl, xg, xg, HYPER, input_shape=gshape))
        ev = torch.linalg.eigvalsh(K)
        print(f"{name} 64x64 Gram, T=8   samples=2^{int(math.log2(args.gram_samples))}: {t:7.2f} s   "
              f"min eigenvalue {float(ev.min()):.2e} (trace {float(K.trace()):.1f})")
    rnn = A.RNN(activation=A.Erf())
    _, t = timed(lambda: evaluate(rnn, xg, xg, HYPER, input_shape=gshape), repeat=3)
    print(f"RNN(erf) 64x64 Gram, T=8: {t:7.4f} s;  with NTK:", end=" ")
    _, t = timed(lambda: evaluate(rnn, xg, xg, HYPER, input_shape=gshape, with_ntk=True), repeat=3)
    print(f"{t:7.4f} s")


def _gru_interleaved(n, seed):
    """The 7×9 pair's output kernel with the older interleaved-Cholesky GRU rule (for the comparison)."""
    import functools

    from nngp_gpytorch.algebra import gru as R

    x7, x9, shape = pair_inputs()
    xx = torch.cat([x7, x9])
    fn = functools.partial(R.gru_tables, method="interleaved")
    fn.qmc_dims = R.gru_tables.qmc_dims
    old = R.gru_tables
    try:  # the rule looks the table function up by name
        R.gru_tables = fn
        K, _ = evaluate(A.GRU(masked=True, samples=n, qmc_seed=seed), xx, xx, HYPER, input_shape=shape)
    finally:
        R.gru_tables = old
    return K


def accuracy(args):
    """Max error of the 2×2 output kernel of the 7×9 pair vs the converged references, over 3 seeds."""
    x7, x9, shape = pair_inputs()
    xx = torch.cat([x7, x9])
    rows = [("GRU (principal)", lambda n, s: evaluate(A.GRU(masked=True, samples=n, qmc_seed=s), xx, xx, HYPER,
                                                        input_shape=shape)[0], GRU_7x9),
            ("GRU (interleaved)", _gru_interleaved, GRU_7x9),
            ("LSTM", lambda n, s: evaluate(A.LSTM(masked=True, samples=n, qmc_seed=s), xx, xx, HYPER,
                                           input_shape=shape)[0], LSTM_7x9)]
    for name, fn, ref in rows:
        print(f"{name}:")
        for n in args.samples:
            errs = []
            for s in (0, 1, 2):
                t0 = time.process_time()
                errs.append(pair_error(fn(n, s), ref))
                cpu = time.process_time() - t0
            print(f"  samples=2^{int(math.log2(n))}: max error over 3 seeds {max(errs):.1e} "
                  f"(median {sorted(errs)[1]:.1e}); {cpu:.2f} CPU-s per evaluation of the 2×2 Gram")


def convergence(args):
    from nngp_gpytorch.sequences import readout_weights, split_sequences
    from verification.statistics import fit_loglog
    from verification.twins import TwinContext
    from verification.twins.recurrent import recurrent_features

    g = torch.Generator().manual_seed(4)
    x = pack_sequences([torch.randn(L, 2, generator=g, dtype=DT) for L in (1, 3, 5, 8, 6, 8)], 8)
    shape = (8, 3)
    widths = [32, 64, 128, 256, 512, 1024]
    layers = {"RNN(erf)": A.RNN(activation=A.Erf(), masked=True), "RNN(relu)": A.RNN(activation=A.ReLU(), masked=True),
              "GRU": A.GRU(masked=True, samples=2**15), "LSTM": A.LSTM(masked=True, samples=2**15)}
    curves = {}
    for name, layer in layers.items():
        K, _ = evaluate(layer, x, x, HYPER, input_shape=shape)
        errs = []
        for w in widths:
            ctx = TwinContext(generator=torch.Generator().manual_seed(w), width=w, hyper=HYPER, dtype=DT,
                              input_shape=shape)
            m = args.networks
            tokens, lengths = split_sequences(x.expand(m, *x.shape).reshape(m, x.shape[0], *shape), True)
            (wu, b), (ww, _), (wv, bv) = [ctx.variances(layer, a, c) for a, c in layer.slot_requests()]
            feats = recurrent_features(layer, tokens, ctx, wu, b, ww, w)
            phi = (readout_weights(lengths, 8, layer.readout, DT).unsqueeze(-1) * feats).sum(-2)
            emp = wv * phi @ phi.transpose(-1, -2) / w + bv
            rel = ((emp - K).norm(dim=(-2, -1)) / K.norm()) ** 2
            errs.append(float(rel.mean()))
        slope, _ = fit_loglog(widths, errs)
        curves[name] = errs
        print(f"{name:10s} squared rel. Frobenius error of σv²ΦΦᵀ/n: " +
              " ".join(f"{e:.1e}" for e in errs) + f"   slope {slope:+.2f}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for name, errs in curves.items():
            ax.loglog(widths, errs, "o-", label=name)
        ax.loglog(widths, [curves["RNN(erf)"][0] * widths[0] / w for w in widths], "k--", label="slope −1")
        ax.set_xlabel("width n")
        ax.set_ylabel("‖ΦΦᵀ/n − K‖²_F / ‖K‖²_F")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print("wrote", args.plot)


def mnist1d_like(n, T=40, seed=0):
    """``n`` smooth signals of ``T`` steps, one feature per step (the shape of mnist1d's sequences)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, generator=g, dtype=DT).cumsum(-1) / math.sqrt(T)
    return x - x.mean(-1, keepdim=True)


def compiled(args):
    """RNN(erf), readout "mean", T = 40, D = 1 (mnist1d's shape): ms per computed entry of the ``N × N`` Gram (its
    ``N(N+1)/2`` entries i ≤ j) and of an ``N × N`` cross-Gram, through the compiled loops and through the torch
    path (``recurrent.COMPILED``) side by side in this process, NNGP and NNGP+NTK, per thread count."""
    import os

    from nngp_gpytorch import NNGPKernel, NTKKernel
    from nngp_gpytorch.algebra import recurrent

    n = args.n
    x, y = mnist1d_like(n, seed=0), mnist1d_like(n, seed=1)
    print(f"load average {os.getloadavg()}; N = {n}, T = 40, D = 1, erf, readout mean, float64, default tiles")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for cls, name in ((NNGPKernel, "NNGP"), (NTKKernel, "NNGP+NTK")):
            kernel = cls(A.rnn(A.Erf(), readout="mean"), input_shape=(40, 1), per_layer=True).double()
            kernel.weight_var = [1.0, 1.5, 1.0]
            kernel.bias_var = [0.1, 0.0, 0.0]
            with torch.no_grad():
                kernel(x[:4]).to_dense()  # compiles (or loads) the loops
                for what, entries, fn in (("Gram", n * (n + 1) / 2, lambda k=kernel: k(x).to_dense()),
                                          ("cross", n * n, lambda k=kernel: k(x, y).to_dense())):
                    times, outs = {}, {}
                    for flag in (True, False, True):  # compiled, torch, compiled again: best of the two
                        recurrent.COMPILED = flag
                        out, t = timed(fn)
                        times[flag] = min(times.get(flag, math.inf), t)
                        outs[flag] = out
                    recurrent.COMPILED = True
                    err = float(((outs[True] - outs[False]).abs() / outs[False].abs()).max())
                    c, p = times[True] / entries * 1e3, times[False] / entries * 1e3
                    print(f"threads={threads} {name:8s} {what:5s}: compiled {c:.4f} ms/entry ({times[True]:.2f} s), "
                          f"torch {p:.4f} ms/entry ({times[False]:.2f} s): {p / c:5.1f}x; max rel. diff {err:.1e}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["speed", "accuracy", "convergence", "compiled"])
    p.add_argument("--samples", type=int, nargs="+", default=[2**13, 2**15, 2**17])
    p.add_argument("--gram-samples", type=int, default=2**12)
    p.add_argument("--networks", type=int, default=8)
    p.add_argument("--plot", default=None)
    p.add_argument("--n", type=int, default=200, help="sequences (compiled)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (compiled)")
    p.add_argument("--device", default="cpu", help="e.g. cuda (speed and accuracy)")
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    {"speed": speed, "accuracy": accuracy, "convergence": convergence, "compiled": compiled}[args.what](args)


if __name__ == "__main__":
    main()

"""Recurrent kernels: speed, accuracy of the deterministic QMC gate expectations, width convergence.

    python benchmarks/bench_recurrent.py speed        # GRU/LSTM/RNN: 7×9-token pair, 64×64 Gram (T = 8)
    python benchmarks/bench_recurrent.py accuracy     # QMC error vs a converged reference, per sample count
    python benchmarks/bench_recurrent.py convergence [--plot FILE]   # ‖ΦΦᵀ/n − K‖_F/‖K‖_F vs width, slope

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


def pair_inputs(d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(7, d, generator=g, dtype=DT), torch.randn(9, d, generator=g, dtype=DT)]
    x = pack_sequences(seqs, 9)
    return x[:1], x[1:], (9, d + 1)


def gram_inputs(n=64, T=8, d=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T * d, generator=g, dtype=DT), (T, d)


def timed(fn, repeat=1):
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def speed(args):
    x7, x9, shape = pair_inputs()
    xg, gshape = gram_inputs()
    evaluate(A.GRU(masked=True, samples=64), x7, x9, HYPER, input_shape=shape)  # warm-up
    for name, cls in [("GRU", A.GRU), ("LSTM", A.LSTM)]:
        for n in args.samples:
            layer = cls(masked=True, samples=n)
            _, t = timed(lambda layer=layer: evaluate(layer, x7, x9, HYPER, input_shape=shape), repeat=3)
            print(f"{name} 7x9-token pair   samples=2^{int(math.log2(n))}: {t:7.3f} s   "
                  f"({REFERENCE_PAIR_SECONDS / t:6.0f}x faster than the 22 CPU-s reference)")
        gl = (A.GRU if name == "GRU" else A.LSTM)(samples=args.gram_samples)
        _, t = timed(lambda gl=gl: evaluate(gl, xg, xg, HYPER, input_shape=gshape))
        print(f"{name} 64x64 Gram, T=8   samples=2^{int(math.log2(args.gram_samples))}: {t:7.2f} s")
    rnn = A.RNN(activation=A.Erf())
    _, t = timed(lambda: evaluate(rnn, xg, xg, HYPER, input_shape=gshape), repeat=3)
    print(f"RNN(erf) 64x64 Gram, T=8: {t:7.4f} s;  with NTK:", end=" ")
    _, t = timed(lambda: evaluate(rnn, xg, xg, HYPER, input_shape=gshape, with_ntk=True), repeat=3)
    print(f"{t:7.4f} s")


def accuracy(args):
    x7, x9, shape = pair_inputs()
    xx = torch.cat([x7, x9])
    for name, cls in [("GRU", A.GRU), ("LSTM", A.LSTM)]:
        t0 = time.perf_counter()
        refs = [evaluate(cls(masked=True, samples=args.reference, qmc_seed=s), xx, xx, HYPER, input_shape=shape)[0]
                for s in (101, 202)]
        ref = (refs[0] + refs[1]) / 2
        print(f"{name}: reference = mean of two 2^{int(math.log2(args.reference))}-point rules "
              f"(they differ by {(refs[0] - refs[1]).abs().max():.2e}; {time.perf_counter() - t0:.0f} s)")
        for n in args.samples:
            errs = []
            for s in (0, 1, 2):
                K, _ = evaluate(cls(masked=True, samples=n, qmc_seed=s), xx, xx, HYPER, input_shape=shape)
                errs.append(float((K - ref).abs().max()))
            print(f"  samples=2^{int(math.log2(n))}: max |K - ref| over 3 seeds = {max(errs):.2e} "
                  f"(median {sorted(errs)[1]:.2e}); |K| ~ {float(ref.abs().max()):.3f}")


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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["speed", "accuracy", "convergence"])
    p.add_argument("--samples", type=int, nargs="+", default=[2**12, 2**14, 2**16])
    p.add_argument("--gram-samples", type=int, default=2**12)
    p.add_argument("--reference", type=int, default=2**19)
    p.add_argument("--networks", type=int, default=8)
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    {"speed": speed, "accuracy": accuracy, "convergence": convergence}[args.what](args)


if __name__ == "__main__":
    main()

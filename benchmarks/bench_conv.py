"""Conv kernels against today's code, the arithmetic limit and memory: 3 × (Conv 3×3 SAME, ReLU) + {GAP, Flatten}.

For 3-channel 8×8, 16×16 and 32×32 images, float64 and float32, one thread, each configuration in a fresh process
(best of 3 timed calls below 32×32): ms per Gram entry of ``K(X, X)`` for the NNGP and for NNGP+NTK
(``nngp_and_ntk``), the peak resident memory, and the same for this commit's engine without its compiled loops
(``torch``: ``conv_stack.COMPILED = False``) and for the code of a pinned commit (``--baseline``, default the last
commit before the fast positional engine; it is checked out with ``git worktree`` next to the repository and
imported from there).

The arithmetic limit printed is the time the irreducible work of one entry takes at this machine's measured
rates: per layer and position pair, ``k`` tap additions and one ReLU dual (an ``arccos``, a ``sqrt`` and ~8
multiply/adds), at the per-element rates of torch's vectorized ops on a cache-resident block (the ``arccos`` at the
faster of torch's and the compiled loops' polynomial); for ``K(X, X)``
only the pairs ``i ≤ j`` count. Last, a 21-layer 3×3 CNN + GAP NTK on 32×32×3 in float32 (the figure published
for neural-tangents: 112.9 ms/entry on a CPU, 2.70 on a V100).

``--pooled-sizes``: a Myrtle-5-style CNN-GP (Shankar et al. 2020: Conv–ReLU ×2, then (AvgPool 2, Conv–ReLU) ×2,
AvgPool 2, GAP) — the engine with its compiled loops, its torch path, and the pinned commit ``--pooled-baseline``
(the last before average pools entered the engine: these nets ran layer by layer in tiles of ``P²`` entries per pair).

    python benchmarks/bench_conv.py [--sizes 8 16 32] [--baseline COMMIT | --no-baseline] [--deep-n 3]
                                    [--pooled-sizes 16 32] [--pooled-baseline COMMIT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "9a60fd7"  # the last commit before algebra/conv_stack.py and the slice-add tap sums
POOLED_BASELINE = "1516a9f"  # the last commit before average pools entered the engine
# the engine computes each input's P×P self chain once (O(N·P²)): N large enough that it is amortized as in real Grams
POOLED_POINTS = {8: 32, 16: 16, 32: 8}
POINTS = {8: 24, 16: 8, 32: 4}  # N per image size: K(X, X) has N² entries
BASELINE_POINTS = {8: 8, 16: 4, 32: 2}


def best_of(fn, repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls (the machines are shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def child(which: str, size: int, readout: str, dtype_name: str, n: int, depth: int, ntk_only: bool) -> None:
    torch.set_num_threads(1)
    repeats = 1 if depth > 3 or size >= 32 else 3
    dtype = getattr(torch, dtype_name)
    x = torch.randn(n, 3 * size * size, dtype=dtype, generator=torch.Generator().manual_seed(0))
    if which == "base" and readout != "myrtle":  # the pinned commit's API: the CNNKernel classes, default tiles
        from nngp_gpytorch import CNNKernel, CNNNTKKernel

        nngp = CNNKernel((3, size, size), depth=depth, readout=readout, weight_var=2.0, bias_var=0.01).to(dtype)
        ntk = CNNNTKKernel((3, size, size), depth=depth, readout=readout, weight_var=2.0, bias_var=0.01).to(dtype)
    else:
        from nngp_gpytorch import NNGPKernel, NTKKernel
        from nngp_gpytorch import arch as A
        from nngp_gpytorch.algebra import conv_stack

        if which != "base":
            conv_stack.COMPILED = which != "torch"  # "torch": this commit's engine without its compiled loops
        net = myrtle() if readout == "myrtle" else A.cnn(depth=depth, readout=readout)
        nngp = NNGPKernel(net, input_shape=(3, size, size), weight_var=2.0, bias_var=0.01, dtype=dtype)
        ntk = NTKKernel(net, input_shape=(3, size, size), weight_var=2.0, bias_var=0.01, dtype=dtype)
    out = {}
    with torch.no_grad():
        warm = x[:2]
        if not ntk_only:
            nngp(warm, warm).to_dense()  # first-call costs (lazy imports, allocator, op dispatch) are not timed
        ntk.nngp_and_ntk(warm, warm)
        if not ntk_only:
            out["nngp_ms"] = best_of(lambda: nngp(x, x).to_dense(), repeats) * 1e3 / n**2
            out["checksum"] = float(nngp(x, x).to_dense().double().sum())
        out["both_ms"] = best_of(lambda: ntk.nngp_and_ntk(x, x), repeats) * 1e3 / n**2
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def myrtle():
    """Myrtle-5-style CNN (Shankar et al. 2020) with 3×3 SAME convs and ReLU: two conv layers at full resolution,
    then (AvgPool 2, conv) twice, AvgPool 2 and a global average pool."""
    from nngp_gpytorch import arch as A

    conv = (A.Conv(3), A.ReLU())
    return A.Serial(*conv, *conv, A.AvgPool(2), *conv, A.AvgPool(2), *conv, A.AvgPool(2), A.GlobalAvgPool(),
                    A.Dense())


def sequence_child(n: int) -> None:
    """The 1-D conv kernel of issue #14 on ``n`` length-40 sequences: seconds and peak RSS of one Gram."""
    torch.set_num_threads(1)
    from nngp_gpytorch import NNGPKernel
    from nngp_gpytorch import arch as A

    layers = []
    for _ in range(3):
        layers += [A.Conv(5, padding="same"), A.ReLU()]
    kernel = NNGPKernel(A.Serial(*layers, A.Flatten(), A.Dense()), input_shape=(1, 40), weight_var=2.0, bias_var=0.1)
    x = torch.randn(n, 40, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad():
        kernel(x, x).to_dense()
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(which: str, size: int, readout: str, dtype: str, n: int, depth: int = 3, ntk_only: bool = False,
              pythonpath: Path | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, __file__, "--child", which, str(size), readout, dtype, str(n), str(depth),
           str(int(ntk_only))]
    if which.startswith("seq"):
        cmd = [sys.executable, __file__, "--sequences", str(n)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=pythonpath or ROOT)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def baseline_tree(commit: str) -> Path:
    """A checkout of ``commit`` (``git worktree``) beside the repository, created once."""
    path = ROOT.parent / f".bench_baseline_{commit}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                       capture_output=True)
    return path


def per_element_ns(fn, x: torch.Tensor, repeats: int = 20) -> float:
    fn(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - start)
    return best / x.numel() * 1e9


def compiled_arccos_ns(x: torch.Tensor) -> float:
    """Per-element time of the compiled loops' vectorized arc cosine (``compiled_math.arccos``), when numba is
    installed: the cheapest ``arccos`` this machine offers the engine."""
    from nngp_gpytorch.algebra import compiled_math as jit

    if not jit.AVAILABLE or x.dtype != torch.float64:
        return float("inf")
    import numba

    @numba.njit(error_model="numpy")
    def loop(v, out):
        for i in range(v.shape[0]):
            out[i] = jit.arccos(v[i])

    v, out = x.numpy(), torch.empty_like(x).numpy()
    return per_element_ns(lambda _: loop(v, out), x)


def arithmetic_limit_ms(size: int, readout: str, dtype: torch.dtype, n: int, depth: int = 3, taps: int = 9) -> float:
    """Irreducible work per entry of K(X, X) at this machine's measured op rates (module docstring)."""
    torch.set_num_threads(1)
    x = torch.rand(1 << 18, dtype=dtype) * 1.8 - 0.9  # 2 MiB (float64): cache-resident
    out = torch.empty_like(x)
    t_add = per_element_ns(lambda v: torch.add(v, v, out=out), x)
    t_acos = min(per_element_ns(lambda v: torch.arccos(v, out=out), x), compiled_arccos_ns(x))
    t_sqrt = per_element_ns(lambda v: torch.sqrt(v.abs(), out=out), x)
    p = size * size
    entries = p * p if readout == "gap" else p
    per_pair_ns = depth * entries * ((taps + 8) * t_add + t_acos + t_sqrt)
    pairs_per_entry = (n * (n + 1) / 2) / n**2
    return per_pair_ns * pairs_per_entry * 1e-6


def pooled(sizes, base_path: Path | None, commit: str) -> None:
    """The Myrtle-5-style rows (module docstring): ms per entry of K(X, X), compiled / torch path / pinned commit."""
    print(f"Myrtle-5-style CNN-GP (average pools between the convs, GAP) on 3-channel images; K(X, X), one thread; "
          f"baseline: commit {commit} (layer by layer)")
    print(f"{'image':>6s} {'dtype':>8s} {'N':>3s} {'NNGP ms':>9s} {'+NTK ms':>9s} {'peak MiB':>9s} | "
          f"{'torch NNGP':>10s} {'×':>6s} | {'base NNGP':>10s} {'base MiB':>9s} {'speed-up':>9s}")
    for size in sizes:
        for dtype in ("float64", "float32"):
            n = POOLED_POINTS.get(size, 8)
            new = run_child("new", size, "myrtle", dtype, n)
            old = run_child("torch", size, "myrtle", dtype, n)
            line = (f"{size:>4d}² {dtype:>8s} {n:>3d} {new['nngp_ms']:9.3f} {new['both_ms']:9.3f} "
                    f"{new['peak_mib']:9.0f} | {old['nngp_ms']:10.3f} {old['nngp_ms'] / new['nngp_ms']:5.1f}×")
            if base_path is not None:
                base = run_child("base", size, "myrtle", dtype, BASELINE_POINTS.get(size, 2), pythonpath=base_path)
                line += (f" | {base['nngp_ms']:10.3f} {base['peak_mib']:9.0f} {base['nngp_ms'] / new['nngp_ms']:8.1f}×")
            print(line, flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[8, 16, 32])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--baseline", default=BASELINE, help="commit of 'today's code' to compare against")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--deep-n", type=int, default=3, help="points for the 21-layer NTK (0: skip it)")
    parser.add_argument("--memory-n", type=int, nargs="*", default=[1000, 4000],
                        help="sequence counts for the 1-D conv memory case (baseline: the first only)")
    parser.add_argument("--pooled-sizes", type=int, nargs="*", default=[16, 32])
    parser.add_argument("--pooled-baseline", default=POOLED_BASELINE)
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--sequences", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sequences:
        sequence_child(args.sequences)
        return
    if args.child:
        which, size, readout, dtype, n, depth, ntk_only = args.child
        child(which, int(size), readout, dtype, int(n), int(depth), bool(int(ntk_only)))
        return
    base_path = None if args.no_baseline else baseline_tree(args.baseline)
    if args.pooled_sizes:
        pooled(args.pooled_sizes, None if args.no_baseline else baseline_tree(args.pooled_baseline),
               args.pooled_baseline)
    print(f"3 × (Conv 3×3 SAME, ReLU) + readout + Dense on 3-channel images; K(X, X), one thread, fresh process each;"
          f" baseline: commit {args.baseline}")
    head = (f"{'image':>6s} {'readout':>8s} {'dtype':>8s} {'N':>3s} {'NNGP ms':>9s} {'+NTK ms':>9s} {'peak MiB':>9s} "
            f"{'limit ms':>9s} {'÷limit':>7s} | {'torch NNGP':>10s} {'×':>5s} | {'base NNGP':>10s} {'base +NTK':>10s} "
            f"{'base MiB':>9s} {'speed-up':>9s} {'NTK':>5s}")
    print(head)
    for size in args.sizes:
        for readout in ("gap", "flatten"):
            for dtype in args.dtypes:
                n = POINTS.get(size, 4) * (8 if readout == "flatten" else 1)
                new = run_child("new", size, readout, dtype, n)
                limit = arithmetic_limit_ms(size, readout, getattr(torch, dtype), n)
                old = run_child("torch", size, readout, dtype, n)
                line = (f"{size:>4d}² {readout:>8s} {dtype:>8s} {n:>3d} {new['nngp_ms']:9.4f} {new['both_ms']:9.4f} "
                        f"{new['peak_mib']:9.0f} {limit:9.4f} {new['nngp_ms'] / limit:6.1f}× | "
                        f"{old['nngp_ms']:10.4f} {old['nngp_ms'] / new['nngp_ms']:4.1f}×")
                if base_path is not None:
                    nb = BASELINE_POINTS.get(size, 2) * (8 if readout == "flatten" else 1)
                    base = run_child("base", size, readout, dtype, nb, pythonpath=base_path)
                    line += (f" | {base['nngp_ms']:10.4f} {base['both_ms']:10.4f} {base['peak_mib']:9.0f} "
                             f"{base['nngp_ms'] / new['nngp_ms']:8.1f}× {base['both_ms'] / base['nngp_ms']:4.1f}×")
                line += f"  (new NTK/NNGP {new['both_ms'] / new['nngp_ms']:.2f}×)"
                print(line, flush=True)
    if args.memory_n:
        print("\n3 × (Conv 5 SAME, ReLU) + Flatten + Dense on length-40 sequences (float32, no gradients), one Gram:")
        for i, n in enumerate(args.memory_n):
            new = run_child("seq", 0, "", "", n)
            line = f"  N = {n:5d}: {new['seconds']:7.2f} s, peak RSS {new['peak_mib']:7.0f} MiB"
            if base_path is not None and i == 0:
                base = run_child("seq", 0, "", "", n, pythonpath=base_path)
                line += f"   (baseline: {base['seconds']:7.2f} s, peak RSS {base['peak_mib']:7.0f} MiB)"
            print(line, flush=True)
    if args.deep_n:
        deep = run_child("new", 32, "gap", "float32", args.deep_n, depth=21, ntk_only=True)
        print(f"\n21-layer 3×3 CNN + GAP, NNGP+NTK on 32×32×3, float32, N = {args.deep_n}: "
              f"{deep['both_ms']:.1f} ms/entry (peak {deep['peak_mib']:.0f} MiB; neural-tangents' published CPU "
              "figure: 112.9 ms/entry)")


if __name__ == "__main__":
    main()

"""Command line: ``python -m verification {list, run, mutants}``.

* ``list`` — the catalogue (:mod:`verification.registry_archs`).
* ``run ARCH [ARCH ...] | all`` — verify each architecture (progress bar, table, plots and
  ``results.json`` in ``--out``); exit code 1 when a kernel is rejected.
* ``mutants`` — the planted-bug suite (:mod:`verification.mutants`); exit code 1 when a mutant survives.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .ensembles import sample_ensemble
from .mutants import MUTANTS
from .registry_archs import ARCHITECTURES, get_architecture
from .report import format_table, plot_convergence, plot_entries, result_record, write_json
from .statistics import width_convergence
from .verify import DEFAULT_ALPHA, DEFAULT_NETWORKS, DEFAULT_WIDTH, analytic_kernel, verify


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m verification",
                                     description="Verify infinite-width kernels against random finite networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the catalogue of architectures")
    for name, help_text in (("run", "verify architectures (names, or 'all')"), ("mutants", "run the mutant suite")):
        p = sub.add_parser(name, help=help_text)
        if name == "run":
            p.add_argument("names", nargs="+", help="catalogue names, or 'all'")
        p.add_argument("--networks", type=int, default=None,
                       help=f"networks per architecture (default: the entry's budget, else {DEFAULT_NETWORKS})")
        p.add_argument("--width", type=int, default=None,
                       help=f"hidden width (default: the entry's budget, else {DEFAULT_WIDTH})")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="false-alarm rate per architecture")
        p.add_argument("--sampler", choices=("gram", "literal"), default="gram")
        p.add_argument("--out", type=Path, default=None, help="folder for plots and results.json")
        p.add_argument("--widths", default=None,
                       help="comma-separated widths for the convergence plot ('' to skip; default: the entry's, "
                            "else 64,256,1024,4096)")
        p.add_argument("--convergence-networks", type=int, default=16)
        p.add_argument("--threads", type=int, default=1, help="torch threads")
        p.add_argument("--no-progress", action="store_true")
    return parser


def _list() -> int:
    width = max(len(n) for n in ARCHITECTURES)
    for name, entry in ARCHITECTURES.items():
        print(f"{name.ljust(width)}  {entry.description}")
    return 0


def _convergence(entry, args):
    if args.widths is not None:
        widths = [int(w) for w in args.widths.split(",") if w.strip()]
    else:
        widths = list(entry.widths or (64, 256, 1024, 4096))
    if len(widths) < 2:
        return None
    x = entry.make_inputs()
    if entry.analytic is not None:
        K = entry.analytic(entry.architecture, x.to(torch.float64), entry.hyper)
    else:
        K = analytic_kernel(entry.architecture, x, entry.hyper, entry.input_shape)
    by_width = {}
    for i, w in enumerate(widths):
        sample = sample_ensemble(entry.architecture, x, networks=args.convergence_networks, width=w,
                                 seed=args.seed + 1000 + i, weight_var=entry.hyper, sampler=args.sampler,
                                 input_shape=entry.input_shape)
        by_width[w] = sample.covariances
    return width_convergence(by_width, K)


def _run(args, jobs) -> int:
    """``jobs``: list of ``(name, architecture, hyper, inputs, input_shape, analytic, entry)``."""
    torch.set_num_threads(args.threads)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    rows, records = [], []
    for name, architecture, hyper, inputs, input_shape, analytic, entry in jobs:
        networks = args.networks or getattr(entry, "networks", None) or DEFAULT_NETWORKS
        width = args.width or getattr(entry, "width", None) or DEFAULT_WIDTH
        bar = tqdm(total=networks, desc=name, unit="net", disable=args.no_progress, leave=False,
                   file=sys.stderr)
        result = verify(architecture, inputs, networks=networks, width=width, seed=args.seed,
                        weight_var=hyper, alpha=args.alpha, sampler=args.sampler, analytic=analytic,
                        input_shape=input_shape, progress=bar.update, chunk_size=max(1, networks // 16))
        bar.close()
        convergence = _convergence(entry, args) if entry is not None and args.out is not None else None
        rows.append((name, result))
        records.append(result_record(name, result, convergence))
        if args.out is not None:
            plot_entries(result, args.out / f"{name}_entries.png", title=name)
            if convergence is not None:
                plot_convergence(convergence, args.out / f"{name}_convergence.png", title=name)
    print(format_table(rows))
    if args.out is not None:
        write_json(args.out / "results.json", records)
        print(f"plots and results.json written to {args.out}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    if args.command == "run":
        names = list(ARCHITECTURES) if args.names == ["all"] else args.names
        try:
            entries = [get_architecture(n) for n in names]
        except KeyError as err:
            print(err.args[0], file=sys.stderr)
            return 2
        jobs = [(e.name, e.architecture, e.hyper, e.make_inputs(), e.input_shape, e.analytic, e) for e in entries]
        rows = _run(args, jobs)
        rejected = [name for name, r in rows if not r.passed]
        if rejected:
            print(f"REJECTED at alpha={args.alpha:g}: {', '.join(rejected)}", file=sys.stderr)
        return 1 if rejected else 0
    # mutants: every mutant must be rejected
    jobs = [(m.name, m.architecture, _hyper(m), None, None, m.kernel, None) for m in MUTANTS.values()]
    rows = _run(args, jobs)
    survivors = [name for name, r in rows if r.passed]
    if survivors:
        print(f"mutants NOT rejected at alpha={args.alpha:g}: {', '.join(survivors)}", file=sys.stderr)
    return 1 if survivors else 0


def _hyper(mutant):
    from .ensembles import as_hyperparameters

    return as_hyperparameters(mutant.weight_var, mutant.bias_var)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Reporting: a text table of verification results, JSON records, and plots.

Plots (matplotlib, Agg backend, written to files):

* :func:`plot_entries` — empirical mean of each upper-triangle kernel entry against the analytic value,
  with ±z·SE error bars (z = the Holm threshold for the run's α), and the per-entry t-statistics;
* :func:`plot_convergence` — relative squared Frobenius error of single-network estimates against width
  on log-log axes, with a 1/width reference line and the fitted slope.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from scipy import stats

from .statistics import ConvergenceResult, MeanTestResult

COLUMNS = ("architecture", "verdict", "p (Holm)", "Hotelling p", "max|t|", "rel.err", "bias/se", "M", "width",
           "seconds")


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def result_row(name: str, r: MeanTestResult) -> list[str]:
    return [name, "PASS" if r.passed else "REJECT", _fmt_p(r.p_value), _fmt_p(r.hotelling_p), f"{r.max_abs_t:.2f}",
            f"{r.relative_error:.2e}", f"{r.bias_to_noise:.2f}", str(r.networks), str(r.width),
            f"{r.seconds:.2f}"]


def format_table(rows: Sequence[tuple[str, MeanTestResult]]) -> str:
    """A fixed-width text table, one line per architecture."""
    cells = [list(COLUMNS)] + [result_row(name, r) for name, r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def result_record(name: str, r: MeanTestResult, convergence: ConvergenceResult | None = None) -> dict:
    """JSON-serialisable summary of a result (and its width convergence)."""
    record = {
        "name": name, "architecture": r.architecture, "passed": r.passed, "alpha": r.alpha,
        "p_value": r.p_value, "hotelling_p": r.hotelling_p, "max_abs_t": r.max_abs_t,
        "relative_error": r.relative_error, "bias_estimate": r.bias_estimate, "bias_to_noise": r.bias_to_noise,
        "bias_handling": r.bias_handling, "networks": r.networks, "width": r.width, "seconds": r.seconds,
        "mean": r.mean.tolist(), "analytic": r.analytic.tolist(), "stderr": r.stderr.tolist(),
    }
    if convergence is not None:
        record["convergence"] = {"widths": convergence.widths, "errors": convergence.errors,
                                 "stderrs": convergence.stderrs, "slope": convergence.slope}
    return record


def write_json(path: Path, records: list[dict]) -> None:
    Path(path).write_text(json.dumps(records, indent=1))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_entries(result: MeanTestResult, path: Path, title: str = "") -> Path:
    """Empirical vs analytic kernel entries with ±z·SE error bars (z: Holm threshold at α)."""
    plt = _pyplot()
    k = result.analytic.shape[-1]
    iu = torch.triu_indices(k, k)
    analytic = result.analytic[iu[0], iu[1]].cpu().numpy()
    mean = result.mean[iu[0], iu[1]].cpu().numpy()
    se = result.stderr[iu[0], iu[1]].cpu().numpy()
    t = result.t[iu[0], iu[1]].cpu().numpy()
    p = len(analytic)
    z = float(stats.norm.isf(result.alpha / (2 * p)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.errorbar(analytic, mean - analytic, yerr=z * se, fmt="o", ms=3, capsize=2,
                 label=f"empirical − analytic ± {z:.1f}·SE")
    ax1.axhline(0.0, color="k", lw=0.8)
    ax1.set_xlabel("analytic K_ij")
    ax1.set_ylabel("empirical mean − analytic")
    ax1.legend(fontsize=8)
    ax1.set_title(f"{title} entries (M={result.networks}, width={result.width})", fontsize=9)
    ax2.plot(range(p), t, "o", ms=3)
    for s in (-z, z):
        ax2.axhline(s, color="r", ls="--", lw=0.8)
    ax2.set_xlabel("entry (upper triangle)")
    ax2.set_ylabel("t = (mean − K)/SE")
    ax2.set_title(f"p(Holm)={_fmt_p(result.p_value)}  {'PASS' if result.passed else 'REJECT'} at α={result.alpha:g}",
                  fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_convergence(convergence: ConvergenceResult, path: Path, title: str = "") -> Path:
    """Relative squared Frobenius error vs width (log-log) with a 1/width reference line."""
    plt = _pyplot()
    w, e, s = convergence.widths, convergence.errors, convergence.stderrs
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.errorbar(w, e, yerr=[0 if math.isnan(v) else v for v in s], fmt="o-", ms=4, capsize=2,
                label=f"‖C−K‖²/‖K‖² (slope {convergence.slope:.2f})")
    ref = [e[0] * w[0] / wi for wi in w]
    ax.plot(w, ref, "k--", lw=0.8, label="∝ 1/width")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("relative squared Frobenius error")
    ax.set_title(f"{title} width convergence", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

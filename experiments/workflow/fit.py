"""The fit stage of `scaling run`: fit the laws on a root's finished runs into <root>/fit
(fit.json, report.md, figures) and print the fitted laws at the next budget up."""

from __future__ import annotations

import os
import sys
import warnings

from lib.store.runstore import load_runs


def fit_and_summarise(root, sections=None) -> int:
    """Fit the laws on `root`'s finished runs into <root>/fit (fit.json, report.md, figures) and
    print the fitted laws with intervals, a and b, and the compute-optimal N and D at the next
    budget up. `sections`: as analysis.report.fit_and_report's (more of report.md). Returns an exit code."""
    from analysis.errors import AnalysisError, FitWarning
    from analysis.report import fit_and_report, summary

    out = os.path.join(os.fspath(root), "fit")
    next_c = next_budget(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)  # the record carries them; printed once below
            record = fit_and_report(os.fspath(root), out, {"approach": "all", "at": [next_c] if next_c else []}, sections=sections)
    except AnalysisError as e:
        print(f"fit: {e}", file=sys.stderr)
        return 1
    print(f"\nfit -> {out}")
    print(summary(record, C=next_c))
    for line in record.get("notes", []) + record.get("warnings", []):
        print(f"  warning: {line}")
    print(f"figures and report: {out}/report.md, " + ", ".join(f for f in record.get("figures", []) if f.endswith(".png")))
    return 0


def next_budget(root) -> float | None:
    """One step past the sweep's largest FLOP budget, at the ratio of its last two."""
    from analysis.data import is_check_sweep

    runs = load_runs(root)
    budgets = sorted({b for b, s in zip(runs["budget"], runs["sweep"]) if b > 0 and not is_check_sweep(s)})  # not the check runs'
    if len(budgets) < 2:
        return None  # analysis.report.summary then uses 3x the largest C
    return budgets[-1] * budgets[-1] / budgets[-2]

"""The report stage of `scaling run`: the lr rule (when tuned) and a line per sensitivity sweep (its
exponent a beside the main fit's) as a section of <root>/fit/report.md and on the console.

The section is handed to report.md's one writer (analysis.report.write_report), by the fit stage and
by the check stage's redraw, so it is never spliced into the file afterwards."""

from __future__ import annotations

import os
import warnings

from experiments.workflow.experiment import sensitivity_sweeps
from experiments.workflow.sensitivity import sensitivity_folder
from lib.store.runstore import read_json
from lib.sweeps import rules

REPORT_BEGIN, REPORT_END = "<!-- lr-rule -->", "<!-- /lr-rule -->"


def report_section(spec: str, root, main_fit: dict) -> list[str]:
    """The section for the experiment `spec` trained in `root`, its main fit record `main_fit`:
    fits each sensitivity sweep (into <root>/sensitivity/<name>/fit). [] when the experiment has
    neither a tuned rule nor sensitivity sweeps."""
    root = os.fspath(root)
    sweeps = sensitivity_sweeps(spec)
    record = read_json(rules.lr_rule_path(root))
    if not sweeps and record is None:
        return []
    lines = [_sensitivity_line(name, sensitivity_folder(root, name), main_fit) for name in sweeps]
    return _report_section(record, lines, root)


def console_lines(section: list[str]) -> list[str]:
    """The section as the console shows it: no markers, no table rows, no blank lines."""
    return [line for line in section if line and not line.startswith(("<!--", "|"))]


def _sensitivity_line(name: str, folder: str, main_fit: dict) -> str:
    """The exponent a of each approach fitted on the sensitivity sweep, beside the main fit's."""
    from analysis.errors import AnalysisError, FitWarning
    from analysis.report import fit_and_report

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", FitWarning)  # shown, as this fit's own (the main fit's are in its record)
            fit = fit_and_report(folder, os.path.join(folder, "fit"), {"approach": "all"})
    except AnalysisError as e:
        return f"sensitivity {name}: not fitted ({e})"
    parts = []
    for approach, entry in fit.get("fits", {}).items():
        if "a" not in entry:
            continue
        ours = (main_fit.get("fits", {}).get(approach) or {}).get("a")
        parts.append(f"{approach} a = {_with_ci(entry['a'])}" + (f" (with the rule: {_with_ci(ours)})" if ours else ""))
    return f"sensitivity {name} ({folder}): " + ("; ".join(parts) or "no exponent fitted")


def _with_ci(v: dict) -> str:
    ci = v.get("ci")
    return f"{v['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")


def _report_section(record, sensitivity_lines, root) -> list[str]:
    from analysis.lr_rule import report_lines

    if record is not None:
        body = report_lines(record, sensitivity_lines, rule_dir=rules.tune_root(root), relative_to=os.path.join(root, "fit"))
    else:
        body = ["## Sensitivity", ""] + [f"- {line}" for line in sensitivity_lines] + [""]
    return [REPORT_BEGIN, *body, REPORT_END]

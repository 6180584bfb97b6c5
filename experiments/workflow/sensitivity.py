"""The sensitivity stage: after the sweep, train the experiment's sensitivity sweeps
(`sensitivity()`: name -> sweep, e.g. the old single lr) into <root>/sensitivity/<name>;
relaunch-safe like any sweep. Their fits and the lines comparing them with the main fit are
experiments/workflow/report.py's."""

from __future__ import annotations

import os

from experiments.workflow.experiment import sensitivity_sweeps
from experiments.workflow.options import SweepOptions
from experiments.workflow.sweep import run_sweep
from lib.sweeps import rules

SENSITIVITY_DIR = "sensitivity"  # <root>/sensitivity/<name>: an experiment's sensitivity sweeps and their fits


def sensitivity_folder(root, name: str) -> str:
    return os.path.join(os.fspath(root), SENSITIVITY_DIR, name)


def sensitivity_stage(root, options: SweepOptions) -> int:
    """Train each of the experiment's (options.spec) sensitivity sweeps; the worst exit code."""
    from lib.sweeps.executors import SweepStopped

    code = 0
    for name, sweep in sensitivity_sweeps(options.spec).items():
        folder = sensitivity_folder(root, name)
        print(f"\nsensitivity {name}: {rules.describe(rules.resolve_lr_rule(sweep.lr_rule, root))} -> {folder}")
        try:
            report = run_sweep(sweep, folder, options)
        except SweepStopped:
            return 143
        code = max(code, report.exit_code)
    return code

"""`scaling tune`: its parser, and the flags as typed options for the tune stage
(experiments/workflow/tune.py, which the module docstring there explains).

    scaling tune EXP --root R [--set KEY=VALUE ...] [--extend 2] [the sweep options]
"""

from __future__ import annotations

from experiments.workflow.experiment import load_tune, wants_tuning  # noqa: F401  (names tests and scripts import from here)
from experiments.workflow.options import DEFAULT_EXTEND, TuneOptions


def cmd_tune(args) -> int:
    from experiments.cli import distributed_from_args
    from experiments.sweep_cmd import options_from_args
    from experiments.workflow.tune import tune_command

    return tune_command(args.root, TuneOptions(sweep=options_from_args(args), extend=args.extend), distributed_from_args(args))


def register(subparsers) -> None:
    from experiments.cli import nonnegative_int
    from experiments.sweep_cmd import add_sweep_args

    p = subparsers.add_parser("tune", help="an lr grid per model size into --root/tune, then lr*(N) -> lr_rule.json (relaunch: no-op)")
    add_sweep_args(p)
    p.add_argument("--extend", type=nonnegative_int, default=DEFAULT_EXTEND,
                   help=f"add up to this many lrs past a grid edge where a size's best lr sits (default {DEFAULT_EXTEND})")
    p.set_defaults(func=cmd_tune)

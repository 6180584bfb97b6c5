"""`scaling verify`: its parser, and the flags as typed options for the check stage
(experiments/workflow/check.py, which the module docstring there explains).

    scaling verify FIT_DIR [--at C] [--root R] [--experiment EXP] [--neighbours] [--allocation] [--set KEY=VALUE ...]

Exit code 0 when the check ran or was skipped with a reason (no usable frontier), 1 when its run
failed (reported in check.json and report.md), 2 on a config error (an unknown --set key, --at <= 0).
"""

from __future__ import annotations

from experiments.cli import add_distributed_args, add_set_arg, distributed_from_args, positive_float
from experiments.workflow.options import CheckOptions, SweepOptions
from lib.config import parse_set_args


def cmd_verify(args) -> int:
    from experiments.workflow.check import check_command

    options = SweepOptions(overrides=parse_set_args(args.set), retries=args.retries, progress=args.progress,
                           compile_cache=args.compile_cache, run_logs=args.run_logs, spec=args.experiment or "")
    return check_command(CheckOptions(fit_dir=args.fit_dir, root=args.root, at=args.at, experiment=args.experiment,
                                      neighbours=args.neighbours, allocation=args.allocation, sweep=options), distributed_from_args(args))


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="train the fit's compute-optimal model at the next budget and compare its loss with the prediction")
    p.add_argument("fit_dir", help="a folder written by `scaling fit` / `scaling run` (ROOT/fit)")
    p.add_argument("--at", type=positive_float, metavar="C", help="compute budget in FLOPs, > 0 (default: the sweep's next budget up)")
    p.add_argument("--root", help="run root to train into (default: the run store the fit read)")
    p.add_argument("--experiment", help="experiment file or name (default: the one the root's sweep manifest names)")
    p.add_argument("--neighbours", action="store_true", help="also train the ladder shapes nearest N_opt/2 and 2 N_opt at the same C")
    p.add_argument("--allocation", action="store_true", help="also train 5 sizes ~1.7x apart around N_opt: the measured optimum vs each approach's N_opt interval")
    add_set_arg(p)
    p.add_argument("--retries", type=int, default=2, help="retry a failed check run up to this many times (default 2)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bar on stderr (auto: when a terminal)")
    p.add_argument("--compile-cache", default="auto", help="JAX persistent compilation cache: auto (<root>/.jax_cache), off, or a directory")
    p.add_argument("--run-logs", action="store_true", help="print the check run's per-step lines")
    add_distributed_args(p)
    p.set_defaults(func=cmd_verify)

"""The `scaling` command: composes lib (training, sweeps) and analysis (fits, plots).

    scaling train --config experiments/tiny.py --workdir DIR [--set key=value ...]
    scaling fit (--csv FILE | RUN_ROOT) --out DIR      scaling plot DIR
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from experiments.workflow.experiment import EXPERIMENTS_DIR, load_experiment  # noqa: F401  (EXPERIMENTS_DIR: for tests)
from experiments.workflow.options import Distributed
from lib.config import ConfigError, parse_set_args


def run_config_from_args(args):
    try:
        module = load_experiment(args.config)
    except ConfigError as e:
        raise ConfigError(f"--config: {e}") from None
    if not hasattr(module, "config"):
        raise ConfigError(f"{args.config} defines no config() function returning a RunConfig")
    return module.config().with_overrides(parse_set_args(args.set))


def cmd_train(args) -> int:
    from lib.config_rules import validate

    cfg = validate(run_config_from_args(args))  # a bad config fails here, before anything is compiled

    from lib.parallel.distributed import process_count
    from lib.store.claims import RunClaimed
    from lib.train.loop import Preempted, RunDiverged, train

    distributed_from_args(args).join()
    try:
        summary = train(cfg, args.workdir)
    except RunDiverged as e:
        print(f"run failed: {e}", file=sys.stderr)
        return 1
    except RunClaimed as e:  # another live process trains it (lib/store/claims.py)
        print(f"{args.workdir}: {e}; not trained here", file=sys.stderr)
        return 0 if e.summary is not None else 1
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return 143
    except ConfigError:
        raise  # reported by main() as a config error, exit 2
    except Exception as e:  # noqa: BLE001  (the run is already marked failed with the reason)
        import traceback

        traceback.print_exc()
        hint = " (another process may have died: relaunch every process to resume)" if process_count() > 1 else ""
        print(f"run failed: {type(e).__name__}: {e}{hint}; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 1
    from lib.store.runstore import summary_D

    units = summary.get("units", "tokens")
    error = f" | eval_error {summary['eval_error']:.4f}" if summary.get("eval_error") is not None else ""
    print(
        f"done: eval_loss {summary['eval_loss']:.4f}{error} | params {summary['params']['total']:,} | "
        f"{units} {summary_D(summary):,} | flops {summary['flops']['value']:.3e} ({summary['flops']['convention']})"
    )
    return 0


def add_set_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set model.d_model=256 (repeatable; values parsed as JSON)",
    )


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("multi-host (default: auto-detect, e.g. on TPU VMs)")
    g.add_argument("--coordinator", help="host:port of process 0")
    g.add_argument("--num-processes", type=int, help="how many processes take part, one per host (with --coordinator)")
    g.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes - 1 (with --coordinator)")
    g.add_argument("--heartbeat-timeout", type=int, metavar="SECONDS",
                   help="declare a silent peer dead after this long (JAX default 100)")


def distributed_from_args(args) -> Distributed:
    return Distributed(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                       getattr(args, "process_id", None), getattr(args, "heartbeat_timeout", None))


# Every subcommand: the module that registers it, and its one-line help. `scaling --help` lists
# them from here without importing the modules (they pull in jax, pandas and matplotlib: seconds);
# `scaling CMD ...` imports only CMD's module. tests/test_analysis_cli.py keeps this table equal to
# what the modules register.
COMMANDS = {
    "train": (None, "train one run (resumes from its last checkpoint; no-op when finished)"),
    "sweep": ("experiments.sweep_cmd", "train a sweep's runs into --root (relaunch: trains only what is missing)"),
    "run": ("experiments.sweep_cmd", "sweep, then fit the laws, draw the figures and print a summary"),
    "status": ("experiments.sweep_cmd", "table of a root's runs: state, attempts, step, losses"),
    "tune": ("experiments.tune_cmd", "an lr grid per model size into --root/tune, then lr*(N) -> lr_rule.json (relaunch: no-op)"),
    "fit": ("experiments.fit_cmd", "fit scaling laws to a CSV or a run store; write fit.json, report.md and figures"),
    "plot": ("experiments.fit_cmd", "re-draw the figures of a fit from DIR/fit.json and the data it names"),
    "predict": ("experiments.fit_cmd", "compute-optimal N, D and the loss to expect at compute C, from a fit"),
    "verify": ("experiments.verify_cmd", "train the fit's compute-optimal model at the next budget and compare its loss with the prediction"),
    "loss-parts": ("experiments.fit_cmd", "split each run's loss into phrase memory (filler tokens 2..F, floor 0) and the rest; fit each part"),
    "plan": (None, "what a launch would train, without training: every run, the compute and an estimated time"),
}
ALL = None  # build_parser(ALL): every subcommand's module imported


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (the argument and what is wrong), exit code 2 as argparse's."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _checked(kind, test, what: str):
    """An argparse type: `kind(text)` that must pass `test`, else a usage error saying `what`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0 and v < float("inf"), "a positive finite number")
nonnegative_float = _checked(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def build_parser(command: str | None = ALL) -> argparse.ArgumentParser:
    """The `scaling` parser. `command`: import only the module that registers that subcommand (""
    for none: enough for `scaling --help`); the other subcommands are listed from COMMANDS."""
    parser = Parser(prog="scaling", description="Scaling-law experiments in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    wanted = list(COMMANDS) if command is ALL else [command] if command in COMMANDS else []
    for name in wanted:  # the subcommands registered here (the workflow's stages take typed options)
        if COMMANDS[name][0] is None:
            _LOCAL[name](sub)
    for module_name in dict.fromkeys(COMMANDS[name][0] for name in wanted if COMMANDS[name][0]):  # each module once, in table order
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        module.register(sub)
    for name, (_, help_) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_, add_help=False)  # listed only; never parsed
    return parser


def _register_train(sub) -> None:
    p = sub.add_parser("train", help=COMMANDS["train"][1])
    p.add_argument("--config", required=True, help="experiment file or name defining config()")
    p.add_argument("--workdir", required=True, help="the run's folder (local path or gs://)")
    add_set_arg(p)
    add_distributed_args(p)
    p.set_defaults(func=cmd_train)


def _register_plan(sub) -> None:
    p = sub.add_parser("plan", help=COMMANDS["plan"][1])
    p.add_argument("experiment", help="experiment file or name defining sweep()")
    p.add_argument("--root", help="where it would train: a tuned lr rule is read there, its finished runs time the estimate")
    p.add_argument("--throughput-from", metavar="DIR", help="time the estimate by the finished runs under DIR instead")
    p.add_argument("--pack", default="auto", metavar="auto|K|1", help="pack size, as `scaling sweep --pack` (default auto)")
    p.add_argument("--json", action="store_true",
                   help='print JSON: {"runs": [{"run_id", "stage", "N", "D", "C", "lr", "batch", "steps", "pack"}], "compute", "est_seconds", ...}')
    add_set_arg(p)
    g = p.add_argument_group("--power: simulate the design under a known law and fit each dataset as `scaling fit` does")
    g.add_argument("--power", action="store_true", help="report bias, sd and coverage of a, alpha, beta, E per approach and the check's power")
    g.add_argument("--truth", metavar="alpha=..,beta=..,E=..,A=..,B=..", help="the law to simulate (E defaults to the source's floor)")
    g.add_argument("--from", dest="from_root", metavar="ROOT", help="simulate the approach-3 fit under ROOT instead (and its residual scale)")
    g.add_argument("--noise", type=nonnegative_float, metavar="NATS", help="sd of each point's loss about the law")
    g.add_argument("--sims", type=positive_int, default=100, help="simulated datasets (default 100)")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the simulations (default 0)")
    g.add_argument("--bootstrap", type=nonnegative_int, default=50, help="resamples behind each simulated fit's intervals (default 50)")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    import json

    from experiments.workflow.plan import PlanOptions, format_plan, plan_launch

    options = PlanOptions(spec=args.experiment, root=args.root, overrides=parse_set_args(args.set),
                          pack=args.pack, throughput_from=args.throughput_from)
    if args.power:
        return _plan_power(args, options)
    if args.truth or args.from_root or args.noise is not None:
        print("scaling plan: error: --truth, --from and --noise go with --power (add --power)", file=sys.stderr)
        return 2
    record = plan_launch(options)
    print(json.dumps(record, indent=1) if args.json else format_plan(record))
    return 0


def _plan_power(args, options) -> int:
    import json

    from analysis.errors import AnalysisError
    from experiments.workflow.plan import PowerPlanOptions, format_power, plan_power

    try:
        record = plan_power(options, PowerPlanOptions(truth=args.truth, from_root=args.from_root, noise=args.noise, sims=args.sims,
                                                      seed=args.seed, bootstrap=args.bootstrap))
    except AnalysisError as e:
        print(f"scaling plan: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=1) if args.json else format_power(record))
    return 0


_LOCAL = {"train": _register_train, "plan": _register_plan}  # COMMANDS whose module is this one


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv and argv[0] in COMMANDS else "").parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

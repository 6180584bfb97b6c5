"""The `scaling` command: composes lib (training, sweeps) and analysis (fits, plots).

    scaling train --config experiments/tiny.py --workdir DIR [--set key=value ...]
    scaling fit (--csv FILE | RUN_ROOT) --out DIR      scaling plot DIR
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from lib.config import ConfigError, parse_set_args

EXPERIMENTS_DIR = Path(__file__).resolve().parent


def load_experiment(spec: str) -> ModuleType:
    """An experiment by file path (`experiments/tiny.py`) or by name (`tiny`)."""
    path = Path(spec)
    if not path.exists():
        path = EXPERIMENTS_DIR / f"{spec}.py"
    if not path.exists():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_") and p.stem not in ("cli", "fit_cmd", "sweep_cmd", "verify_cmd", "tune_cmd"))
        raise ConfigError(f"experiment '{spec}' not found: give a path to a .py file or one of: {', '.join(known)}")
    module_spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def run_config_from_args(args):
    module = load_experiment(args.config)
    if not hasattr(module, "config"):
        raise ConfigError(f"{args.config} defines no config() function returning a RunConfig")
    return module.config().with_overrides(parse_set_args(args.set))


def cmd_train(args) -> int:
    from lib.parallel.distributed import initialize_from_args
    from lib.store.claims import RunClaimed
    from lib.train.loop import Preempted, RunDiverged, train

    initialize_from_args(args)
    cfg = run_config_from_args(args)
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
        hint = " (another process may have died: relaunch every process to resume)" if _process_count() > 1 else ""
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


def _process_count() -> int:
    import jax

    return jax.process_count()


def add_set_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set model.d_model=256 (repeatable; values parsed as JSON)",
    )


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("multi-host (default: auto-detect, e.g. on TPU VMs)")
    g.add_argument("--coordinator", help="host:port of process 0")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)
    g.add_argument("--heartbeat-timeout", type=int, metavar="SECONDS",
                   help="declare a silent peer dead after this long (JAX default 100)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaling", description="Scaling-law experiments in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run (resumes from its last checkpoint; no-op when finished)")
    p.add_argument("--config", required=True, help="experiment file or name defining config()")
    p.add_argument("--workdir", required=True, help="the run's folder (local path or gs://)")
    add_set_arg(p)
    add_distributed_args(p)
    p.set_defaults(func=cmd_train)

    for module_name in ("experiments.fit_cmd", "experiments.sweep_cmd", "experiments.verify_cmd", "experiments.tune_cmd"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

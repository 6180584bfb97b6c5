"""`scaling sweep`, `scaling status` and `scaling run`: their parsers, and the flags as typed options
for the workflow's stages (experiments/workflow/: sweep.py, status.py, run.py).

    scaling sweep EXP --root DIR [--set KEY=VALUE ...] [--retries 2] [--worker i/n] [--pack auto|K|1]
                  [--executor local|processes [--devices-per-worker k] [--workers n]]
    scaling status DIR
    scaling run EXP --root DIR [the sweep options] [--no-verify] [--neighbours]

An experiment file defines `sweep()` returning a lib.sweeps.plans sweep, or `config()` for a single run.
`--set` overrides apply to every run of the sweep. Relaunching the same command trains only what
is missing: finished runs are skipped, cut runs resume, failed runs are retried up to --retries.
The workflow is imported when a command runs, not when its parser is built (it imports jax).
"""

from __future__ import annotations

import argparse

from experiments.cli import add_distributed_args, add_set_arg, distributed_from_args
from experiments.workflow.experiment import load_sweep  # noqa: F401  (the name tests and scripts import from here)
from experiments.workflow.options import RunOptions, SweepOptions
from lib.config import ConfigError, parse_set_args


def options_from_args(args) -> SweepOptions:
    return SweepOptions(
        overrides=parse_set_args(args.set),
        retries=args.retries,
        worker=_parse_worker(args.worker) if args.worker else None,
        executor=args.executor,
        devices_per_worker=args.devices_per_worker,
        workers=args.workers,
        progress=args.progress,
        compile_cache=args.compile_cache,
        run_logs=args.run_logs,
        pack=_parse_pack(args.pack),
        spec=args.experiment,
        ray_address=args.address,
        ray_resources=_parse_resources(args.resources),
    )


def run_options_from_args(args) -> RunOptions:
    return RunOptions(spec=args.experiment, root=args.root, sweep=options_from_args(args), distributed=distributed_from_args(args),
                      verify=not args.no_verify, neighbours=args.neighbours, allocation=args.allocation)


def _parse_pack(text: str) -> str:
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text
    raise ConfigError(f"--pack expects auto or a number of runs >= 1 (1: every run alone), got '{text}'")


def _parse_resources(items: list[str]) -> dict[str, float]:
    out = {"CPU": 1.0}
    for item in items:
        name, _, amount = item.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            raise ConfigError(f"--resources expects NAME=AMOUNT per run, e.g. --resources GPU=1 or --resources TPU=4; got '{item}'") from None
    return out


def _parse_worker(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--worker expects i/n (this host's index and the host count), e.g. --worker 0/4; got '{text}'") from None
    if not 0 <= i < n:
        raise ConfigError(f"--worker {text}: need 0 <= i < n, e.g. --worker 0/{max(n, 1)}")
    return i, n


def cmd_sweep(args) -> int:
    from experiments.workflow.sweep import sweep_stage

    return sweep_stage(args.root, options_from_args(args), distributed_from_args(args))


def cmd_run(args) -> int:
    from experiments.workflow.run import run_experiment

    return run_experiment(run_options_from_args(args))


def cmd_status(args) -> int:
    from experiments.workflow.status import show_status

    return show_status(args.root)


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment file or name defining sweep() (or config() for one run)")
    p.add_argument("--root", required=True, help="folder holding one subfolder per run (local path or gs://)")
    add_set_arg(p)
    p.add_argument("--retries", type=int, default=2, help="retry a failed run up to this many times across relaunches (default 2); a diverged run is never retried")
    p.add_argument("--worker", metavar="i/n", help="take only runs i, i+n, ... of the sorted list (static partition across n hosts)")
    p.add_argument("--executor", choices=("local", "processes", "ray"), default="local",
                   help="local: runs one after another in this process; processes: one worker process per device group; "
                        "ray: one Ray task per run on a Ray cluster (pip install -e '.[ray]')")
    p.add_argument("--address", help="ray executor: cluster address (auto, host:port, ray://host:10001); default: a local Ray")
    p.add_argument("--resources", action="append", default=[], metavar="NAME=AMOUNT",
                   help="ray executor: per-run resources, e.g. --resources GPU=1 or --resources TPU=4 (default CPU=1)")
    p.add_argument("--devices-per-worker", type=int, default=1, help="processes executor: devices in each worker's group")
    p.add_argument("--workers", type=int, help="processes executor: number of workers (default: every GPU group; required on CPU)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bar on stderr (auto: when a terminal)")
    p.add_argument("--compile-cache", default="auto", help="JAX persistent compilation cache: auto (<root>/.jax_cache), off, or a directory")
    p.add_argument("--run-logs", action="store_true", help="print every run's per-step lines (default: one line per run)")
    p.add_argument("--pack", default="auto", metavar="auto|K|1",
                   help="train runs of one shape together as one vmapped program: auto (default: as many as fit the device memory, "
                        "at most 32), at most K, or 1 (every run alone)")
    add_distributed_args(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="train a sweep's runs into --root (relaunch: trains only what is missing)")
    add_sweep_args(p)
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("run", help="sweep, then fit the laws, draw the figures and print a summary")
    add_sweep_args(p)
    p.add_argument("--no-verify", action="store_true", help="skip the prediction check (training the fit's recommended model at the next budget)")
    p.add_argument("--neighbours", action="store_true", help="prediction check: also train N_opt/2 and 2 N_opt at the same budget")
    p.add_argument("--allocation", action="store_true", help="prediction check: train 5 sizes around N_opt and compare the measured optimum with each approach's")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("status", help="table of a root's runs: state, attempts, step, losses")
    p.add_argument("root", help="a sweep's --root (or one run's folder)")
    p.set_defaults(func=cmd_status)

"""`scaling sweep`, `scaling status` and `scaling run` (sweep, then fit, figures and a summary).

    scaling sweep EXP --root DIR [--set KEY=VALUE ...] [--retries 2] [--worker i/n] [--pack auto|K|1]
                  [--executor local|processes [--devices-per-worker k] [--workers n]]
    scaling status DIR
    scaling run EXP --root DIR [the sweep options] [--no-verify] [--neighbours]

An experiment file defines `sweep()` returning a lib.sweeps.plans sweep, or `config()` for a single run.
`--set` overrides apply to every run of the sweep. Relaunching the same command trains only what
is missing: finished runs are skipped, cut runs resume, failed runs are retried up to --retries.
Runs of one shape train together as packs (one vmapped program, lib/train/step.py); each still
has its own folder, and `status` shows runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from experiments.cli import _process_count, add_distributed_args, add_set_arg, load_experiment
from lib.config import ConfigError, parse_set_args
from lib.sweeps.executors import SweepReport, SweepStopped
from lib.store.runstore import RunDir, load_runs, read_json, run_dirs, shown_state, summary_D, write_json_atomic
from lib.store import claims, storage
from lib.store.storage import is_url
from lib.sweeps.plans import Grid, Plan, Sweep

MANIFESTS = ".sweeps"  # <root>/.sweeps/<name>.json: the full plan, so `status` can show missing runs
MAX_NOTES = 10
TUNE_SUFFIX = ":tune"  # `EXP:tune` names EXP's tune grid


@dataclasses.dataclass
class SweepOptions:
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    retries: int = 2  # a failed run is tried at most retries + 1 times in all (status.json's attempts)
    worker: tuple[int, int] | None = None  # (i, n): this host's static share of the sorted run list
    executor: str = "local"  # local: in this process, one run after another | processes: one per device group | ray
    devices_per_worker: int = 1
    workers: int | None = None  # processes executor: default every GPU group; required on CPU
    progress: str = "auto"  # auto: a tqdm bar when stderr is a terminal | on | off
    compile_cache: str = "auto"  # auto: <root>/.jax_cache for local roots | off | a directory
    run_logs: bool = False  # each run's per-step console lines (off: one line per run)
    spec: str = ""  # the experiment's path or name: worker processes load it again
    sets: tuple[str, ...] = ()  # the raw --set items, passed on to worker processes
    ray_address: str | None = None  # ray executor: None/local starts one here; auto or host:port joins a cluster
    ray_resources: dict[str, float] = dataclasses.field(default_factory=lambda: {"CPU": 1})  # per task (a pack of runs)
    pack: str = "auto"  # runs of one shape train together: auto (as many as fit the device memory) | K | 1 (each alone)


def load_sweep(spec: str) -> Sweep:
    if spec.endswith(TUNE_SUFFIX):  # the experiment's tune grid (experiments/tune_cmd.py), as worker processes name it
        from experiments.tune_cmd import load_tune

        return load_tune(spec[: -len(TUNE_SUFFIX)])
    module = load_experiment(spec)
    if hasattr(module, "sweep"):
        sweep = module.sweep()
        if not isinstance(sweep, Sweep):
            raise ConfigError(f"{spec}: sweep() returned {type(sweep).__name__}; return a lib.sweeps.plans Grid, IsoFlop or TokensPerParam")
        return sweep
    if hasattr(module, "config"):
        return Grid(module.config())  # a single run is a sweep of one
    raise ConfigError(f"{spec} defines neither sweep() nor config()")


def run_sweep(sweep: Sweep, root, options: SweepOptions | None = None) -> SweepReport:
    """Plan `sweep`, then train what is missing into `root` with the chosen executor; print a report."""
    from lib.sweeps import executors

    options = options or SweepOptions()
    root = os.fspath(root)
    overrides = dict(options.overrides)
    if not options.run_logs:
        overrides.setdefault("tracking.console", False)  # not part of the run id's hash
    plan = sweep.plan(overrides, root=root)  # root: a "tuned" lr rule reads <root>/tune/lr_rule.json
    if options.executor not in ("local", "processes", "ray"):
        raise ConfigError(f"--executor: unknown value '{options.executor}'; choose local, processes or ray")
    envs = _worker_envs(options) if options.executor == "processes" else []  # fail before writing anything
    is_writer = options.executor != "local" or _process_index() == 0
    if is_writer:
        write_json_atomic(os.path.join(root, MANIFESTS, f"{plan.name}.json"),
                          {"name": plan.name, "experiment": options.spec, "runs": [r.run_id for r in plan.runs], "notes": list(plan.notes)})
    share = plan.partition(*options.worker) if options.worker else plan
    def say(line: str) -> None:
        if is_writer:  # one report per sweep, from process 0
            print(line, flush=True)

    say(f"sweep {plan.name}: {len(plan.runs)} runs into {root}" + (f"; worker {options.worker[0]}/{options.worker[1]} takes {len(share.runs)}" if options.worker else ""))
    for note in plan.notes[:MAX_NOTES]:
        say(f"  note: {note}")
    if len(plan.notes) > MAX_NOTES:
        say(f"  ... and {len(plan.notes) - MAX_NOTES} more notes, all in {os.path.join(root, MANIFESTS, plan.name + '.json')}")
    for line in plan.lr_lines():  # each run's batch and lr (under an lr rule, or when they vary)
        say(f"  {line}")
    bar = options.progress == "on" or (options.progress == "auto" and sys.stderr.isatty())
    progress = executors.Progress(share, enabled=bar, quiet=not is_writer)

    if options.executor == "local":
        executors.enable_compile_cache(_cache_dir(root, options.compile_cache))
        report = executors.run_local(share, root, retries=options.retries, progress=progress, pack=options.pack)
    elif options.executor == "ray":
        from lib.sweeps.ray import run_ray

        report = run_ray(share, root, options.ray_address, options.retries, options.ray_resources,
                         compile_cache=_cache_dir(root, options.compile_cache), progress=progress, pack=options.pack)
    else:
        report = _run_worker_processes(share, root, options, envs, progress)
    for line in report.lines():
        say(line)
    if tuple(getattr(sweep, "lr_grid", (1.0,))) != (1.0,) and not options.worker and is_writer and _process_count() == 1:
        from experiments.workflow.lr_edges import new_extensions, record_extensions

        more = new_extensions(plan, root)
        if more:  # once per point: a relaunch plans these runs too, and a point extended once is not again
            path = record_extensions(root, plan.name, more)
            say(f"learning rate per point: best lr on a grid edge for {len(more)} point(s); adding one run each past it ({path})")
            return run_sweep(sweep, root, options)
    return report


def _worker_envs(options: SweepOptions) -> list[dict[str, str]]:
    from lib.sweeps import executors

    if not options.spec:
        raise ConfigError("the processes executor starts `scaling sweep EXP` per worker: set SweepOptions.spec to the experiment")
    try:
        return executors.device_group_envs(options.devices_per_worker, options.workers)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _run_worker_processes(share: Plan, root: str, options: SweepOptions, envs, progress) -> SweepReport:
    """Each worker is `scaling sweep --worker j/m`: the static partition again, no scheduler of our own."""
    from lib.sweeps import executors

    a, b = options.worker or (0, 1)
    n = len(envs)
    spec = os.path.abspath(options.spec) if os.path.exists(options.spec) else options.spec
    commands, logs = [], []
    for i, env in enumerate(envs):
        j, m = a + b * i, b * n  # worker i of this host's n takes share j of m overall
        argv = [sys.executable, "-m", "experiments.cli", "sweep", spec, "--root", root, "--worker", f"{j}/{m}",
                "--retries", str(options.retries), "--progress", "off", "--compile-cache", options.compile_cache, "--pack", str(options.pack)]
        argv += [x for s in options.sets for x in ("--set", s)] + (["--run-logs"] if options.run_logs else [])
        commands.append((argv, env))
        logs.append(os.path.join(_logs_dir(root), f"{share.name}-worker{j}of{m}.log"))
    return executors.run_processes(share, root, commands, logs, progress)


def _logs_dir(root: str) -> str:
    """Where worker logs go: <root>/.logs for a local root; for a URL root (logs are appended to,
    which objects cannot be) a local folder, ./scaling-logs/<bucket>/<path>."""
    if is_url(root):
        return os.path.abspath(os.path.join("scaling-logs", *root.split("://", 1)[1].strip("/").split("/")))
    return os.path.join(root, ".logs")


def _cache_dir(root: str, setting: str) -> str | None:
    if setting == "off":
        return None
    if setting != "auto":
        return setting
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    return None if is_url(root) else os.path.join(os.path.abspath(root), ".jax_cache")


def _process_index() -> int:
    import jax

    return jax.process_index()


# ================================================================================================
# scaling run: sweep -> fit -> figures -> summary
# ================================================================================================
def fit_and_summarise(root) -> int:
    """Fit the laws on `root`'s finished runs into <root>/fit (fit.json, report.md, figures) and
    print the fitted laws with intervals, a and b, and the compute-optimal N and D at the next
    budget up. Returns an exit code."""
    import warnings

    from analysis.errors import AnalysisError, FitWarning
    from analysis.report import fit_and_report, summary

    out = os.path.join(os.fspath(root), "fit")
    next_c = _next_budget(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)  # the record carries them; printed once below
            record = fit_and_report(os.fspath(root), out, {"approach": "all", "at": [next_c] if next_c else []})
    except AnalysisError as e:
        print(f"fit: {e}", file=sys.stderr)
        return 1
    print(f"\nfit -> {out}")
    print(summary(record, C=next_c))
    for line in record.get("notes", []) + record.get("warnings", []):
        print(f"  warning: {line}")
    print(f"figures and report: {out}/report.md, " + ", ".join(f for f in record.get("figures", []) if f.endswith(".png")))
    return 0


def _next_budget(root) -> float | None:
    """One step past the sweep's largest FLOP budget, at the ratio of its last two."""
    from analysis.data import is_check_sweep

    runs = load_runs(root)
    budgets = sorted({b for b, s in zip(runs["budget"], runs["sweep"]) if b > 0 and not is_check_sweep(s)})  # not the check runs'
    if len(budgets) < 2:
        return None  # analysis.report.summary then uses 3x the largest C
    return budgets[-1] * budgets[-1] / budgets[-2]


def cmd_run(args) -> int:
    from experiments.tune_cmd import tune_stage

    code = tune_stage(args)  # when the sweep's lr_rule is "tuned"; a no-op once <root>/tune/lr_rule.json exists
    if code:
        return code
    code = cmd_sweep(args)
    if code in (0, 1):  # the experiment's sensitivity sweeps (e.g. the old single lr), into <root>/sensitivity/
        from experiments.tune_cmd import report_stage, sensitivity_stage

        code = max(code, sensitivity_stage(args))
    own_fit = getattr(load_experiment(args.experiment), "analyse", None)  # e.g. experiments/families.py: a law per family
    if own_fit is not None:
        return max(code, own_fit(args.root)) if code in (0, 1) and _process_index() == 0 else code
    if code in (0, 1) and _process_index() == 0:  # fit what finished, even if some runs failed
        fit_code = fit_and_summarise(args.root)
        code = max(code, fit_code)
        if fit_code == 0:  # the lr rule and the sensitivity lines, into the report
            code = max(code, report_stage(args))
        if fit_code == 0 and not args.no_verify:  # the prediction check at the next budget (experiments/verify_cmd.py)
            from experiments.verify_cmd import run_stage

            code = max(code, run_stage(args, _next_budget(args.root)))
    return code


# ================================================================================================
# scaling sweep / scaling status
# ================================================================================================
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
        sets=tuple(args.set),
        ray_address=args.address,
        ray_resources=_parse_resources(args.resources),
    )


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


def cmd_sweep(args) -> int:
    options = options_from_args(args)
    if options.executor == "local":  # the processes and ray executors' parent touches no device
        from lib.parallel.distributed import initialize_from_args

        initialize_from_args(args)
    try:
        report = run_sweep(load_sweep(args.experiment), args.root, options)
    except SweepStopped:
        print("sweep stopped by SIGTERM; relaunch the same command to resume", file=sys.stderr)
        return 143
    return report.exit_code


def _parse_worker(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--worker expects i/n (this host's index and the host count), e.g. --worker 0/4; got '{text}'") from None
    if not 0 <= i < n:
        raise ConfigError(f"--worker {text}: need 0 <= i < n, e.g. --worker 0/{max(n, 1)}")
    return i, n


def status_rows(root) -> list[dict]:
    """One row per run folder under `root` (or `root` itself if it is a run), plus planned runs not started."""
    root = os.fspath(root)
    runs = [RunDir(root, writer=False)] if storage.read_bytes(_join(root, "config.json")) is not None else run_dirs(root)
    timeout = claims.stale_after_s()
    rows = []
    for run in runs:
        status, summary, config = run.status() or {}, run.summary(), run.config() or {}
        state, reason = _live_state(status, summary, claims.holder(run.path), timeout)
        summary = summary or {}
        metrics = run.metrics()
        params = (summary.get("params") or {}).get("total")
        rows.append({
            "run": run.path.name,
            "state": state,
            "attempts": status.get("attempts", 0),
            "step": f"{metrics[-1]['step'] if metrics else 0}/{config.get('train', {}).get('steps', '?')}",
            "eval_loss": summary.get("eval_loss") or next((m["eval_loss"] for m in reversed(metrics) if m.get("eval_loss") is not None), None),
            "N": params,
            "D": summary_D(summary),
            "C": (summary.get("flops") or {}).get("value") or config.get("budget") or None,
            "reason": reason,
            "_order": (config.get("budget") or 0.0, params or 0, run.path.name),
        })
    rows.sort(key=lambda r: r.pop("_order"))  # as the sweep runs them: by budget, then size
    present = {r["run"] for r in rows}
    manifests = _join(root, MANIFESTS)
    for name in storage.list_dir(manifests):
        if name.endswith(".json"):
            for run_id in (read_json(_join(manifests, name)) or {}).get("runs", []):
                if run_id not in present:
                    present.add(run_id)
                    rows.append({"run": run_id, "state": "missing", "attempts": 0, "step": "-", "eval_loss": None, "N": None, "D": None, "C": None, "reason": ""})
    return rows


def _join(root: str, *names: str) -> str:
    return "/".join([root.rstrip("/"), *names]) if is_url(root) else os.path.join(root, *names)


def _live_state(status: dict, summary: dict | None, holder, timeout: float) -> tuple[str, str]:
    """(state, reason) as `status` shows it: a "running" run whose trainer is gone -- its claim's
    heartbeat stale, or no claim at all (killed after the claim went, or before claims existed) -- is
    "stale", never "running" forever; "done" without a summary is "incomplete" (runstore.shown_state)."""
    state, reason = shown_state(status, summary)
    if holder is not None:
        why = holder.stale_reason(timeout)
        if why is None:
            return ("running" if state == "running" else state), (reason if state != "running" else f"held by {holder.describe()}")
        return "stale", f"stale (last heartbeat {holder.last_heartbeat()}; {holder.describe()}: {why}); relaunch to resume"
    if state == "running":
        return "stale", "stale (no claim: its trainer is gone); relaunch to resume"
    return state, reason


def format_status(rows: list[dict]) -> str:
    def g(x, spec=".3g"):
        return "-" if x is None else format(x, spec)

    width = max([len(r["run"]) for r in rows] + [3])
    lines = [f"{'run':<{width}}  {'state':<11} {'att':>3}  {'step':>11}  {'eval_loss':>9}  {'N':>8}  {'D':>8}  {'C':>8}"]
    for r in rows:
        lines.append(f"{r['run']:<{width}}  {r['state']:<11} {r['attempts']:>3}  {r['step']:>11}  {g(r['eval_loss'], '.4f'):>9}  "
                     f"{g(r['N']):>8}  {g(r['D']):>8}  {g(r['C']):>8}")
        if r["reason"] and r["state"] != "done":
            lines.append(f"{'':<{width}}  ^ {r['reason']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def cmd_status(args) -> int:
    root = os.fspath(args.root)
    if not is_url(root) and os.path.isfile(root):
        raise ConfigError(f"{root} is a file: give the --root folder of a sweep (or a run's folder)")
    if not (storage.list_dir(root) if is_url(root) else os.path.isdir(root)):
        raise ConfigError(f"{root} does not exist: give the --root of a sweep (or a run's folder)")
    try:
        rows = status_rows(root)
    except FileNotFoundError as e:  # a URL root with no run under it
        raise ConfigError(str(e)) from None
    if not rows:
        print(f"no runs under {args.root}")
        return 0
    print(format_status(rows))
    return 0


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
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
    _add_sweep_args(p)
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("run", help="sweep, then fit the laws, draw the figures and print a summary")
    _add_sweep_args(p)
    from experiments.verify_cmd import add_run_args

    add_run_args(p)  # --no-verify, --neighbours
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("status", help="table of a root's runs: state, attempts, step, losses")
    p.add_argument("root", help="a sweep's --root (or one run's folder)")
    p.set_defaults(func=cmd_status)

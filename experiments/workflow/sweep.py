"""The sweep stage: plan a sweep, then train what is missing into a root with the chosen executor.

Relaunching trains only what is missing: finished runs are skipped, cut runs resume, failed runs
are retried up to `retries`. Runs of one shape train together as packs (one vmapped program,
lib/train/step.py); each still has its own folder. The processes executor starts one worker
process per device group (experiments/workflow/worker.py), each given these same options as JSON.
"""

from __future__ import annotations

import json
import os
import sys

from experiments.workflow.experiment import load_grid
from experiments.workflow.options import TUNE_GRID, Distributed, SweepOptions
from lib.config import ConfigError
from lib.store.runstore import write_json_atomic
from lib.store.storage import is_url

MANIFESTS = ".sweeps"  # <root>/.sweeps/<name>.json: the full plan, so `status` can show missing runs
MAX_NOTES = 10
TUNE_LABEL = ":tune"  # a tune grid's manifest names its experiment "EXP:tune" (as roots written before have it)


def manifest_experiment(options: SweepOptions) -> str:
    """The experiment as the sweep's manifest records it (`scaling verify` reads it back)."""
    return options.spec + (TUNE_LABEL if options.spec and options.grid == TUNE_GRID else "")


def run_sweep(sweep, root, options: SweepOptions | None = None):
    """Plan `sweep`, then train what is missing into `root` with the chosen executor; print a report.
    Returns the executor's SweepReport."""
    from lib.parallel.distributed import process_count, process_index
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
    is_writer = options.executor != "local" or process_index() == 0
    if is_writer:
        write_json_atomic(os.path.join(root, MANIFESTS, f"{plan.name}.json"),
                          {"name": plan.name, "experiment": manifest_experiment(options), "runs": [r.run_id for r in plan.runs], "notes": list(plan.notes)})
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
        executors.enable_compile_cache(cache_dir(root, options.compile_cache))
        report = executors.run_local(share, root, retries=options.retries, progress=progress, pack=options.pack)
    elif options.executor == "ray":
        from lib.sweeps.ray import run_ray

        report = run_ray(share, root, options.ray_address, options.retries, dict(options.ray_resources),
                         compile_cache=cache_dir(root, options.compile_cache), progress=progress, pack=options.pack)
    else:
        report = _run_worker_processes(share, root, options, envs, progress)
    for line in report.lines():
        say(line)
    if tuple(getattr(sweep, "lr_grid", (1.0,))) != (1.0,) and not options.worker and is_writer and process_count() == 1:
        from experiments.workflow.lr_edges import new_extensions, record_extensions

        more = new_extensions(plan, root)
        if more:  # once per point: a relaunch plans these runs too, and a point extended once is not again
            path = record_extensions(root, plan.name, more)
            say(f"learning rate per point: best lr on a grid edge for {len(more)} point(s); adding one run each past it ({path})")
            return run_sweep(sweep, root, options)
    return report


def sweep_stage(root, options: SweepOptions, distributed: Distributed = Distributed()) -> int:
    """`scaling sweep` (and a worker process's share of it): the experiment's sweep or tune grid
    (options.spec, options.grid) into `root`. Returns an exit code (143: stopped by SIGTERM)."""
    from lib.sweeps.executors import SweepStopped

    if options.executor == "local":  # the processes and ray executors' parent touches no device
        distributed.join()
    try:
        report = run_sweep(load_grid(options.spec, options.grid), root, options)
    except SweepStopped:
        print("sweep stopped by SIGTERM; relaunch the same command to resume", file=sys.stderr)
        return 143
    return report.exit_code


def _worker_envs(options: SweepOptions) -> list[dict[str, str]]:
    from lib.sweeps import executors

    if not options.spec:
        raise ConfigError("the processes executor starts a worker per device group that loads the experiment again: set SweepOptions.spec to it")
    try:
        return executors.device_group_envs(options.devices_per_worker, options.workers)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def worker_options(options: SweepOptions, j: int, m: int) -> SweepOptions:
    """What worker j of m receives: the sweep's options, its share, in-process, without a bar."""
    spec = os.path.abspath(options.spec) if os.path.exists(options.spec) else options.spec
    return SweepOptions(overrides=dict(options.overrides), retries=options.retries, worker=(j, m), progress="off",
                        compile_cache=options.compile_cache, run_logs=options.run_logs, spec=spec, grid=options.grid, pack=str(options.pack))


def _run_worker_processes(share, root: str, options: SweepOptions, envs, progress):
    """Each worker trains share j of m: the static partition again, no scheduler of our own."""
    from lib.sweeps import executors

    a, b = options.worker or (0, 1)
    n = len(envs)
    commands, logs = [], []
    for i, env in enumerate(envs):
        j, m = a + b * i, b * n  # worker i of this host's n takes share j of m overall
        job = {"root": root, "options": json.loads(worker_options(options, j, m).to_json())}
        commands.append(([sys.executable, "-m", "experiments.workflow.worker", json.dumps(job)], env))
        logs.append(os.path.join(logs_dir(root), f"{share.name}-worker{j}of{m}.log"))
    return executors.run_processes(share, root, commands, logs, progress)


def logs_dir(root: str) -> str:
    """Where worker logs go: <root>/.logs for a local root; for a URL root (logs are appended to,
    which objects cannot be) a local folder, ./scaling-logs/<bucket>/<path>."""
    if is_url(root):
        return os.path.abspath(os.path.join("scaling-logs", *root.split("://", 1)[1].strip("/").split("/")))
    return os.path.join(root, ".logs")


def cache_dir(root: str, setting: str) -> str | None:
    if setting == "off":
        return None
    if setting != "auto":
        return setting
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    return None if is_url(root) else os.path.join(os.path.abspath(root), ".jax_cache")


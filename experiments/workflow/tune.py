"""The tune stage: a learning-rate grid per model size, then lr*(N) = c * N^-gamma.

Trains EXP's tune grid into R/tune/ (one run per size and lr, at a short horizon; runs of one size
share a shape and a length, so they pack into one program where packing is on), fits each size's
best lr and the rule (analysis/lr_rule.py), and writes R/tune/lr_rule.json with its figure
R/tune/lr_rule.png. A sweep with lr_rule="tuned" reads that file; `scaling run` runs this stage
first when the experiment's sweep asks for it. A relaunch is a no-op once lr_rule.json exists
(delete it to retune; finished tuning runs are still reused).

The grid: EXP's `tune()` (a lib.sweeps.plans.Tune), else `Tune.from_sweep(sweep())` -- every size
of the sweep's ladder at the base lr x 2^-2..2^2 for 100 steps. A size whose best lr sits on an
edge of its grid gets one more lr past that edge (the grid's step), up to `extend` times; the
added lrs are recorded in R/tune/grid_extensions.json so worker processes and relaunches plan the
same runs. A size still on an edge after that is left out of the fit and reported.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile

from experiments.workflow.experiment import load_sweep, load_tune, wants_tuning
from experiments.workflow.options import DEFAULT_EXTEND, TUNE_GRID, Distributed, SweepOptions, TuneOptions
from experiments.workflow.sweep import run_sweep
from lib.config import ConfigError
from lib.store.runstore import RunDir, read_json, write_json_atomic
from lib.sweeps import rules
from lib.sweeps.plans import Plan, Tune, size_tag


def tuning_points(plan: Plan, tune_dir) -> tuple[list[dict], list[str]]:
    """(tag, N, lr, loss) per finished or diverged run of `plan` (loss None: diverged), and what is missing."""
    points, missing = [], []
    for r in plan.runs:
        run = RunDir(os.path.join(os.fspath(tune_dir), r.run_id), writer=False)
        status, summary = run.status() or {}, run.summary() or {}
        loss = summary.get("eval_loss")
        if status.get("state") == "done" and loss is not None and math.isfinite(loss):
            points.append({"tag": size_tag(r.cfg), "N": r.params, "lr": r.cfg.optimizer.lr, "loss": float(loss), "run_id": r.run_id})
        elif status.get("diverged"):
            points.append({"tag": size_tag(r.cfg), "N": r.params, "lr": r.cfg.optimizer.lr, "loss": None, "run_id": r.run_id})
        else:
            missing.append(f"{r.run_id} ({status.get('state', 'not started')}{': ' + status['reason'] if status.get('reason') else ''})")
    return points, missing


def extensions_for(points: list[dict]) -> dict[str, float]:
    """size tag -> the lr to add: one grid step past the edge its best lr sits on."""
    from analysis.lr_rule import size_optimum

    by_tag: dict[str, list[dict]] = {}
    for p in points:
        by_tag.setdefault(p["tag"], []).append(p)
    out = {}
    for tag, rows in by_tag.items():
        if len(rows) < 3:
            continue
        opt = size_optimum([r["lr"] for r in rows], [r["loss"] for r in rows])
        lrs = opt["lrs"]
        if opt["edge"] == "low":
            out[tag] = lrs[0] * lrs[0] / lrs[1]
        elif opt["edge"] == "high":
            out[tag] = lrs[-1] * lrs[-1] / lrs[-2]
    return out


def run_tune(tune: Tune, root, options: SweepOptions | None = None, extend: int = DEFAULT_EXTEND, say=print) -> int:
    """Train the tune grid into <root>/tune, extend grids whose best lr is on an edge, fit and write
    lr_rule.json. Returns an exit code (0: the rule exists). A no-op when lr_rule.json exists."""
    from analysis.errors import AnalysisError
    from analysis.lr_rule import describe, fit_lr_rule
    from lib.parallel.distributed import process_index
    from lib.sweeps.executors import SweepStopped

    root = os.fspath(root)
    path = rules.lr_rule_path(root)
    if read_json(path) is not None:
        say(f"tune: {path} exists; nothing to do (delete it to retune)")
        return 0
    options = options or SweepOptions()
    if "optimizer.lr" in options.overrides:  # the grid is the point: a forced lr would make it one value
        say("tune: --set optimizer.lr applies to the sweep, not to the tune grid; ignored here")
        options = dataclasses.replace(options, overrides={k: v for k, v in options.overrides.items() if k != "optimizer.lr"})
    options = dataclasses.replace(options, grid=TUNE_GRID)  # worker processes plan the tune grid
    tune_dir = rules.tune_root(root)
    overrides = dict(options.overrides)
    if not options.run_logs:
        overrides.setdefault("tracking.console", False)  # as run_sweep plans
    if extend < 0:
        raise ConfigError(f"--extend must be an integer >= 0 (how many lrs to add past a grid edge), not {extend}")
    sizes = sorted({size_tag(r.cfg) for r in tune.plan(overrides, root=tune_dir).runs})
    if len(sizes) < 2:  # lr*(N) = c N^-gamma needs two sizes: say so before training anything
        raise ConfigError(f"the tune grid has {len(sizes)} model size ({', '.join(sizes)}); lr*(N) needs at least 2: "
                          "give the sweep a size ladder or a tune() with two or more sizes")
    writer = process_index() == 0
    for round_ in range(extend + 1):
        try:
            report = run_sweep(tune, tune_dir, options)
        except SweepStopped:
            print("tune stopped by SIGTERM; relaunch the same command to resume", file=sys.stderr)
            return 143
        if report.stopped:
            return 143
        plan = tune.plan(overrides, root=tune_dir)
        points, missing = tuning_points(plan, tune_dir)
        if missing:
            say("tune: runs without a result (failed, not diverged): " + "; ".join(missing)
                + ("; with --worker, rerun once every worker is done" if options.worker else ""))
            return 1
        more = extensions_for(points)
        if not more or round_ == extend:
            break
        say("tune: best lr on a grid edge for " + ", ".join(f"{t} (adding lr {lr:.3g})" for t, lr in sorted(more.items())))
        if writer:
            recorded = rules.read_grid_extensions(tune_dir)
            for tag, lr in more.items():
                recorded.setdefault(tag, []).append(lr)
            write_json_atomic(os.path.join(tune_dir, rules.GRID_EXTENSIONS_FILE), recorded)
        _sync("grid extensions")
    cfg0 = plan.runs[0].cfg
    meta = {
        "batch": cfg0.data.global_batch,
        "seq_len": cfg0.data.seq_len,
        "steps": tune.steps or None,
        "tokens_per_param": tune.tokens_per_param or None,
        "budget": tune.budget or None,
        "schedule": cfg0.optimizer.schedule,
        "parametrization": cfg0.model.parametrization,
        "runs": len(plan.runs),
    }
    try:
        record = fit_lr_rule(points, meta=meta)
    except AnalysisError as e:
        print(f"tune: {e}", file=sys.stderr)
        return 1
    if writer:
        files = _write_rule(record, tune_dir)
        say(f"tune: {describe(record)}")
        for w in record["warnings"]:
            say(f"  warning: {w}")
        say(f"tune -> {files[0]} (figure {files[1]})")
    _sync("lr rule")
    return 0


def _write_rule(record, tune_dir: str) -> list[str]:
    """lr_rule.json and its figure into tune_dir (a gs:// folder: written locally, then copied up)."""
    from analysis.lr_rule import write_lr_rule
    from lib.store import storage

    if not storage.is_url(tune_dir):
        return write_lr_rule(record, tune_dir)
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for f in write_lr_rule(record, tmp):
            out.append(os.path.join(tune_dir, os.path.basename(f)))
            with open(f, "rb") as fh:
                storage.write_bytes(out[-1], fh.read())
        return out


def _sync(what: str) -> None:
    """Every process waits for process 0's file before planning with it."""
    from lib.parallel.distributed import process_count

    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"tune: {what}")


def tune_command(root, options: TuneOptions, distributed: Distributed = Distributed()) -> int:
    """`scaling tune EXP --root R`: the experiment's tune grid into R/tune, then the rule."""
    if options.sweep.executor == "local":
        distributed.join()
    return run_tune(load_tune(options.sweep.spec), root, options.sweep, extend=options.extend)


def tune_stage(root, options: TuneOptions, distributed: Distributed = Distributed()) -> int:
    """`scaling run`'s first stage: tune when the experiment's sweep uses lr_rule="tuned"."""
    if not wants_tuning(load_sweep(options.sweep.spec)):
        return 0
    if read_json(rules.lr_rule_path(root)) is not None:
        print(f"tune: {rules.lr_rule_path(root)} exists; skipping the tune stage")
        return 0
    return tune_command(root, options, distributed)
